//! The overlay in the lab, MTU: frag-needed for what the tunnel cannot carry, bulk transfers
//! through GSO/TSO and through a pod veth with them off. Harness: tests/support/overlay.rs.

mod support;

use dataplane_common::{Hook, Reason};
use dataplane_lab::{lab::Cni, netns};
use support::overlay::*;

// ---------------------------------------------------------------------------------------------
// MTU
// ---------------------------------------------------------------------------------------------

#[test]
fn vxlan_mtu_frag_needed_and_bulk_transfers() {
    let o = Overlay::start(
        &spec(Cni::Flannel, 1450),
        &[0, 1],
        &["--overlay", "vxlan"],
        |lab| {
            // The external client routes pod CIDRs through node1 (with a full 1500-byte MTU).
            sh(
                &lab.external().unwrap().ns,
                &["ip", "route", "add", "10.244.0.0/16", "via", "198.18.0.11"],
            );
        },
    );
    o.sync_all();
    let p2 = o.lab.pod(1, 0).host();
    let dst = p2.ip.to_string();
    let n1 = &o.node(0).ns;
    // The node's own packets: the route's MTU, like flannel.1's.
    let err = netns::run_in(
        n1,
        &[
            "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", "1472", &dst,
        ],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("mtu=1450"), "{err:#}");
    sh(
        n1,
        &[
            "ping", "-n", "-c", "2", "-W", "1", "-M", "do", "-s", "1422", &dst,
        ],
    );
    // Forwarded packets: ICMP fragmentation needed with the tunnel's MTU.
    let ext = o.lab.external().unwrap().ns.clone();
    let err = netns::run_in(
        &ext,
        &[
            "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", "1472", &dst,
        ],
    )
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("Frag needed") && text.contains("mtu = 1450"),
        "{text}"
    );
    // One that fits is tunnelled, but node2 refuses it: its inner source (the external client)
    // is not node1's (a pod of node1's or node1 itself), and accepting it would let anyone who
    // forges node1's outer address inject packets from any address (hostile-input issue).
    let spoofed = uplink_in(&o.stats(1), Reason::DropOverlaySpoofedSource);
    netns::run_in(
        &ext,
        &[
            "ping", "-n", "-c", "2", "-W", "1", "-M", "do", "-s", "1422", &dst,
        ],
    )
    .unwrap_err();
    assert_eq!(
        uplink_in(&o.stats(1), Reason::DropOverlaySpoofedSource) - spoofed,
        2,
        "node2 drops the external source's packets node1 tunnelled"
    );
    let s = o.stats(0);
    assert_eq!(
        s.packets(Hook::TcUplinkEgress, Reason::DropOverlayTooBig),
        0,
        "the kernel, not the datapath, refuses: {s:?}"
    );

    // 10 MB each way: pod to pod (forwarded, GRO/GSO) and node to pod (local TCP, TSO). The
    // GSO bursts cross the veth underlay whole and are decapsulated whole on node2; p2's host
    // veth has TSO/GSO off, so the kernel segments the decapsulated bursts in software there
    // (skb->encapsulation and the tunnel GSO type survive bpf_skb_adjust_room's shrink on
    // this kernel): the transfer's content check covers that.
    sh(
        &o.node(1).ns,
        &[
            "ethtool",
            "-K",
            &o.lab.pod(1, 0).host_iface,
            "tso",
            "off",
            "gso",
            "off",
        ],
    );
    let before = uplink_in_bytes(&o.stats(1), Reason::OverlayDecap);
    let before_n = uplink_in(&o.stats(1), Reason::OverlayDecap);
    let took = bulk(&o.lab.pod(0, 0).host(), &p2, 7301, 10 << 20, 10 << 20);
    eprintln!("pod <-> pod 2 x 10 MB: {took:?}");
    let s = o.stats(1);
    let (bytes, n) = (
        uplink_in_bytes(&s, Reason::OverlayDecap) - before,
        uplink_in(&s, Reason::OverlayDecap) - before_n,
    );
    assert!(
        bytes > 10 << 20 && bytes / n > 1514,
        "decapsulated {n} packets of {bytes} bytes: GSO bursts should arrive whole"
    );
    // Segments as large as flannel.1's: the route's MTU gives TCP an MSS whose segments, with
    // the 50 bytes of VXLAN, fill the underlay's 1500 exactly. The switch port toward node2
    // gets TSO/GSO off, so it segments what it forwards as a NIC's TSO would put it on the
    // wire (captured there, after segmentation).
    sh(
        o.lab.switch_ns(),
        &["ethtool", "-K", "node2", "tso", "off", "gso", "off"],
    );
    let cap = Capture::start(o.lab.switch_ns(), "node2");
    let took = bulk(&o.node(0).host(), &p2, 7302, 10 << 20, 10 << 20);
    eprintln!("node <-> pod 2 x 10 MB: {took:?}");
    let frames = cap.finish();
    let sizes: Vec<usize> = vxlan_frames(&frames, 8472)
        .iter()
        .filter(|(f, _, _)| f.ipv4().unwrap().src == o.node(0).underlay_ip)
        .map(|(f, _, _)| 14 + f.ipv4().unwrap().total_len as usize)
        .collect();
    let full = sizes.iter().filter(|&&n| n == 14 + 1500).count();
    assert!(
        sizes.iter().all(|&n| n <= 14 + 1500),
        "no frame above the underlay MTU: {:?}",
        sizes.iter().max()
    );
    assert!(full > 5000, "{full} full-size frames of {}", sizes.len());
}
