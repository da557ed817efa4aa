//! [`OverlayTable`]: the overlay maps as a table of node routes. It validates the Nodes, plans
//! ([`super::plan`]), writes the difference to its [`OverlayStore`] and, in the agent's network
//! namespace, has [`super::routes`] make the kernel routes match.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, path::Path};

use anyhow::{bail, Result};
use aya::Ebpf;
use dataplane_common::overlay::{
    OverlayConfig, OverlayPeer, OverlayRoute, ROUTE_F_LOCAL, ROUTE_F_NO_ENCAP,
};

use super::{
    plan::{plan, Desired},
    routes,
    store::{OverlayMaps, OverlayStore},
    OverlayMode,
};
use crate::{
    host::netns,
    k8s::{Problem, ProblemLog},
    model::{Cidr, NodeInfo},
    node_validation::{self, Reserved},
};

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

/// The overlay maps as a table of node routes. See the module documentation of [`super`].
pub struct OverlayTable<S: OverlayStore = OverlayMaps> {
    config: OverlayConfig,
    store: S,
    mirror_routes: BTreeMap<Cidr, OverlayRoute>,
    mirror_peers: BTreeMap<Ipv4Addr, OverlayPeer>,
    /// What the kernel was last made to hold: an unchanged node list (most updates are
    /// service updates) runs no `ip` at all.
    kernel_synced: Option<Desired>,
    /// `--service-cidr`: no pod CIDR may overlap these.
    service_cidrs: Vec<Cidr>,
    /// Nodes the last sync skipped (see [`crate::node_validation`]), each logged once.
    skipped: Vec<Problem>,
    problem_log: ProblemLog,
}

impl OverlayTable<OverlayMaps> {
    /// Opens the maps pinned under `pin_dir` (by `dataplane run`) and adopts their content.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        Self::with_store(OverlayMaps::open(pin_dir)?)
    }

    /// Opens the maps of a loaded object.
    pub fn from_ebpf(ebpf: &Ebpf) -> Result<Self> {
        Self::with_store(OverlayMaps::open(ebpf)?)
    }
}

impl<S: OverlayStore> OverlayTable<S> {
    /// A table over `store`, adopting what it holds.
    pub fn with_store(store: S) -> Result<Self> {
        Ok(OverlayTable {
            config: store.config()?,
            mirror_routes: store.routes()?,
            mirror_peers: store.peers()?,
            store,
            kernel_synced: None,
            service_cidrs: Vec::new(),
            skipped: Vec::new(),
            problem_log: ProblemLog::default(),
        })
    }

    /// The maps underneath.
    pub fn store(&self) -> &S {
        &self.store
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
        let foreign = routes::foreign_routes()?;
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
        let cookie = netns::cookie()?;
        let local = if cookie == self.config.netns_cookie && self.config.uplink_ifindex != 0 {
            routes::reserved(self.config.uplink_ifindex)?
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
                report.kernel_changes = routes::sync(&self.config, &Desired::default())?;
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
            report.kernel_changes = routes::sync(&self.config, &desired)?;
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
                self.store.put_peer(*addr, *peer)?;
                self.mirror_peers.insert(*addr, *peer);
                report.peers_written += 1;
            }
        }
        for (cidr, route) in &desired.routes {
            if self.mirror_routes.get(cidr) != Some(route) {
                self.store.put_route(*cidr, *route)?;
                self.mirror_routes.insert(*cidr, *route);
                report.routes_written += 1;
            }
        }
        Ok(report)
    }

    fn delete_stale(&mut self, desired: &Desired) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        for cidr in stale_keys(&self.mirror_routes, &desired.routes) {
            self.store.remove_route(cidr)?;
            self.mirror_routes.remove(&cidr);
            report.routes_deleted += 1;
        }
        for addr in stale_keys(&self.mirror_peers, &desired.peers) {
            self.store.remove_peer(addr)?;
            self.mirror_peers.remove(&addr);
            report.peers_deleted += 1;
        }
        Ok(report)
    }
}

