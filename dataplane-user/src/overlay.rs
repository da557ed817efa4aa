//! The overlay's control side: this node's tunnel settings (`OVERLAY_CONFIG_V1`), the typed
//! [`OverlayTable`] over the pod-CIDR routes (`OVERLAY_ROUTES_V1`) and the known nodes
//! (`OVERLAY_PEERS_V1`), and the kernel routes that lead the node's traffic to the datapath.
//!
//! # What replaces flannel.1 / tunl0
//! flannel and calico route remote pod CIDRs into a tunnel device
//! (`10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink`, `... via 192.168.100.112 dev tunl0
//! onlink`), whose MTU makes the kernel send ICMP fragmentation needed and clamp TCP's MSS, and
//! whose address is the source of the node's own traffic to pods elsewhere. Without devices,
//! [`OverlayTable::sync`] installs, per remote CIDR,
//!
//! ```text
//! <cidr> via <cidr address> dev <uplink> onlink src <overlay address> mtu <uplink MTU - overhead> proto 73
//! neigh <cidr address> lladdr 02:6f:76:6c:00:00 dev <uplink> nud permanent
//! ```
//!
//! so the kernel treats the traffic exactly as it would for the device (TTL, PMTU, ICMP
//! fragmentation needed with MTU 1450 for VXLAN / 1480 for IPIP, MSS), and the datapath
//! encapsulates it at tc egress of the uplink. The next-hop MAC is a placeholder no host owns:
//! a frame that left unencapsulated would reach nobody. The overlay address is this node's
//! flannel.1 address (the first address of its pod CIDR, `10.244.1.0`) or calico's tunnel
//! address (`projectcalico.org/IPv4IPIPTunnelAddr`), put on `lo` with the label `lo:overlay`:
//! remote pods see the node's traffic from it and answer through the tunnel.
//!
//! Kernel state is written with `ip` (iproute2) in the calling thread's network namespace, which
//! must be the agent's ([`OverlayTable::sync`] checks the namespace cookie the agent recorded).
//!
//! # One writer
//! Like the service maps: one table at a time writes a set of maps. Opening a table adopts what
//! the maps hold; [`OverlayTable::sync`] makes them (and the kernel routes) hold exactly the
//! desired state, touching only what changed.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    io::Write as _,
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData},
    Ebpf,
};
use dataplane_common::{
    map_names,
    overlay::{
        OverlayConfig, OverlayPeer, OverlayRoute, DEFAULT_VXLAN_PORT, DEFAULT_VXLAN_VNI, MODE_IPIP,
        MODE_NONE, MODE_VXLAN, OVL_F_UDP_CSUM, ROUTE_F_LOCAL, ROUTE_F_NO_ENCAP,
    },
};

use crate::{
    k8s::{Problem, ProblemLog},
    model::NodeInfo,
    node_validation::{self, Reserved},
};

/// `proto` of the kernel routes the overlay installs (how `sync` finds its own routes again).
pub const ROUTE_PROTO: u8 = 73;
/// MAC of the placeholder next hop of overlay routes (locally administered, owned by nobody).
pub const NEXTHOP_MAC: [u8; 6] = [0x02, 0x6f, 0x76, 0x6c, 0x00, 0x00];
/// Label of the overlay address on `lo`.
pub const ADDRESS_LABEL: &str = "lo:overlay";

/// `dataplane run --overlay`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OverlayMode {
    /// Direct routing: no encapsulation (the underlay routes pod CIDRs).
    #[default]
    None,
    /// VXLAN, wire-compatible with flannel's vxlan backend (flannel.1).
    Vxlan,
    /// IPv4-in-IPv4, wire-compatible with calico's IPIP (tunl0).
    Ipip,
}

impl OverlayMode {
    pub const fn code(self) -> u32 {
        match self {
            OverlayMode::None => MODE_NONE,
            OverlayMode::Vxlan => MODE_VXLAN,
            OverlayMode::Ipip => MODE_IPIP,
        }
    }

    pub const fn from_code(code: u32) -> Option<OverlayMode> {
        match code {
            MODE_NONE => Some(OverlayMode::None),
            MODE_VXLAN => Some(OverlayMode::Vxlan),
            MODE_IPIP => Some(OverlayMode::Ipip),
            _ => None,
        }
    }
}

/// What `dataplane run` is told about the overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlaySettings {
    pub mode: OverlayMode,
    /// Outer source address (default: the uplink's first IPv4 address).
    pub tunnel_ip: Ipv4Addr,
    pub vni: u32,
    pub vxlan_port: u16,
    /// Outer UDP checksum like the kernel's default (`udpcsum`).
    pub udp_checksum: bool,
    /// The underlay interface (its MAC is the VTEP MAC).
    pub uplink: String,
}

impl OverlaySettings {
    /// flannel's defaults on `uplink`.
    pub fn new(mode: OverlayMode, uplink: &str, tunnel_ip: Ipv4Addr) -> Self {
        OverlaySettings {
            mode,
            tunnel_ip,
            vni: DEFAULT_VXLAN_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            udp_checksum: true,
            uplink: uplink.to_string(),
        }
    }

