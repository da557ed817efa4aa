//! `/metrics` (Prometheus text format) and `/healthz` on `--metrics-addr`.
//!
//! A deliberately small HTTP/1.1 responder: two fixed paths, one request per connection, no
//! keep-alive. Every scrape reads the pinned maps afresh, so the numbers are the kernel's.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
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
    /// The last apply of a control-plane state failed (the maps keep the previous state).
    pub last_apply_failed: AtomicBool,
    pub applies: AtomicU64,
    pub apply_errors: AtomicU64,
    pub last_apply_micros: AtomicU64,
    /// Map entries written and deleted by applies, since start.
    pub entries_written: AtomicU64,
    pub entries_deleted: AtomicU64,
}

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
    log::info!("metrics on http://{addr}/metrics, health on /healthz");
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
                "/healthz" => health(&metrics.status),
                _ => ("404 Not Found", "try /metrics or /healthz\n".into()),
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

/// Healthy: programs attached and the last control-plane state applied.
fn health(status: &AgentStatus) -> (&'static str, String) {
    if !status.attached.load(Relaxed) {
        ("503 Service Unavailable", "datapath not attached\n".into())
    } else if status.last_apply_failed.load(Relaxed) {
        (
            "503 Service Unavailable",
            "last sync failed; datapath keeps its previous state\n".into(),
        )
    } else {
        ("200 OK", "ok\n".into())
    }
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
    counter(
        out,
        "dataplane_syncs_total",
        "Control-plane states applied to the maps.",
        s.applies.load(Relaxed),
    );
    counter(
        out,
        "dataplane_sync_errors_total",
        "Applies that failed (previous state kept).",
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
