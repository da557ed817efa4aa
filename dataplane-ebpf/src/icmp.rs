//! ICMP messages the datapath originates: port unreachable for services without endpoints
//! (what kube-proxy's `-j REJECT` sends, for TCP and UDP alike; a TCP client's connect() fails
//! with ECONNREFUSED at once instead of retrying SYNs).

use dataplane_common::csum;

use crate::{conntrack::Phase, packet::Packet, parse::Ipv4Packet};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// IPv4 header (20) + ICMP header (8) + quoted IPv4 header (20) + 8 bytes of its payload.
const REJECT_L3_LEN: usize = 56;

/// Ones'-complement checksum of a fixed-size block (native 16-bit loads, stored back natively).
#[inline(always)]
fn checksum<const N: usize>(bytes: &[u8; N]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    !csum::fold(sum)
}

/// Turns the packet in place into an ICMP port unreachable from the frontend back to the client
/// (MACs swapped); the caller sends it back out of the interface it came in on. Packets with IP
/// options are not answered (the quote would need their variable-length header).
#[inline(always)]
pub fn reject_port_unreachable<P: Packet>(p: &P, pkt: &Ipv4Packet) -> Result<(), ()> {
    if pkt.l4_off - pkt.l3_off != 20 {
        return Err(());
    }
    let quote: [u8; 28] = p.load(pkt.l3_off)?;
    let macs: [u8; 12] = p.load(0)?;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(REJECT_L3_LEN as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&pkt.daddr.to_ne_bytes());
    ip[16..20].copy_from_slice(&pkt.saddr.to_ne_bytes());
    let ipc = checksum(&ip);
    ip[10..12].copy_from_slice(&ipc.to_ne_bytes());
    let mut icmp = [0u8; 36];
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = ICMP_PORT_UNREACH;
    icmp[8..36].copy_from_slice(&quote);
    let ic = checksum(&icmp);
    icmp[2..4].copy_from_slice(&ic.to_ne_bytes());
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);

    p.resize((pkt.l3_off + REJECT_L3_LEN) as u32)?;
    p.store(0, &swapped)?;
    p.store(pkt.l3_off, &ip)?;
    p.store(pkt.l3_off + 20, &icmp)
}

const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

#[inline(always)]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

#[inline(always)]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
}

/// Outcome of looking at an ICMP message.
pub enum IcmpOutcome {
    /// Not an error about a connection we translated: leave it.
    Untouched,
    Translated,
    Failed,
}

/// Translates an ICMP error (unreachable, time exceeded, parameter problem) that quotes a packet
/// of a NATed connection, so the original sender's stack matches it to its socket: the quote gets
/// the addresses the sender used, the outer destination becomes the sender, and an error sent by
/// the quoted packet's destination (the backend) appears to come from the service.
///
/// The quote is the post-translation packet; its reversed tuple is the key of the connection's
/// other direction, whose rewrite is exactly the inverse translation.
#[inline(always)]
pub fn translate_error<P: Packet>(p: &P, pkt: &Ipv4Packet, phase: Phase) -> IcmpOutcome {
    match try_translate_error(p, pkt, phase) {
        Ok(true) => IcmpOutcome::Translated,
        Ok(false) => IcmpOutcome::Untouched,
        Err(()) => IcmpOutcome::Failed,
    }
}

#[inline(always)]
fn try_translate_error<P: Packet>(p: &P, pkt: &Ipv4Packet, phase: Phase) -> Result<bool, ()> {
    let Ok(mut icmp) = p.load::<8>(pkt.l4_off) else {
        return Ok(false);
    };
    if !matches!(
        icmp[0],
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        return Ok(false);
    }
    // The quoted IPv4 header (no options) and the first 8 bytes of its transport header.
    let Ok(mut q) = p.load::<28>(pkt.l4_off + 8) else {
        return Ok(false);
    };
    let proto = q[9];
    if q[0] != 0x45 || (proto != crate::parse::IPPROTO_TCP && proto != crate::parse::IPPROTO_UDP) {
        return Ok(false);
    }
    let (qs, qd, qsp, qdp) = (be32(&q, 12), be32(&q, 16), be16(&q, 20), be16(&q, 22));
    // Same phase rule as for the connection's own packets (masqueraded connections are undone in
    // two steps: un-SNAT at ingress, un-DNAT at egress).
    let key = crate::conntrack::key(qd, qdp, qs, qsp, proto, phase);
    let Some(t) = (unsafe { crate::maps::CT_V2.get(&key) }).copied() else {
        return Ok(false);
    };
    // Quote as the sender sent it: from the rewrite's destination, to the rewrite's source.
    let (ns, nd, nsp, ndp) = (t.nat_daddr, t.nat_saddr, t.nat_dport, t.nat_sport);

    let mut icmp_check = be16(&icmp, 2);
    let mut inner_check = be16(&q, 10);
    let new_inner_check = csum::replace4(csum::replace4(inner_check, qs, ns), qd, nd);
    icmp_check = csum::replace4(csum::replace4(icmp_check, qs, ns), qd, nd);
    icmp_check = csum::replace2(icmp_check, inner_check, new_inner_check);
    inner_check = new_inner_check;
    icmp_check = csum::replace2(csum::replace2(icmp_check, qsp, nsp), qdp, ndp);
    if proto == crate::parse::IPPROTO_UDP {
        let old = be16(&q, 26);
        let mut c = csum::replace4(csum::replace4(old, qs, ns), qd, nd);
        c = csum::udp_fixup(old, csum::replace2(csum::replace2(c, qsp, nsp), qdp, ndp));
        icmp_check = csum::replace2(icmp_check, old, c);
        put16(&mut q, 26, c);
    }
    put32(&mut q, 12, ns);
    put32(&mut q, 16, nd);
    put16(&mut q, 10, inner_check);
    put16(&mut q, 20, nsp);
    put16(&mut q, 22, ndp);
    put16(&mut icmp, 2, icmp_check);

    let mut ip: [u8; 20] = p.load(pkt.l3_off)?;
    let mut ipc = be16(&ip, 10);
    // Errors from the backend itself (port unreachable) come from the service instead.
    if pkt.saddr == qd {
        ipc = csum::replace4(ipc, pkt.saddr, nd);
        put32(&mut ip, 12, nd);
    }
    ipc = csum::replace4(ipc, pkt.daddr, ns);
    put32(&mut ip, 16, ns);
    put16(&mut ip, 10, ipc);

    p.store(pkt.l3_off, &ip)?;
    p.store(pkt.l4_off, &icmp)?;
    p.store(pkt.l4_off + 8, &q)?;
    Ok(true)
}