    /// The `OVERLAY_CONFIG_V1` value, with what the kernel knows about the uplink and the
    /// calling thread's network namespace (the agent's): ifindex, MAC (the VTEP MAC), local
    /// port range (outer UDP source ports) and default TTL.
    pub fn to_config(&self) -> Result<OverlayConfig> {
        if self.vni >= 1 << 24 {
            bail!("VXLAN VNI {} does not fit 24 bits", self.vni);
        }
        let mut cfg = OverlayConfig::none();
        cfg.mode = self.mode.code();
        cfg.tunnel_addr = u32::from(self.tunnel_ip).to_be();
        cfg.vni = self.vni;
        cfg.vxlan_port = self.vxlan_port.to_be();
        cfg.flags = if self.udp_checksum { OVL_F_UDP_CSUM } else { 0 };
        cfg.uplink_ifindex = netdev::index(&self.uplink)?;
        cfg.vtep_mac = netdev::mac(&self.uplink)?;
        let (min, max) = local_port_range()?;
        (cfg.src_port_min, cfg.src_port_max) = (min, max);
        cfg.vxlan_ttl = read_sysctl("net/ipv4/ip_default_ttl")?
            .parse()
            .context("ip_default_ttl")?;
        cfg.netns_cookie = crate::loader::netns_cookie()?;
        Ok(cfg)
    }
}

fn read_sysctl(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{key}");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_string())
}

/// `net.ipv4.ip_local_port_range` of this network namespace (what `udp_flow_src_port` uses).
fn local_port_range() -> Result<(u16, u16)> {
    let text = read_sysctl("net/ipv4/ip_local_port_range")?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(min)), Some(Ok(max))) => Ok((min, max)),
        _ => bail!("ip_local_port_range {text:?} is not two ports"),
    }
}

/// Where the overlay maps are: a pin directory or a loaded object.
pub enum Maps<'a> {
    Pinned(&'a Path),
    Object(&'a Ebpf),
}

impl Maps<'_> {
    fn open(&self, name: &str) -> Result<Map> {
        let data = match self {
            Maps::Pinned(dir) => {
                let path = dir.join(name);
                MapData::from_pin(&path).with_context(|| {
                    format!(
                        "opening {} (is the datapath loaded with this pin dir?)",
                        path.display()
                    )
                })?
            }
            Maps::Object(ebpf) => {
                let map = ebpf
                    .map(name)
                    .ok_or_else(|| anyhow!("map {name} is not in the eBPF object"))?;
                let data = match map {
                    Map::HashMap(d) | Map::Array(d) | Map::LpmTrie(d) | Map::PerCpuArray(d) => d,
                    _ => bail!("map {name} has a type the overlay does not use"),
                };
                // A descriptor of our own: the table does not borrow the object.
                let fd = data
                    .fd()
                    .as_fd()
                    .try_clone_to_owned()
                    .with_context(|| format!("dup of {name}"))?;
                MapData::from_fd(fd).with_context(|| format!("reopening {name}"))?
            }
        };
        Ok(Map::from_map_data(data)?)
    }
}

/// Writes `OVERLAY_CONFIG_V1`.
pub fn write_config(maps: &Maps<'_>, cfg: &OverlayConfig) -> Result<()> {
    let mut array: Array<MapData, OverlayConfig> =
        Array::try_from(maps.open(map_names::OVERLAY_CONFIG)?)
            .context("OVERLAY_CONFIG_V1 layout")?;
    array.set(0, cfg, 0).context("writing OVERLAY_CONFIG_V1")
}

/// Reads `OVERLAY_CONFIG_V1`.
pub fn read_config(maps: &Maps<'_>) -> Result<OverlayConfig> {
    let array: Array<MapData, OverlayConfig> =
        Array::try_from(maps.open(map_names::OVERLAY_CONFIG)?)
            .context("OVERLAY_CONFIG_V1 layout")?;
    array.get(&0, 0).context("reading OVERLAY_CONFIG_V1")
}

/// Removes the kernel routes, neighbours and overlay address the agent of `pin_dir` installed
/// (`dataplane cleanup`), if this is its network namespace; returns the number of changes (0
/// when there is nothing to do or the maps belong to another namespace).
pub fn remove_kernel_state(pin_dir: &Path) -> Result<usize> {
    if !pin_dir.join(map_names::OVERLAY_CONFIG).exists() {
        return Ok(0);
    }
    let mut cfg = read_config(&Maps::Pinned(pin_dir))?;
    if cfg.uplink_ifindex == 0 || cfg.netns_cookie != crate::loader::netns_cookie()? {
        return Ok(0);
    }
    cfg.mode = MODE_NONE;
    kernel::sync(&cfg, &Desired::default())
}

