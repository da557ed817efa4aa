//! BPF_PROG_TEST_RUN fixtures of the overlay: VXLAN / IPIP encapsulation at tc egress of the
//! uplink byte for byte, what it leaves alone and refuses; decapsulation in XDP and at tc ingress,
//! what it refuses. The overlay harness is `tests/support/fixture/overlay.rs`.

mod support;

use std::net::Ipv4Addr;

use dataplane_common::{
    overlay::{MODE_IPIP, MODE_NONE, MODE_VXLAN},
    Hook, Reason,
};
use dataplane_lab::packet::{self, parse, Frame};
use support::fixture::{assert_frames_eq, harness, overlay::*, Verdict};

#[test]
fn vxlan_encapsulation_is_byte_exact() {
    let lab = underlay();
    let ns = lab.node(0).ns.clone();
    let input = forwarded_ping(PEER, 0xb9, true, 56).build();
    let out = egress(&ns, MODE_VXLAN, input.clone());
    assert_eq!(
        out.verdict,
        Verdict::Pass,
        "the neighbour is known: straight out of eth0"
    );
    assert_eq!(
        out.stats_delta,
        counted(
            Hook::TcUplinkEgress,
            &[
                (Reason::PassIcmp, input.len()),
                (Reason::OverlayEncap, input.len())
            ]
        )
    );
    let sport = sport_of(&out.output);
    assert!((32768..60999).contains(&sport), "{sport}");
    let mut inner = input.clone();
    inner[0..6].copy_from_slice(&VTEP2);
    inner[6..12].copy_from_slice(&NODE1_MAC);
    // flannel.1's outer header: TOS = inner ECN (ECT(1) here), DF clear, TTL 64, fresh ID;
    // UDP to 8472 with a checksum (the builder computes it over every byte).
    let want = Frame::eth(NODE1_MAC, NODE2_MAC)
        .ipv4(NODE1, NODE2)
        .tos(0x01)
        .ttl(64)
        .id(IPID as u16)
        .dont_fragment(false)
        .udp(sport, 8472)
        .payload(&packet::vxlan(1, &inner))
        .build();
    assert_frames_eq("overlay", &out.output, &want);
    let udp = parse(&out.output).unwrap().udp().unwrap().clone();
    assert!(udp.checksum != 0 && udp.checksum_ok, "{udp:?}");
    // The same flow always gets the same source port (the flow hash); others spread.
    assert_eq!(
        sport_of(&egress(&ns, MODE_VXLAN, input.clone()).output),
        sport
    );
    let ports: std::collections::BTreeSet<u16> = (0..8u16)
        .map(|i| {
            let f = Frame::eth(NODE1_MAC, NEXTHOP)
                .ipv4(POD, PEER)
                .udp(40000 + i, 53)
                .payload(b"q")
                .build();
            sport_of(&egress(&ns, MODE_VXLAN, f).output)
        })
        .collect();
    assert!(
        ports.len() >= 6,
        "flows spread over source ports: {ports:?}"
    );
    // A UDP datagram without checksum: the outer checksum cannot lean on it and is 0.
    let f = Frame::eth(NODE1_MAC, NEXTHOP)
        .ipv4(POD, PEER)
        .udp(40000, 53)
        .l4_checksum(0)
        .payload(b"q")
        .build();
    let out = egress(&ns, MODE_VXLAN, f);
    assert_eq!(parse(&out.output).unwrap().udp().unwrap().checksum, 0);
    // TCP: the LCO checksum is right.
    let f = Frame::eth(NODE1_MAC, NEXTHOP)
        .ipv4(POD, PEER)
        .tcp(40000, 80)
        .payload(&[7; 333])
        .build();
    let out = egress(&ns, MODE_VXLAN, f);
    let p = parse(&out.output).unwrap();
    assert!(p.udp().unwrap().checksum_ok && p.decap_vxlan().unwrap().1.tcp().unwrap().checksum_ok);
}

#[test]
fn ipip_encapsulation_is_byte_exact() {
    let lab = underlay();
    let ns = lab.node(0).ns.clone();
    for (tos, df) in [(0x00, true), (0x03, false)] {
        let input = forwarded_ping(PEER, tos, df, 56).build();
        let out = egress(&ns, MODE_IPIP, input.clone());
        assert_eq!(out.verdict, Verdict::Pass);
        assert_eq!(
            out.stats_delta,
            counted(
                Hook::TcUplinkEgress,
                &[
                    (Reason::PassIcmp, input.len()),
                    (Reason::OverlayEncap, input.len())
                ]
            )
        );
        // tunl0: TTL and DF of the inner packet, TOS = inner ECN (CE -> ECT(0)), fresh ID.
        let want = Frame::eth(NODE1_MAC, NODE2_MAC)
            .ipv4(NODE1, NODE2)
            .tos(if tos == 3 { 2 } else { tos & 3 })
            .ttl(63)
            .id(IPID as u16)
            .dont_fragment(df)
            .ip_proto(packet::proto::IPIP, &input[14..])
            .build();
        assert_frames_eq("overlay", &out.output, &want);
    }
}

