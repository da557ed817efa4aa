//! One health server per Service with a healthCheckNodePort (kube-proxy's ServiceHealthServer):
//! opened when the Service appears, closed when it goes or its port changes; a port that
//! cannot be bound is retried on the next sync.

use std::{
    borrow::Borrow,
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use tokio::task::JoinHandle;

use super::{
    http::{self, Limits},
    state::{service_name, HealthState, ServiceName},
};
use crate::model::ServicePort;

/// The open health-check ports.
pub struct ServiceHealthServers {
    state: Arc<HealthState>,
    open: HashMap<ServiceName, (u16, JoinHandle<()>)>,
}

impl ServiceHealthServers {
    pub fn new(state: Arc<HealthState>) -> Self {
        ServiceHealthServers {
            state,
            open: HashMap::new(),
        }
    }

    /// The Services and ports now open.
    pub fn ports(&self) -> HashMap<ServiceName, u16> {
        self.open
            .iter()
            .map(|(k, (p, _))| (k.clone(), *p))
            .collect()
    }

    /// Opens and closes servers so that exactly the health-check ports of `services` listen.
    /// Must run on a tokio runtime.
    pub fn sync(&mut self, services: &[impl Borrow<ServicePort>]) {
        let wanted: HashMap<ServiceName, u16> = services
            .iter()
            .map(Borrow::borrow)
            .filter_map(|s| Some((service_name(&s.name), s.health_check_node_port?)))
            .collect();
        self.open.retain(|name, (port, task)| {
            let keep = wanted.get(name) == Some(port);
            if !keep {
                log::info!(
                    "closing health check of {}/{} on port {port}",
                    name.0,
                    name.1
                );
                task.abort();
            }
            keep
        });
        for (name, port) in wanted {
            if self.open.contains_key(&name) {
                continue;
            }
            match self.listen(&name, port) {
                Ok(task) => {
                    log::info!("health check of {}/{} on port {port}", name.0, name.1);
                    self.open.insert(name, (port, task));
                }
                Err(e) => log::error!(
                    "health check of {}/{} on port {port} not opened (retried at the next sync): {e}",
                    name.0,
                    name.1
                ),
            }
        }
    }

    fn listen(&self, name: &ServiceName, port: u16) -> std::io::Result<JoinHandle<()>> {
        // Bound now (not in the task) so a port in use is reported here. kube-proxy listens
        // on every address unless --nodeport-addresses narrows it; this agent always does.
        let std_listener =
            std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let (state, name) = (self.state.clone(), name.clone());
        Ok(tokio::spawn(http::serve(
            listener,
            Limits::default(),
            move |_path| state.service(&name),
        )))
    }
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for (_, task) in self.open.values() {
            task.abort();
        }
    }
}