/// An IPv4 prefix, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, len: u8) -> Cidr {
        let len = len.min(32);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        Cidr::new(ip, self.len).addr == self.addr
    }

    fn key(&self) -> Key<u32> {
        Key::new(self.len as u32, u32::from(self.addr).to_be())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What the maps and the kernel should hold for a node list (pure: see [`plan`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeMap<Cidr, OverlayRoute>,
    pub peers: BTreeMap<Ipv4Addr, OverlayPeer>,
    /// The source of the node's own traffic into the overlay (on `lo`), if it has one.
    pub overlay_addr: Option<Ipv4Addr>,
}

impl Desired {
    /// Remote CIDRs: the kernel routes to install.
    pub fn remote_cidrs(&self) -> impl Iterator<Item = &Cidr> {
        self.routes
            .iter()
            .filter(|(_, r)| r.flags & (ROUTE_F_LOCAL | ROUTE_F_NO_ENCAP) == 0)
            .map(|(c, _)| c)
    }
}

/// Turns the cluster's nodes into routes and peers. The local node's pod CIDRs (and tunnel
/// address) are `ROUTE_F_LOCAL`; every other node is a peer whose CIDRs route to its address.
/// A CIDR claimed by two nodes goes to the local node, else to the first by name (logged).
pub fn plan(nodes: &[NodeInfo], local_node: &str, mode: OverlayMode) -> Desired {
    let mut out = Desired::default();
    let local = nodes.iter().find(|n| n.name == local_node);
    if local.is_none() {
        log::warn!(
            "overlay: node {local_node} is not in the node list; its own pod CIDRs are unknown"
        );
    }
    let mut sorted: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name != local_node).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(node) = local {
        let cidrs: Vec<Cidr> = node
            .pod_cidrs
            .iter()
            .map(|&(a, l)| Cidr::new(a, l))
            .collect();
        for cidr in &cidrs {
            let route = OverlayRoute {
                node_addr: u32::from(node.address).to_be(),
                vtep_mac: [0; 6],
                flags: ROUTE_F_LOCAL,
            };
            out.routes.insert(*cidr, route);
        }
        out.overlay_addr = match (mode, node.ipip_tunnel_addr) {
            (OverlayMode::Ipip, Some(addr)) => Some(addr),
            _ => cidrs.first().map(|c| c.addr),
        };
        if let Some(addr) = out
            .overlay_addr
            .filter(|a| !cidrs.iter().any(|c| c.contains(*a)))
        {
            let route = OverlayRoute {
                node_addr: u32::from(node.address).to_be(),
                vtep_mac: [0; 6],
                flags: ROUTE_F_LOCAL,
            };
            out.routes.insert(Cidr::new(addr, 32), route);
        }
    }
    let local_addr = local.map(|n| n.address);
    for node in sorted {
        if Some(node.address) == local_addr {
            log::warn!(
                "overlay: node {} has this node's address {}; skipped",
                node.name,
                node.address
            );
            continue;
        }
        let route = OverlayRoute {
            node_addr: u32::from(node.address).to_be(),
            vtep_mac: node.vtep_mac.unwrap_or([0; 6]),
            flags: 0,
        };
        let mut cidrs: Vec<Cidr> = node
            .pod_cidrs
            .iter()
            .map(|&(a, l)| Cidr::new(a, l))
            .collect();
        if let Some(tunnel) = node
            .ipip_tunnel_addr
            .filter(|a| !cidrs.iter().any(|c| c.contains(*a)))
        {
            cidrs.push(Cidr::new(tunnel, 32));
        }
        let mut owned = 0;
        for cidr in cidrs {
            match out.routes.get(&cidr) {
                Some(_) => log::warn!(
                    "overlay: {cidr} of node {} is already routed elsewhere; skipped",
                    node.name
                ),
                None => {
                    out.routes.insert(cidr, route);
                    owned += 1;
                }
            }
        }
        out.peers.insert(node.address, OverlayPeer { cidrs: owned });
    }
    out
}

/// What one [`OverlayTable::sync`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub routes_written: usize,
    pub routes_deleted: usize,
    pub peers_written: usize,
    pub peers_deleted: usize,
    /// `ip` commands run (routes, neighbours, the overlay address).
    pub kernel_changes: usize,
}

impl SyncReport {
    pub fn is_empty(&self) -> bool {
        *self == SyncReport::default()
    }
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "routes +{} -{}, peers +{} -{}, kernel changes {}",
            self.routes_written,
            self.routes_deleted,
            self.peers_written,
            self.peers_deleted,
            self.kernel_changes
        )
    }
}

/// The overlay maps as a table of node routes. See the module documentation.
pub struct OverlayTable {
    config: OverlayConfig,
    routes: LpmTrie<MapData, u32, OverlayRoute>,
    peers: HashMap<MapData, u32, OverlayPeer>,
    mirror_routes: BTreeMap<Cidr, OverlayRoute>,
    mirror_peers: BTreeMap<Ipv4Addr, OverlayPeer>,
    /// What the kernel was last made to hold: an unchanged node list (most updates are
    /// service updates) runs no `ip` at all.
    kernel_synced: Option<Desired>,
    /// `--service-cidr`: no pod CIDR may overlap these.
    service_cidrs: Vec<Cidr>,
    /// Nodes the last sync skipped (see [`node_validation`]), each logged once.
    skipped: Vec<Problem>,
    problem_log: ProblemLog,
}

