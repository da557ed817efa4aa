//! `dataplane run`: load and attach the datapath, then keep its maps in sync with the cluster
//! until SIGINT/SIGTERM.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    health::{HealthState, ServiceHealthServers},
    k8s::{self, LocalNode, Source, SourceStats},
    loader,
    metrics::{self, AgentStatus, Metrics},
    model::{Backend, ClusterState, Frontend, ServicePort, TrafficPolicy},
    services::{LocalContext, ServiceDelta, ServiceNames, ServiceTable, SourceRanges},
    sockdiag::SockDestroyer,
    tasks::AbortOnDrop,
};

/// First and longest wait before re-applying a state some service ports of which failed
/// (doubling in between; a new state from the source is applied at once regardless).
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How often the node's addresses are re-read, so NodePorts follow them.
const ADDRESS_POLL: Duration = Duration::from_secs(1);

/// Everything `dataplane run` was told on its command line.
pub struct AgentConfig {
    pub node_name: String,
    pub pin_dir: PathBuf,
    pub attach: loader::AttachConfig,
    pub masquerade_ip: Option<Ipv4Addr>,
    /// Conntrack timeouts given on the command line (others: the pinned config's, or defaults).
    pub timeouts: TimeoutOverrides,
    /// First pause of the conntrack GC.
    pub gc_interval: std::time::Duration,
    /// Where services come from; None: the maps are managed by someone else (tests, tools).
    pub source: Option<Source>,
    pub metrics_addr: Option<SocketAddr>,
    /// `--nodeport-addresses`.
    pub nodeport_addresses: k8s::NodePortAddresses,
    /// `--healthz-bind-address`: kube-proxy's node health server; None disables it.
    pub healthz_addr: Option<SocketAddr>,
    /// `--lb-source-ranges-node-ports`: loadBalancerSourceRanges restrict NodePorts too.
    pub source_ranges_on_node_ports: bool,
    /// Tunnel settings (`--overlay` and friends).
    pub overlay: crate::overlay::OverlaySettings,
    /// `--service-cluster-ip-range`: no Node's pod CIDR may overlap these.
    pub service_cidrs: Vec<crate::overlay::Cidr>,
}

/// Conntrack timeouts in seconds (`--conntrack-*` flags).
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeoutOverrides {
    pub tcp_established: Option<u32>,
    pub tcp_close_wait: Option<u32>,
    pub tcp_closed: Option<u32>,
    pub udp: Option<u32>,
}

impl TimeoutOverrides {
    fn apply(&self, c: &mut dataplane_common::ct::Config) {
        let set = |field: &mut u32, v: Option<u32>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut c.timeout_tcp_established, self.tcp_established);
        set(&mut c.timeout_tcp_half_closed, self.tcp_close_wait);
        set(&mut c.timeout_tcp_closed, self.tcp_closed);
        set(&mut c.timeout_udp, self.udp);
    }
}

pub fn run(cfg: AgentConfig) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cfg))
}

