//! `/metrics` (OpenMetrics text, [`snapshot`]), `/healthz` and `/livez` (liveness) and `/readyz`
//! (readiness) on `--metrics-bind-address` (kube-proxy's flag and default, 127.0.0.1:10249),
//! served by [`server`].
//!
//! Liveness and readiness differ as kubelet probes need them to: a service the agent cannot
//! write is a readiness problem (the node is not fully programmed), never a liveness one —
//! restarting the agent would not fix a full map, and the datapath keeps serving meanwhile.
//!
//! Scrapes never touch the maps: a thread rebuilds the text every [`snapshot::INTERVAL`].

mod server;
mod snapshot;

pub use server::{CONNECTION_TIMEOUT, HEADER_TIMEOUT, MAX_CONNECTIONS};
pub use snapshot::INTERVAL as SNAPSHOT_INTERVAL;

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::{k8s::SourceStats, services};

/// kube-proxy's default `--metrics-bind-address`.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:10249";

/// Apply durations, with kube-proxy's buckets for sync_proxy_rules_duration_seconds (1 ms
/// doubling, 15 buckets).
pub struct SyncHistogram(pub Histogram);

impl Default for SyncHistogram {
    fn default() -> Self {
        SyncHistogram(Histogram::new(exponential_buckets(0.001, 2.0, 15)))
    }
}

/// From a change reaching the agent to its map entries written: 0.1 ms doubling to 6.5 s
/// (finer than kube-proxy's network_programming_duration_seconds buckets, which start at
/// 0.25 s: a map update takes milliseconds).
pub struct ProgrammingHistogram(pub Histogram);

impl Default for ProgrammingHistogram {
    fn default() -> Self {
        ProgrammingHistogram(Histogram::new(exponential_buckets(0.0001, 2.0, 17)))
    }
}

/// What the agent loop reports for metrics and health.
#[derive(Default)]
pub struct AgentStatus {
    /// Programs loaded and attached.
    pub attached: AtomicBool,
    /// A service source is configured (without one, nothing is to be synced).
    pub has_source: AtomicBool,
    /// A state from the source has been applied at least once.
    pub synced: AtomicBool,
    /// When the agent loop last turned, milliseconds since the Unix epoch.
    pub heartbeat_ms: AtomicU64,
    /// Service ports the last apply could not write (`service: error`), retried with backoff.
    pub failed_services: Mutex<Vec<String>>,
    /// Service ports left out of the last apply because a map would overflow.
    pub over_capacity: AtomicU64,
    /// Deferred cleanups of the last apply that failed (retried).
    pub cleanup_errors: AtomicU64,
    /// Service-port writes that failed, summed over applies.
    pub service_failures: AtomicU64,
    /// Node TCP sockets destroyed because their backend was removed.
    pub sockets_destroyed: AtomicU64,
    pub applies: AtomicU64,
    pub apply_errors: AtomicU64,
    pub last_apply_micros: AtomicU64,
    /// Map entries written and deleted by applies, since start.
    pub entries_written: AtomicU64,
    pub entries_deleted: AtomicU64,
    /// Every apply's duration.
    pub sync_durations: SyncHistogram,
    /// Per state the source delivered: from the agent loop receiving it to its apply done.
    pub programming_durations: ProgrammingHistogram,
    /// When an apply last left nothing undone, milliseconds since the Unix epoch.
    pub last_complete_sync_ms: AtomicU64,
    /// Services (namespace/name) whose frontends or policies changed, and those whose
    /// endpoints changed, between consecutive applied states.
    pub service_changes: AtomicU64,
    pub endpoint_changes: AtomicU64,
}