impl OverlayTable {
    /// Opens the maps pinned under `pin_dir` (by `dataplane run`) and adopts their content.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        Self::open(Maps::Pinned(pin_dir))
    }

    /// Opens the maps of a loaded object.
    pub fn from_ebpf(ebpf: &Ebpf) -> Result<Self> {
        Self::open(Maps::Object(ebpf))
    }

    fn open(maps: Maps<'_>) -> Result<Self> {
        let config = read_config(&maps)?;
        let routes: LpmTrie<MapData, u32, OverlayRoute> =
            LpmTrie::try_from(maps.open(map_names::OVERLAY_ROUTES)?)
                .context("OVERLAY_ROUTES_V1 layout")?;
        let peers: HashMap<MapData, u32, OverlayPeer> =
            HashMap::try_from(maps.open(map_names::OVERLAY_PEERS)?)
                .context("OVERLAY_PEERS_V1 layout")?;
        let mut mirror_routes = BTreeMap::new();
        for entry in routes.iter() {
            let (key, value) = entry.context("reading OVERLAY_ROUTES_V1")?;
            let cidr = Cidr::new(
                Ipv4Addr::from(u32::from_be(key.data())),
                key.prefix_len() as u8,
            );
            mirror_routes.insert(cidr, value);
        }
        let mut mirror_peers = BTreeMap::new();
        for entry in peers.iter() {
            let (addr, value) = entry.context("reading OVERLAY_PEERS_V1")?;
            mirror_peers.insert(Ipv4Addr::from(u32::from_be(addr)), value);
        }
        Ok(OverlayTable {
            config,
            routes,
            peers,
            mirror_routes,
            mirror_peers,
            kernel_synced: None,
            service_cidrs: Vec::new(),
            skipped: Vec::new(),
            problem_log: ProblemLog::default(),
        })
    }

    /// The cluster's service CIDRs: a Node whose pod CIDR overlaps one is skipped.
    pub fn set_service_cidrs(&mut self, cidrs: Vec<Cidr>) {
        self.service_cidrs = cidrs;
    }

    /// Marks `ROUTE_F_NO_ENCAP` the remote CIDRs the kernel already routes with a route the
    /// agent did not create (connected, default, static, a routing daemon's): the agent never
    /// replaces those, and the datapath must not tunnel what the kernel sends elsewhere (tunnel
    /// packets from that node are still accepted). Each is named as a problem of its Node.
    fn leave_foreign_routes(&mut self, desired: &mut Desired, nodes: &[NodeInfo]) -> Result<()> {
        let foreign = kernel::foreign_routes()?;
        for (cidr, route) in desired.routes.iter_mut() {
            let Some(kernel_route) = foreign.get(cidr) else {
                continue;
            };
            if route.flags & ROUTE_F_LOCAL != 0 {
                continue;
            }
            route.flags |= ROUTE_F_NO_ENCAP;
            let owner = nodes
                .iter()
                .find(|n| u32::from(n.address).to_be() == route.node_addr)
                .map_or("?", |n| n.name.as_str());
            self.skipped.push(Problem {
                kind: "Node",
                object: owner.to_owned(),
                field: "spec.podCIDRs".into(),
                message: format!(
                    "the kernel routes {cidr} already ({kernel_route}) and the agent replaces \
                     only its own routes; this range is not tunnelled"
                ),
                severity: crate::k8s::Severity::Invalid,
            });
        }
        Ok(())
    }

    /// The Nodes the last sync skipped, and why.
    pub fn skipped(&self) -> &[Problem] {
        &self.skipped
    }

    /// The nodes that pass [`node_validation::validate`] against the service CIDRs, `local`
    /// (this node's addresses and underlay subnets, when known) and what the maps hold.
    fn validated(
        &mut self,
        nodes: &[NodeInfo],
        local_node: &str,
        mut reserved: Vec<Reserved>,
    ) -> Vec<NodeInfo> {
        reserved.extend(
            self.service_cidrs
                .iter()
                .map(|c| Reserved::new(*c, "a service CIDR")),
        );
        let held: BTreeMap<Cidr, Ipv4Addr> = self
            .mirror_routes
            .iter()
            .map(|(c, r)| (*c, Ipv4Addr::from(u32::from_be(r.node_addr))))
            .collect();
        let (accepted, problems) = node_validation::validate(nodes, local_node, &reserved, &held);
        self.skipped = problems;
        accepted
    }

    /// The node's tunnel settings, as the agent wrote them.
    pub fn config(&self) -> &OverlayConfig {
        &self.config
    }

    pub fn mode(&self) -> OverlayMode {
        OverlayMode::from_code(self.config.mode).unwrap_or_default()
    }

    /// Routes in the map (as this table last wrote or adopted them).
    pub fn routes(&self) -> &BTreeMap<Cidr, OverlayRoute> {
        &self.mirror_routes
    }

    /// Nodes tunnel packets are accepted from.
    pub fn peers(&self) -> &BTreeMap<Ipv4Addr, OverlayPeer> {
        &self.mirror_peers
    }

    /// Makes the maps hold exactly the routes and peers of `nodes` (this node is `local_node`),
    /// and, with an overlay mode, the kernel routes, neighbours and overlay address that lead
    /// the node's traffic into it. Must run in the agent's network namespace when the mode is
    /// not `none` (checked). With mode `none`, routes an earlier run with an overlay left are
    /// removed (in the agent's namespace; elsewhere only the maps are written). New routes and peers are written before the kernel routes that
    /// use them, stale kernel routes are removed before the map entries they used, so traffic
    /// to unchanged nodes never misses.
    pub fn sync(&mut self, nodes: &[NodeInfo], local_node: &str) -> Result<SyncReport> {
        let cookie = crate::loader::netns_cookie()?;
        let local = if cookie == self.config.netns_cookie && self.config.uplink_ifindex != 0 {
            kernel::reserved(self.config.uplink_ifindex)?
        } else {
            Vec::new()
        };
        let nodes = &self.validated(nodes, local_node, local);
        let mut desired = plan(nodes, local_node, self.mode());
        if cookie == self.config.netns_cookie && self.mode() != OverlayMode::None {
            self.leave_foreign_routes(&mut desired, nodes)?;
        }
        self.problem_log.report(&self.skipped);
        if self.mode() == OverlayMode::None {
            let mut report = self.write_maps(&desired)?;
            report += self.delete_stale(&desired)?;
            // Routes a previous run with an overlay left behind, if this is the agent's namespace.
            if cookie == self.config.netns_cookie
                && self.config.uplink_ifindex != 0
                && self.kernel_synced.is_none()
            {
                report.kernel_changes = kernel::sync(&self.config, &Desired::default())?;
                self.kernel_synced = Some(Desired::default());
            }
            return Ok(report);
        }
        if cookie != self.config.netns_cookie {
            bail!(
                "OverlayTable::sync must run in the agent's network namespace (cookie {}, this \
                 thread's is {cookie}): it installs the overlay's kernel routes",
                self.config.netns_cookie
            );
        }
        let tunnel = Ipv4Addr::from(u32::from_be(self.config.tunnel_addr));
        if let Some(local) = nodes
            .iter()
            .find(|n| n.name == local_node && n.address != tunnel)
        {
            log::warn!(
                "overlay: this node tunnels from {tunnel} but its Node publishes {}: the other nodes \
                 accept tunnel packets only from the published address (set --tunnel-ip {})",
                local.address, local.address
            );
        }
        let mut report = self.write_maps(&desired)?;
        if self.kernel_synced.as_ref() != Some(&desired) {
            self.kernel_synced = None;
            report.kernel_changes = kernel::sync(&self.config, &desired)?;
            self.kernel_synced = Some(desired.clone());
        }
        report += self.delete_stale(&desired)?;
        if !report.is_empty() {
            log::info!("overlay updated: {report}");
        }
        Ok(report)
    }

    /// Like [`OverlayTable::sync`] for the maps only, leaving kernel routes alone: for tools and
    /// tests that route traffic to the uplink themselves.
    pub fn sync_maps(&mut self, nodes: &[NodeInfo], local_node: &str) -> Result<SyncReport> {
        let nodes = &self.validated(nodes, local_node, Vec::new());
        self.problem_log.report(&self.skipped);
        let desired = plan(nodes, local_node, self.mode());
        let mut report = self.write_maps(&desired)?;
        report += self.delete_stale(&desired)?;
        Ok(report)
    }

    fn write_maps(&mut self, desired: &Desired) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        for (addr, peer) in &desired.peers {
            if self.mirror_peers.get(addr) != Some(peer) {
                self.peers
                    .insert(u32::from(*addr).to_be(), *peer, 0)
                    .with_context(|| format!("adding peer {addr}"))?;
                self.mirror_peers.insert(*addr, *peer);
                report.peers_written += 1;
            }
        }
        for (cidr, route) in &desired.routes {
            if self.mirror_routes.get(cidr) != Some(route) {
                self.routes
                    .insert(&cidr.key(), *route, 0)
                    .with_context(|| format!("adding route {cidr}"))?;
                self.mirror_routes.insert(*cidr, *route);
                report.routes_written += 1;
            }
        }
        Ok(report)
    }

    fn delete_stale(&mut self, desired: &Desired) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let stale: Vec<Cidr> = self
            .mirror_routes
            .keys()
            .filter(|c| !desired.routes.contains_key(c))
            .copied()
            .collect();
        for cidr in stale {
            self.routes
                .remove(&cidr.key())
                .with_context(|| format!("removing route {cidr}"))?;
            self.mirror_routes.remove(&cidr);
            report.routes_deleted += 1;
        }
        let stale: Vec<Ipv4Addr> = self
            .mirror_peers
            .keys()
            .filter(|a| !desired.peers.contains_key(a))
            .copied()
            .collect();
        for addr in stale {
            self.peers
                .remove(&u32::from(addr).to_be())
                .with_context(|| format!("removing peer {addr}"))?;
            self.mirror_peers.remove(&addr);
            report.peers_deleted += 1;
        }
        Ok(report)
    }
}

