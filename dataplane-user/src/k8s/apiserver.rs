//! The Kubernetes API source: kube-rs watchers on Services, EndpointSlices and Nodes feeding
//! reflector stores. The watcher lists, watches from the list's resourceVersion, relists when
//! the watch expires (410 Gone), and retries failures with client-go's backoff (0.8 s doubling
//! to 30 s, jittered).

use std::{fmt::Debug, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        reflector::{self, store::Writer, Store},
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client, Config, Resource,
};
use serde::de::DeserializeOwned;
use tokio::{sync::Notify, task::JoinHandle};

use super::{
    objects::Objects,
    objects::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL},
    sync::{Snapshot, SourceStats},
};

/// How long to wait before relisting after the API server refused to start a watch with
/// 410 Gone (see [`watch`]).
const RELIST_DELAY: Duration = Duration::from_secs(1);

/// A client from `kubeconfig`, or inferred: $KUBECONFIG / ~/.kube/config, else the in-cluster
/// service account (KUBERNETES_SERVICE_HOST/PORT and the mounted token).
pub(crate) async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("no kubeconfig and not running in a cluster")?,
    };
    log::info!("k8s: API server {}", config.cluster_url);
    Client::try_from(config).context("creating the Kubernetes client")
}

/// The reflector stores of the three watched kinds.
pub(crate) struct Stores {
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    nodes: Store<Node>,
}

impl Stores {
    /// Starts one watcher task per kind; each notifies `changes` when its store changed.
    pub fn spawn(
        client: &Client,
        changes: &Arc<Notify>,
        stats: &Arc<SourceStats>,
    ) -> (Stores, Vec<JoinHandle<()>>) {
        // The same selector kube-proxy's informers use: Services of another proxy, and the
        // slices of headless Services, are not ours.
        let selector = format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}");
        let proxied = watcher::Config::default().labels(&selector);
        let (services, a) =
            spawn_watcher(Api::all(client.clone()), proxied.clone(), changes, stats);
        let (endpoint_slices, b) = spawn_watcher(Api::all(client.clone()), proxied, changes, stats);
        let (nodes, c) = spawn_watcher(
            Api::all(client.clone()),
            watcher::Config::default(),
            changes,
            stats,
        );
        (
            Stores {
                services,
                endpoint_slices,
                nodes,
            },
            vec![a, b, c],
        )
    }

    /// Waits until every store holds a complete initial list: publishing before that would
    /// show services without their endpoints.
    pub async fn wait_until_ready(&self) -> Result<()> {
        self.services.wait_until_ready().await?;
        self.endpoint_slices.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        Ok(())
    }

    /// The objects the stores hold now.
    pub fn snapshot(&self) -> Snapshot {
        let objects = Objects {
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            nodes: self.nodes.state(),
        };
        Snapshot {
            objects,
            problems: Vec::new(),
        }
    }
}

fn spawn_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    changes: &Arc<Notify>,
    stats: &Arc<SourceStats>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let task = tokio::spawn(watch(api, config, writer, changes.clone(), stats.clone()));
    (store, task)
}

/// Runs one kind's watcher forever, applying its events to `writer`.
async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    mut writer: Writer<K>,
    changes: Arc<Notify>,
    stats: Arc<SourceStats>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let kind = K::kind(&());
    loop {
        let mut events = watcher::watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => apply(&mut writer, event, &changes),
                Err(error) if watch_start_gone(&error) => {
                    stats.count_error();
                    log::warn!("k8s: watching {kind}: {error}; relisting");
                    break;
                }
                Err(error) => {
                    stats.count_error();
                    log::warn!("k8s: watching {kind}: {error}; retrying with backoff");
                }
            }
        }
        // kube-runtime relists after a 410 ERROR event inside a watch (what API servers send)
        // but keeps retrying the same resourceVersion when the watch request itself is answered
        // 410; a fresh watcher relists.
        tokio::time::sleep(RELIST_DELAY).await;
    }
}

fn apply<K>(writer: &mut Writer<K>, mut event: Event<K>, changes: &Notify)
where
    K: Resource<DynamicType = ()> + Clone,
{
    // managedFields are most of an object's size and never read: do not keep them.
    match &mut event {
        Event::Apply(obj) | Event::Delete(obj) | Event::InitApply(obj) => {
            obj.meta_mut().managed_fields = None
        }
        Event::Init | Event::InitDone => {}
    }
    writer.apply_watcher_event(&event);
    // Init/InitApply only fill the writer's buffer; the store changes at InitDone.
    if matches!(event, Event::Apply(_) | Event::Delete(_) | Event::InitDone) {
        changes.notify_one();
    }
}

fn watch_start_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 410)
}