async fn run_async(cfg: AgentConfig) -> Result<()> {
    // Register the handlers before attaching so a signal during startup is not lost.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let status = Arc::new(AgentStatus::default());
    status.has_source.store(cfg.source.is_some(), Relaxed);
    status.beat();
    let mut datapath = load_and_attach(&cfg)?;
    status.attached.store(true, Relaxed);

    let source_stats = Arc::new(SourceStats::default());
    let gc_stats = Arc::new(crate::conntrack_gc::GcStats::default());
    let _gc = AbortOnDrop(tokio::spawn(crate::conntrack_gc::run(
        cfg.pin_dir.clone(),
        cfg.gc_interval,
        gc_stats.clone(),
    )));
    if let Some(addr) = cfg.metrics_addr {
        let m = Arc::new(Metrics {
            pin_dir: cfg.pin_dir.clone(),
            status: status.clone(),
            source: cfg.source.as_ref().map(|_| source_stats.clone()),
            gc: gc_stats.clone(),
        });
        // Like kube-proxy: a metrics address that cannot be bound is logged, not fatal.
        if let Err(e) = metrics::start(addr, m) {
            log::error!("metrics endpoint: {e:#}");
        }
    }
    let health = Arc::new(HealthState::default());
    let _node_health = cfg.healthz_addr.map(|addr| {
        let health = health.clone();
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = crate::health::serve_node_health(addr, health).await {
                log::error!("node health server: {e:#}");
            }
        }))
    });
    let mut service_health = ServiceHealthServers::new(health.clone());
    let mut states = match &cfg.source {
        Some(source) => {
            let local =
                LocalNode::detect_with(cfg.node_name.clone(), cfg.nodeport_addresses.clone())
                    .context("listing this node's addresses")?;
            log::info!(
                "service source {source:?}; node addresses {:?}, NodePorts on {:?}",
                local.addresses,
                cfg.nodeport_addresses
            );
            let local = local.follow(ADDRESS_POLL);
            Some(k8s::start_following(source.clone(), local, source_stats).await?)
        }
        None => None,
    };
    let mut table = ServiceTable::from_ebpf(
        &datapath.ebpf,
        LocalContext {
            node_name: cfg.node_name.clone(),
            source_ranges_on_node_ports: cfg.source_ranges_on_node_ports,
        },
    )?;
    let mut ranges = SourceRanges::open(&datapath.ebpf)?;
    let mut names = ServiceNames::open_or_create(&cfg.pin_dir)?;
    enable_pod_filter(&mut table, &datapath.ebpf)?;
    let mut overlay = crate::overlay::OverlayTable::from_ebpf(&datapath.ebpf)?;
    overlay.set_service_cidrs(cfg.service_cidrs.clone());
    // Only sockets the cgroup hooks connected can need destroying.
    let destroyer = match cfg.attach.cgroup {
        Some(_) => Some(SockDestroyer::open(&datapath.ebpf)?),
        None => None,
    };
    log::info!(
        "node {}: datapath attached (uplink {}, {} pod interfaces), maps pinned in {}",
        cfg.node_name,
        cfg.attach.uplink,
        cfg.attach.pod_ifaces.len(),
        cfg.pin_dir.display()
    );
    // Tests and scripts wait for this line on stdout.
    println!("ready");
    let mut pod_poll = tokio::time::interval(Duration::from_secs(1));
    // Liveness: /healthz fails when this loop stops turning.
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    let mut last_state: Option<Arc<ClusterState>> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut backoff = RETRY_MIN;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => status.beat(),
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                if let Some(state) = last_state.clone() {
                    let complete = apply(&mut table, &mut ranges, &mut names, Some(&state), &state, &status, destroyer.as_ref());
                    report_health(&health, &mut service_health, &state, complete, &cfg.node_name);
                    schedule_retry(complete, &mut retry_at, &mut backoff);
                }
            }
            _ = pod_poll.tick(), if !cfg.attach.pod_iface_prefixes.is_empty() => {
                match cfg.attach.current_pod_ifaces().and_then(|ifaces| datapath.sync_pod_ifaces(&ifaces)) {
                    Ok(added) if !added.is_empty() => log::info!("attached to new pod devices {added:?}"),
                    Ok(_) => {}
                    Err(e) => log::warn!("watching pod devices: {e:#}"),
                }
            }
            _ = term.recv() => { log::info!("SIGTERM: detaching"); break; }
            _ = int.recv() => { log::info!("SIGINT: detaching"); break; }
            changed = changed(&mut states) => {
                if changed.is_err() {
                    log::error!("the service source stopped; keeping the current maps");
                    states = None;
                    continue;
                }
                // The source's watch channel holds the newest state only: it reached us now.
                let received = Instant::now();
                let state = states.as_mut().map(|rx| rx.borrow_and_update().clone()).unwrap_or_default();
                health.queued(std::time::Instant::now());
                let complete = apply(&mut table, &mut ranges, &mut names, last_state.as_deref(), &state, &status, destroyer.as_ref());
                status.programming_durations.0.observe(received.elapsed().as_secs_f64());
                report_health(&health, &mut service_health, &state, complete, &cfg.node_name);
                schedule_retry(complete, &mut retry_at, &mut backoff);
                last_state = Some(state.clone());
                if state.nodes.iter().any(|n| n.name == cfg.node_name) {
                    if let Err(e) = overlay.sync(&state.nodes, &cfg.node_name) {
                        log::error!("applying the overlay failed, keeping the previous state: {e:#}");
                    }
                }
            }
        }
    }
    drop(table);
    drop(overlay);
    drop(datapath.ebpf);
    log::info!(
        "programs detached; maps stay pinned in {}",
        cfg.pin_dir.display()
    );
    Ok(())
}

