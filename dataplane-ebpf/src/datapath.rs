//! The per-hook pipelines: parse, then conntrack, then service lookup.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use dataplane_common::{
    lb::{ServiceValue, REJECT_BURST, REJECT_NS_PER_TOKEN, SVC_F_DROP_IF_EMPTY},
    Reason,
};

use crate::{
    conntrack::{self, Phase},
    frag, icmp, lb,
    packet::Packet,
    parse::{self, Ipv4Packet, L4},
    prefilter,
};

/// What the hook does with the frame after the pipeline ran.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    /// Send back out of the interface it arrived on (XDP_TX; tc: redirect to the same device).
    Bounce,
    /// At an egress hook: the destination was rewritten after the kernel routed the packet
    /// (the node's own connection to a service): route it again.
    Reroute,
}

#[inline(always)]
fn verdict(reason: Reason) -> Action {
    if reason.is_drop() {
        Action::Drop
    } else {
        Action::Pass
    }
}

/// Applies the rewrite of a tracked connection's entry for this phase, if there is one.
#[inline(always)]
fn translate_tracked<P: Packet>(
    p: &P,
    pkt: &Ipv4Packet,
    len: u32,
    now: u64,
    phase: Phase,
) -> Option<(Reason, Action)> {
    let hit = conntrack::lookup(pkt, len, now, phase)?;
    if p.rewrite_tuple(pkt, &hit.to).is_err() {
        return Some((Reason::DropRewriteFailed, Action::Drop));
    }
    if hit.reply {
        return Some((Reason::NatReply, Action::Pass));
    }
    let action = if phase == Phase::Egress && hit.to.daddr != pkt.daddr {
        Action::Reroute
    } else {
        Action::Pass
    };
    Some((Reason::NatForward, action))
}

