//! Hostile or broken Node objects in the lab: two agents (`dataplane run --overlay vxlan`) on
//! real namespaces, fed node lists with a range thief, a /0, an underlay overlap and a
//! tunnel-address thief, and a node whose kernel already routes a remote pod CIDR. What must
//! hold: the real nodes' pods stay reachable through the tunnel, no route or map entry is made
//! from a refused Node, each refused Node is named with its field, and no kernel route the
//! agent did not create is replaced.

mod support;

use std::time::Duration;

use dataplane::{model::NodeInfo, overlay::OverlayTable};
use dataplane_lab::{
    lab::{Cni, LabSpec, Node},
    netns,
};
use support::node::{CheckedLab, DataplaneNode};

fn spec() -> LabSpec {
    LabSpec {
        nodes: 2,
        pods_per_node: 2,
        cni: Cni::Flannel,
        pod_mtu: 1450,
        underlay_routes: false,
        external_client: false,
    }
}

fn uplink_mac(n: &Node) -> [u8; 6] {
    let (ns, uplink) = (n.ns.clone(), n.uplink.clone());
    netns::in_netns(&ns, move || dataplane::host::netdev::mac(&uplink))
        .unwrap()
        .unwrap()
}

fn node_info(n: &Node, created: i64) -> NodeInfo {
    NodeInfo {
        name: n.name.clone(),
        address: n.underlay_ip,
        pod_cidrs: vec![n.pod_cidr],
        vtep_mac: Some(uplink_mac(n)),
        ipip_tunnel_addr: None,
        created: Some(created),
    }
}

fn bogus(name: &str, addr: [u8; 4], cidr: ([u8; 4], u8), created: i64) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        address: addr.into(),
        pod_cidrs: vec![(cidr.0.into(), cidr.1)],
        vtep_mac: Some([2, 0, 0, 0, 0, 0x99]),
        ipip_tunnel_addr: None,
        created: Some(created),
    }
}