fn load_and_attach(cfg: &AgentConfig) -> Result<loader::Datapath> {
    let mut attach = cfg.attach.clone();
    attach.xdp_mode = attach.xdp_mode.resolve(
        &attach.uplink,
        cfg.overlay.mode != crate::overlay::OverlayMode::None,
    );
    let mut datapath = loader::load_for(
        &cfg.pin_dir,
        attach.xdp_mode != loader::XdpAttachMode::Off,
        attach.xdp_mode.forwards(&attach.uplink),
    )?;
    let masq = match cfg.masquerade_ip {
        Some(ip) => ip,
        None => crate::host::netdev::first_ipv4(&cfg.attach.uplink)?,
    };
    let mut config = dataplane_common::ct::Config::with_masq_addr(u32::from(masq).to_be());
    // Keep timeouts an operator (or a test) set on the pinned config across restarts.
    if let Ok(old) = crate::maps::read_config(&cfg.pin_dir) {
        if old.timeout_tcp_established != 0 {
            config = dataplane_common::ct::Config {
                masq_addr: config.masq_addr,
                netns_cookie: 0,
                ..old
            };
        }
    }
    cfg.timeouts.apply(&mut config);
    // The bitmap is trusted again only once this agent's ServiceTable made it cover
    // LB_ADDRS_V1 (enable_pod_filter): a new object's bitmap starts empty, and another writer
    // may have listed addresses without their bits. Until then the hash lookup decides.
    config.flags &= !dataplane_common::config::CFG_F_ADDR_BITS;
    if cfg.attach.cgroup.is_some() {
        config.netns_cookie = crate::host::netns::cookie()?;
    }
    crate::maps::write_config(&datapath.ebpf, &config)?;
    let overlay = cfg
        .overlay
        .to_config()
        .context("reading the uplink's settings for the overlay")?;
    crate::maps::write_overlay_config(&datapath.ebpf, &overlay)?;
    if cfg.overlay.mode != crate::overlay::OverlayMode::None {
        log::info!(
            "overlay {:?} from {} (VTEP MAC = {}'s)",
            cfg.overlay.mode,
            cfg.overlay.tunnel_ip,
            cfg.attach.uplink
        );
    }
    datapath.attach(&attach).context("attaching programs")?;
    Ok(datapath)
}

/// Lists the node's own addresses in LB_ADDRS_V1 and then turns the pod hooks' pre-filter on
/// (`CFG_F_POD_FILTER`): from then on pod packets whose addresses are no service's, backend's or
/// the node's skip the conntrack and service lookups. ServiceTable keeps the service part, and
/// the bitmap over it (LB_ADDR_BITS_V1, filled in for adopted addresses when it opened the
/// maps): `CFG_F_ADDR_BITS` lets the hooks trust the bitmap's clear bits.
/// Addresses the node gains later are not added (the filter then sends their replies the full
/// way only if they are also a service's): a restart picks them up.
fn enable_pod_filter(table: &mut ServiceTable, ebpf: &aya::Ebpf) -> Result<()> {
    let addrs: Vec<u32> = crate::host::netdev::local_ipv4s()?
        .into_iter()
        .map(|a| u32::from(a).to_be())
        .collect();
    enable_pod_filter_for(table, ebpf, &addrs)
}

/// [`enable_pod_filter`] with the node's addresses given (network byte order; the masquerade
/// address is added): for tools that run the datapath in a namespace of their own (the bench).
pub fn enable_pod_filter_for(
    table: &mut ServiceTable,
    ebpf: &aya::Ebpf,
    node_addrs: &[u32],
) -> Result<()> {
    let mut config = crate::maps::read_config(ebpf)?;
    let mut addrs = node_addrs.to_vec();
    addrs.push(config.masq_addr);
    table
        .set_node_addrs(&addrs)
        .context("listing the node's addresses in LB_ADDRS_V1")?;
    config.flags |=
        dataplane_common::ct::CFG_F_POD_FILTER | dataplane_common::config::CFG_F_ADDR_BITS;
    crate::maps::write_config(ebpf, &config)
}

/// After an apply: the health servers answer from the state (a complete apply also clears the
/// pending mark kube-proxy's health check times), and health-check ports open or close.
fn report_health(
    health: &HealthState,
    servers: &mut ServiceHealthServers,
    state: &ClusterState,
    complete: bool,
    node_name: &str,
) {
    if complete {
        health.updated(&state.services[..], state.node_deleting, node_name);
    } else {
        health.observe(&state.services[..], state.node_deleting, node_name);
    }
    servers.sync(&state.services[..]);
}

/// Waits for the next state; pends forever without a source.
async fn changed(
    states: &mut Option<tokio::sync::watch::Receiver<Arc<ClusterState>>>,
) -> Result<()> {
    match states {
        Some(rx) => rx.changed().await.map_err(Into::into),
        None => std::future::pending().await,
    }
}

/// After an apply: a complete one resets the backoff; an incomplete one schedules a retry.
fn schedule_retry(
    complete: bool,
    retry_at: &mut Option<tokio::time::Instant>,
    backoff: &mut Duration,
) {
    if complete {
        *retry_at = None;
        *backoff = RETRY_MIN;
    } else {
        *retry_at = Some(tokio::time::Instant::now() + *backoff);
        *backoff = (*backoff * 2).min(RETRY_MAX);
    }
}

