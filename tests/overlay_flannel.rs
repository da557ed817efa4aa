//! The overlay in the lab: VXLAN interop with the kernel's own vxlan device configured exactly as
//! flannel configures it (flannel.1, set up by `dataplane_lab::flannel`), both ways. Harness:
//! tests/support/overlay.rs.

mod support;

use std::net::Ipv4Addr;

use dataplane_common::{Hook, Reason};
use dataplane_lab::{flannel, lab::Cni};
use support::overlay::*;

/// node2's flannel.1 MAC.
fn flannel_vtep() -> [u8; 6] {
    flannel::vtep_mac(2)
}

// ---------------------------------------------------------------------------------------------
// Interop with flannel.1
// ---------------------------------------------------------------------------------------------

#[test]
fn vxlan_interoperates_with_flannel_1_both_ways() {
    let o = Overlay::start(
        &spec(Cni::Flannel, flannel::MTU),
        &[0],
        &["--overlay", "vxlan"],
        |lab| {
            // node2 as flannel configures it, node1's VTEP answering on its uplink's MAC.
            let node1 = flannel::Peer::of(lab.node(0), uplink_mac(lab.node(0)));
            flannel::configure(lab.node(1), flannel_vtep(), &[node1]).unwrap();
        },
    );
    let nodes = vec![
        node_info(o.node(0), uplink_mac(o.node(0))),
        node_info(o.node(1), flannel_vtep()),
    ];
    o.sync(0, &nodes);
    let (p1, p2) = (o.lab.pod(0, 0).host(), o.lab.pod(1, 0).host());

    let cap = Capture::start(o.lab.switch_ns(), "node1");
    p1.ping(p2.ip, 2).unwrap();
    p2.ping(p1.ip, 2).unwrap();
    let frames = cap.finish();
    let vx = vxlan_frames(&frames, flannel::PORT);
    let ours: Vec<_> = vx
        .iter()
        .filter(|(f, _, _)| f.ipv4().unwrap().src == o.node(0).underlay_ip)
        .collect();
    let kernel: Vec<_> = vx
        .iter()
        .filter(|(f, _, _)| f.ipv4().unwrap().src == o.node(1).underlay_ip)
        .collect();
    assert!(
        ours.len() >= 4 && kernel.len() >= 4,
        "ours {}, kernel {}: {frames:?}",
        ours.len(),
        kernel.len()
    );
    let n1_mac = uplink_mac(o.node(0));
    for (outer, vni, inner) in &ours {
        let (ip, udp) = (outer.ipv4().unwrap(), outer.udp().unwrap());
        assert_eq!(*vni, 1);
        assert_eq!((ip.dst, udp.dport), (o.node(1).underlay_ip, flannel::PORT));
        assert_eq!(
            (inner.dst, inner.src),
            (flannel_vtep(), n1_mac),
            "inner MACs: VTEP to VTEP"
        );
        assert_eq!(outer.src, n1_mac);
        assert!(
            ip.checksum_ok && udp.checksum != 0 && udp.checksum_ok,
            "outer checksums: {ip:?} {udp:?}"
        );
        assert!((32768..61000).contains(&udp.sport), "{udp:?}");
    }
    // Field by field against what the kernel's device sent in the same conversation.
    let (k_outer, k_vni, _) = kernel[0];
    let (kip, kudp) = (k_outer.ipv4().unwrap(), k_outer.udp().unwrap());
    for (outer, vni, inner) in &ours {
        let ip = outer.ipv4().unwrap();
        assert_eq!(
            (
                ip.tos,
                ip.ttl,
                ip.dont_fragment,
                ip.more_fragments,
                ip.frag_offset,
                ip.ihl,
                ip.options.len(),
                *vni
            ),
            (
                kip.tos,
                kip.ttl,
                kip.dont_fragment,
                kip.more_fragments,
                kip.frag_offset,
                kip.ihl,
                kip.options.len(),
                *k_vni
            ),
            "outer IPv4 fields like flannel.1's"
        );
        assert_eq!(
            ip.total_len as usize,
            20 + 8 + 8 + 14 + inner.ipv4().unwrap().total_len as usize
        );
        assert_eq!(outer.udp().unwrap().len, ip.total_len - 20);
        assert_eq!(
            &outer.payload()[..8],
            &k_outer.payload()[..8],
            "VXLAN header like flannel.1's"
        );
        assert_ne!(
            kudp.checksum, 0,
            "flannel.1 sends UDP checksums (udpcsum is the kernel's default)"
        );
    }
    // One flow, one outer source port (the underlay keeps it on one path, as flannel.1 does):
    // every packet of a ping flow (requests or replies) leaves with the same port, from the
    // range flannel.1 uses. (The
    // port itself need not be flannel.1's: packets without a stack hash are hashed from their
    // inner 5-tuple here, by the kernel's flow dissector there.)
    let mut flows: std::collections::HashMap<(Ipv4Addr, Ipv4Addr, u32), u16> = Default::default();
    let (ports_min, ports_max) = (32_768, 60_999);
    for (outer, _, inner) in &ours {
        let ip = inner.ipv4().unwrap();
        let (Some(_), Some(id)) = (icmp_echo(ip), ip.icmp().map(|i| i.rest_of_header >> 16)) else {
            continue;
        };
        let sport = outer.udp().unwrap().sport;
        assert!(
            (ports_min..=ports_max).contains(&sport),
            "outer source port {sport}"
        );
        let first = *flows.entry((ip.src, ip.dst, id)).or_insert(sport);
        assert_eq!(first, sport, "one ping flow, two outer source ports");
    }
    assert!(
        flows.len() >= 2,
        "both pings' flows seen (ours: requests of one, replies of the other): {flows:?}"
    );
    for (k, _, _) in &kernel {
        let sport = k.udp().unwrap().sport;
        assert!(
            (ports_min..=ports_max).contains(&sport),
            "flannel.1's source port {sport}"
        );
    }
    let ids: Vec<u16> = ours.iter().map(|(f, _, _)| f.ipv4().unwrap().id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] != w[1]),
        "fresh IP IDs: {ids:?}"
    );

    // Traffic both ways, including the nodes' own and bulk TCP (GSO, offloaded checksums).
    echo_both(&p1, &p2, 7101, p1.ip);
    echo_both(&p2, &p1, 7102, p2.ip);
    echo_both(&o.node(0).host(), &p2, 7103, Ipv4Addr::new(10, 244, 1, 0));
    echo_both(&o.node(1).host(), &p1, 7104, Ipv4Addr::new(10, 244, 2, 0));
    bulk(&p1, &p2, 7105, 4 << 20, 4 << 20);
    bulk(&p2, &p1, 7106, 4 << 20, 4 << 20);
    let s = o.stats(0);
    // Bytes, not packets: a GSO burst from flannel.1 is decapsulated whole, as one packet.
    assert!(uplink_in_bytes(&s, Reason::OverlayDecap) > 4 << 20, "{s:?}");
    assert!(
        s.packets(Hook::TcUplinkEgress, Reason::OverlayEncap) > 100,
        "{s:?}"
    );
}
