//! The overlay in the lab, VXLAN between nodes running `dataplane run --overlay`: pod, node and
//! service traffic, XDP opening tunnel packets, the cached underlay next hop, the outer source of
//! a node with two addresses, the overlay built from Node objects. Harness: tests/support/overlay.rs.

mod support;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData};
use dataplane::{
    model::Protocol,
    services::{LocalContext, ServiceTable},
};

use dataplane_common::{map_names, overlay::OverlayNextHop, Hook, Reason};
use dataplane_lab::{flannel::mac_text, lab::Cni, manifests};
use support::cluster;
use support::node::{CheckedLab, DataplaneNode};
use support::overlay::*;

// ---------------------------------------------------------------------------------------------
// VXLAN between two nodes of ours
// ---------------------------------------------------------------------------------------------

/// Where the uplink has native XDP (forced here; `auto` attaches none to a veth uplink with an
/// overlay), XDP opens tunnel packets and tc ingress sees only inner packets; IPIP and VXLAN
/// both, with bulk transfers in both directions.
#[test]
fn with_native_xdp_tunnel_packets_are_opened_in_xdp() {
    for (mode, mtu) in [("vxlan", 1450), ("ipip", 1480)] {
        let o = Overlay::start(
            &spec(Cni::Calico, mtu),
            &[0, 1],
            &["--overlay", mode, "--xdp-mode", "native"],
            |_| {},
        );
        o.sync_all();
        for k in 0..2 {
            let link = sh(&o.node(k).ns, &["ip", "-d", "link", "show", "eth0"]);
            assert!(link.contains("prog/xdp"), "{mode}: {link}");
        }
        let (p1, p2) = (o.lab.pod(0, 0).host(), o.lab.pod(1, 0).host());
        echo_both(&p1, &p2, 7401, p1.ip);
        bulk(&p1, &p2, 7402, 2 << 20, 2 << 20);
        for k in 0..2 {
            let s = o.stats(k);
            assert!(
                s.packets(Hook::XdpUplink, Reason::OverlayDecap) >= 20
                    && s.packets(Hook::TcUplinkIngress, Reason::OverlayDecap) == 0,
                "{mode} node{}: {s:?}",
                k + 1
            );
        }
    }
}