/// Applies one state, service port by service port: one that fails (or does not fit in the
/// maps) keeps its previous state and is logged by name, every other one is applied. Returns
/// whether everything was applied (if not, the caller retries with backoff). Then destroys the
/// node's TCP sockets that socket-level balancing connected to backends that are gone.
///
/// `previous` is the state the last call applied (None at start, and for a retry, which diffs
/// everything again): only the service ports that differ from it are planned and written, so
/// one changed endpoint costs O(changed ports), not O(all) (`ServiceTable::sync_delta`).
/// Public for the benchmark, which times this path.
pub fn apply(
    table: &mut ServiceTable,
    ranges: &mut SourceRanges,
    names: &mut ServiceNames,
    previous: Option<&ClusterState>,
    state: &ClusterState,
    status: &AgentStatus,
    destroyer: Option<&SockDestroyer>,
) -> bool {
    let started = Instant::now();
    status.applies.fetch_add(1, Relaxed);
    let services = &state.services[..];
    let delta = previous.map(|p| ServiceDelta::of(&p.services, &state.services));
    let outcome = match &delta {
        Some(delta) => table.sync_delta(services, delta),
        None => table.sync_report(services),
    };
    let report = &outcome.report;
    status
        .entries_written
        .fetch_add(report.written() as u64, Relaxed);
    status
        .entries_deleted
        .fetch_add(report.deleted() as u64, Relaxed);
    if !report.is_empty() {
        log::info!("applied {} service ports: {report}", services.len());
    }
    for f in &outcome.failed {
        log::error!(
            "service {} not applied (keeps its previous state; retrying): {}",
            f.service,
            f.error
        );
    }
    for p in &outcome.over_capacity {
        log::error!("{p}; every service port that fits is applied");
    }
    for e in &outcome.cleanup_errors {
        log::warn!("{e}");
    }
    let ranges_ok = match ranges.sync(services, table) {
        Ok((0, 0)) => true,
        Ok((added, removed)) => {
            log::info!("source ranges: {added} added, {removed} removed");
            true
        }
        Err(e) => {
            log::error!("source ranges not fully applied (retrying): {e:#}");
            false
        }
    };
    // Names only label what tools show: a failure is logged and retried with the next apply,
    // it does not hold readiness back.
    let named = match &delta {
        Some(delta) => names.sync_delta(services, delta),
        None => names.sync(services),
    };
    if let Err(e) = named {
        log::error!("service names not fully written: {e:#}");
    }
    let complete = outcome.is_complete() && ranges_ok;
    if !complete {
        status.apply_errors.fetch_add(1, Relaxed);
    }
    let (services, endpoints) = match &delta {
        Some(delta) => changes(delta),
        None => changes(&ServiceDelta::between(&[], services)),
    };
    status.service_changes.fetch_add(services, Relaxed);
    status.endpoint_changes.fetch_add(endpoints, Relaxed);
    status.record_outcome(&outcome);
    if let (Some(d), false) = (destroyer, outcome.removed_backends.is_empty()) {
        match d.destroy(&outcome.removed_backends) {
            Ok(0) => {}
            Ok(n) => {
                status.sockets_destroyed.fetch_add(n as u64, Relaxed);
                log::info!("destroyed {n} node TCP sockets connected to removed backends");
            }
            Err(e) => log::warn!("destroying sockets of removed backends: {e:#}"),
        }
    }
    status.record_apply(started.elapsed(), complete);
    complete
}

/// Services (namespace/name) whose frontends, policies or affinity differ between the two
/// states of `delta` (added and removed ones included), and those whose backends differ:
/// kube-proxy's service and endpoint change counts. Only the changed ports are looked at: a
/// service's unchanged ports are equal on both sides.
fn changes(delta: &ServiceDelta) -> (u64, u64) {
    type Side<'a> = Vec<&'a ServicePort>;
    let mut by_service: BTreeMap<(&str, &str), (Side<'_>, Side<'_>)> = BTreeMap::new();
    for (before, after) in &delta.changes {
        let name = &before.or(*after).expect("a change has a side").name;
        let e = by_service
            .entry((name.namespace.as_str(), name.name.as_str()))
            .or_default();
        e.0.extend(before);
        e.1.extend(after);
    }
    type FrontendParts<'a> = (
        &'a str,
        &'a [Frontend],
        TrafficPolicy,
        TrafficPolicy,
        Option<u32>,
    );
    fn frontends<'a>(p: &&'a ServicePort) -> FrontendParts<'a> {
        (
            &p.name.port,
            &p.frontends,
            p.external_policy,
            p.internal_policy,
            p.affinity_timeout_secs,
        )
    }
    fn backends<'a>(p: &&'a ServicePort) -> (&'a str, &'a [Backend]) {
        (&p.name.port, &p.backends)
    }
    let (mut services, mut endpoints) = (0, 0);
    for (old, new) in by_service.values() {
        if old.iter().map(frontends).ne(new.iter().map(frontends)) {
            services += 1;
        }
        if old.iter().map(backends).ne(new.iter().map(backends)) {
            endpoints += 1;
        }
    }
    (services, endpoints)
}
