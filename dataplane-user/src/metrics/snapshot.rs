//! The `/metrics` text, rebuilt every [`INTERVAL`] on a thread of its own (map dumps of
//! SERVICES/BACKENDS/CT can take a while on a big node; a scrape only copies the last text), in
//! the OpenMetrics text format of the `prometheus-client` crate.
//!
//! Names: kube-proxy's where the meaning is the same (`kubeproxy_sync_proxy_rules_*`, so its
//! dashboards and alerts apply), `dataplane_*` for the rest: datapath counters per hook and
//! reason, map fill ratios, the control plane's and the conntrack GC's counters.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use anyhow::Result;
use dataplane_common::{
    ct::CT_MAX_ENTRIES,
    lb::{MAX_BACKEND_SLOTS, MAX_FRONTENDS},
};
use prometheus_client::{
    encoding::{text::encode, EncodeMetric},
    metrics::{counter::Counter, family::Family, gauge::Gauge, TypedMetric},
    registry::Registry,
};

use super::{now_ms, server::SharedText, AgentStatus, Metrics};
use crate::{services, stats};

/// How often the text is rebuilt.
pub const INTERVAL: Duration = Duration::from_secs(2);

type Labels = Vec<(String, String)>;

/// Rebuilds the text every [`INTERVAL`] until the process exits; a failed rebuild keeps the
/// previous text (and is logged once per change of error).
pub fn spawn(metrics: Arc<Metrics>, shared: SharedText) -> Result<()> {
    std::thread::Builder::new()
        .name("metrics-snapshot".into())
        .spawn(move || {
            let mut last_error = String::new();
            loop {
                match render(&metrics) {
                    Ok(text) => {
                        *shared.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(text);
                        last_error.clear();
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        if e != last_error {
                            log::warn!("metrics snapshot (serving the previous one): {e}");
                            last_error = e;
                        }
                    }
                }
                std::thread::sleep(INTERVAL);
            }
        })?;
    Ok(())
}

/// A registry being filled with one snapshot's values.
struct Snapshot(Registry);

impl Snapshot {
    fn gauge(&mut self, name: &str, help: &str, v: i64) {
        let g: Gauge = Gauge::default();
        g.set(v);
        self.0.register(name, help, g);
    }

    fn gauge_f(&mut self, name: &str, help: &str, v: f64) {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(v);
        self.0.register(name, help, g);
    }

    /// A counter; `name` without `_total` (the encoder adds it).
    fn counter(&mut self, name: &str, help: &str, v: u64) {
        let c: Counter = Counter::default();
        c.inc_by(v);
        self.0.register(name, help, c);
    }

    /// Counters read from atomics: (name, help, value) rows, registered in order.
    fn counter_table(&mut self, rows: &[(&str, &str, &AtomicU64)]) {
        for (name, help, v) in rows {
            self.counter(name, help, v.load(Relaxed));
        }
    }

    fn counters(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
        self.family(name, help, rows, |c: &Counter, v| {
            c.inc_by(v);
        });
    }

