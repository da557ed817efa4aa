//! Routing a packet from a tc hook with the FIB: again after an egress hook rewrote its
//! destination (the node's own connection to a service, translated at the uplink's egress: the
//! kernel routed it toward the frontend, which is not where the backend is), and in place of
//! the kernel's forwarding for a packet translated whole at ingress (`fullnat.rs`).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
};
use dataplane_common::{ip::AF_INET, Reason};

use crate::net::{csum, hdr::Ipv4Hdr, parse, Flow, Packet, TcPacket};

/// Sends the packet out of the device the kernel's routes give for its (new) destination, with
/// the next hop's MAC from the neighbour table (resolved by the kernel if it is not yet).
/// `Ok`: redirected (TC_ACT_REDIRECT). `Err` when the destination is not routable from here:
/// one of the node's own addresses (a host-network backend on this node; its replies would
/// never pass a hook to be restored), or no route at all.
#[inline(always)]
pub fn reroute(p: &TcPacket) -> Result<(), Reason> {
    // The rewritten flow, as it is in the packet now.
    let flow = parse::parse(p.data(), p.data_end(), p.frame_len() as usize)?.flow;
    redirect(p, &flow)
}

/// The kernel's forwarding step for a packet tc ingress translated whole (its source is a node
/// address now, which the kernel's routing would drop as a martian): TTL - 1 (at TTL <= 1
/// `drop-ttl-exceeded`: no ICMP time exceeded is sent for it), then as [`reroute`].
#[inline(always)]
pub fn forward(p: &TcPacket) -> Result<(), Reason> {
    let pkt = parse::parse(p.data(), p.data_end(), p.frame_len() as usize)?;
    let ip: Ipv4Hdr = p.load(pkt.l3_off).ok_or(Reason::DropRewriteFailed)?;
    if ip.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    // TTL and protocol share one 16-bit word of the header checksum; TTL >= 2, so
    // decrementing the word's high byte borrows nothing.
    let ttl_proto_off = pkt.l3_off + core::mem::offset_of!(Ipv4Hdr, ttl);
    let old: u16 = p.load(ttl_proto_off).ok_or(Reason::DropRewriteFailed)?;
    // Both words as they are in memory, as the checksum helpers take them.
    let new = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);
    let check = csum::replace2(ip.check, old, new);
    p.store(ttl_proto_off, &new)
        .and_then(|()| p.store(pkt.l3_off + core::mem::offset_of!(Ipv4Hdr, check), &check))
        .map_err(|_| Reason::DropRewriteFailed)?;
    redirect(p, &pkt.flow)
}

#[inline(always)]
fn redirect(p: &TcPacket, flow: &Flow) -> Result<(), Reason> {
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = flow.proto;
    fib.ifindex = p.ifindex();
    fib.__bindgen_anon_3.ipv4_src = flow.saddr;
    fib.__bindgen_anon_4.ipv4_dst = flow.daddr;
    let rc = unsafe {
        fib_lookup(
            p.0.skb.skb as *mut _,
            &mut fib as *mut _,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            // An input-style lookup: an output lookup is bound to `ifindex` as the outgoing
            // device, and would send a local pod's packet to the default gateway.
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Err(Reason::DropNoRoute);
    }
    // No next-hop parameters: the helper looks the route's gateway (or the destination itself
    // on a connected route) up in the neighbour table of that device.
    unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) };
    Ok(())
}
