//! The overlay in the lab: what decapsulation refuses (tunnel packets not for this node, from
//! unknown nodes, on the wrong port). Harness: tests/support/overlay.rs.

mod support;

use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use dataplane::host::netdev;
use dataplane_common::Reason;
use dataplane_lab::{
    lab::{Cni, Host},
    netns, packet,
};

use support::overlay::*;

// ---------------------------------------------------------------------------------------------
// What decapsulation refuses
// ---------------------------------------------------------------------------------------------

/// A UDP socket in `host` on `port` that records every datagram's payload.
fn udp_sink(host: &Host, port: u16) -> (Arc<Mutex<Vec<String>>>, Arc<AtomicBool>) {
    let sock = netns::in_netns(&host.ns, move || {
        std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
    })
    .unwrap()
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let (got, stop) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let (g, s) = (got.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                g.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    });
    (got, stop)
}

#[test]
fn decapsulation_accepts_only_tunnel_packets_for_this_node_from_known_nodes() {
    let o = Overlay::start(
        &spec(Cni::Flannel, 1450),
        &[0],
        &["--overlay", "vxlan"],
        |_| {},
    );
    let nodes = o.node_infos();
    o.sync(0, &nodes);
    let n1 = o.node(0);
    let pod = o.lab.pod(0, 0);
    let ext = o.lab.external().unwrap();
    let (got, stop) = udp_sink(&pod.host(), 7401);
    let n1_mac = uplink_mac(n1);
    let ext_mac = netns::in_netns(&ext.ns, || netdev::mac("eth0"))
        .unwrap()
        .unwrap();
    let node2 = o.node(1).underlay_ip;
    // A VXLAN frame from `outer_src` (with the external client's MAC) to node1's MAC.
    let from = |inner_src: Ipv4Addr,
                outer_src: Ipv4Addr,
                outer_dst: Ipv4Addr,
                vni: u32,
                inner_dst: Ipv4Addr,
                tag: &str| {
        let inner = packet::Frame::eth([2, 0, 0, 0, 0, 9], n1_mac)
            .ipv4(inner_src, inner_dst)
            .udp(5555, 7401)
            .payload(tag.as_bytes())
            .build();
        packet::Frame::eth(ext_mac, n1_mac)
            .ipv4(outer_src, outer_dst)
            .udp(40000, 8472)
            .payload(&packet::vxlan(vni, &inner))
            .build()
    };
    let frame =
        |outer_src: Ipv4Addr, outer_dst: Ipv4Addr, vni: u32, inner_dst: Ipv4Addr, tag: &str| {
            let inner = packet::Frame::eth([2, 0, 0, 0, 0, 9], n1_mac)
                .ipv4(Ipv4Addr::new(10, 244, 2, 9), inner_dst)
                .udp(5555, 7401)
                .payload(tag.as_bytes())
                .build();
            packet::Frame::eth(ext_mac, n1_mac)
                .ipv4(outer_src, outer_dst)
                .udp(40000, 8472)
                .payload(&packet::vxlan(vni, &inner))
                .build()
        };
    let cases = [
        (
            "unknown peer",
            frame(ext.ip, n1.underlay_ip, 1, pod.ip, "unknown peer"),
            Reason::DropOverlayUnknownPeer,
        ),
        (
            "another address",
            frame(
                node2,
                Ipv4Addr::new(198, 18, 0, 99),
                1,
                pod.ip,
                "another address",
            ),
            Reason::DropOverlayNotLocal,
        ),
        (
            "relay",
            frame(node2, n1.underlay_ip, 1, ext.ip, "relay"),
            Reason::DropOverlayNotLocal,
        ),
        (
            "wrong vni",
            frame(node2, n1.underlay_ip, 2, pod.ip, "wrong vni"),
            Reason::DropOverlayWrongVni,
        ),
        // node2's outer address forged by the external client, inner sources not node2's: a
        // packet "from" anywhere to a pod (and the pod's answer reflected to the victim).
        (
            "spoofed outside source",
            from(ext.ip, node2, n1.underlay_ip, 1, pod.ip, "spoofed outside"),
            Reason::DropOverlaySpoofedSource,
        ),
        (
            "spoofed local pod source",
            from(
                o.lab.pod(0, 1).ip,
                node2,
                n1.underlay_ip,
                1,
                pod.ip,
                "spoofed local",
            ),
            Reason::DropOverlaySpoofedSource,
        ),
        (
            "spoofed node1 source",
            from(
                n1.underlay_ip,
                node2,
                n1.underlay_ip,
                1,
                pod.ip,
                "spoofed node1",
            ),
            Reason::DropOverlaySpoofedSource,
        ),
    ];
    for (name, f, reason) in cases {
        let before = uplink_in(&o.stats(0), reason);
        support::inject(&ext.ns, vec![f]);
        std::thread::sleep(Duration::from_millis(200));
        let after = uplink_in(&o.stats(0), reason);
        assert_eq!(after - before, 1, "{name}: counted as {}", reason.name());
    }
    // The control: the same frame from a known node's address is delivered.
    support::inject(
        &ext.ns,
        vec![frame(node2, n1.underlay_ip, 1, pod.ip, "from node2")],
    );
    let deadline = Instant::now() + T;
    while got.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        *got.lock().unwrap(),
        ["from node2"],
        "only the known node's packet reaches the pod"
    );
    // The relay attempt did not leave node1 toward the external client either.
    let s = o.stats(0);
    assert_eq!(uplink_in(&s, Reason::OverlayDecap), 1, "{s:?}");
}