#[test]
fn encapsulation_leaves_local_and_foreign_destinations_alone() {
    let lab = underlay();
    let ns = lab.node(0).ns.clone();
    for (mode, dst) in [
        (MODE_VXLAN, Ipv4Addr::new(10, 244, 1, 5)),
        (MODE_VXLAN, Ipv4Addr::new(192, 0, 2, 1)),
        (MODE_NONE, PEER),
    ] {
        let input = forwarded_ping(dst, 0, true, 56).build();
        let out = egress(&ns, mode, input.clone());
        assert_eq!(
            (out.verdict, &out.output),
            (Verdict::Pass, &input),
            "{dst} in mode {mode}"
        );
        assert_eq!(
            out.stats_delta,
            counted(Hook::TcUplinkEgress, &[(Reason::PassIcmp, input.len())])
        );
    }
}

#[test]
fn encapsulation_refuses_what_the_underlay_cannot_carry() {
    let lab = underlay();
    let ns = lab.node(0).ns.clone();
    // 1480 bytes of IP + 50 > the uplink's 1500: the kernel route's MTU (1450) normally
    // stops it earlier; here it is dropped and counted, not sent oversized.
    let input = forwarded_ping(PEER, 0, true, 1480 - 28).build();
    let out = egress(&ns, MODE_VXLAN, input.clone());
    assert_eq!(out.verdict, Verdict::Drop);
    assert_eq!(
        out.stats_delta,
        counted(
            Hook::TcUplinkEgress,
            &[
                (Reason::PassIcmp, input.len()),
                (Reason::DropOverlayTooBig, input.len())
            ]
        )
    );
    // 1450 bytes fit exactly.
    let input = forwarded_ping(PEER, 0, true, 1450 - 28).build();
    assert_eq!(egress(&ns, MODE_VXLAN, input).verdict, Verdict::Pass);
    // No neighbour for node3 yet: handed to the kernel to resolve (redirect), headers in place.
    let input = forwarded_ping(FAR, 0, true, 56).build();
    let out = egress(&ns, MODE_IPIP, input.clone());
    assert_eq!(out.verdict, Verdict::Redirect);
    assert_eq!(
        out.stats_delta,
        counted(
            Hook::TcUplinkEgress,
            &[
                (Reason::PassIcmp, input.len()),
                (Reason::OverlayEncap, input.len())
            ]
        )
    );
    let p = parse(&out.output).unwrap();
    assert_eq!(
        (
            p.ipv4().unwrap().src,
            p.ipv4().unwrap().dst,
            p.ipv4().unwrap().protocol
        ),
        (NODE1, NODE3, 4)
    );
}

#[test]
fn decapsulation_in_xdp_yields_the_inner_frame_to_the_uplinks_mac() {
    for mode in [MODE_VXLAN, MODE_IPIP] {
        let inner = reply();
        let input = tunnel(mode, NODE2, NODE1, 1, &inner);
        let out = xdp(mode, &input);
        assert_eq!(out.verdict, Verdict::Pass, "mode {mode}");
        // The inner packet, in a frame from the underlay neighbour to this uplink's MAC.
        let mut want = inner.clone();
        want[0..6].copy_from_slice(&NODE1_MAC);
        want[6..12].copy_from_slice(&NODE2_MAC);
        assert_frames_eq("overlay", &out.output, &want);
        assert_eq!(
            out.stats_delta,
            vec![
                (Hook::XdpUplink, Reason::PassIcmp, 1, want.len() as u64),
                (Hook::XdpUplink, Reason::OverlayDecap, 1, input.len() as u64)
            ],
            "mode {mode}"
        );
    }
}

