//! The XDP fast path: a packet `xdp_uplink` translated (a NodePort/external connection to a
//! backend on another node, or that backend's reply to the client) whose next hop is back out
//! of the uplink is finished here instead of in the kernel: the egress translation tc egress
//! would apply (masquerade, un-DNAT: the same `CT_V2` entry, counted the same way), TTL, the
//! FIB's next hop and MACs, and XDP_TX. The kernel's forwarding path, netfilter and both tc
//! hooks are skipped (as Cilium's XDP NodePort does).
//!
//! Anything else keeps today's path (XDP_PASS after the ingress translation): a next hop on
//! another device (local pods, a VLAN), an unresolved neighbour (the kernel resolves it), a
//! packet too big for the route or with TTL <= 1 (the kernel answers with ICMP), a first
//! fragment (its fragments' state is kept at tc egress), a destination behind the overlay
//! (tc egress encapsulates). Nothing here drops a packet the kernel would have forwarded.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns},
};
use dataplane_common::{ip::AF_INET, Reason};

use crate::{
    conntrack::{self, Phase},
    net::{
        csum,
        hdr::{EthHdr, Ipv4Hdr},
        parse::{self, MAX_L4_OFF},
        Packet, XdpPacket, L4,
    },
    overlay,
    stats::Recorder,
    verdict::{Action, Verdict},
};

/// 1 when the loader allows XDP_TX of forwarded packets on this uplink. Off by default (a
/// program loaded by other tools, the benchmark's injector) and on a veth uplink in native
/// mode: veth delivers an XDP_TX'd frame only if its peer runs NAPI (XDP or GRO on the peer,
/// in another namespace, out of this node's control), and drops it otherwise.
#[no_mangle]
static XDP_FORWARD: u32 = 0;

#[inline(always)]
fn enabled() -> bool {
    // Volatile: patched into .rodata at load time (as UPLINK_XDP in main.rs).
    unsafe { core::ptr::read_volatile(&XDP_FORWARD) != 0 }
}

/// Takes the ingress pipeline's verdict `v`: a translated packet whose route leads back out of
/// the uplink is finished and bounced (`xdp-forward`, `xdp-forward-reply`; the translation
/// is counted as a stage before it); every other verdict is returned as it is.
#[inline(always)]
pub fn forward(p: &XdpPacket, v: Verdict, rec: &Recorder) -> Verdict {
    let fast = match v.reason {
        Reason::NatForward | Reason::LbNewConnection => Reason::XdpForward,
        Reason::NatReply => Reason::XdpForwardReply,
        _ => return v,
    };
    if v.action != Action::Pass || !enabled() {
        return v;
    }
    match finish(p, rec.ifindex, rec.len()) {
        Ok(true) => {
            rec.count(v.reason);
            Verdict::new(fast, Action::Bounce)
        }
        Ok(false) => v,
        Err(reason) => {
            rec.count(v.reason);
            Verdict::drop(reason)
        }
    }
}

/// `Ok(true)`: rewritten for the wire and ready for XDP_TX; `Ok(false)`: untouched since the
/// ingress translation, for the kernel to forward.
#[inline(always)]
fn finish(p: &XdpPacket, ifindex: u32, len: u32) -> Result<bool, Reason> {
    // The packet as the ingress translation left it.
    let Ok(pkt) = parse::parse(p.data(), p.data_end(), p.frame_len() as usize) else {
        return Ok(false);
    };
    if (pkt.l4 != L4::Tcp && pkt.l4 != L4::Udp) || pkt.first_fragment {
        return Ok(false);
    }
    let Some(ip) = p.read::<Ipv4Hdr>(pkt.l3_off) else {
        return Ok(false);
    };
    if ip.ttl <= 1 || overlay::tunnelled(pkt.flow.daddr) {
        return Ok(false);
    }
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = pkt.flow.proto;
    fib.sport = pkt.flow.sport;
    fib.dport = pkt.flow.dport;
    fib.__bindgen_anon_1.tot_len = u16::from_be(ip.tot_len);
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_3.ipv4_src = pkt.flow.saddr;
    fib.__bindgen_anon_4.ipv4_dst = pkt.flow.daddr;
    // A full lookup (neighbour included): anything but success (no neighbour yet, local,
    // forwarding off, too big for the route's MTU, ...) leaves the packet to the kernel.
    let rc = unsafe {
        fib_lookup(
            p.0.ctx as *mut _,
            &mut fib as *mut _,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || fib.ifindex != ifindex {
        return Ok(false);
    }
    // The egress hook's rewrite of this connection (masquerade of the original direction,
    // un-DNAT of the reply), as tc egress would apply it to the forwarded packet.
    // `len`: the recorder's scalar (computing it here spilled half a packet pointer, which
    // the verifier refuses: see main.rs).
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(hit) = conntrack::lookup(&pkt, len, now, Phase::Egress) {
        p.rewrite_tuple(&pkt, &hit.to)
            .map_err(|_| Reason::DropRewriteFailed)?;
        if hit.to.daddr != pkt.flow.daddr {
            // Routed toward another address now: the kernel routes it (tc egress finds no
            // entry for the rewritten tuple and leaves it).
            return Ok(false);
        }
    }
    rewrite_l2_l3(p, pkt.l3_off, &fib).map_err(|_| Reason::DropRewriteFailed)?;
    Ok(true)
}

/// The forwarding step the kernel would do: TTL - 1 (IP checksum updated), the uplink's MAC
/// as source and the next hop's as destination.
#[inline(always)]
fn rewrite_l2_l3(p: &XdpPacket, l3_off: usize, fib: &bpf_fib_lookup) -> Result<(), ()> {
    let (data, end) = (p.data(), p.data_end());
    let ip = data + (l3_off & MAX_L4_OFF);
    if data + core::mem::size_of::<EthHdr>() > end || ip + core::mem::size_of::<Ipv4Hdr>() > end {
        return Err(());
    }
    let eth = data as *mut EthHdr;
    let ip = ip as *mut Ipv4Hdr;
    // SAFETY: both headers are inside the frame (checked above).
    unsafe {
        // TTL and protocol share one 16-bit word of the checksum; TTL >= 2 (checked by the
        // caller), so decrementing the word's TTL byte borrows nothing.
        let word = ip as *mut u8;
        let at = word.add(8) as *mut u16;
        let old = core::ptr::read_unaligned(at);
        let ttl = (*ip).ttl - 1;
        (*ip).ttl = ttl;
        let new = core::ptr::read_unaligned(at);
        (*ip).check = csum::replace2((*ip).check, old, new);
        (*eth).dst = fib.dmac;
        (*eth).src = fib.smac;
    }
    Ok(())
}