impl std::ops::AddAssign for SyncReport {
    fn add_assign(&mut self, o: SyncReport) {
        self.routes_written += o.routes_written;
        self.routes_deleted += o.routes_deleted;
        self.peers_written += o.peers_written;
        self.peers_deleted += o.peers_deleted;
        self.kernel_changes += o.kernel_changes;
    }
}

/// Interface facts from the kernel (in the calling thread's network namespace).
pub mod netdev {
    use anyhow::{bail, Context, Result};

    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: [u8; 24],
    }

    fn ifreq(name: &str) -> Result<IfReq> {
        if name.is_empty() || name.len() >= 16 {
            bail!("invalid interface name {name:?}");
        }
        let mut req = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(req)
    }

    fn ioctl(name: &str, request: libc::c_ulong) -> Result<IfReq> {
        let mut req = ifreq(name)?;
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket()");
        }
        let rc = unsafe { libc::ioctl(fd, request as _, &mut req as *mut IfReq) };
        let err = std::io::Error::last_os_error();
        unsafe { libc::close(fd) };
        if rc != 0 {
            return Err(err).with_context(|| format!("ioctl on {name}"));
        }
        Ok(req)
    }

    /// ifindex of `name`.
    pub fn index(name: &str) -> Result<u32> {
        let c = std::ffi::CString::new(name)?;
        match unsafe { libc::if_nametoindex(c.as_ptr()) } {
            0 => {
                Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {name}"))
            }
            i => Ok(i),
        }
    }

    /// Name of interface `index`.
    pub fn name(index: u32) -> Result<String> {
        let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
        let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
        if p.is_null() {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("no interface with index {index}"));
        }
        Ok(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// MAC address of `name`.
    pub fn mac(name: &str) -> Result<[u8; 6]> {
        let req = ioctl(name, libc::SIOCGIFHWADDR)?;
        // struct sockaddr: family (2 bytes), then the address.
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&req.data[2..8]);
        Ok(mac)
    }

    /// MTU of `name`.
    pub fn mtu(name: &str) -> Result<u32> {
        let req = ioctl(name, libc::SIOCGIFMTU)?;
        Ok(i32::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]) as u32)
    }
}

