//! The overlay in the lab, IPIP: outer headers on the wire like calico's tunl0, traffic between
//! our nodes, the outer source of a node with two addresses. Harness: tests/support/overlay.rs.

mod support;

use std::net::Ipv4Addr;

use dataplane_common::{Hook, Reason};
use dataplane_lab::{
    lab::Cni,
    packet::{self, Parsed},
};

use support::overlay::*;

// ---------------------------------------------------------------------------------------------
// IPIP: headers like calico's tunl0, traffic between our nodes
// ---------------------------------------------------------------------------------------------

fn ipip_frames(frames: &[Parsed]) -> Vec<(Parsed, packet::Ipv4Packet)> {
    frames
        .iter()
        .filter(|f| {
            f.ipv4()
                .is_some_and(|ip| ip.protocol == packet::proto::IPIP)
        })
        .filter_map(|f| f.decap_ipip().ok().map(|inner| (f.clone(), inner)))
        .collect()
}

/// Every field of a captured IPIP packet against what tunl0 emits (see the calico seed:
/// `(tos 0x0, ttl 64, id 57971, offset 0, flags [DF], proto IPIP (4), length 104)` around an
/// inner `(tos 0x0, ttl 64, id 18953, offset 0, flags [DF], proto ICMP (1), length 84)`, and
/// `flags [none]` outside an inner packet without DF).
fn check_tunl0_like(
    outer: &Parsed,
    inner: &packet::Ipv4Packet,
    src: (Ipv4Addr, [u8; 6]),
    dst: (Ipv4Addr, [u8; 6]),
) {
    let ip = outer.ipv4().unwrap();
    assert_eq!(
        (outer.src, outer.dst),
        (src.1, dst.1),
        "outer MACs: the nodes' uplinks"
    );
    assert!(outer.vlans.is_empty());
    assert_eq!(
        (ip.src, ip.dst),
        (src.0, dst.0),
        "outer addresses: the nodes' tunnel addresses"
    );
    assert_eq!((ip.ihl, ip.options.len(), ip.protocol), (5, 0, 4));
    assert_eq!(ip.tos, inner.tos & 0x03, "TOS: DSCP 0, the inner ECN bits");
    assert_eq!(ip.ttl, inner.ttl, "TTL inherited from the inner packet");
    assert_eq!(
        ip.dont_fragment, inner.dont_fragment,
        "DF copied from the inner packet (nopmtudisc)"
    );
    assert!(!ip.more_fragments && ip.frag_offset == 0);
    assert_eq!(ip.total_len, inner.total_len + 20);
    assert!(ip.checksum_ok && inner.checksum_ok, "header checksums");
    assert_eq!(outer.payload().len(), inner.total_len as usize);
}

#[test]
fn ipip_headers_match_tunl0_and_traffic_flows() {
    let o = Overlay::start(
        &spec(Cni::Calico, 1480),
        &[0, 1],
        &["--overlay", "ipip"],
        |_| {},
    );
    o.sync_all();
    let (p1, p2) = (o.lab.pod(0, 0).host(), o.lab.pod(1, 0).host());
    let route = sh(&o.node(0).ns, &["ip", "route", "get", "10.244.2.2"]);
    assert!(route.contains("mtu 1480"), "{route}");

    let cap = Capture::start(o.lab.switch_ns(), "node1");
    p1.ping(p2.ip, 3).unwrap();
    // UDP without DF (IP_PMTUDISC_DONT), to see DF follow the inner packet.
    let _u = p2.udp_echo_server(7201).unwrap();
    sh(
        &p1.ns,
        &[
            "ping",
            "-n",
            "-c",
            "2",
            "-i",
            "0.2",
            "-M",
            "dont",
            &p2.ip.to_string(),
        ],
    );
    let frames = cap.finish();
    let ipip = ipip_frames(&frames);
    let (n1, n2) = (o.node(0), o.node(1));
    let (a, b) = (
        (n1.underlay_ip, uplink_mac(n1)),
        (n2.underlay_ip, uplink_mac(n2)),
    );
    let mut seen = (0, 0, 0, 0);
    let mut ids = Vec::new();
    for (outer, inner) in &ipip {
        let from1 = outer.ipv4().unwrap().src == n1.underlay_ip;
        if from1 {
            check_tunl0_like(outer, inner, a, b)
        } else {
            check_tunl0_like(outer, inner, b, a)
        }
        if inner.protocol == 1 {
            assert_eq!(
                outer.ipv4().unwrap().total_len,
                104,
                "a 64-byte ping is 104 bytes of IPIP, as in the seed"
            );
            assert_eq!(
                icmp_echo(inner),
                Some(from1),
                "requests from node1, replies from node2"
            );
            assert_eq!(
                inner.ttl, 63,
                "the forwarded inner packet, TTL decremented once"
            );
        }
        match (from1, inner.dont_fragment) {
            (true, true) => seen.0 += 1,
            (true, false) => seen.1 += 1,
            (false, true) => seen.2 += 1,
            (false, false) => seen.3 += 1,
        }
        if from1 {
            ids.push(outer.ipv4().unwrap().id);
        }
    }
    // Requests with DF (default ping) and without (-M dont); replies without DF.
    assert!(
        seen.0 >= 3 && seen.1 >= 2 && seen.3 >= 5,
        "{seen:?} in {} IPIP frames",
        ipip.len()
    );
    ids.dedup();
    assert!(
        ids.len() >= 5 && !ids.contains(&0),
        "fresh, non-zero IDs: {ids:?}"
    );

    p2.ping(p1.ip, 2).unwrap();
    echo_both(&p1, &p2, 7202, p1.ip);
    echo_both(&p2, &p1, 7203, p2.ip);
    echo_both(&n1.host(), &p2, 7204, Ipv4Addr::new(10, 244, 1, 0));
    bulk(&p1, &p2, 7205, 2 << 20, 2 << 20);
    for k in 0..2 {
        let s = o.stats(k);
        assert!(
            s.packets(Hook::TcUplinkEgress, Reason::OverlayEncap) >= 20,
            "{s:?}"
        );
        assert!(uplink_in(&s, Reason::OverlayDecap) >= 20, "{s:?}");
    }
}

#[test]
fn ipip_outer_source_is_the_tunnel_address_on_a_node_with_two_addresses() {
    second_address_case(Cni::Calico, 1480, "ipip", |f| {
        f.ipv4().is_some_and(|ip| ip.protocol == 4)
    });
}
