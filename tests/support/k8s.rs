//! Helpers shared by the k8s_* integration tests.

pub mod api;

use std::{
    future::Future,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{atomic::AtomicUsize, atomic::Ordering, Arc},
    time::Duration,
};

use dataplane::{k8s::LocalNode, model::ClusterState};
use tokio::sync::watch;

/// The seed cluster of docs/seeds/k8s-service-iptables-chains.txt as `kubectl -o yaml` prints it.
pub const SEED: &str = include_str!("../../dataplane-user/src/k8s/testdata/seed.yaml");

/// Node k8s-2 of the seed cluster.
pub fn local() -> LocalNode {
    LocalNode {
        name: "k8s-2".into(),
        addresses: vec![Ipv4Addr::new(192, 168, 100, 102)],
        ..Default::default()
    }
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("dataplane-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` atomically (temp file + rename), as editors and ConfigMap updates do.
    pub fn write(&self, name: &str, content: &str) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.0.join(name)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub type States = watch::Receiver<Arc<ClusterState>>;

/// Waits (up to `secs`) until the published state satisfies `pred`, and returns it.
pub async fn wait_for(
    rx: &mut States,
    secs: u64,
    what: &str,
    pred: impl Fn(&ClusterState) -> bool,
) -> Arc<ClusterState> {
    let wait = async {
        loop {
            // Only published states count, not the placeholder the channel starts with.
            rx.changed().await.expect("source stopped");
            let state = rx.borrow_and_update().clone();
            if pred(&state) {
                return state;
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(secs), wait).await {
        Ok(state) => state,
        Err(_) => panic!(
            "timed out after {secs} s waiting for {what}; last state: {:#?}",
            rx.borrow()
        ),
    }
}

/// Asserts nothing is published for `secs` seconds.
pub async fn assert_quiet(rx: &mut States, secs: u64, why: &str) {
    if let Ok(changed) = tokio::time::timeout(Duration::from_secs(secs), rx.changed()).await {
        changed.expect("source stopped");
        panic!("{why}: a new state was published: {:#?}", rx.borrow());
    }
}

/// The backend IPs of namespace/name's unnamed port, as strings; None if the service is absent.
pub fn backend_ips(state: &ClusterState, namespace: &str, name: &str) -> Option<Vec<String>> {
    state
        .services
        .iter()
        .find(|s| s.name.namespace == namespace && s.name.name == name)
        .map(|s| s.backends.iter().map(|b| b.ip.to_string()).collect())
}

/// Runs `f` with a timeout, for tests that must not hang.
pub async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
