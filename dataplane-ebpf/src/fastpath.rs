//! The XDP fast path: a packet `xdp_uplink` translated (a NodePort/external connection to a
//! backend on another node, or that backend's reply to the client) whose next hop is back out
//! of the uplink is finished here instead of in the kernel: the egress translation tc egress
//! would apply (masquerade, un-DNAT: the same `CT_V2` entry, counted the same way), TTL, the
//! FIB's next hop and MACs, and XDP_TX. A backend behind the overlay gets the encapsulation
//! tc egress would give it (`overlay::fast_encap`: the same headers, the same next-hop cache,
//! counted as `overlay-encap` at this hook). The kernel's forwarding path, netfilter and both
//! tc hooks are skipped (as Cilium's XDP NodePort does).
//!
//! A new masqueraded connection whose backend is behind the uplink without a tunnel is opened
//! here with two entries that each hold the whole translation (`fullnat.rs`, `CT_F_FULL`):
//! half the conntrack inserts, one lookup per packet. Its packets are sent here or, when this
//! path cannot finish one, left untouched for tc ingress.
//!
//! Anything else keeps today's path (XDP_PASS after the ingress translation): a next hop on
//! another device (local pods, a VLAN), an unresolved neighbour (the kernel resolves it), a
//! packet too big for the route or the tunnel, or with TTL <= 1 (the kernel answers with
//! ICMP), a first fragment (its fragments' state is kept at tc egress). Nothing here drops a
//! packet the kernel would have forwarded. Local pods are not redirected into from here:
//! a veth delivers an XDP-redirected frame only when its peer, inside the pod's namespace,
//! runs NAPI, which the CNI, not this dataplane, configures.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns},
};
use dataplane_common::{
    ip::AF_INET,
    lb::{BackendValue, ServiceValue},
    Hook, Reason,
};

use crate::{
    config::node as node_config,
    conntrack::{self, Hit, Phase},
    fullnat::{leave_to_tc, FullNat},
    net::{
        csum,
        hdr::{EthHdr, Ipv4Hdr, ETH_HLEN},
        parse::{self, MAX_L4_OFF},
        Packet, Parsed, Tuple, XdpPacket, L4,
    },
    overlay::{self, FastHop},
    stats::{self, Recorder},
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
    crate::config::load_time_flag(&XDP_FORWARD)
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
        Ok(Finished::Bounce) => {
            rec.count(v.reason);
            Verdict::new(fast, Action::Bounce)
        }
        Ok(Finished::Encapsulated) => {
            rec.count(v.reason);
            rec.count(Reason::OverlayEncap);
            Verdict::new(fast, Action::Bounce)
        }
        Ok(Finished::Kernel) => v,
        Err(reason) => {
            rec.count(v.reason);
            Verdict::drop(reason)
        }
    }
}

/// What the fast path did with a translated packet.
enum Finished {
    /// Rewritten for the wire, ready for XDP_TX.
    Bounce,
    /// Rewritten and encapsulated for the overlay, ready for XDP_TX.
    Encapsulated,
    /// Untouched since the ingress translation, for the kernel to forward.
    Kernel,
}

#[inline(always)]
fn finish(p: &XdpPacket, ifindex: u32, len: u32) -> Result<Finished, Reason> {
    // The packet as the ingress translation left it.
    let Ok(pkt) = parse::parse(p.data(), p.data_end(), p.frame_len() as usize) else {
        return Ok(Finished::Kernel);
    };
    let Some(ip) = forwardable(p, &pkt) else {
        return Ok(Finished::Kernel);
    };
    match overlay::fast_hop(ifindex, ip.daddr, ip.tot_len()) {
        FastHop::Direct => {}
        FastHop::Kernel => return Ok(Finished::Kernel),
        FastHop::Tunnel(_) if pkt.l3_off != ETH_HLEN => return Ok(Finished::Kernel),
        FastHop::Tunnel(tunnel) => {
            if !egress_rewrite(p, &pkt, len)? {
                return Ok(Finished::Kernel);
            }
            decrement_ttl(p, pkt.l3_off).map_err(|_| Reason::DropRewriteFailed)?;
            overlay::fast_encap(p, &tunnel)?;
            return Ok(Finished::Encapsulated);
        }
    }
    let Some(hop) = fib_hop(p, &pkt, &ip, ifindex, pkt.flow.saddr, pkt.flow.daddr) else {
        return Ok(Finished::Kernel);
    };
    if !egress_rewrite(p, &pkt, len)? {
        return Ok(Finished::Kernel);
    }
    rewrite_l2_l3(p, pkt.l3_off, &hop).map_err(|_| Reason::DropRewriteFailed)?;
    Ok(Finished::Bounce)
}