/// tc ingress of the uplink: what opens tunnel packets when no XDP is attached (a veth
/// uplink) and whatever XDP left closed. Same frame out as XDP's.
#[test]
fn decapsulation_at_tc_ingress_yields_the_same_inner_frame() {
    for mode in [MODE_VXLAN, MODE_IPIP] {
        let inner = reply();
        let input = tunnel(mode, NODE2, NODE1, 1, &inner);
        let mut h = harness();
        let out = with_overlay(&mut h, mode, |h| h.run(Hook::TcUplinkIngress, &input));
        assert_eq!(out.verdict, Verdict::Pass, "mode {mode}");
        let mut want = inner.clone();
        want[0..6].copy_from_slice(&NODE1_MAC);
        want[6..12].copy_from_slice(&NODE2_MAC);
        assert_frames_eq("overlay", &out.output, &want);
        assert_eq!(
            out.stats_delta,
            vec![
                (
                    Hook::TcUplinkIngress,
                    Reason::PassIcmp,
                    1,
                    want.len() as u64
                ),
                (
                    Hook::TcUplinkIngress,
                    Reason::OverlayDecap,
                    1,
                    input.len() as u64
                )
            ],
            "mode {mode}"
        );
        // A tunnel packet whose outer length does not match its inner packet's (one header
        // in front of several packets: a UDP GRO train) is refused, not half-opened.
        let mut train = input.clone();
        let off = if mode == MODE_VXLAN {
            34 + 30 + 2
        } else {
            34 + 2
        };
        let tot = u16::from_be_bytes([train[off], train[off + 1]]) - 8;
        train[off..off + 2].copy_from_slice(&tot.to_be_bytes());
        let out = with_overlay(&mut h, mode, |h| h.run(Hook::TcUplinkIngress, &train));
        assert_eq!(out.verdict, Verdict::Drop, "mode {mode}");
    }
}

/// A tunnel packet from a known node's address is opened only if its inner source is that
/// node's: in its pod CIDRs or its own address. Anyone on the underlay can forge the outer
/// source; the inner one must match it. XDP and tc ingress (a veth uplink) alike.
#[test]
fn decapsulation_refuses_spoofed_inner_sources() {
    let from = |src: Ipv4Addr| {
        Frame::eth(VTEP2, NODE1_MAC)
            .ipv4(src, POD)
            .udp(5353, 53)
            .payload(b"spoof")
            .build()
    };
    let spoofed = [
        ("this node's own pod", POD),
        ("another node's pod", FAR),
        ("an outside address", Ipv4Addr::new(203, 0, 113, 9)),
        ("this node's address", NODE1),
        ("another node's address", NODE3),
    ];
    for mode in [MODE_VXLAN, MODE_IPIP] {
        for hook in [Hook::XdpUplink, Hook::TcUplinkIngress] {
            let mut h = harness();
            for (name, src) in spoofed {
                let input = tunnel(mode, NODE2, NODE1, 1, &from(src));
                let out = with_overlay(&mut h, mode, |h| h.run(hook, &input));
                assert_eq!(out.verdict, Verdict::Drop, "{name}, mode {mode}, {hook:?}");
                assert_eq!(
                    out.stats_delta,
                    vec![(
                        hook,
                        Reason::DropOverlaySpoofedSource,
                        1,
                        input.len() as u64
                    )],
                    "{name}, mode {mode}, {hook:?}"
                );
            }
            // From node2's pods or node2 itself: opened.
            for (name, src) in [("node2's pod", PEER), ("node2's address", NODE2)] {
                let input = tunnel(mode, NODE2, NODE1, 1, &from(src));
                let out = with_overlay(&mut h, mode, |h| h.run(hook, &input));
                assert_eq!(out.verdict, Verdict::Pass, "{name}, mode {mode}, {hook:?}");
                assert!(
                    out.stats_delta.iter().any(|d| d.1 == Reason::OverlayDecap),
                    "{name}: {:?}",
                    out.stats_delta
                );
            }
            // A wrong VNI has its own reason at tc ingress too.
            if mode == MODE_VXLAN {
                let input = tunnel(mode, NODE2, NODE1, 7, &from(PEER));
                let out = with_overlay(&mut h, mode, |h| h.run(hook, &input));
                assert_eq!(
                    out.stats_delta,
                    vec![(hook, Reason::DropOverlayWrongVni, 1, input.len() as u64)],
                );
            }
        }
    }
}

