//! The pipelines, one per hook phase: [`ingress`] (before the kernel routes a packet),
//! [`egress`] (after), [`observe`] (classify only), and the uplink's, which add the overlay
//! stage ([`uplink_rx_xdp`], [`uplink_rx_tc`], [`uplink_tx`]). Each returns one [`Verdict`];
//! `main.rs` counts it and maps it to the hook's return code.
//!
//! Steps: parse (`net::parse`) -> ICMP errors (`icmp.rs`) -> pre-filter (`prefilter.rs`) ->
//! later fragments (`frag.rs`) -> tracked connections (`conntrack.rs`: the rewrite of the
//! entry for this phase) -> new connections to services (`lb.rs`, then `conntrack::create*`).
//! In XDP, a translated packet whose next hop is back out of the uplink then takes the fast
//! path (`fastpath.rs`: the egress translation too, FIB, MACs, XDP_TX).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use dataplane_common::{
    lb::{ServiceValue, REJECT_BURST, REJECT_NS_PER_TOKEN, SVC_F_DROP_IF_EMPTY},
    Reason,
};

use crate::{
    conntrack::{self, Phase},
    fastpath, frag,
    fullnat::FullNat,
    icmp, lb, monitor,
    net::{
        parse::{self, pass_reason},
        Packet, Parsed, TcPacket, XdpPacket, L4,
    },
    overlay, prefilter, route,
    stats::Recorder,
    verdict::{Action, Verdict},
};

/// Parses the frame; `Err` is the verdict for frames that are not IPv4 or are malformed.
#[inline(always)]
fn parsed<P: Packet>(p: &P) -> Result<Parsed, Verdict> {
    parse::parse(p.data(), p.data_end(), p.frame_len() as usize).map_err(Verdict::of)
}

/// The verdict of a translated packet: replies pass; at egress, a forward packet whose
/// destination changed after the kernel routed it is routed again; a packet translated whole
/// at ingress is routed here (the kernel would drop its node-address source as a martian).
#[inline(always)]
fn translated(pkt: &Parsed, hit: &conntrack::Hit, phase: Phase) -> Verdict {
    let reason = if hit.reply {
        Reason::NatReply
    } else {
        Reason::NatForward
    };
    if hit.full {
        return Verdict::new(reason, Action::Reroute);
    }
    if hit.reply {
        return Verdict::pass(reason);
    }
    let action = if phase == Phase::Egress && hit.to.daddr != pkt.flow.daddr {
        Action::Reroute
    } else {
        Action::Pass
    };
    Verdict::new(Reason::NatForward, action)
}

/// Applies the rewrite of a tracked connection's entry for this phase, if there is one.
#[inline(always)]
fn tracked<P: FullNat>(p: &P, pkt: &Parsed, len: u32, now: u64, phase: Phase) -> Option<Verdict> {
    let hit = conntrack::lookup(pkt, len, now, phase)?;
    if hit.full {
        if let Some(v) = p.send_full(pkt, &hit, len) {
            return Some(v);
        }
    }
    if p.rewrite_tuple(pkt, &hit.to).is_err() {
        return Some(Verdict::drop(Reason::DropRewriteFailed));
    }
    if hit.egress_free {
        p.note_egress_free();
    }
    Some(translated(pkt, &hit, phase))
}

