//! Node objects are input, not truth: before a Node's pod CIDRs or tunnel address become overlay
//! map entries and kernel routes on every node, [`validate`] checks them against each other and
//! against what must never be routed into a tunnel.
//!
//! A Node is skipped as a whole (named, with the offending field) when
//! - a pod CIDR is a /0 (it would tunnel all of the node's non-pod egress to that node),
//! - two of its own pod CIDRs overlap,
//! - a pod CIDR overlaps a reserved range: the underlay (the uplink's subnets and every node's
//!   address), the service CIDRs, or (for another node) this node's own addresses,
//! - a pod CIDR overlaps one an earlier claimant holds (see below), or
//! - its calico tunnel address is outside its pod CIDRs (it would become a /32 route stealing
//!   whatever pod holds that address).
//!
//! Skipped nodes are no peer either: their tunnel packets are not accepted.
//!
//! # Who keeps an overlapping range
//! Claims are taken in this order: the local node (its pods are here, whatever a remote object
//! says), then nodes that already hold one of their ranges in the maps (so a new object can never
//! take an existing node's pods, even after the agent restarts: the maps are adopted), then by
//! creation time (older first), then by name. A claim overlapping an accepted one is refused,
//! whether it is equal, inside (the /25 inside a real node's /24 that would win every LPM lookup)
//! or around it (a /16 over real nodes' /24s). So a range inside another node's is refused
//! whenever that node is the incumbent or the older object; an older range inside a newer
//! object's wider one keeps its pods (the newer, wider claim is the one refused).

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::{
    k8s::{Problem, Severity},
    model::{Cidr, NodeInfo},
};

/// A range no pod CIDR may overlap, and what it is (for the message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub cidr: Cidr,
    pub what: String,
    /// Reserved for other nodes only: this node's own addresses (cni0's 10.244.1.1/24 lies in
    /// its own pod CIDR by design).
    pub remote_only: bool,
}

impl Reserved {
    pub fn new(cidr: Cidr, what: impl Into<String>) -> Self {
        Reserved {
            cidr,
            what: what.into(),
            remote_only: false,
        }
    }

    pub fn remote_only(cidr: Cidr, what: impl Into<String>) -> Self {
        Reserved {
            remote_only: true,
            ..Reserved::new(cidr, what)
        }
    }
}

pub fn overlaps(a: &Cidr, b: &Cidr) -> bool {
    let len = a.len.min(b.len);
    Cidr::new(a.addr, len) == Cidr::new(b.addr, len)
}

/// The nodes that pass (in input order) and a problem per skipped node. `held` is what the
/// overlay maps hold now: range -> the node address it routes to.
pub fn validate(
    nodes: &[NodeInfo],
    local_node: &str,
    reserved: &[Reserved],
    held: &BTreeMap<Cidr, Ipv4Addr>,
) -> (Vec<NodeInfo>, Vec<Problem>) {
    let mut reserved = reserved.to_vec();
    for n in nodes {
        reserved.push(Reserved::new(
            Cidr::new(n.address, 32),
            format!("node {}'s address", n.name),
        ));
    }
    let mut order: Vec<&NodeInfo> = nodes.iter().collect();
    order.sort_by_key(|n| {
        let incumbent = cidrs(n).iter().any(|c| held.get(c) == Some(&n.address));
        (
            n.name != local_node,
            !incumbent,
            n.created.unwrap_or(i64::MAX),
            n.name.clone(),
        )
    });
    let mut claimed: Vec<(Cidr, &str)> = Vec::new();
    let mut refused = BTreeMap::new();
    for node in order {
        let local = node.name == local_node;
        match check(node, local, &reserved, &claimed) {
            Ok(()) => claimed.extend(cidrs(node).into_iter().map(|c| (c, node.name.as_str()))),
            Err((field, message)) => {
                refused.insert(node.name.clone(), problem(node, field, message));
            }
        }
    }
    let accepted = nodes
        .iter()
        .filter(|n| !refused.contains_key(&n.name))
        .cloned()
        .collect();
    (accepted, refused.into_values().collect())
}

fn cidrs(node: &NodeInfo) -> Vec<Cidr> {
    node.pod_cidrs
        .iter()
        .map(|&(a, l)| Cidr::new(a, l))
        .collect()
}