/// The kernel side: routes, neighbours and the overlay address, through `ip`.
mod kernel {
    use super::*;

    fn mac_text(mac: &[u8; 6]) -> String {
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn ip_json(args: &[&str]) -> Result<serde_json::Value> {
        let out = Command::new("ip")
            .arg("-j")
            .args(args)
            .output()
            .context("running ip (iproute2)")?;
        if !out.status.success() {
            bail!(
                "ip -j {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Array(Vec::new()));
        }
        serde_json::from_str(&text).with_context(|| format!("parsing `ip -j {}`", args.join(" ")))
    }

    /// Runs `commands` with `ip -batch -`.
    fn ip_batch(commands: &[String]) -> Result<()> {
        if commands.is_empty() {
            return Ok(());
        }
        let mut child = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ip (iproute2)")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(commands.join("\n").as_bytes())?;
        stdin.write_all(b"\n")?;
        drop(stdin);
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "ip -batch failed: {}\ncommands:\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                commands.join("\n")
            );
        }
        Ok(())
    }

    /// One overlay route as the kernel shows it.
    #[derive(Debug, PartialEq, Eq)]
    struct KernelRoute {
        gateway: Option<String>,
        prefsrc: Option<String>,
        mtu: Option<u64>,
        onlink: bool,
    }

    fn parse_cidr(text: &str) -> Option<Cidr> {
        let (addr, len) = text.split_once('/').unwrap_or((text, "32"));
        Some(Cidr::new(addr.parse().ok()?, len.parse().ok()?))
    }

    fn current_routes(uplink: &str) -> Result<BTreeMap<Cidr, KernelRoute>> {
        let proto = ROUTE_PROTO.to_string();
        let json = ip_json(&["route", "show", "proto", &proto, "dev", uplink])?;
        let mut out = BTreeMap::new();
        for r in json.as_array().into_iter().flatten() {
            let Some(cidr) = r["dst"].as_str().and_then(parse_cidr) else {
                continue;
            };
            let mtu = r["metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|m| m["mtu"].as_u64());
            let onlink = r["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f == "onlink");
            out.insert(
                cidr,
                KernelRoute {
                    gateway: r["gateway"].as_str().map(str::to_owned),
                    prefsrc: r["prefsrc"].as_str().map(str::to_owned),
                    mtu,
                    onlink,
                },
            );
        }
        Ok(out)
    }

    fn current_neighbours(uplink: &str) -> Result<BTreeSet<Ipv4Addr>> {
        let json = ip_json(&["-4", "neigh", "show", "dev", uplink, "nud", "permanent"])?;
        let ours = mac_text(&NEXTHOP_MAC);
        Ok(json
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["lladdr"].as_str() == Some(ours.as_str()))
            .filter_map(|n| n["dst"].as_str()?.parse().ok())
            .collect())
    }

    /// Addresses with the overlay label on `lo`.
    fn current_addresses() -> Result<BTreeSet<Ipv4Addr>> {
        let json = ip_json(&["-4", "addr", "show", "dev", "lo"])?;
        Ok(json
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["label"].as_str() == Some(ADDRESS_LABEL))
            .filter_map(|a| a["local"].as_str()?.parse().ok())
            .collect())
    }