/// A fragment after the first: the translation of its datagram's connection, addresses only
/// (the ports and the transport checksum are in the first fragment).
#[inline(always)]
fn later_fragment<P: FullNat>(p: &P, mut pkt: Parsed, len: u32, phase: Phase) -> Verdict {
    if !frag::recall(&mut pkt) {
        return Verdict::pass(Reason::PassFragment);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(hit) = conntrack::lookup(&pkt, len, now, phase) else {
        return Verdict::pass(Reason::PassFragment);
    };
    if hit.full {
        if let Some(v) = p.leave_full() {
            return v;
        }
    }
    if p.rewrite_addrs(&pkt, hit.to.saddr, hit.to.daddr).is_err() {
        return Verdict::drop(Reason::DropRewriteFailed);
    }
    translated(&pkt, &hit, phase)
}

/// The first steps of the ingress and egress pipelines, the same in both but for `phase`
/// (a constant at each caller, so the match below folds away): the monitor's snapshot, the
/// parse, ICMP errors about translated connections, the pre-filter and later fragments. `Err`
/// is the verdict of a packet these steps settle; `Ok` the parsed packet and the frame length.
#[inline(always)]
fn screen<P: FullNat>(p: &P, phase: Phase) -> Result<(Parsed, u32), Verdict> {
    monitor::snapshot(p);
    let len = p.frame_len();
    let pkt = parsed(p)?;
    if pkt.l4 == L4::Icmp {
        return Err(icmp::translate_error(p, &pkt, phase));
    }
    let untouched = match phase {
        // The node's own packets to services have a frontend as destination, so the filter
        // holds for the uplink too: forwarded pod-to-pod traffic skips the lookups there as
        // well.
        Phase::Egress => prefilter::egress_untouched(&pkt),
        // Same rule on the uplink: an ingress hook translates only packets to a frontend (new
        // connections, NodePorts on the node's addresses) or to the node (replies of
        // masqueraded and of the node's own connections); a decapsulated packet for a local
        // pod is neither.
        Phase::Ingress => prefilter::ingress_untouched(&pkt),
    };
    if untouched {
        return Err(Verdict::pass(pass_reason(pkt.l4)));
    }
    if pkt.l4 == L4::Fragment {
        return Err(later_fragment(p, pkt, len, phase));
    }
    Ok((pkt, len))
}

/// Egress hooks, after the kernel routed the packet: source rewrites of masqueraded connections
/// (SNAT, and un-DNAT of their replies), and ICMP errors the node's stack emits about translated
/// connections (e.g. fragmentation needed while forwarding to a backend). With `host_services`
/// (the uplink), also the node's own packets to services that socket-level balancing left alone
/// (UDP to ClusterIPs, everything with socket-level balancing off): balanced and tracked here,
/// as kube-proxy's OUTPUT chain does.
#[inline(always)]
pub fn egress<P: FullNat>(p: &P, host_services: bool) -> Verdict {
    if p.take_egress_free() {
        monitor::snapshot(p);
        return Verdict::pass(Reason::PassTranslatedAtIngress);
    }
    let (pkt, len) = match screen(p, Phase::Egress) {
        Ok(screened) => screened,
        Err(v) => return v,
    };
    if pkt.l4 == L4::Tcp || pkt.l4 == L4::Udp {
        frag::remember(&pkt);
        let now = unsafe { bpf_ktime_get_ns() };
        if let Some(v) = tracked(p, &pkt, len, now, Phase::Egress) {
            return v;
        }
        if host_services {
            if let Some(svc) = lb::lookup_service(&pkt) {
                return host_connection(p, &pkt, &svc, len, now);
            }
        }
    }
    Verdict::pass(pass_reason(pkt.l4))
}

/// The node's own new connection to a service, seen at the uplink's egress.
#[inline(always)]
fn host_connection<P: Packet>(
    p: &P,
    pkt: &Parsed,
    svc: &ServiceValue,
    len: u32,
    now: u64,
) -> Verdict {
    if !lb::source_allowed(svc, pkt.flow.saddr) {
        return Verdict::drop(Reason::DropSourceRange);
    }
    if svc.count == 0 {
        return no_endpoints(p, pkt, svc);
    }
    let created = lb::select_backend(svc, pkt.flow.saddr, now)
        .and_then(|backend| conntrack::create_host(pkt, svc, &backend, len, now))
        .and_then(|to| {
            p.rewrite_tuple(pkt, &to)
                .map_err(|_| Reason::DropRewriteFailed)
        });
    match created {
        Ok(()) => Verdict::new(Reason::LbNewConnection, Action::Reroute),
        Err(reason) => Verdict::drop(reason),
    }
}

/// A frontend without endpoints: kube-proxy drops traffic under a Local traffic policy when
/// the service has endpoints on other nodes only (the agent sets `SVC_F_DROP_IF_EMPTY`), and
/// rejects when it has none anywhere.
#[inline(always)]
fn no_endpoints<P: Packet>(p: &P, pkt: &Parsed, svc: &ServiceValue) -> Verdict {
    if svc.flags & SVC_F_DROP_IF_EMPTY != 0 {
        return Verdict::drop(Reason::DropNoLocalEndpoints);
    }
    if !reject_allowed() {
        return Verdict::drop(Reason::DropRejectRateLimited);
    }
    icmp::reject_port_unreachable(p, pkt)
}

/// A token from this CPU's REJECT bucket (`REJECT_TOKENS_V1`).
#[inline(always)]
fn reject_allowed() -> bool {
    let Some(bucket) = crate::maps::REJECT_TOKENS_V1.get_ptr_mut(0) else {
        return false;
    };
    // Per-CPU entry: no other program touches it while this one runs on this CPU.
    unsafe { (*bucket).take(bpf_ktime_get_ns(), REJECT_NS_PER_TOKEN, REJECT_BURST) }
}

/// Classify only (the uplink's tc ingress after XDP ran the ingress pipeline): nothing is
/// translated; a malformed frame is dropped with its reason, as every other hook drops it
/// (XDP drops what it sees malformed, so these are frames it never parsed).
#[inline(always)]
pub fn observe<P: Packet>(p: &P) -> Verdict {
    monitor::snapshot(p);
    match parsed(p) {
        Ok(pkt) => Verdict::pass(pass_reason(pkt.l4)),
        Err(v) => v,
    }
}

/// Ingress hooks (a pod's veth, the uplink), before the kernel routes the packet: packets of
/// tracked connections get their entry's rewrite (DNAT of the original direction, un-SNAT of
/// masqueraded replies), new connections to services are balanced (or rejected without
/// endpoints).
#[inline(always)]
pub fn ingress<P: FullNat>(p: &P) -> Verdict {
    let (pkt, len) = match screen(p, Phase::Ingress) {
        Ok(screened) => screened,
        Err(v) => return v,
    };
    if pkt.l4 != L4::Tcp && pkt.l4 != L4::Udp {
        return Verdict::pass(pass_reason(pkt.l4));
    }
    // Before any rewrite or conntrack update: tc ingress takes the packet whole.
    if p.defer(&pkt) {
        return Verdict::pass(Reason::PassPartialChecksum);
    }
    frag::remember(&pkt);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(v) = tracked(p, &pkt, len, now, Phase::Ingress) {
        return v;
    }
    balance(p, &pkt, len, now)
}

/// A new connection: to a service frontend, balanced to a backend and tracked; anything else
/// passes.
#[inline(always)]
fn balance<P: FullNat>(p: &P, pkt: &Parsed, len: u32, now: u64) -> Verdict {
    let Some(svc) = lb::lookup_service(pkt) else {
        return Verdict::pass(pass_reason(pkt.l4));
    };
    // Before the reject: kube-proxy's firewall chain runs before its no-endpoints rule.
    if !lb::source_allowed(&svc, pkt.flow.saddr) {
        return Verdict::drop(Reason::DropSourceRange);
    }
    if svc.count == 0 {
        return no_endpoints(p, pkt, &svc);
    }
    let backend = match lb::select_backend(&svc, pkt.flow.saddr, now) {
        Ok(backend) => backend,
        Err(reason) => return Verdict::drop(reason),
    };
    if let Some(v) = p.start_full(pkt, &svc, &backend, len, now) {
        return v;
    }
    let created = conntrack::create(pkt, &svc, &backend, len, now).and_then(|to| {
        p.rewrite_tuple(pkt, &to)
            .map_err(|_| Reason::DropRewriteFailed)
    });
    match created {
        Ok(()) => {
            if !conntrack::masquerades(pkt, &svc, &backend) {
                p.note_egress_free();
            }
            Verdict::pass(Reason::LbNewConnection)
        }
        Err(reason) => Verdict::drop(reason),
    }
}

/// XDP on the uplink: tunnel packets for this node are opened first, then the inner packet (or
/// any other) takes the ingress pipeline.
#[inline(always)]
pub fn uplink_rx_xdp(p: &XdpPacket, rec: &Recorder) -> Verdict {
    if let Err(v) = overlay::decap_xdp(p, rec) {
        return v;
    }
    let v = ingress(p);
    fastpath::forward(p, v, rec)
}

/// tc ingress on the uplink (after XDP, and after GRO): opens tunnel packets XDP left closed;
/// then the ingress pipeline, on them and, when no XDP program runs it (`xdp_ran` false), on
/// everything; else frames are only classified.
#[inline(always)]
pub fn uplink_rx_tc(p: &TcPacket, rec: &Recorder, xdp_ran: bool) -> Verdict {
    p.forget_egress_note();
    let opened = match overlay::decap_tc(p, rec) {
        Ok(opened) => opened,
        Err(v) => return v,
    };
    // After the decapsulation: the inner headers are what must be linear.
    p.linearize();
    // A frame XDP deferred (a partial checksum, a packet of a connection translated whole that
    // XDP could not send) is translated here, with the helpers.
    if opened || !xdp_ran || p.deferred_by_xdp() {
        sent_whole(p, ingress(p), rec)
    } else {
        observe(p)
    }
}

/// After a tc ingress pipeline: a packet translated whole (`Reroute`) is forwarded here, as
/// the kernel would have forwarded it (`route::forward`); other verdicts are returned as they
/// are.
#[inline(always)]
fn sent_whole(p: &TcPacket, v: Verdict, rec: &Recorder) -> Verdict {
    if v.action != Action::Reroute {
        return v;
    }
    redirected(p, v, rec, route::forward(p))
}

/// The verdict `v` once the packet was sent with the FIB (`routed`): redirected, or, if that
/// failed, dropped with its reason (`v`'s translation counted as a stage).
#[inline(always)]
fn redirected(p: &TcPacket, v: Verdict, rec: &Recorder, routed: Result<(), Reason>) -> Verdict {
    match routed {
        Ok(()) => Verdict::new(v.reason, Action::Redirect),
        Err(reason) => {
            rec.record(p, v);
            Verdict::drop(reason)
        }
    }
}

/// tc egress on the uplink: the egress pipeline (with the node's own connections to
/// services), then the overlay stage (packets for another node's pod CIDR are encapsulated),
/// else a packet whose destination the pipeline rewrote is routed again.
#[inline(always)]
pub fn uplink_tx(p: &TcPacket, rec: &Recorder) -> Verdict {
    p.linearize();
    let v = egress(p, true);
    match v.action {
        Action::Pass | Action::Reroute => {}
        _ => return v,
    }
    let v = overlay::encap(p, v, rec);
    if v.action != Action::Reroute {
        return v;
    }
    redirected(p, v, rec, route::reroute(p))
}

/// tc ingress of a pod-facing device (frames a pod sends).
#[inline(always)]
pub fn pod_rx(p: &TcPacket, rec: &Recorder) -> Verdict {
    p.forget_egress_note();
    p.linearize();
    sent_whole(p, ingress(p), rec)
}

/// tc egress of a pod-facing device (frames to a pod).
#[inline(always)]
pub fn pod_tx(p: &TcPacket) -> Verdict {
    p.linearize();
    egress(p, false)
}