#[test]
fn vxlan_carries_pod_node_and_service_traffic_between_our_nodes() {
    let o = Overlay::start(
        &spec(Cni::Flannel, 1450),
        &[0, 1],
        &["--overlay", "vxlan"],
        |_| {},
    );
    let (p1, p2) = (o.lab.pod(0, 0).host(), o.lab.pod(1, 0).host());
    // Without the overlay's routes nothing crosses: the lab has no pod routes between nodes.
    assert!(
        p1.ping(p2.ip, 1).is_err(),
        "pods must not reach each other before the overlay is synced"
    );

    o.sync_all();
    let route = sh(&o.node(0).ns, &["ip", "route", "get", "10.244.2.2"]);
    assert!(
        route.contains("via 10.244.2.0 dev eth0")
            && route.contains("src 10.244.1.0")
            && route.contains("mtu 1450"),
        "{route}"
    );
    p1.ping(p2.ip, 1).unwrap();

    // Sync is by diff: the same nodes again change nothing, in the maps or the kernel.
    let nodes = o.node_infos();
    assert!(o.sync(0, &nodes).is_empty());
    // node2 leaves: its route, neighbour and peer go, and its pods are unreachable ...
    let r = o.sync(0, &nodes[..1]);
    assert_eq!(
        (r.routes_deleted, r.peers_deleted, r.kernel_changes),
        (1, 1, 2),
        "{r:?}"
    );
    assert!(!sh(&o.node(0).ns, &["ip", "route"]).contains("10.244.2.0/24"));
    assert!(p1.ping(p2.ip, 1).is_err());
    // ... and comes back.
    let r = o.sync(0, &nodes);
    assert_eq!(
        (r.routes_written, r.peers_written, r.kernel_changes),
        (1, 1, 2),
        "{r:?}"
    );

    p1.ping(p2.ip, 3).unwrap();
    p2.ping(p1.ip, 3).unwrap();
    echo_both(&p1, &p2, 7001, p1.ip);
    echo_both(&p2, &p1, 7002, p2.ip);
    // The node's own traffic to a remote pod leaves from its overlay address and comes back.
    let n1 = o.node(0).host();
    n1.ping(p2.ip, 2).unwrap();
    echo_both(&n1, &p2, 7003, Ipv4Addr::new(10, 244, 1, 0));
    echo_both(&o.node(1).host(), &p1, 7004, Ipv4Addr::new(10, 244, 2, 0));

    for k in 0..2 {
        let s = o.stats(k);
        assert!(
            s.packets(Hook::TcUplinkEgress, Reason::OverlayEncap) >= 20,
            "node{}: {s:?}",
            k + 1
        );
        assert!(
            uplink_in(&s, Reason::OverlayDecap) >= 20,
            "node{}: {s:?}",
            k + 1
        );
        for r in [
            Reason::DropOverlayUnknownPeer,
            Reason::DropOverlayNotLocal,
            Reason::DropOverlayMalformed,
            Reason::DropOverlayTooBig,
            Reason::DropOverlayEncapFailed,
        ] {
            assert_eq!(
                s.packets(Hook::TcUplinkEgress, r) + uplink_in(&s, r),
                0,
                "node{}: {} {s:?}",
                k + 1,
                r.name()
            );
        }
    }

    // A ClusterIP whose only backend is on node2: DNAT at node1's pod ingress, then the tunnel;
    // the backend's replies are decapsulated in XDP, then reverse-NATed.
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    let backend = o.lab.pod(1, 1);
    let _srv = backend.host().tcp_echo_server(8080).unwrap();
    let _usrv = backend.host().udp_echo_server(8080).unwrap();
    let tcp = cluster::cluster_ip(
        "web",
        vip,
        Protocol::Tcp,
        vec![cluster::backend(backend, 8080)],
    );
    let udp = cluster::cluster_ip(
        "dns",
        vip,
        Protocol::Udp,
        vec![cluster::backend(backend, 8080)],
    );
    for dp in &o.dp {
        let local = LocalContext {
            node_name: dp.node_name().to_string(),
            ..Default::default()
        };
        ServiceTable::open_pinned(dp.pin_dir(), local)
            .unwrap()
            .sync(&[tcp.clone(), udp.clone()])
            .unwrap();
    }
    let before = o.stats(0);
    for i in 0..5 {
        let r = p1.tcp_request(vip, &format!("svc {i}"), T).unwrap();
        assert_eq!(
            (r.server.as_str(), *r.peer.ip()),
            (backend.name.as_str(), p1.ip)
        );
        let r = p1.udp_request(vip, &format!("svc {i}"), T).unwrap();
        assert_eq!(
            (r.server.as_str(), *r.peer.ip()),
            (backend.name.as_str(), p1.ip)
        );
    }
    let after = o.stats(0);
    let delta = |h, r| after.packets(h, r) - before.packets(h, r);
    assert!(
        delta(Hook::TcPodIngress, Reason::LbNewConnection) >= 10,
        "{after:?}"
    );
    let nat_replies: u64 = Hook::PACKET
        .iter()
        .map(|&h| delta(h, Reason::NatReply))
        .sum();
    assert!(
        nat_replies >= 10,
        "replies reverse-NATed after decapsulation: {after:?}"
    );
    assert!(
        delta(Hook::XdpUplink, Reason::OverlayDecap)
            + delta(Hook::TcUplinkIngress, Reason::OverlayDecap)
            >= 10,
        "{after:?}"
    );

    // NodePort on node1 from the external client, backend on node2.
    let np = cluster::with_node_port(
        cluster::cluster_ip(
            "np",
            SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80),
            Protocol::Tcp,
            vec![cluster::backend(backend, 8080)],
        ),
        &[o.node(0).underlay_ip],
        30080,
    );
    for dp in &o.dp {
        let local = LocalContext {
            node_name: dp.node_name().to_string(),
            ..Default::default()
        };
        ServiceTable::open_pinned(dp.pin_dir(), local)
            .unwrap()
            .sync(&[tcp.clone(), udp.clone(), np.clone()])
            .unwrap();
    }
    let ext = o.lab.external().unwrap().clone();
    // Frames from another machine arrive with complete checksums, never as CHECKSUM_PARTIAL
    // skbs of a local stack (what veth hands over with offload on): XDP's incremental NAT
    // updates need the former.
    sh(&ext.ns, &["ethtool", "-K", "eth0", "tx", "off"]);
    let r = ext
        .tcp_request(
            SocketAddrV4::new(o.node(0).underlay_ip, 30080),
            "nodeport",
            T,
        )
        .unwrap();
    assert_eq!(r.server, backend.name);
    // In and out of eth0 without a tunnel device: the node must not send ICMP redirects.
    assert_eq!(snmp(&o.node(0).ns, "Icmp", "OutRedirects"), 0);
}