    /// What no pod CIDR may overlap, from this namespace's addresses: the uplink's subnets
    /// (the underlay), and every other address of the node except the overlay's own on `lo`
    /// (those only for other nodes' CIDRs: cni0 holds an address of the local pod CIDR).
    pub(super) fn reserved(uplink_ifindex: u32) -> Result<Vec<Reserved>> {
        let uplink = netdev::name(uplink_ifindex)?;
        let json = ip_json(&["-4", "addr", "show"])?;
        let mut out = Vec::new();
        for link in json.as_array().into_iter().flatten() {
            let dev = link["ifname"].as_str().unwrap_or_default();
            for a in link["addr_info"].as_array().into_iter().flatten() {
                let (Some(ip), Some(len)) = (
                    a["local"].as_str().and_then(|t| t.parse::<Ipv4Addr>().ok()),
                    a["prefixlen"].as_u64(),
                ) else {
                    continue;
                };
                if a["label"].as_str() == Some(ADDRESS_LABEL) {
                    continue;
                }
                if dev == uplink {
                    let subnet = Cidr::new(ip, len as u8);
                    out.push(Reserved::new(
                        subnet,
                        format!("the underlay subnet of {dev}"),
                    ));
                } else {
                    let what = format!("this node's address on {dev}");
                    out.push(Reserved::remote_only(Cidr::new(ip, 32), what));
                }
            }
        }
        Ok(out)
    }

    /// Destinations in the main table held by routes the agent did not create (connected,
    /// default, static, another daemon's): `route replace` would overwrite them.
    pub(super) fn foreign_routes() -> Result<BTreeMap<Cidr, String>> {
        let json = ip_json(&["-4", "route", "show", "table", "main"])?;
        let ours = ROUTE_PROTO.to_string();
        let mut out = BTreeMap::new();
        for r in json.as_array().into_iter().flatten() {
            let proto = match &r["protocol"] {
                serde_json::Value::String(p) => p.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => "boot".to_owned(),
            };
            if proto == ours {
                continue;
            }
            let dst = match r["dst"].as_str() {
                Some("default") => Some(Cidr::new(Ipv4Addr::UNSPECIFIED, 0)),
                Some(text) => parse_cidr(text),
                None => None,
            };
            if let Some(dst) = dst {
                let dev = r["dev"].as_str().unwrap_or("?");
                out.insert(dst, format!("proto {proto} dev {dev}"));
            }
        }
        Ok(out)
    }