/// The keys the maps hold (`mirror`) and `desired` no longer lists, collected first so the
/// mirror can change while they are deleted.
fn stale_keys<K: Ord + Copy, V, W>(mirror: &BTreeMap<K, V>, desired: &BTreeMap<K, W>) -> Vec<K> {
    mirror
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect()
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

#[cfg(test)]
mod tests {
    use dataplane_common::overlay::MODE_VXLAN;

    use super::*;
    use crate::overlay::MemOverlay;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn node(name: &str, addr: &str, cidr: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            address: ip(addr),
            pod_cidrs: vec![(ip(cidr), 24)],
            vtep_mac: Some([2, 0, 0, 0, 0, 1]),
            ipip_tunnel_addr: None,
            created: None,
        }
    }

    /// node1 .. node`n`: node`i` at 198.18.0.1`i` with pod CIDR 10.244.`i`.0/24.
    fn cluster(n: u8) -> Vec<NodeInfo> {
        (1..=n)
            .map(|i| {
                let (addr, cidr) = (format!("198.18.0.1{i}"), format!("10.244.{i}.0"));
                node(&format!("node{i}"), &addr, &cidr)
            })
            .collect()
    }

    fn table() -> OverlayTable<MemOverlay> {
        let mut cfg = OverlayConfig::none();
        cfg.mode = MODE_VXLAN;
        OverlayTable::with_store(MemOverlay::new(cfg)).unwrap()
    }

    #[test]
    fn sync_writes_only_what_changed() {
        let mut t = table();
        let nodes = cluster(3);
        let r = t.sync_maps(&nodes, "node1").unwrap();
        // node1's CIDR (local), node2's and node3's; two peers.
        assert_eq!((r.routes_written, r.peers_written), (3, 2));
        assert_eq!(t.store().routes.len(), 3);
        let before = t.store().clone();
        assert!(t.sync_maps(&nodes, "node1").unwrap().is_empty());
        assert_eq!(t.store().routes, before.routes);

        let r = t.sync_maps(&nodes[..2], "node1").unwrap();
        assert_eq!((r.routes_deleted, r.peers_deleted), (1, 1));
        assert!(!t
            .store()
            .routes
            .contains_key(&Cidr::new(ip("10.244.3.0"), 24)));
        assert_eq!(t.routes(), &t.store().routes);
        assert_eq!(t.peers(), &t.store().peers);
    }

    #[test]
    fn reopening_adopts_what_the_maps_hold() {
        let mut t = table();
        let nodes = cluster(2);
        t.sync_maps(&nodes, "node1").unwrap();
        let mut again = OverlayTable::with_store(t.store().clone()).unwrap();
        assert_eq!(again.routes(), t.routes());
        assert!(again.sync_maps(&nodes, "node1").unwrap().is_empty());
    }

    #[test]
    fn thieves_and_service_ranges_are_skipped_and_named() {
        let mut t = table();
        t.set_service_cidrs(vec![Cidr::new(ip("10.96.0.0"), 12)]);
        let nodes = vec![
            node("node1", "198.18.0.11", "10.244.1.0"),
            node("svc", "198.18.0.14", "10.96.5.0"),
        ];
        t.sync_maps(&nodes, "node1").unwrap();
        assert!(!t
            .store()
            .routes
            .contains_key(&Cidr::new(ip("10.96.5.0"), 24)));
        assert_eq!(t.skipped().len(), 1);
        assert_eq!(t.skipped()[0].object, "svc");
    }

    #[test]
    fn a_table_of_no_namespace_never_programs_the_kernel() {
        // MemOverlay's cookie is 0: an overlay mode cannot sync kernel routes from here.
        let mut t = table();
        let nodes = vec![node("node1", "198.18.0.11", "10.244.1.0")];
        assert!(t.sync(&nodes, "node1").is_err());
        let mut none = OverlayTable::with_store(MemOverlay::new(OverlayConfig::none())).unwrap();
        let r = none.sync(&nodes, "node1").unwrap();
        assert_eq!((r.routes_written, r.kernel_changes), (1, 0));
    }
}