/// The next hop toward node2 as node1's encapsulation cached it (`OVERLAY_NEXTHOP_V1`).
fn cached_next_hop(dp: &DataplaneNode, node_addr: Ipv4Addr) -> Option<OverlayNextHop> {
    let data = MapData::from_pin(dp.pin_dir().join(map_names::OVERLAY_NEXTHOP)).unwrap();
    let map: aya::maps::HashMap<_, u32, OverlayNextHop> =
        aya::maps::HashMap::try_from(Map::LruHashMap(data)).unwrap();
    map.get(&u32::from_ne_bytes(node_addr.octets()), 0).ok()
}

/// The encapsulation caches the underlay next hop per node and asks the FIB again once the
/// entry is a second old: when a node's uplink MAC changes (a replaced NIC, a moved VM) and the
/// neighbour entry follows, its pods are reached again within about a second, with no agent
/// involved; while the entry is fresh, packets take the cached MAC.
#[test]
fn encapsulation_follows_a_changed_underlay_neighbour() {
    let o = Overlay::start(
        &spec(Cni::Flannel, 1450),
        &[0, 1],
        &["--overlay", "vxlan"],
        |_| {},
    );
    o.sync_all();
    let (p1, p2) = (o.lab.pod(0, 0).host(), o.lab.pod(1, 0).host());
    // The first packet finds node2's underlay neighbour unresolved (bpf_redirect_neigh resolves
    // it; nothing is cached); the next ones take the FIB's answer and cache it.
    p1.ping(p2.ip, 3).unwrap();
    let node2 = o.node(1);
    let dump = || {
        let pin = o.dp[0].pin_dir().join(map_names::OVERLAY_NEXTHOP);
        sh(
            &o.node(0).ns,
            &[
                support::node::bpftool(),
                "map",
                "dump",
                "pinned",
                pin.to_str().unwrap(),
            ],
        )
    };
    let hop = cached_next_hop(&o.dp[0], node2.underlay_ip)
        .unwrap_or_else(|| panic!("next hop not cached: {}\n{:?}", dump(), o.stats(0)));
    assert_eq!(hop.dmac, uplink_mac(node2), "{hop:?}");
    assert_eq!(hop.mtu, 1500, "the underlay route's MTU: {hop:?}");

    let new_mac = [0x02, 0, 0, 0, 0x99, 0x02];
    sh(
        &node2.ns,
        &[
            "ip",
            "link",
            "set",
            "dev",
            "eth0",
            "address",
            &mac_text(new_mac),
        ],
    );
    let addr = node2.underlay_ip.to_string();
    sh(
        &o.node(0).ns,
        &[
            "ip",
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &mac_text(new_mac),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    let changed = Instant::now();
    while p1.ping(p2.ip, 1).is_err() {
        assert!(
            changed.elapsed() < Duration::from_secs(4),
            "node2 unreachable after its MAC changed"
        );
    }
    let recovered = changed.elapsed();
    assert!(
        recovered < Duration::from_millis(2500),
        "took {recovered:?}"
    );
    let hop = cached_next_hop(&o.dp[0], node2.underlay_ip).expect("next hop cached");
    assert_eq!(hop.dmac, new_mac, "{hop:?}");
    assert!(
        o.stats(0)
            .packets(Hook::TcUplinkEgress, Reason::DropOverlayEncapFailed)
            == 0
    );
}

/// A counter of /proc/net/snmp in namespace `ns`.
fn snmp(ns: &str, group: &str, field: &str) -> u64 {
    let text = sh(ns, &["cat", "/proc/net/snmp"]);
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == field)
        .unwrap_or_else(|| panic!("{field} not in {names}"));
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

#[test]
fn vxlan_outer_source_is_the_tunnel_address_on_a_node_with_two_addresses() {
    second_address_case(Cni::Flannel, 1450, "vxlan", |f| {
        f.udp().is_some_and(|u| u.dport == 8472)
    });
}

// ---------------------------------------------------------------------------------------------
// The agent drives the overlay from Node objects
// ---------------------------------------------------------------------------------------------

#[test]
fn the_agent_builds_the_overlay_from_node_objects() {
    support::require_root();
    let lab = CheckedLab::build(&spec(Cni::Flannel, 1450)).unwrap();
    let dir = std::env::temp_dir().join(format!("{}overlay-manifests", lab.prefix()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let docs: Vec<String> = lab
        .nodes()
        .iter()
        .map(|n| manifests::flannel_node_yaml(&n.name, n.underlay_ip, n.pod_cidr, uplink_mac(n)))
        .collect();
    std::fs::write(dir.join("nodes.yaml"), docs.join("---\n")).unwrap();
    let args = ["--overlay", "vxlan", "--manifests", dir.to_str().unwrap()];
    let dp: Vec<_> = (0..2)
        .map(|i| DataplaneNode::start(&lab, i, &args).unwrap())
        .collect();
    let (p1, p2) = (lab.pod(0, 0).host(), lab.pod(1, 0).host());
    let deadline = Instant::now() + Duration::from_secs(15);
    while p1.ping(p2.ip, 1).is_err() {
        assert!(
            Instant::now() < deadline,
            "the agents never set the overlay up:\n{}\n{}",
            dp[0].stderr(),
            dp[1].stderr()
        );
    }
    p2.ping(p1.ip, 2).unwrap();
    echo_both(&p1, &p2, 7601, p1.ip);
    let route = sh(&lab.node(0).ns, &["ip", "route", "get", "10.244.2.2"]);
    assert!(
        route.contains("src 10.244.1.0") && route.contains("mtu 1450"),
        "{route}"
    );
    // Stopping leaves the datapath (and its routes) running; `dataplane cleanup` in the node
    // takes both down.
    let pins: Vec<_> = dp.iter().map(|d| d.pin_dir().to_path_buf()).collect();
    for node in dp {
        node.stop().unwrap();
    }
    p1.ping(p2.ip, 1).unwrap();
    let pin = pins[0].to_str().unwrap();
    let out = std::process::Command::new("nsenter")
        .args([
            &format!("--net=/run/netns/{}", lab.node(0).ns),
            "--",
            support::node::DATAPLANE_BIN,
            "cleanup",
            "--pin-dir",
            pin,
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("removed the overlay's kernel routes"),
        "{stdout}\n{stderr}"
    );
    let left = sh(&lab.node(0).ns, &["ip", "route", "show", "proto", "73"])
        + &sh(&lab.node(0).ns, &["ip", "addr", "show", "dev", "lo"]);
    assert!(
        !left.contains("10.244.2.0") && !left.contains("lo:overlay"),
        "{left}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
