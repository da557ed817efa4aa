//! `/metrics` (Prometheus text format), `/healthz` (liveness) and `/readyz` (readiness) on
//! `--metrics-addr`.
//!
//! Liveness and readiness differ as kubelet probes need them to: a service the agent cannot
//! write is a readiness problem (the node is not fully programmed), never a liveness one —
//! restarting the agent would not fix a full map, and the datapath keeps serving meanwhile.
//!
//! A deliberately small HTTP/1.1 responder: three fixed paths, one request per connection, no
//! keep-alive. Every scrape reads the pinned maps afresh, so the numbers are the kernel's.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{k8s::SourceStats, services, stats};

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
}

impl AgentStatus {
    /// The agent loop is turning.
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Relaxed);
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

/// Serves until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    log::info!("metrics on http://{addr}/metrics, liveness on /healthz, readiness on /readyz");
    loop {
        let (mut stream, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => match render(&metrics) {
                    Ok(text) => ("200 OK", text),
                    Err(e) => ("500 Internal Server Error", format!("{e:#}\n")),
                },
                LIVENESS_PATH => health(&metrics.status),
                READINESS_PATH => readiness(&metrics.status),
                _ => (
                    "404 Not Found",
                    "try /metrics, /healthz or /readyz\n".into(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
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

fn render(m: &Metrics) -> Result<String> {
    let mut out = String::new();
    let st = stats::read_pinned(&m.pin_dir)?;
    metric(
        &mut out,
        "dataplane_packets_total",
        "counter",
        "Packets per hook and verdict reason.",
    );
    for r in &st.rows {
        let _ = writeln!(
            out,
            "dataplane_packets_total{{hook=\"{}\",reason=\"{}\"}} {}",
            r.hook.name(),
            r.reason.name(),
            r.packets
        );
    }
    metric(
        &mut out,
        "dataplane_bytes_total",
        "counter",
        "Bytes per hook and verdict reason.",
    );
    for r in &st.rows {
        let _ = writeln!(
            out,
            "dataplane_bytes_total{{hook=\"{}\",reason=\"{}\"}} {}",
            r.hook.name(),
            r.reason.name(),
            r.bytes
        );
    }
    metric(
        &mut out,
        "dataplane_drops_total",
        "counter",
        "Dropped packets by reason, all hooks.",
    );
    let mut drops = std::collections::BTreeMap::new();
    for r in st.rows.iter().filter(|r| r.reason.is_drop()) {
        *drops.entry(r.reason.name()).or_insert(0u64) += r.packets;
    }
    for (reason, n) in drops {
        let _ = writeln!(out, "dataplane_drops_total{{reason=\"{reason}\"}} {n}");
    }
    render_maps(&mut out, m)?;
    render_agent(&mut out, &m.status);
    if let Some(src) = &m.source {
        let s = src.snapshot();
        metric(
            &mut out,
            "dataplane_source_objects",
            "gauge",
            "Objects read by the last sync, by kind.",
        );
        for (kind, n) in [
            ("Service", s.services),
            ("EndpointSlice", s.endpoint_slices),
            ("Node", s.nodes),
        ] {
            let _ = writeln!(out, "dataplane_source_objects{{kind=\"{kind}\"}} {n}");
        }
        gauge(
            &mut out,
            "dataplane_source_problems",
            "Invalid or unsupported object parts in the last sync.",
            s.problems,
        );
        counter(
            &mut out,
            "dataplane_source_errors_total",
            "API errors and unparsable manifest files.",
            s.errors,
        );
        let secs = s.last_sync_micros as f64 / 1e6;
        metric(
            &mut out,
            "dataplane_source_translate_seconds",
            "gauge",
            "Duration of the last translation.",
        );
        let _ = writeln!(out, "dataplane_source_translate_seconds {secs}");
    }
    Ok(out)
}

/// Map occupancy and per-service traffic of the connections currently tracked.
fn render_maps(out: &mut String, m: &Metrics) -> Result<()> {
    let svcs = services::list_services(&m.pin_dir)?;
    gauge(
        out,
        "dataplane_service_frontends",
        "Entries in SERVICES_V1.",
        svcs.len() as u64,
    );
    let slots: usize = svcs.iter().map(|s| s.backends.len()).sum();
    gauge(
        out,
        "dataplane_backend_slots",
        "Live entries in BACKENDS_V1.",
        slots as u64,
    );
    let ct = services::list_conntrack(&m.pin_dir)?;
    gauge(
        out,
        "dataplane_conntrack_entries",
        "Entries in CT_V2 (two or four per connection).",
        ct.len() as u64,
    );
    metric(
        out,
        "dataplane_conntrack_fill_ratio",
        "gauge",
        "Entries in CT_V2 over its capacity (the GC warns above 0.9).",
    );
    let _ = writeln!(
        out,
        "dataplane_conntrack_fill_ratio {}",
        ct.len() as f64 / dataplane_common::ct::CT_MAX_ENTRIES as f64
    );
    render_gc(out, &m.gc);
    let mut per_frontend = std::collections::BTreeMap::<u32, (u64, u64)>::new();
    for row in &ct {
        let e = per_frontend.entry(row.frontend_id).or_default();
        e.0 += row.packets;
        e.1 += row.bytes;
    }
    metric(
        out,
        "dataplane_service_packets",
        "gauge",
        "Packets of the currently tracked connections, per frontend.",
    );
    let mut bytes_lines = String::new();
    for s in &svcs {
        let (p, b) = per_frontend
            .get(&s.frontend_id)
            .copied()
            .unwrap_or_default();
        let proto = if s.proto == 6 { "tcp" } else { "udp" };
        let _ = writeln!(
            out,
            "dataplane_service_packets{{frontend=\"{}\",protocol=\"{proto}\"}} {p}",
            s.frontend
        );
        let _ = writeln!(
            bytes_lines,
            "dataplane_service_bytes{{frontend=\"{}\",protocol=\"{proto}\"}} {b}",
            s.frontend
        );
    }
    metric(
        out,
        "dataplane_service_bytes",
        "gauge",
        "Bytes of the currently tracked connections, per frontend.",
    );
    out.push_str(&bytes_lines);
    Ok(())
}

fn render_gc(out: &mut String, gc: &crate::conntrack_gc::GcStats) {
    counter(
        out,
        "dataplane_conntrack_gc_runs_total",
        "Conntrack GC sweeps.",
        gc.runs.load(Relaxed),
    );
    counter(
        out,
        "dataplane_conntrack_gc_deleted_total",
        "CT_V2 entries of timed-out connections removed by the GC.",
        gc.deleted.load(Relaxed),
    );
    counter(
        out,
        "dataplane_conntrack_gc_errors_total",
        "Conntrack GC sweeps that failed.",
        gc.errors.load(Relaxed),
    );
    metric(
        out,
        "dataplane_conntrack_gc_interval_seconds",
        "gauge",
        "Pause before the next GC sweep (adapts to the table's fill).",
    );
    let _ = writeln!(
        out,
        "dataplane_conntrack_gc_interval_seconds {}",
        gc.interval_millis.load(Relaxed) as f64 / 1e3
    );
}

fn render_agent(out: &mut String, s: &AgentStatus) {
    let failed = s
        .failed_services
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    gauge(
        out,
        "dataplane_services_failed",
        "Service ports the last apply could not write (kept as before, retried with backoff).",
        failed.len() as u64,
    );
    metric(
        out,
        "dataplane_service_failed",
        "gauge",
        "1 per service port the last apply could not write.",
    );
    for f in &failed {
        let name = f.split(": ").next().unwrap_or_default();
        let _ = writeln!(
            out,
            "dataplane_service_failed{{service=\"{}\"}} 1",
            name.replace('\\', "\\\\").replace('"', "\\\"")
        );
    }
    gauge(
        out,
        "dataplane_services_over_capacity",
        "Service ports left out of the last apply because SERVICES_V1 or BACKENDS_V1 would overflow.",
        s.over_capacity.load(Relaxed),
    );
    counter(
        out,
        "dataplane_service_sync_failures_total",
        "Service-port writes that failed, summed over applies.",
        s.service_failures.load(Relaxed),
    );
    counter(
        out,
        "dataplane_sockets_destroyed_total",
        "Node TCP sockets destroyed (SOCK_DESTROY) because their backend left the service.",
        s.sockets_destroyed.load(Relaxed),
    );
    counter(
        out,
        "dataplane_syncs_total",
        "Control-plane states applied to the maps.",
        s.applies.load(Relaxed),
    );
    counter(
        out,
        "dataplane_sync_errors_total",
        "Applies that left something undone (those service ports keep their previous state).",
        s.apply_errors.load(Relaxed),
    );
    counter(
        out,
        "dataplane_map_entries_written_total",
        "Map entries written by syncs.",
        s.entries_written.load(Relaxed),
    );
    counter(
        out,
        "dataplane_map_entries_deleted_total",
        "Map entries deleted by syncs.",
        s.entries_deleted.load(Relaxed),
    );
    metric(
        out,
        "dataplane_sync_duration_seconds",
        "gauge",
        "Duration of the last apply to the maps.",
    );
    let _ = writeln!(
        out,
        "dataplane_sync_duration_seconds {}",
        s.last_apply_micros.load(Relaxed) as f64 / 1e6
    );
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    metric(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    metric(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}
