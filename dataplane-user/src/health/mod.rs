//! kube-proxy's health checks (pkg/proxy/healthcheck):
//! - the node-level server (`--healthz-bind-address`, default 0.0.0.0:10256): `/livez` fails
//!   (503) when a state from the source has waited longer than [`HEALTH_TIMEOUT`] to be applied;
//!   `/healthz` fails then too, and while this node's Node object is being deleted or carries
//!   the cluster autoscaler's ToBeDeletedByClusterAutoscaler taint (KEP-3836), so load
//!   balancers drain the node before it goes;
//! - one server per LoadBalancer Service with externalTrafficPolicy Local on its
//!   spec.healthCheckNodePort: 200 while this node has a ready endpoint of the Service (and the
//!   agent is healthy), 503 otherwise, with the local endpoint count as JSON; opened and closed
//!   as Services come and go.
//!
//! Both answer from [`HealthState`], which the agent updates after every sync.

mod http;
mod services;
mod state;

pub use self::{
    http::Limits,
    services::ServiceHealthServers,
    state::{local_ready_endpoints, HealthState, HEALTH_TIMEOUT},
};

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};

/// kube-proxy's `--healthz-bind-address` default.
pub const DEFAULT_HEALTHZ_ADDR: &str = "0.0.0.0:10256";

/// Serves `/healthz` and `/livez` on `addr` until the task is dropped.
pub async fn serve_node_health(addr: SocketAddr, state: Arc<HealthState>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health server to {addr}"))?;
    log::info!("node health on http://{addr}/healthz and /livez");
    http::serve(listener, Limits::default(), move |path| match path {
        "/healthz" => state.healthz(),
        "/livez" => state.livez(),
        _ => http::Answer::not_found(),
    })
    .await;
    Ok(())
}