#[test]
fn decapsulation_refuses_what_is_not_for_this_node() {
    let inner = reply();
    let arp = Frame::eth(VTEP2, [0xff; 6])
        .ethertype(packet::ethertype::ARP)
        .payload(&[0; 28])
        .build();
    let relay = Frame::eth(VTEP2, NODE1_MAC)
        .ipv4(PEER, Ipv4Addr::new(192, 0, 2, 1))
        .icmp_echo(true, 1, 1)
        .build();
    let stranger = Ipv4Addr::new(198, 18, 0, 100);
    let mut no_i_flag = tunnel(MODE_VXLAN, NODE2, NODE1, 1, &inner);
    no_i_flag[42] = 0;
    let frag = Frame::eth(NODE2_MAC, NODE1_MAC)
        .ipv4(NODE2, NODE1)
        .frag(true, 0)
        .dont_fragment(false)
        .udp(45000, 8472)
        .payload(&packet::vxlan(1, &inner))
        .build();
    let cases: Vec<(&str, u32, Vec<u8>, Reason)> = vec![
        (
            "vxlan from an unknown address",
            MODE_VXLAN,
            tunnel(MODE_VXLAN, stranger, NODE1, 1, &inner),
            Reason::DropOverlayUnknownPeer,
        ),
        (
            "ipip from an unknown address",
            MODE_IPIP,
            tunnel(MODE_IPIP, stranger, NODE1, 1, &inner),
            Reason::DropOverlayUnknownPeer,
        ),
        (
            "vxlan to another address",
            MODE_VXLAN,
            tunnel(MODE_VXLAN, NODE2, Ipv4Addr::new(198, 18, 0, 99), 1, &inner),
            Reason::DropOverlayNotLocal,
        ),
        (
            "ipip to another address",
            MODE_IPIP,
            tunnel(MODE_IPIP, NODE2, NODE3, 1, &inner),
            Reason::DropOverlayNotLocal,
        ),
        (
            "vxlan relay",
            MODE_VXLAN,
            tunnel(MODE_VXLAN, NODE2, NODE1, 1, &relay),
            Reason::DropOverlayNotLocal,
        ),
        (
            "ipip relay",
            MODE_IPIP,
            tunnel(MODE_IPIP, NODE2, NODE1, 1, &relay),
            Reason::DropOverlayNotLocal,
        ),
        (
            "inner packet for another node",
            MODE_VXLAN,
            tunnel(
                MODE_VXLAN,
                NODE2,
                NODE1,
                1,
                &Frame::eth(VTEP2, NODE1_MAC)
                    .ipv4(PEER, FAR)
                    .icmp_echo(true, 1, 1)
                    .build(),
            ),
            Reason::DropOverlayNotLocal,
        ),
        (
            "wrong VNI",
            MODE_VXLAN,
            tunnel(MODE_VXLAN, NODE2, NODE1, 2, &inner),
            Reason::DropOverlayWrongVni,
        ),
        (
            "VXLAN flags without I",
            MODE_VXLAN,
            no_i_flag,
            Reason::DropOverlayMalformed,
        ),
        (
            "inner ARP",
            MODE_VXLAN,
            tunnel(MODE_VXLAN, NODE2, NODE1, 1, &arp),
            Reason::DropOverlayMalformed,
        ),
        (
            "outer fragment",
            MODE_VXLAN,
            frag,
            Reason::DropOverlayMalformed,
        ),
        (
            "truncated inner frame",
            MODE_VXLAN,
            tunnel(MODE_VXLAN, NODE2, NODE1, 1, &inner[..30]),
            Reason::DropOverlayMalformed,
        ),
    ];
    for (name, mode, input, reason) in cases {
        let out = xdp(mode, &input);
        assert_eq!(out.verdict, Verdict::Drop, "{name}");
        assert_eq!(
            out.stats_delta,
            vec![(Hook::XdpUplink, reason, 1, input.len() as u64)],
            "{name}"
        );
    }
    // Not tunnel traffic of the configured mode: left to the service pipeline and the kernel.
    for (name, mode, input, reason) in [
        (
            "vxlan while in ipip mode",
            MODE_IPIP,
            tunnel(MODE_VXLAN, NODE2, NODE1, 1, &inner),
            Reason::PassUdp,
        ),
        (
            "ipip while in vxlan mode",
            MODE_VXLAN,
            tunnel(MODE_IPIP, NODE2, NODE1, 1, &inner),
            Reason::PassOtherL4,
        ),
        (
            "vxlan without an overlay",
            MODE_NONE,
            tunnel(MODE_VXLAN, stranger, NODE1, 1, &inner),
            Reason::PassUdp,
        ),
        (
            "another UDP port",
            MODE_VXLAN,
            Frame::eth(NODE2_MAC, NODE1_MAC)
                .ipv4(stranger, NODE1)
                .udp(45000, 4789)
                .payload(&packet::vxlan(1, &inner))
                .build(),
            Reason::PassUdp,
        ),
    ] {
        let out = xdp(mode, &input);
        assert_eq!(
            (out.verdict, &out.output),
            (Verdict::Pass, &input),
            "{name}"
        );
        assert_eq!(
            out.stats_delta,
            vec![(Hook::XdpUplink, reason, 1, input.len() as u64)],
            "{name}"
        );
    }
}