fn problem(node: &NodeInfo, field: String, message: String) -> Problem {
    Problem {
        kind: "Node",
        object: node.name.clone(),
        field,
        message: format!("{message}; object skipped"),
        severity: Severity::Invalid,
    }
}

const POD_CIDRS: &str = "spec.podCIDRs";
const TUNNEL_ADDR: &str = "metadata.annotations[projectcalico.org/IPv4IPIPTunnelAddr]";

/// Why `node` may not claim its ranges: (field, message).
fn check(
    node: &NodeInfo,
    local: bool,
    reserved: &[Reserved],
    claimed: &[(Cidr, &str)],
) -> Result<(), (String, String)> {
    let own = cidrs(node);
    let bad = |m: String| Err((POD_CIDRS.to_owned(), m));
    for (i, c) in own.iter().enumerate() {
        if c.len == 0 {
            return bad(format!("{c} would tunnel every address to this node"));
        }
        if let Some(o) = own[..i].iter().find(|o| overlaps(c, o)) {
            return bad(format!("{c} overlaps this node's own {o}"));
        }
        let rsv = reserved
            .iter()
            .filter(|r| !(local && r.remote_only))
            // A node's own address may be inside its own pod CIDR (calico tunl0-less setups).
            .filter(|r| r.cidr != Cidr::new(node.address, 32))
            .find(|r| overlaps(c, &r.cidr));
        if let Some(r) = rsv {
            return bad(format!("{c} overlaps {} ({})", r.cidr, r.what));
        }
        if let Some((o, owner)) = claimed.iter().find(|(o, _)| overlaps(c, o)) {
            return bad(format!(
                "{c} overlaps {o} of node {owner}, which claimed it first"
            ));
        }
    }
    if let Some(t) = node.ipip_tunnel_addr {
        if !own.iter().any(|c| c.contains(t)) {
            return Err((
                TUNNEL_ADDR.to_owned(),
                format!("{t} is outside the node's pod CIDRs"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        let (a, l) = s.split_once('/').unwrap();
        Cidr::new(ip(a), l.parse().unwrap())
    }

    fn node(name: &str, addr: &str, pod_cidr: &str, created: i64) -> NodeInfo {
        let c = cidr(pod_cidr);
        NodeInfo {
            name: name.into(),
            address: ip(addr),
            pod_cidrs: vec![(c.addr, c.len)],
            vtep_mac: None,
            ipip_tunnel_addr: None,
            created: Some(created),
        }
    }

    fn names(nodes: &[NodeInfo]) -> Vec<&str> {
        nodes.iter().map(|n| n.name.as_str()).collect()
    }

    fn underlay() -> Vec<Reserved> {
        vec![
            Reserved::new(cidr("198.18.0.0/24"), "the uplink's subnet"),
            Reserved::new(cidr("10.96.0.0/12"), "the service CIDR"),
            Reserved::remote_only(cidr("10.244.1.1/32"), "this node's address on cni0"),
        ]
    }

    fn fields(problems: &[Problem]) -> Vec<(&str, &str)> {
        problems
            .iter()
            .map(|p| (p.object.as_str(), p.field.as_str()))
            .collect()
    }

    #[test]
    fn a_subnet_inside_a_real_nodes_range_is_refused() {
        let mut nodes = vec![
            node("node1", "198.18.0.11", "10.244.1.0/24", 100),
            node("node2", "198.18.0.12", "10.244.2.0/24", 100),
            // Newer, inside node2's range: more specific, it would win every lookup.
            node("aaa-thief", "198.18.0.99", "10.244.2.128/25", 200),
        ];
        let (ok, problems) = validate(&nodes, "node1", &underlay(), &BTreeMap::new());
        assert_eq!(names(&ok), ["node1", "node2"]);
        assert_eq!(fields(&problems), [("aaa-thief", "spec.podCIDRs")]);
        assert!(
            problems[0].message.contains("10.244.2.0/24 of node node2"),
            "{}",
            problems[0]
        );
        // Even an object that claims to be older cannot take a range node2 holds in the maps.
        nodes[2].created = Some(1);
        let held = BTreeMap::from([(cidr("10.244.2.0/24"), ip("198.18.0.12"))]);
        let (ok, problems) = validate(&nodes, "node1", &underlay(), &held);
        assert_eq!(names(&ok), ["node1", "node2"]);
        assert_eq!(fields(&problems), [("aaa-thief", "spec.podCIDRs")]);
        // A range around another node's is refused the same way.
        nodes[2].pod_cidrs = vec![(ip("10.244.0.0"), 16)];
        let (ok, _) = validate(&nodes, "node1", &underlay(), &held);
        assert_eq!(names(&ok), ["node1", "node2"]);
    }

    #[test]
    fn equal_ranges_go_to_the_older_object_and_the_local_node_always_wins() {
        let nodes = [
            node("node1", "198.18.0.11", "10.244.1.0/24", 500),
            node("node2", "198.18.0.12", "10.244.2.0/24", 200),
            node("node0", "198.18.0.10", "10.244.2.0/24", 100),
            node("early", "198.18.0.9", "10.244.1.0/24", 1),
        ];
        let (ok, problems) = validate(&nodes, "node1", &underlay(), &BTreeMap::new());
        assert_eq!(names(&ok), ["node1", "node0"]);
        assert_eq!(
            fields(&problems),
            [("early", "spec.podCIDRs"), ("node2", "spec.podCIDRs")]
        );
    }

    #[test]
    fn slash_zero_underlay_service_and_local_addresses_are_refused() {
        let nodes = [
            node("node1", "198.18.0.11", "10.244.1.0/24", 1),
            node("all", "198.18.0.20", "0.0.0.0/0", 1),
            node("underlay", "198.18.0.21", "198.18.0.128/25", 1),
            node("services", "198.18.0.22", "10.100.0.0/16", 1),
            node("other-node", "198.18.0.23", "192.0.2.0/24", 1),
            // Routed to from a different subnet.
            node("far", "192.0.2.5", "10.244.9.0/24", 1),
        ];
        let (ok, problems) = validate(&nodes, "node1", &underlay(), &BTreeMap::new());
        assert_eq!(names(&ok), ["node1", "far"]);
        let messages: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 4, "{messages:#?}");
        assert!(messages[0].contains("invalid Node all: spec.podCIDRs: 0.0.0.0/0"));
        assert!(messages.iter().any(|m| m.contains("the uplink's subnet")));
        assert!(messages.iter().any(|m| m.contains("the service CIDR")));
        assert!(messages.iter().any(|m| m.contains("node far's address")));
        // cni0's address in the local node's own range is fine; in a remote node's it is not.
        let nodes = [
            node("node1", "198.18.0.11", "10.244.1.0/24", 1),
            node("node5", "198.18.0.15", "10.244.1.0/30", 0),
        ];
        let (ok, problems) = validate(&nodes, "node5", &underlay(), &BTreeMap::new());
        assert_eq!(names(&ok), ["node5"]);
        assert!(problems[0].message.contains("this node's address on cni0"));
    }

    #[test]
    fn tunnel_address_must_be_inside_the_nodes_pod_cidrs() {
        let mut n2 = node("node2", "198.18.0.12", "10.244.2.0/24", 1);
        n2.ipip_tunnel_addr = Some(ip("10.244.1.7"));
        let mut n3 = node("node3", "198.18.0.13", "10.244.3.0/24", 1);
        n3.ipip_tunnel_addr = Some(ip("10.244.3.1"));
        let own_overlap = NodeInfo {
            pod_cidrs: vec![(ip("10.244.4.0"), 24), (ip("10.244.4.0"), 23)],
            ..node("node4", "198.18.0.14", "10.244.4.0/24", 1)
        };
        let nodes = [
            node("node1", "198.18.0.11", "10.244.1.0/24", 1),
            n2,
            n3,
            own_overlap,
        ];
        let (ok, problems) = validate(&nodes, "node1", &underlay(), &BTreeMap::new());
        assert_eq!(names(&ok), ["node1", "node3"]);
        assert_eq!(
            fields(&problems),
            [("node2", TUNNEL_ADDR), ("node4", "spec.podCIDRs"),]
        );
    }
}