/// A fragment after the first: the translation of its datagram's connection, addresses only
/// (the ports and the transport checksum are in the first fragment).
#[inline(always)]
fn later_fragment<P: Packet>(
    p: &P,
    mut pkt: Ipv4Packet,
    len: u32,
    phase: Phase,
) -> (Reason, Action) {
    if !frag::recall(&mut pkt) {
        return (Reason::PassFragment, Action::Pass);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(hit) = conntrack::lookup(&pkt, len, now, phase) else {
        return (Reason::PassFragment, Action::Pass);
    };
    if p.rewrite_addrs(&pkt, hit.to.saddr, hit.to.daddr).is_err() {
        return (Reason::DropRewriteFailed, Action::Drop);
    }
    if hit.reply {
        return (Reason::NatReply, Action::Pass);
    }
    let action = if phase == Phase::Egress && hit.to.daddr != pkt.daddr {
        Action::Reroute
    } else {
        Action::Pass
    };
    (Reason::NatForward, action)
}

/// ICMP errors about translated connections are translated back; other ICMP passes.
#[inline(always)]
fn icmp_errors<P: Packet>(p: &P, pkt: &Ipv4Packet, phase: Phase) -> (Reason, Action) {
    match icmp::translate_error(p, pkt, phase) {
        icmp::IcmpOutcome::Untouched => (Reason::PassIcmp, Action::Pass),
        icmp::IcmpOutcome::Translated => (Reason::IcmpErrorTranslated, Action::Pass),
        icmp::IcmpOutcome::Failed => (Reason::DropRewriteFailed, Action::Drop),
    }
}

/// Egress hooks, after the kernel routed the packet: source rewrites of masqueraded connections
/// (SNAT, and un-DNAT of their replies), and ICMP errors the node's stack emits about translated
/// connections (e.g. fragmentation needed while forwarding to a backend). With `host_services`
/// (the uplink), also the node's own packets to services that socket-level balancing left alone
/// (UDP to ClusterIPs, everything with socket-level balancing off): balanced and tracked here,
/// as kube-proxy's OUTPUT chain does.
#[inline(always)]
pub fn egress<P: Packet>(p: &P, host_services: bool) -> (Reason, Action) {
    let len = p.frame_len();
    let pkt = match parse::parse_ipv4(p.data(), p.data_end(), len as usize) {
        Ok(pkt) => pkt,
        Err(reason) => return (reason, verdict(reason)),
    };
    if pkt.l4 == L4::Icmp {
        return icmp_errors(p, &pkt, Phase::Egress);
    }
    // The node's own packets to services have a frontend as destination, so the filter holds
    // for the uplink too: forwarded pod-to-pod traffic skips the lookups there as well.
    if prefilter::egress_untouched(&pkt) {
        return (parse::pass_reason(pkt.l4), Action::Pass);
    }
    if pkt.l4 == L4::Fragment {
        return later_fragment(p, pkt, len, Phase::Egress);
    }
    if pkt.l4 == L4::Tcp || pkt.l4 == L4::Udp {
        frag::remember(&pkt);
        let now = unsafe { bpf_ktime_get_ns() };
        if let Some(verdict) = translate_tracked(p, &pkt, len, now, Phase::Egress) {
            return verdict;
        }
        if host_services {
            if let Some(svc) = lb::lookup_service(&pkt) {
                return host_connection(p, &pkt, &svc, len, now);
            }
        }
    }
    (parse::pass_reason(pkt.l4), Action::Pass)
}

#[inline(always)]
fn host_connection<P: Packet>(
    p: &P,
    pkt: &Ipv4Packet,
    svc: &ServiceValue,
    len: u32,
    now: u64,
) -> (Reason, Action) {
    if !lb::source_allowed(svc, pkt.saddr) {
        return (Reason::DropSourceRange, Action::Drop);
    }
    if svc.count == 0 {
        return no_endpoints(p, pkt, svc);
    }
    let created = lb::select_backend(svc, pkt.saddr, now)
        .and_then(|backend| conntrack::create_host(pkt, svc, &backend, len, now))
        .and_then(|to| {
            p.rewrite_tuple(pkt, &to)
                .map_err(|_| Reason::DropRewriteFailed)
        });
    match created {
        Ok(()) => (Reason::LbNewConnection, Action::Reroute),
        Err(reason) => (reason, Action::Drop),
    }
}

/// A frontend without endpoints: kube-proxy drops traffic under a Local traffic policy when
/// the service has endpoints on other nodes only (the agent sets `SVC_F_DROP_IF_EMPTY`), and
/// rejects when it has none anywhere.
#[inline(always)]
fn no_endpoints<P: Packet>(p: &P, pkt: &Ipv4Packet, svc: &ServiceValue) -> (Reason, Action) {
    if svc.flags & SVC_F_DROP_IF_EMPTY != 0 {
        return (Reason::DropNoLocalEndpoints, Action::Drop);
    }
    if !reject_allowed() {
        return (Reason::DropRejectRateLimited, Action::Drop);
    }
    match icmp::reject_port_unreachable(p, pkt) {
        Ok(()) => (Reason::RejectNoEndpoints, Action::Bounce),
        Err(()) => (Reason::DropRejectFailed, Action::Drop),
    }
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

/// Classify only: hooks with nothing to translate yet.
#[inline(always)]
pub fn observe<P: Packet>(p: &P) -> Reason {
    match parse::parse_ipv4(p.data(), p.data_end(), p.frame_len() as usize) {
        Ok(pkt) => parse::pass_reason(pkt.l4),
        Err(reason) => reason,
    }
}

/// Where connections enter the node (a pod's veth, the uplink): translate tracked packets in
/// either direction, balance new connections to services, reject services without endpoints.
#[inline(always)]
pub fn service_ingress<P: Packet>(p: &P) -> (Reason, Action) {
    let len = p.frame_len();
    let pkt = match parse::parse_ipv4(p.data(), p.data_end(), len as usize) {
        Ok(pkt) => pkt,
        Err(reason) => return (reason, verdict(reason)),
    };
    if pkt.l4 == L4::Icmp {
        return icmp_errors(p, &pkt, Phase::Ingress);
    }
    // Same rule on the uplink: an ingress hook translates only packets to a frontend (new
    // connections, NodePorts on the node's addresses) or to the node (replies of masqueraded
    // and of the node's own connections); a decapsulated packet for a local pod is neither.
    if prefilter::ingress_untouched(&pkt) {
        return (parse::pass_reason(pkt.l4), Action::Pass);
    }
    if pkt.l4 == L4::Fragment {
        return later_fragment(p, pkt, len, Phase::Ingress);
    }
    if pkt.l4 != L4::Tcp && pkt.l4 != L4::Udp {
        return (parse::pass_reason(pkt.l4), Action::Pass);
    }
    frag::remember(&pkt);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(verdict) = translate_tracked(p, &pkt, len, now, Phase::Ingress) {
        return verdict;
    }
    let Some(svc) = lb::lookup_service(&pkt) else {
        return (parse::pass_reason(pkt.l4), Action::Pass);
    };
    // Before the reject: kube-proxy's firewall chain runs before its no-endpoints rule.
    if !lb::source_allowed(&svc, pkt.saddr) {
        return (Reason::DropSourceRange, Action::Drop);
    }
    if svc.count == 0 {
        return no_endpoints(p, &pkt, &svc);
    }
    match new_connection(p, &pkt, &svc, len, now) {
        Ok(()) => (Reason::LbNewConnection, Action::Pass),
        Err(reason) => (reason, Action::Drop),
    }
}

#[inline(always)]
fn new_connection<P: Packet>(
    p: &P,
    pkt: &Ipv4Packet,
    svc: &ServiceValue,
    len: u32,
    now: u64,
) -> Result<(), Reason> {
    let backend = lb::select_backend(svc, pkt.saddr, now)?;
    let to = conntrack::create(pkt, svc, &backend, len, now)?;
    p.rewrite_tuple(pkt, &to)
        .map_err(|_| Reason::DropRewriteFailed)
}