impl AgentStatus {
    /// The agent loop is turning.
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Relaxed);
    }

    /// Records one apply's duration (and its time, if it left nothing undone).
    pub fn record_apply(&self, took: Duration, complete: bool) {
        self.sync_durations.0.observe(took.as_secs_f64());
        self.last_apply_micros
            .store(took.as_micros() as u64, Relaxed);
        if complete {
            self.last_complete_sync_ms.store(now_ms(), Relaxed);
        }
    }

    /// Records what an apply left undone, for readiness and metrics.
    pub fn record_outcome(&self, outcome: &services::SyncOutcome) {
        self.synced.store(true, Relaxed);
        self.service_failures
            .fetch_add(outcome.failed.len() as u64, Relaxed);
        let skipped: usize = outcome.over_capacity.iter().map(|p| p.skipped.len()).sum();
        self.over_capacity.store(skipped as u64, Relaxed);
        self.cleanup_errors
            .store(outcome.cleanup_errors.len() as u64, Relaxed);
        *self
            .failed_services
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = outcome
            .failed
            .iter()
            .map(|f| format!("{}: {}", f.service, f.error))
            .collect();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Liveness: the loop runs and the datapath is attached.
pub const LIVENESS_PATH: &str = "/healthz";
/// Liveness under kube-proxy's other name.
pub const LIVEZ_PATH: &str = "/livez";
/// Readiness: live, synced at least once, nothing pending.
pub const READINESS_PATH: &str = "/readyz";

/// The agent loop turns every second; this long without a turn means it is stuck.
const STUCK_MS: u64 = 30_000;

pub struct Metrics {
    pub pin_dir: PathBuf,
    pub status: Arc<AgentStatus>,
    pub source: Option<Arc<SourceStats>>,
    pub gc: Arc<crate::conntrack_gc::GcStats>,
}

/// Starts the snapshot thread and the HTTP server on `addr` (threads of their own: nothing a
/// client does reaches the agent's sync loop). Fails if `addr` cannot be bound.
pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let status = metrics.status.clone();
    let shared: server::SharedText = Default::default();
    // The first text before the first request can come.
    match snapshot::render(&metrics) {
        Ok(text) => *shared.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(text),
        Err(e) => log::warn!("metrics snapshot: {e:#}"),
    }
    server::spawn(
        addr,
        server::State {
            status,
            metrics: shared.clone(),
        },
    )?;
    snapshot::spawn(metrics, shared)?;
    log::info!(
        "metrics on http://{addr}/metrics, liveness on {LIVENESS_PATH} and {LIVEZ_PATH}, \
         readiness on {READINESS_PATH}"
    );
    Ok(())
}

/// Live: programs attached and the agent loop turning. Failed applies do not count here.
fn health(status: &AgentStatus) -> (&'static str, String) {
    let since = now_ms().saturating_sub(status.heartbeat_ms.load(Relaxed));
    if !status.attached.load(Relaxed) {
        ("503 Service Unavailable", "datapath not attached\n".into())
    } else if since > STUCK_MS {
        (
            "503 Service Unavailable",
            format!("agent loop stuck for {} s\n", since / 1000),
        )
    } else {
        ("200 OK", "ok\n".into())
    }
}

/// Ready: live, the source's state applied at least once, and nothing of it pending (no
/// service port failed or left out for capacity, no cleanup owed).
fn readiness(status: &AgentStatus) -> (&'static str, String) {
    let live = health(status);
    if !live.0.starts_with("200") {
        return live;
    }
    if status.has_source.load(Relaxed) && !status.synced.load(Relaxed) {
        return (
            "503 Service Unavailable",
            "no state from the service source applied yet\n".into(),
        );
    }
    let failed = status
        .failed_services
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let skipped = status.over_capacity.load(Relaxed);
    let cleanups = status.cleanup_errors.load(Relaxed);
    if failed.is_empty() && skipped == 0 && cleanups == 0 {
        return ("200 OK", "ok\n".into());
    }
    let mut body = String::new();
    for f in &failed {
        let _ = writeln!(body, "not applied: {f}");
    }
    if skipped > 0 {
        let _ = writeln!(body, "{skipped} service port(s) left out: a map is full");
    }
    if cleanups > 0 {
        let _ = writeln!(body, "{cleanups} cleanup(s) pending");
    }
    ("503 Service Unavailable", body)
}
