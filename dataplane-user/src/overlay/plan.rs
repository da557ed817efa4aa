//! The overlay's plan: what the maps and the kernel should hold for a node list. Pure (host
//! `cargo test` covers it); [`super::table`] writes it, [`super::routes`] programs the kernel.

use std::{collections::BTreeMap, net::Ipv4Addr};

use dataplane_common::overlay::{OverlayPeer, OverlayRoute, ROUTE_F_LOCAL, ROUTE_F_NO_ENCAP};

use super::OverlayMode;
use crate::model::{Cidr, NodeInfo};

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
        assert_eq!("10.96.1.2/12".parse(), Ok(Cidr::new(ip("10.96.0.0"), 12)));
    }
}