    /// Makes the kernel hold the routes, neighbours and address of `desired`; returns the
    /// number of changes.
    pub(super) fn sync(cfg: &OverlayConfig, desired: &Desired) -> Result<usize> {
        let uplink = netdev::name(cfg.uplink_ifindex)?;
        let overhead = cfg.overhead();
        let mtu = netdev::mtu(&uplink)?
            .checked_sub(overhead)
            .ok_or_else(|| anyhow!("{uplink}: MTU below the overlay overhead"))?;
        let mut add = Vec::new();
        let mut del = Vec::new();

        let addresses = current_addresses()?;
        if let Some(addr) = desired.overlay_addr {
            if !addresses.contains(&addr) {
                add.push(format!(
                    "address add {addr}/32 dev lo label {ADDRESS_LABEL}"
                ));
            }
        }

        let neighbours = current_neighbours(&uplink)?;
        let routes = current_routes(&uplink)?;
        let mac = mac_text(&NEXTHOP_MAC);
        // Never overwrite a route the agent did not create (the caller left such CIDRs out of
        // `desired`; this re-check closes the window since).
        let foreign = foreign_routes()?;
        let wanted: BTreeSet<Cidr> = desired
            .remote_cidrs()
            .filter(|c| !foreign.contains_key(c))
            .copied()
            .collect();
        for cidr in &wanted {
            let gw = cidr.addr;
            if !neighbours.contains(&gw) {
                add.push(format!(
                    "neigh replace {gw} lladdr {mac} dev {uplink} nud permanent"
                ));
            }
            let want = KernelRoute {
                gateway: Some(gw.to_string()),
                prefsrc: desired.overlay_addr.map(|a| a.to_string()),
                mtu: Some(mtu as u64),
                onlink: true,
            };
            if routes.get(cidr) != Some(&want) {
                let src = desired
                    .overlay_addr
                    .map(|a| format!(" src {a}"))
                    .unwrap_or_default();
                add.push(format!(
                    "route replace {cidr} via {gw} dev {uplink} onlink proto {ROUTE_PROTO}{src} mtu {mtu}"
                ));
            }
        }
        for cidr in routes.keys().filter(|c| !wanted.contains(c)) {
            del.push(format!("route del {cidr} dev {uplink} proto {ROUTE_PROTO}"));
        }
        let gateways: BTreeSet<Ipv4Addr> = wanted.iter().map(|c| c.addr).collect();
        for gw in neighbours.iter().filter(|g| !gateways.contains(g)) {
            del.push(format!("neigh del {gw} dev {uplink}"));
        }
        // Last: the kernel drops the routes using an address as source with the address.
        for addr in addresses
            .iter()
            .filter(|a| Some(**a) != desired.overlay_addr)
        {
            del.push(format!("address del {addr}/32 dev lo"));
        }
        // Traffic from the underlay to a remote pod (NodePort, external clients) leaves through
        // the interface it came in on: without tunnel devices the kernel would answer it with
        // ICMP redirects toward the overlay's placeholder gateways.
        let mut changes = 0;
        if cfg.mode != MODE_NONE {
            for dev in ["all", uplink.as_str()] {
                let key = format!("net/ipv4/conf/{dev}/send_redirects");
                if read_sysctl(&key)? != "0" {
                    match std::fs::write(format!("/proc/sys/{key}"), "0") {
                        Ok(()) => changes += 1,
                        // An unprivileged container has /proc/sys read-only: the overlay works,
                        // the kernel just also sends redirects (set it on the host).
                        Err(e) => log::warn!(
                            "overlay: cannot write {key} ({e}): set it to 0 on the host \
                             (sysctl -w {}=0), else the node sends ICMP redirects toward the \
                             overlay's placeholder gateways",
                            key.replace('/', ".")
                        ),
                    }
                }
            }
        }
        // Additions first (the address before the routes that use it as source), then removals.
        changes += add.len() + del.len();
        ip_batch(&add)?;
        ip_batch(&del)?;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn node(name: &str, addr: &str, cidr: &str, mac_last: u8) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            address: ip(addr),
            pod_cidrs: vec![(ip(cidr), 24)],
            vtep_mac: Some([2, 0, 0, 0, 0, mac_last]),
            ipip_tunnel_addr: None,
            created: None,
        }
    }

    #[test]
    fn plan_marks_local_cidrs_and_routes_remote_ones() {
        let nodes = [
            node("node2", "198.18.0.12", "10.244.2.0", 2),
            node("node1", "198.18.0.11", "10.244.1.0", 1),
            node("node3", "198.18.0.13", "10.244.3.7", 3),
        ];
        let d = plan(&nodes, "node1", OverlayMode::Vxlan);
        assert_eq!(d.overlay_addr, Some(ip("10.244.1.0")));
        assert_eq!(
            d.routes[&Cidr::new(ip("10.244.1.0"), 24)].flags,
            ROUTE_F_LOCAL
        );
        let r3 = d.routes[&Cidr::new(ip("10.244.3.0"), 24)];
        assert_eq!(
            (r3.node_addr, r3.vtep_mac, r3.flags),
            (u32::from(ip("198.18.0.13")).to_be(), [2, 0, 0, 0, 0, 3], 0)
        );
        assert_eq!(
            d.peers.keys().copied().collect::<Vec<_>>(),
            [ip("198.18.0.12"), ip("198.18.0.13")]
        );
        assert_eq!(d.remote_cidrs().count(), 2);
    }

    #[test]
    fn plan_uses_calico_tunnel_addresses_and_resolves_conflicts() {
        let mut n1 = node("node1", "198.18.0.11", "10.244.1.0", 1);
        n1.ipip_tunnel_addr = Some(ip("10.245.0.1"));
        let mut n2 = node("node2", "198.18.0.12", "10.244.2.0", 2);
        n2.ipip_tunnel_addr = Some(ip("10.244.2.1"));
        let thief = node("node0", "198.18.0.10", "10.244.1.0", 9);
        let d = plan(&[n1, n2, thief], "node1", OverlayMode::Ipip);
        assert_eq!(d.overlay_addr, Some(ip("10.245.0.1")));
        assert_eq!(
            d.routes[&Cidr::new(ip("10.245.0.1"), 32)].flags,
            ROUTE_F_LOCAL
        );
        // node2's tunnel address is inside its CIDR: no extra route.
        assert!(!d.routes.contains_key(&Cidr::new(ip("10.244.2.1"), 32)));
        // node0 claims node1's CIDR: the local node keeps it; node0 stays a peer.
        assert_eq!(
            d.routes[&Cidr::new(ip("10.244.1.0"), 24)].flags,
            ROUTE_F_LOCAL
        );
        assert_eq!(d.peers[&ip("198.18.0.10")].cidrs, 0);
    }

    #[test]
    fn cidrs_are_normalised() {
        assert_eq!(Cidr::new(ip("10.244.3.7"), 24).to_string(), "10.244.3.0/24");
        assert!(Cidr::new(ip("10.244.0.0"), 16).contains(ip("10.244.200.1")));
        assert_eq!(Cidr::new(ip("1.2.3.4"), 0).addr, ip("0.0.0.0"));
    }
}
