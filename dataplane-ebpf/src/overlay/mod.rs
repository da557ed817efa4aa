//! The overlay: VXLAN (flannel) or IPIP (calico) without tunnel devices.
//!
//! - **Encapsulation** at tc egress of the uplink (`encap.rs`): whatever the node routes toward
//!   another node's pod CIDR leaves there (forwarded pod traffic, the node's own traffic,
//!   service traffic DNATed to a remote backend at tc pod ingress or in XDP). The agent's kernel
//!   routes send it there (`<cidr> via <cidr> dev <uplink> onlink src <overlay address> mtu
//!   <uplink MTU - overhead>`, a permanent neighbour entry for the gateway), so the kernel does
//!   what it does for flannel.1/tunl0: TTL, PMTU, ICMP fragmentation needed, TCP MSS. Here the
//!   route is looked up again in `OVERLAY_ROUTES_V1`, headers are added with
//!   `bpf_skb_adjust_room` (GSO packets keep being segmented correctly) and written as the
//!   kernel devices write them (`dataplane_common::overlay`), and the outer next hop comes from
//!   `OVERLAY_NEXTHOP_V1`, which caches `bpf_fib_lookup`'s answer per node for a second (or
//!   `bpf_redirect_neigh` when the neighbour is not resolved yet). The outer UDP source port
//!   comes from the packet's flow hash when the stack set one (sockets do), else from a hash
//!   of the inner 5-tuple: never the flow dissector per packet.
//! - **Decapsulation** at tc ingress of the uplink (`decap.rs`: [`decap_tc`]) or in XDP ([`decap_xdp`]), before
//!   the service pipeline, so replies of remote backends get their reverse NAT on the inner
//!   packet. tc is where it happens when the agent attaches no XDP (a veth uplink: native XDP
//!   there makes the veth peer segment every GSO packet it sends, see BENCHMARKS.md (f)): a GSO
//!   tunnel packet is opened whole, so a 64 KB TCP burst costs one decapsulation, not 45. On
//!   an uplink with native XDP the XDP path opens them first (the NIC's GRO then merges the
//!   inner TCP segments, which it cannot do for VXLAN without a tunnel socket), and tc only
//!   sees what XDP left encapsulated. Only tunnel packets addressed
//!   to this node's tunnel address, from a known node, carrying an inner packet for this node,
//!   are opened; other tunnel packets are dropped with their reason (never relayed). The inner
//!   frame gets the outer frame's MAC addresses, so the stack sees a frame sent to the uplink's
//!   own MAC (PACKET_HOST), whatever VTEP MAC the peer used.

//!
//! Each is a stage of its own with its own counter (`overlay-encap`, `overlay-decap`): the
//! service verdict before the encapsulation, and the decapsulation before the inner packet's
//! verdict, are counted as well (bpf-maps.md).

mod decap;
mod encap;

pub use decap::{decap_tc, decap_xdp};
pub use encap::{encap, fast_encap, fast_hop, FastHop};

use aya_ebpf::maps::lpm_trie::Key;
use dataplane_common::{
    overlay::{OverlayConfig, OverlayRoute, MODE_IPIP, MODE_VXLAN, ROUTE_F_LOCAL},
    Reason,
};

use crate::{
    maps::{OVERLAY_CONFIG_V1, OVERLAY_PEERS_V1, OVERLAY_ROUTES_V1},
    net::flow::Addr,
};

/// The route of a destination address, if a pod CIDR holds it.
#[inline(always)]
fn route_of(addr: Addr) -> Option<OverlayRoute> {
    OVERLAY_ROUTES_V1.get(&Key::new(32, addr)).copied()
}

/// This node's overlay settings, if an overlay is configured.
#[inline(always)]
fn config() -> Option<OverlayConfig> {
    config_ref().copied()
}

/// [`config`] by reference (the map's value), where a copy would crowd the stack.
#[inline(always)]
fn config_ref() -> Option<&'static OverlayConfig> {
    let cfg = OVERLAY_CONFIG_V1.get(0)?;
    (cfg.mode == MODE_VXLAN || cfg.mode == MODE_IPIP).then_some(cfg)
}

/// Whether tunnel packets are accepted from `addr` (`OVERLAY_PEERS_V1`).
#[inline(always)]
fn known_peer(addr: Addr) -> bool {
    unsafe { OVERLAY_PEERS_V1.get(addr) }.is_some()
}

/// The inner packet of a tunnel packet from node `outer_saddr`: for a pod (or address) of this
/// node, and from that node (its own address, or an address in its pod CIDRs: one LPM lookup,
/// the same trie that routes toward it). Anyone on the underlay can forge a known node's outer
/// address; this keeps them from injecting packets "from" any address.
///
/// A route of the inner source to `outer_saddr` also proves that node known (the agent writes a
/// node's routes and its `OVERLAY_PEERS_V1` entry together): only an inner source that is the
/// node's own address needs the peer lookup.
#[inline(always)]
fn check_inner(outer_saddr: Addr, inner_saddr: Addr, inner_daddr: Addr) -> Result<(), Reason> {
    match route_of(inner_daddr) {
        Some(r) if r.flags & ROUTE_F_LOCAL != 0 => {}
        _ => return Err(Reason::DropOverlayNotLocal),
    }
    if inner_saddr == outer_saddr {
        return if known_peer(outer_saddr) {
            Ok(())
        } else {
            Err(Reason::DropOverlayUnknownPeer)
        };
    }
    match route_of(inner_saddr) {
        Some(r) if r.flags & ROUTE_F_LOCAL == 0 && r.node_addr == outer_saddr => Ok(()),
        _ => Err(Reason::DropOverlaySpoofedSource),
    }
}
