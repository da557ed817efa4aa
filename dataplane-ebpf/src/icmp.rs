//! ICMP: the port unreachable the datapath originates for services without endpoints (what
//! kube-proxy's `-j REJECT` sends, for TCP and UDP alike; a TCP client's connect() fails with
//! ECONNREFUSED at once instead of retrying SYNs), and ICMP errors about translated connections,
//! translated back.

use core::mem::size_of;

use dataplane_common::{
    ct::CT_F_FULL, ip::IPPROTO_ICMP, ip::IPPROTO_TCP, ip::IPPROTO_UDP, overlay::ipv4_header, Reason,
};

use crate::{
    conntrack::{self, Phase},
    fullnat::FullNat,
    net::{
        csum::{self, checksum},
        hdr::{
            from_bytes, EthHdr, IcmpError, IcmpHdr, Ipv4Hdr, Quote, UdpHdr, ICMP_DEST_UNREACH,
            ICMP_PORT_UNREACH, IPV4_HLEN, IPV4_VIHL_NO_OPTIONS,
        },
        Flow, Packet, Parsed,
    },
    verdict::{Action, Verdict},
};

/// Length of the port unreachable from the IP header on: IPv4 header + ICMP header + the
/// quoted IPv4 header + 8 bytes of its payload.
const REJECT_L3_LEN: usize = IPV4_HLEN + size_of::<IcmpError>();

/// Turns the packet in place into an ICMP port unreachable from the frontend back to the client
/// (MACs swapped); the hook sends it back out of the interface it came in on (`Bounce`).
/// Packets with IP options are not answered (the quote would need their variable-length
/// header).
#[inline(always)]
pub fn reject_port_unreachable<P: Packet>(p: &P, pkt: &Parsed) -> Verdict {
    match build_reject(p, pkt) {
        Some(()) => Verdict::new(Reason::RejectNoEndpoints, Action::Bounce),
        None => Verdict::drop(Reason::DropRejectFailed),
    }
}

#[inline(always)]
fn build_reject<P: Packet>(p: &P, pkt: &Parsed) -> Option<()> {
    if pkt.l4_off - pkt.l3_off != IPV4_HLEN {
        return None;
    }
    let quote: Quote = p.load(pkt.l3_off)?;
    let eth: EthHdr = p.load(0)?;
    let ip: Ipv4Hdr = from_bytes(&ipv4_header(
        0,
        REJECT_L3_LEN as u16,
        0,
        false,
        64,
        IPPROTO_ICMP,
        pkt.flow.daddr,
        pkt.flow.saddr,
    ));
    let mut msg = IcmpError {
        icmp: IcmpHdr {
            kind: ICMP_DEST_UNREACH,
            code: ICMP_PORT_UNREACH,
            check: 0,
            rest: 0,
        },
        quote,
    };
    msg.icmp.check = checksum::<IcmpError, { size_of::<IcmpError>() }>(&msg);
    let swapped = EthHdr {
        dst: eth.src,
        src: eth.dst,
        proto: eth.proto,
    };

    p.resize((pkt.l3_off + REJECT_L3_LEN) as u32).ok()?;
    p.store(0, &swapped).ok()?;
    p.store(pkt.l3_off, &ip).ok()?;
    p.store(pkt.l3_off + IPV4_HLEN, &msg).ok()
}

/// The flow of the packet a quote holds (no options; TCP or UDP), as it was on the wire.
#[inline(always)]
fn quoted_flow(q: &Quote) -> Option<Flow> {
    let (ip, l4) = (q.ip, q.l4);
    if ip.vihl != IPV4_VIHL_NO_OPTIONS || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return None;
    }
    Some(Flow {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: l4.source,
        dport: l4.dest,
        proto: ip.proto,
    })
}