/// The packet's IPv4 header if the fast path may forward the packet at all: TCP or UDP, not a
/// first fragment (its fragments' state is kept at tc), TTL above 1 (else the kernel answers
/// with ICMP).
#[inline(always)]
fn forwardable(p: &XdpPacket, pkt: &Parsed) -> Option<Ipv4Hdr> {
    if (pkt.l4 != L4::Tcp && pkt.l4 != L4::Udp) || pkt.first_fragment {
        return None;
    }
    let ip = p.load::<Ipv4Hdr>(pkt.l3_off)?;
    (ip.ttl > 1).then_some(ip)
}

/// The MACs of an untunnelled next hop back out of the uplink.
struct Hop {
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// The FIB's next hop for the packet once it carries `saddr -> daddr`, if it is back out of
/// `ifindex`. A full lookup (neighbour included): anything but success (no neighbour yet,
/// local, forwarding off, too big for the route's MTU, ...) leaves the packet to the kernel.
#[inline(always)]
fn fib_hop(
    p: &XdpPacket,
    pkt: &Parsed,
    ip: &Ipv4Hdr,
    ifindex: u32,
    saddr: u32,
    daddr: u32,
) -> Option<Hop> {
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = pkt.flow.proto;
    fib.sport = pkt.flow.sport;
    fib.dport = pkt.flow.dport;
    fib.__bindgen_anon_1.tot_len = u16::from_be(ip.tot_len);
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    let rc = unsafe {
        fib_lookup(
            p.0.ctx as *mut _,
            &mut fib as *mut _,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    (rc == BPF_FIB_LKUP_RET_SUCCESS as i64 && fib.ifindex == ifindex).then_some(Hop {
        smac: fib.smac,
        dmac: fib.dmac,
    })
}

/// The untunnelled hop out of the uplink for the packet once it carries `to` (the whole
/// translation of its connection), if the fast path can send it there.
#[inline(always)]
fn whole_hop(p: &XdpPacket, pkt: &Parsed, saddr: u32, daddr: u32) -> Option<Hop> {
    if !enabled() {
        return None;
    }
    let ip = forwardable(p, pkt)?;
    let ifindex = p.ifindex();
    // A backend behind the overlay keeps the four-entry connection: too big for the tunnel,
    // its packets need the kernel's forwarding (ICMP fragmentation needed to the client).
    if !matches!(
        overlay::fast_hop(ifindex, daddr, ip.tot_len()),
        FastHop::Direct
    ) {
        return None;
    }
    fib_hop(p, pkt, &ip, ifindex, saddr, daddr)
}

/// Rewrites the packet to `to` and for `hop`, counting the translation (`stage`): ready for
/// XDP_TX as `fast`.
#[inline(always)]
fn send_whole(
    p: &XdpPacket,
    pkt: &Parsed,
    to: &Tuple,
    hop: &Hop,
    stage: Reason,
    fast: Reason,
    len: u32,
) -> Verdict {
    let sent = p.rewrite_tuple(pkt, to).is_ok() && rewrite_l2_l3(p, pkt.l3_off, hop).is_ok();
    if !sent {
        return Verdict::drop(Reason::DropRewriteFailed);
    }
    stats::count(Hook::XdpUplink, stage, len);
    Verdict::new(fast, Action::Bounce)
}

/// The fast path's masqueraded connections (`fullnat.rs`): opened with two entries when the
/// backend is behind the uplink, their packets sent here or left untouched for tc ingress.
impl FullNat for XdpPacket<'_> {
    #[inline(always)]
    fn start_full(
        &self,
        pkt: &Parsed,
        svc: &ServiceValue,
        backend: &BackendValue,
        len: u32,
        now: u64,
    ) -> Option<Verdict> {
        if !conntrack::masquerades(pkt, svc, backend) {
            return None;
        }
        let hop = whole_hop(self, pkt, node_config().masq_addr, backend.addr)?;
        Some(match conntrack::create_full(pkt, svc, backend, len, now) {
            Ok(to) => send_whole(
                self,
                pkt,
                &to,
                &hop,
                Reason::LbNewConnection,
                Reason::XdpForward,
                len,
            ),
            Err(reason) => Verdict::drop(reason),
        })
    }

    #[inline(always)]
    fn send_full(&self, pkt: &Parsed, hit: &Hit, len: u32) -> Option<Verdict> {
        let (stage, fast) = if hit.reply {
            (Reason::NatReply, Reason::XdpForwardReply)
        } else {
            (Reason::NatForward, Reason::XdpForward)
        };
        Some(match whole_hop(self, pkt, hit.to.saddr, hit.to.daddr) {
            Some(hop) => send_whole(self, pkt, &hit.to, &hop, stage, fast, len),
            None => leave_to_tc(self.mark_deferred()),
        })
    }

    #[inline(always)]
    fn leave_full(&self) -> Option<Verdict> {
        Some(leave_to_tc(self.mark_deferred()))
    }
}

/// The egress hook's rewrite of this connection (masquerade of the original direction, un-DNAT
/// of the reply), as tc egress would apply it to the forwarded packet. `false`: the rewrite
/// sent it toward another address, which the kernel routes (tc egress finds no entry for the
/// rewritten tuple and leaves it). `len`: the recorder's scalar (computing it here spilled half
/// a packet pointer, which the verifier refuses: see main.rs).
#[inline(always)]
fn egress_rewrite(p: &XdpPacket, pkt: &Parsed, len: u32) -> Result<bool, Reason> {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(hit) = conntrack::lookup(pkt, len, now, Phase::Egress) else {
        return Ok(true);
    };
    p.rewrite_tuple(pkt, &hit.to)
        .map_err(|_| Reason::DropRewriteFailed)?;
    Ok(hit.to.daddr == pkt.flow.daddr)
}

/// TTL - 1, the IP checksum updated: the forwarding step the kernel would do (before a tunnel
/// device, too).
#[inline(always)]
fn decrement_ttl(p: &XdpPacket, l3_off: usize) -> Result<(), ()> {
    let ip = p.data() + (l3_off & MAX_L4_OFF);
    if ip + core::mem::size_of::<Ipv4Hdr>() > p.data_end() {
        return Err(());
    }
    let ip = ip as *mut Ipv4Hdr;
    // SAFETY: the header is inside the frame (checked above).
    unsafe {
        // TTL and protocol share one 16-bit word of the checksum; TTL >= 2 (checked by the
        // caller), so decrementing the word's TTL byte borrows nothing.
        let at = (ip as *mut u8).add(8) as *mut u16;
        let old = core::ptr::read_unaligned(at);
        (*ip).ttl -= 1;
        let new = core::ptr::read_unaligned(at);
        (*ip).check = csum::replace2((*ip).check, old, new);
    }
    Ok(())
}

/// The forwarding step the kernel would do: TTL - 1, the uplink's MAC as source and the next
/// hop's as destination.
#[inline(always)]
fn rewrite_l2_l3(p: &XdpPacket, l3_off: usize, hop: &Hop) -> Result<(), ()> {
    decrement_ttl(p, l3_off)?;
    let (data, end) = (p.data(), p.data_end());
    if data + core::mem::size_of::<EthHdr>() > end {
        return Err(());
    }
    let eth = data as *mut EthHdr;
    // SAFETY: the header is inside the frame (checked above).
    unsafe {
        (*eth).dst = hop.dmac;
        (*eth).src = hop.smac;
    }
    Ok(())
}