    fn gauges_f(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, f64)>) {
        self.family(name, help, rows, |g: &Gauge<f64, AtomicU64>, v| {
            g.set(v);
        });
    }

    fn gauges(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, i64)>) {
        self.family(name, help, rows, |g: &Gauge, v| {
            g.set(v);
        });
    }

    /// A family of metrics `M`, one per row's labels, each given its row's value by `set`.
    fn family<M, V>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, V)>,
        set: impl Fn(&M, V),
    ) where
        M: EncodeMetric + TypedMetric + Default + std::fmt::Debug + Send + Sync + 'static,
    {
        let f = Family::<Labels, M>::default();
        for (labels, v) in rows {
            set(&f.get_or_create(&labels), v);
        }
        self.0.register(name, help, f);
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One snapshot of everything, as text.
pub fn render(m: &Metrics) -> Result<String> {
    let mut s = Snapshot(Registry::default());
    datapath(&mut s, m)?;
    maps(&mut s, m)?;
    gc(&mut s, &m.gc);
    agent(&mut s, &m.status);
    source(&mut s, m);
    s.gauge_f(
        "dataplane_metrics_snapshot_timestamp_seconds",
        "When this snapshot was taken (rebuilt every 2 s off the agent's sync loop)",
        now_ms() as f64 / 1e3,
    );
    let mut out = String::new();
    encode(&mut out, &s.0)?;
    Ok(out)
}

/// STATS_V2: packets and bytes per hook and reason, drops per reason.
fn datapath(s: &mut Snapshot, m: &Metrics) -> Result<()> {
    let st = stats::read_pinned(&m.pin_dir)?;
    let hook_reason =
        |r: &stats::StatRow| labels(&[("hook", r.hook.name()), ("reason", r.reason.name())]);
    s.counters(
        "dataplane_packets",
        "Packets per hook and verdict reason",
        st.rows.iter().map(|r| (hook_reason(r), r.packets)),
    );
    s.counters(
        "dataplane_bytes",
        "Bytes per hook and verdict reason",
        st.rows.iter().map(|r| (hook_reason(r), r.bytes)),
    );
    let mut drops = BTreeMap::new();
    for r in st.rows.iter().filter(|r| r.reason.is_drop()) {
        *drops.entry(r.reason.name()).or_insert(0u64) += r.packets;
    }
    s.counters(
        "dataplane_drops",
        "Dropped packets by reason, all hooks",
        drops
            .into_iter()
            .map(|(r, n)| (labels(&[("reason", r)]), n)),
    );
    Ok(())
}

/// Map occupancy and fill ratios, and per-service traffic of the connections tracked now.
fn maps(s: &mut Snapshot, m: &Metrics) -> Result<()> {
    let svcs = services::list_services(&m.pin_dir)?;
    let slots: usize = svcs.iter().map(|s| s.backends.len()).sum();
    let ct = services::list_conntrack(&m.pin_dir)?;
    s.gauge(
        "dataplane_service_frontends",
        "Entries in SERVICES_V2",
        svcs.len() as i64,
    );
    s.gauge(
        "dataplane_backend_slots",
        "Live entries in BACKENDS_V2",
        slots as i64,
    );
    s.gauge(
        "dataplane_conntrack_entries",
        "Entries in CT_V2 (two or four per connection)",
        ct.len() as i64,
    );
    let ct_fill = ct.len() as f64 / CT_MAX_ENTRIES as f64;
    let (addrs_fill, bits_fill) = services::addr_bits::read_fill(&m.pin_dir)?;
    s.gauge_f(
        "dataplane_conntrack_fill_ratio",
        "Entries in CT_V2 over its capacity (the GC warns above 0.9)",
        ct_fill,
    );
    s.gauges_f(
        "dataplane_map_fill_ratio",
        "Entries over capacity, per map",
        [
            ("SERVICES_V2", svcs.len() as f64 / MAX_FRONTENDS as f64),
            ("BACKENDS_V2", slots as f64 / MAX_BACKEND_SLOTS as f64),
            ("CT_V2", ct_fill),
            ("LB_ADDRS_V1", addrs_fill),
            // Set bits over all bits: the pre-filter's false positives grow as its square.
            ("LB_ADDR_BITS_V1", bits_fill),
        ]
        .map(|(map, v)| (labels(&[("map", map)]), v)),
    );
    let mut per_frontend = BTreeMap::<u32, (u64, u64)>::new();
    for row in &ct {
        let e = per_frontend.entry(row.frontend_id).or_default();
        e.0 += row.packets;
        e.1 += row.bytes;
    }
    let rows: Vec<(Labels, (u64, u64))> = svcs
        .iter()
        .map(|svc| {
            let proto = if svc.proto == 6 { "tcp" } else { "udp" };
            let frontend = svc.frontend.to_string();
            let l = labels(&[("frontend", &frontend), ("protocol", proto)]);
            (
                l,
                per_frontend
                    .get(&svc.frontend_id)
                    .copied()
                    .unwrap_or_default(),
            )
        })
        .collect();
    s.gauges(
        "dataplane_service_packets",
        "Packets of the currently tracked connections, per frontend",
        rows.iter().map(|(l, v)| (l.clone(), v.0 as i64)),
    );
    s.gauges(
        "dataplane_service_bytes",
        "Bytes of the currently tracked connections, per frontend",
        rows.iter().map(|(l, v)| (l.clone(), v.1 as i64)),
    );
    Ok(())
}

fn gc(s: &mut Snapshot, gc: &crate::conntrack_gc::GcStats) {
    s.counter_table(&[
        (
            "dataplane_conntrack_gc_runs",
            "Conntrack GC sweeps",
            &gc.runs,
        ),
        (
            "dataplane_conntrack_gc_deleted",
            "CT_V2 entries of timed-out connections removed by the GC",
            &gc.deleted,
        ),
        (
            "dataplane_conntrack_gc_errors",
            "Conntrack GC sweeps that failed",
            &gc.errors,
        ),
    ]);
    s.gauge_f(
        "dataplane_conntrack_gc_interval_seconds",
        "Pause before the next GC sweep (adapts to the table's fill)",
        gc.interval_millis.load(Relaxed) as f64 / 1e3,
    );
}

fn agent(s: &mut Snapshot, st: &AgentStatus) {
    // kube-proxy's: one "sync" is one apply of the control plane's state to the maps.
    s.0.register(
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "Duration of applying the service state to the maps (kube-proxy: of syncProxyRules)",
        st.sync_durations.0.clone(),
    );
    s.0.register(
        "kubeproxy_network_programming_duration_seconds",
        "From a service or endpoint change reaching the agent to the maps holding it",
        st.programming_durations.0.clone(),
    );
    s.gauge_f(
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "When the service state was last applied completely",
        st.last_complete_sync_ms.load(Relaxed) as f64 / 1e3,
    );
    s.counter_table(&[
        (
            "kubeproxy_sync_proxy_rules_service_changes",
            "Services whose frontends or policies changed, summed over applies",
            &st.service_changes,
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Services whose endpoints changed, summed over applies",
            &st.endpoint_changes,
        ),
    ]);
    let failed = st
        .failed_services
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    s.gauge(
        "dataplane_services_failed",
        "Service ports the last apply could not write (kept as before, retried with backoff)",
        failed.len() as i64,
    );
    s.gauges(
        "dataplane_service_failed",
        "1 per service port the last apply could not write",
        failed.iter().map(|f| {
            let name = f.split(": ").next().unwrap_or_default();
            (labels(&[("service", name)]), 1)
        }),
    );
    s.gauge(
        "dataplane_services_over_capacity",
        "Service ports left out of the last apply because SERVICES_V2 or BACKENDS_V2 would overflow",
        st.over_capacity.load(Relaxed) as i64,
    );
    s.counter_table(&[
        (
            "dataplane_service_sync_failures",
            "Service-port writes that failed, summed over applies",
            &st.service_failures,
        ),
        (
            "dataplane_sockets_destroyed",
            "Node TCP sockets destroyed (SOCK_DESTROY) because their backend left the service",
            &st.sockets_destroyed,
        ),
        (
            "dataplane_syncs",
            "Control-plane states applied to the maps",
            &st.applies,
        ),
        (
            "dataplane_sync_errors",
            "Applies that left something undone (those service ports keep their previous state)",
            &st.apply_errors,
        ),
        (
            "dataplane_map_entries_written",
            "Map entries written by syncs",
            &st.entries_written,
        ),
        (
            "dataplane_map_entries_deleted",
            "Map entries deleted by syncs",
            &st.entries_deleted,
        ),
    ]);
    s.gauge_f(
        "dataplane_sync_duration_seconds",
        "Duration of the last apply to the maps",
        st.last_apply_micros.load(Relaxed) as f64 / 1e6,
    );
}

fn source(s: &mut Snapshot, m: &Metrics) {
    let Some(src) = &m.source else {
        return;
    };
    let v = src.snapshot();
    s.gauges(
        "dataplane_source_objects",
        "Objects read by the last sync, by kind",
        [
            ("Service", v.services),
            ("EndpointSlice", v.endpoint_slices),
            ("Node", v.nodes),
        ]
        .map(|(kind, n)| (labels(&[("kind", kind)]), n as i64)),
    );
    s.gauge(
        "dataplane_source_problems",
        "Invalid or unsupported object parts in the last sync",
        v.problems as i64,
    );
    s.counter(
        "dataplane_source_errors",
        "API errors and unparsable manifest files",
        v.errors,
    );
    s.gauge_f(
        "dataplane_source_translate_seconds",
        "Duration of the last translation",
        v.last_sync_micros as f64 / 1e6,
    );
}