/// Translates an ICMP error (unreachable, time exceeded, parameter problem) that quotes a packet
/// of a NATed connection, so the original sender's stack matches it to its socket: the quote gets
/// the addresses the sender used, the outer destination becomes the sender, and an error sent by
/// the quoted packet's destination (the backend) appears to come from the service. Other ICMP
/// passes untouched.
///
/// The quote is the post-translation packet; its reversed flow is the key of the connection's
/// other direction (at this hook's phase, as for the connection's own packets), whose rewrite
/// is exactly the inverse translation.
#[inline(always)]
pub fn translate_error<P: FullNat>(p: &P, pkt: &Parsed, phase: Phase) -> Verdict {
    let untouched = Verdict::pass(Reason::PassIcmp);
    let Some(mut icmp) = p.load::<IcmpHdr>(pkt.l4_off) else {
        return untouched;
    };
    if !icmp.is_error() {
        return untouched;
    }
    let quote_off = pkt.l4_off + size_of::<IcmpHdr>();
    let Some(mut q) = p.load::<Quote>(quote_off) else {
        return untouched;
    };
    let Some(quoted) = quoted_flow(&q) else {
        return untouched;
    };
    let Some(t) = conntrack::entry_of(&quoted.reversed(), phase) else {
        return untouched;
    };
    // Translated whole (`fullnat.rs`), the error leaves by the hook that translates it.
    let full = t.flags & CT_F_FULL != 0;
    if full {
        if let Some(v) = p.leave_full() {
            return v;
        }
    }
    // Quote as the sender sent it: from the rewrite's destination, to the rewrite's source.
    let to = Flow {
        saddr: t.nat_daddr,
        daddr: t.nat_saddr,
        sport: t.nat_dport,
        dport: t.nat_sport,
        proto: quoted.proto,
    };
    rewrite_quote(&mut icmp, &mut q, &quoted, &to);

    let Some(mut ip) = p.load::<Ipv4Hdr>(pkt.l3_off) else {
        return Verdict::drop(Reason::DropRewriteFailed);
    };
    let mut ipc = ip.check;
    // Errors from the backend itself (port unreachable) come from the service instead.
    if pkt.flow.saddr == quoted.daddr {
        ipc = csum::replace4(ipc, pkt.flow.saddr, to.daddr);
        ip.saddr = to.daddr;
    }
    ipc = csum::replace4(ipc, pkt.flow.daddr, to.saddr);
    ip.daddr = to.saddr;
    ip.check = ipc;

    let stored = p.store(pkt.l3_off, &ip).is_ok()
        && p.store(pkt.l4_off, &icmp).is_ok()
        && p.store(quote_off, &q).is_ok();
    if stored && full {
        Verdict::new(Reason::IcmpErrorTranslated, Action::Reroute)
    } else if stored {
        Verdict::pass(Reason::IcmpErrorTranslated)
    } else {
        Verdict::drop(Reason::DropRewriteFailed)
    }
}

/// Rewrites the quote from flow `from` to `to`: its IPv4 header and checksum, its ports, a
/// UDP quote's checksum, and the ICMP checksum over all of it.
#[inline(always)]
fn rewrite_quote(icmp: &mut IcmpHdr, q: &mut Quote, from: &Flow, to: &Flow) {
    let (mut ip, mut l4): (Ipv4Hdr, UdpHdr) = (q.ip, q.l4);
    let mut icmp_check = icmp.check;
    let old_ip_check = ip.check;
    let new_ip_check = csum::replace4(
        csum::replace4(old_ip_check, from.saddr, to.saddr),
        from.daddr,
        to.daddr,
    );
    icmp_check = csum::replace4(
        csum::replace4(icmp_check, from.saddr, to.saddr),
        from.daddr,
        to.daddr,
    );
    icmp_check = csum::replace2(icmp_check, old_ip_check, new_ip_check);
    icmp_check = csum::replace2(
        csum::replace2(icmp_check, from.sport, to.sport),
        from.dport,
        to.dport,
    );
    if from.proto == IPPROTO_UDP {
        let old = l4.check;
        let mut c = csum::replace4(
            csum::replace4(old, from.saddr, to.saddr),
            from.daddr,
            to.daddr,
        );
        c = csum::udp_fixup(
            old,
            csum::replace2(
                csum::replace2(c, from.sport, to.sport),
                from.dport,
                to.dport,
            ),
        );
        icmp_check = csum::replace2(icmp_check, old, c);
        l4.check = c;
    }
    ip.saddr = to.saddr;
    ip.daddr = to.daddr;
    ip.check = new_ip_check;
    l4.source = to.sport;
    l4.dest = to.dport;
    icmp.check = icmp_check;
    q.ip = ip;
    q.l4 = l4;
}
