//! The control plane: where the desired [`ClusterState`] comes from.
//!
//! Two sources, one translation path:
//! - [`Source::Kubernetes`]: kube-rs watchers on Services, EndpointSlices and Nodes (see
//!   [`WATCHED`]), from in-cluster config or a kubeconfig;
//! - [`Source::Manifests`]: YAML/JSON files as `kubectl get -o yaml` prints them, polled.
//!
//! Both build [`Objects`], run [`translate`] (kube-proxy's semantics) through a [`Translator`]
//! (only the Services whose objects changed since the last snapshot; every other port is the
//! previous state's `Arc`), log each new [`Problem`] once, and publish the state on a
//! `tokio::sync::watch` channel when it changed, coalescing bursts of changes.

mod apiserver;
mod decode;
mod endpoints;
mod incremental;
mod load_balancer;
mod local;
mod manifests;
mod nodes;
mod objects;
mod parse;
mod policies;
mod problem;
mod sync;
mod this_node;
mod translate;

#[cfg(test)]
mod incremental_tests;
#[cfg(test)]
mod semantics_tests;
#[cfg(test)]
mod translate_tests;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    Resource,
};
use tokio::sync::{watch, Notify};

pub use decode::{decode, documents, Decoded, Format, SyntaxError};
pub use endpoints::SERVICE_NAME_LABEL;
pub use incremental::{TranslatePaths, Translator, INCREMENTAL_MAX};
pub use local::{LocalNode, NodePortAddresses};
pub use manifests::POLL_INTERVAL;
pub use nodes::{
    CALICO_IPIP_TUNNEL_ADDR, CALICO_IPV4_ADDRESS, FLANNEL_BACKEND_DATA, FLANNEL_PUBLIC_IP,
};
pub use objects::{Objects, HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
pub use policies::DEFAULT_AFFINITY_TIMEOUT_SECS;
pub use problem::{Problem, ProblemLog, Severity};
pub use sync::{SourceStats, SourceStatsSnapshot, MAX_DELAY, QUIET};
pub use this_node::{TO_BE_DELETED_TAINT, ZONE_LABEL};
pub use translate::translate;

use crate::{model::ClusterState, tasks::AbortOnDrop};
use sync::Publisher;

/// The (API group, resource) pairs the Kubernetes source lists and watches; the deployment's
/// RBAC must grant get/list/watch on exactly these ("" is the core group).
pub const WATCHED: &[(&str, &str)] = &[
    (Service::GROUP, Service::URL_PATH_SEGMENT),
    (EndpointSlice::GROUP, EndpointSlice::URL_PATH_SEGMENT),
    (Node::GROUP, Node::URL_PATH_SEGMENT),
];

/// Where the cluster's objects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A manifest file or directory (`--manifests PATH`).
    Manifests(PathBuf),
    /// The API server: from this kubeconfig, or inferred ($KUBECONFIG, ~/.kube/config,
    /// in-cluster service account).
    Kubernetes { kubeconfig: Option<PathBuf> },
}

/// Starts `source` on the current tokio runtime and returns the channel its states are
/// published on.
///
/// The channel starts with an empty placeholder state that counts as seen: wait for
/// `changed()` before applying anything. The first published state is complete (every manifest
/// read, or every initial list done); later ones are published only when the state differs,
/// at most one per [`QUIET`]..[`MAX_DELAY`] burst of changes. The tasks stop when every
/// receiver is dropped.
///
/// Errors if the manifests path cannot be read, or no Kubernetes client can be configured.
/// An unreachable API server is not an error: it is retried with backoff.
pub async fn start(source: Source, local: LocalNode) -> Result<watch::Receiver<Arc<ClusterState>>> {
    start_with_stats(source, local, Arc::default()).await
}

/// [`start`], counting into `stats` (for metrics).
pub async fn start_with_stats(
    source: Source,
    local: LocalNode,
    stats: Arc<SourceStats>,
) -> Result<watch::Receiver<Arc<ClusterState>>> {
    // The sender goes away at once: a fixed node.
    start_following(source, watch::channel(local).1, stats).await
}

/// [`start_with_stats`] for a node whose addresses change: every new `local` (see
/// [`LocalNode::follow`]) is translated again, so NodePorts follow the node's addresses.
pub async fn start_following(
    source: Source,
    local: watch::Receiver<LocalNode>,
    stats: Arc<SourceStats>,
) -> Result<watch::Receiver<Arc<ClusterState>>> {
    let (tx, rx) = watch::channel(Arc::new(ClusterState::default()));
    let publisher = Publisher::new(local, tx, stats.clone());
    let changes = Arc::new(Notify::new());
    match source {
        Source::Manifests(path) => start_manifests(path, publisher, changes, stats).await?,
        Source::Kubernetes { kubeconfig } => {
            let client = apiserver::client(kubeconfig.as_deref()).await?;
            start_kubernetes(client, publisher, changes, stats);
        }
    }
    Ok(rx)
}

async fn start_manifests(
    path: PathBuf,
    publisher: Publisher,
    changes: Arc<Notify>,
    stats: Arc<SourceStats>,
) -> Result<()> {
    let set = tokio::task::spawn_blocking(move || manifests::ManifestSet::load(&path, stats))
        .await
        .context("reading manifests")??;
    let set = Arc::new(Mutex::new(set));
    let poller = AbortOnDrop(tokio::spawn(manifests::poll(set.clone(), changes.clone())));
    tokio::spawn(async move {
        let _poller = poller;
        publisher
            .run(changes, || manifests::lock(&set).snapshot())
            .await;
    });
    Ok(())
}

fn start_kubernetes(
    client: kube::Client,
    publisher: Publisher,
    changes: Arc<Notify>,
    stats: Arc<SourceStats>,
) {
    let (stores, watchers) = apiserver::Stores::spawn(&client, &changes, &stats);
    tokio::spawn(async move {
        let _watchers: Vec<_> = watchers.into_iter().map(AbortOnDrop).collect();
        log::info!("k8s: waiting for the initial lists of {WATCHED:?}");
        tokio::select! {
            _ = publisher.closed() => return,
            ready = stores.wait_until_ready() => if let Err(error) = ready {
                log::error!("k8s: watcher ended before its initial list: {error}");
                return;
            },
        }
        publisher.run(changes, || stores.snapshot()).await;
    });
}