/// `OverlayTable::sync` for `dp` in its namespace; returns the skipped (object, field) pairs.
fn sync(dp: &DataplaneNode, nodes: &[NodeInfo]) -> Vec<(String, String, String)> {
    let (pin, name, nodes) = (
        dp.pin_dir().to_path_buf(),
        dp.node_name().to_string(),
        nodes.to_vec(),
    );
    netns::in_netns(dp.ns(), move || {
        let mut table = OverlayTable::open_pinned(&pin)?;
        table.set_service_cidrs(vec!["10.96.0.0/12".parse().unwrap()]);
        table.sync(&nodes, &name)?;
        Ok::<_, anyhow::Error>(
            table
                .skipped()
                .iter()
                .map(|p| (p.object.clone(), p.field.clone(), p.message.clone()))
                .collect(),
        )
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("overlay sync on {}: {e:#}", dp.node_name()))
}

fn sh(ns: &str, argv: &[&str]) -> String {
    netns::run_in(ns, argv).unwrap_or_else(|e| panic!("{e:#}"))
}

fn names(skipped: &[(String, String, String)]) -> Vec<(&str, &str)> {
    skipped
        .iter()
        .map(|(o, f, _)| (o.as_str(), f.as_str()))
        .collect()
}

#[test]
fn bad_node_objects_are_skipped_and_the_real_nodes_keep_their_pods() {
    support::require_root();
    let lab = CheckedLab::build(&spec()).unwrap();
    let args = ["--overlay", "vxlan"];
    let dp: Vec<_> = (0..2)
        .map(|i| DataplaneNode::start(&lab, i, &args).unwrap())
        .collect();
    let real: Vec<NodeInfo> = lab.nodes().iter().map(|n| node_info(n, 1000)).collect();
    for d in &dp {
        assert_eq!(sync(d, &real), []);
    }
    let (p1, p2) = (lab.pod(0, 0).host(), lab.pod(1, 0).host());
    p1.ping(p2.ip, 1).unwrap();
    let default_before = sh(&lab.node(0).ns, &["ip", "route", "show", "default"]);

    let mut hostile = real.clone();
    hostile.extend([
        // A /25 inside node2's /24 (claiming to be older): it would win every lookup and send
        // node2's pods to a host that does not exist.
        bogus("thief", [198, 18, 0, 99], ([10, 244, 2, 0], 25), 1),
        bogus("everything", [198, 18, 0, 98], ([0, 0, 0, 0], 0), 2000),
        bogus("underlay", [198, 18, 0, 97], ([198, 18, 0, 128], 25), 2000),
        bogus("services", [198, 18, 0, 96], ([10, 100, 0, 0], 16), 2000),
    ]);
    let mut tunnel_thief = bogus("tunnel", [198, 18, 0, 95], ([10, 244, 9, 0], 24), 2000);
    tunnel_thief.ipip_tunnel_addr = Some(p2.ip);
    hostile.push(tunnel_thief);
    let skipped = sync(&dp[0], &hostile);
    assert_eq!(
        names(&skipped),
        [
            ("everything", "spec.podCIDRs"),
            ("services", "spec.podCIDRs"),
            ("thief", "spec.podCIDRs"),
            (
                "tunnel",
                "metadata.annotations[projectcalico.org/IPv4IPIPTunnelAddr]"
            ),
            ("underlay", "spec.podCIDRs"),
        ],
        "{skipped:#?}"
    );
    let n1 = &lab.node(0).ns;
    let routes = sh(n1, &["ip", "route", "show", "proto", "73"]);
    assert_eq!(
        routes.lines().count(),
        1,
        "only node2's pod CIDR is routed:\n{routes}"
    );
    assert!(
        routes.starts_with("10.244.2.0/24 via 10.244.2.0"),
        "{routes}"
    );
    assert_eq!(sh(n1, &["ip", "route", "show", "default"]), default_before);
    // Nothing of the refused nodes reached the maps: no route, no peer.
    let table = {
        let pin = dp[0].pin_dir().to_path_buf();
        OverlayTable::open_pinned(&pin).unwrap()
    };
    let routed: Vec<String> = table.routes().keys().map(|c| c.to_string()).collect();
    assert_eq!(routed, ["10.244.1.0/24", "10.244.2.0/24"]);
    let peers: Vec<String> = table.peers().keys().map(|a| a.to_string()).collect();
    assert_eq!(peers, ["198.18.0.12"]);
    // node2's pods are still reached through the tunnel, both ways.
    p1.ping(p2.ip, 2).unwrap();
    p2.ping(p1.ip, 2).unwrap();
    let p22 = lab.pod(1, 1).host();
    p1.ping(p22.ip, 1).unwrap();
}

#[test]
fn the_agent_never_replaces_a_route_it_did_not_create() {
    support::require_root();
    let lab = CheckedLab::build(&spec()).unwrap();
    let (n1, n2) = (lab.node(0).clone(), lab.node(1).clone());
    // An operator's (or another daemon's) route to node2's pods, over the underlay.
    let via = n2.underlay_ip.to_string();
    sh(
        &n1.ns,
        &[
            "ip",
            "route",
            "add",
            "10.244.2.0/24",
            "via",
            &via,
            "dev",
            &n1.uplink,
            "proto",
            "static",
        ],
    );
    let dp: Vec<_> = (0..2)
        .map(|i| DataplaneNode::start(&lab, i, &["--overlay", "vxlan"]).unwrap())
        .collect();
    let real: Vec<NodeInfo> = lab.nodes().iter().map(|n| node_info(n, 1000)).collect();
    assert_eq!(sync(&dp[1], &real), []);
    let skipped = sync(&dp[0], &real);
    assert_eq!(names(&skipped), [("node2", "spec.podCIDRs")]);
    assert!(skipped[0].2.contains("proto static"), "{skipped:?}");
    let route = sh(&n1.ns, &["ip", "route", "show", "10.244.2.0/24"]);
    assert_eq!(
        route.trim(),
        format!("10.244.2.0/24 via {via} dev {} proto static", n1.uplink),
    );
    // The connected underlay subnet is no more touchable: a Node claiming it is refused.
    let mut thief = node_info(&n2, 2000);
    thief.name = "node3".into();
    thief.address = [198, 18, 0, 13].into();
    thief.pod_cidrs = vec![([198, 18, 0, 0].into(), 24)];
    let skipped = sync(&dp[0], &[real.clone(), vec![thief]].concat());
    assert!(
        names(&skipped).contains(&("node3", "spec.podCIDRs")),
        "{skipped:?}"
    );
    let connected = sh(&n1.ns, &["ip", "route", "show", "198.18.0.0/24"]);
    assert!(connected.contains("proto kernel"), "{connected}");
    // The static route still carries node1's traffic to node2's pods (node2 answers through
    // its tunnel).
    let (p1, p2) = (lab.pod(0, 0).host(), lab.pod(1, 0).host());
    std::thread::sleep(Duration::from_millis(100));
    p1.ping(p2.ip, 2).unwrap();
}
