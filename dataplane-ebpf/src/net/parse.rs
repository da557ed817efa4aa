//! The parser: Ethernet, up to two VLAN tags, IPv4 and the transport header, into a [`Parsed`]
//! packet (where the layers start, the flow, what the transport layer is).
//!
//! Header fields stay in network byte order; callers convert where they compare.

use dataplane_common::{
    ip::{ETH_P_IPV4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    Reason,
};

use super::{
    cursor::Cursor,
    flow::Flow,
    hdr::{
        is_vlan_tag, EthHdr, EthIpv4, IcmpHdr, Ipv4Hdr, TcpHdr, UdpHdr, ETH_HLEN, IPV4_HLEN, IP_MF,
        IP_OFFSET,
    },
};

/// Bytes the parser may need in the linear part of an skb: Ethernet + two VLAN tags + the
/// largest IPv4 header + a TCP header, rounded up.
pub const PARSE_WINDOW: u32 = 128;

/// Largest offset any header we touch can start at: Ethernet + two VLAN tags + a 60-byte IPv4
/// header. Masking offsets with this keeps them provably bounded after register spills.
pub const MAX_L4_OFF: usize = 0x7f;

/// The transport layer of a parsed packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    Icmp,
    /// Another IP protocol; no ports.
    Other,
    /// A non-first fragment; no transport header in this packet.
    Fragment,
}

/// Where the layers of a frame start and what its flow looks like.
pub struct Parsed {
    /// Offset of the IP header from the start of the frame.
    pub l3_off: usize,
    /// Offset of the transport header (after IP options).
    pub l4_off: usize,
    pub l4: L4,
    /// Addresses, ports (0 without a transport header) and protocol, network order.
    pub flow: Flow,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// IPv4 identification (network order): with the addresses and protocol it names the
    /// datagram a fragment belongs to.
    pub ip_id: u16,
    /// A first fragment (offset 0, more fragments follow): its ports are remembered for the
    /// fragments that follow without them.
    pub first_fragment: bool,
}

/// Skips the Ethernet header and up to two VLAN tags; returns the EtherType that follows
/// (network order).
#[inline(always)]
fn parse_l2(cur: &mut Cursor) -> Result<u16, Reason> {
    let eth = cur.take::<EthHdr>().ok_or(Reason::DropTruncatedL2)?;
    let mut proto = unsafe { (*eth).proto };
    // Unrolled by hand: two tags (QinQ) is what real underlays carry.
    for _ in 0..2 {
        if !is_vlan_tag(proto) {
            return Ok(proto);
        }
        let tag = cur
            .take::<super::hdr::VlanHdr>()
            .ok_or(Reason::DropTruncatedL2)?;
        proto = unsafe { (*tag).proto };
    }
    if is_vlan_tag(proto) {
        return Err(Reason::PassTooManyVlans);
    }
    Ok(proto)
}

/// Validates the IPv4 header at the cursor and moves past it and its options.
/// `frame_len` is the whole frame (skb->len for tc), which may exceed the linear data.
#[inline(always)]
fn parse_ipv4_hdr(cur: &mut Cursor, frame_len: usize) -> Result<Parsed, Reason> {
    let l3_off = cur.offset();
    let ip = cur.take::<Ipv4Hdr>().ok_or(Reason::DropTruncatedIpv4)?;
    let (vihl, tot_len, frag_off, proto, saddr, daddr, ip_id) = unsafe {
        (
            (*ip).vihl,
            u16::from_be((*ip).tot_len) as usize,
            u16::from_be((*ip).frag_off),
            (*ip).proto,
            (*ip).saddr,
            (*ip).daddr,
            (*ip).id,
        )
    };
    let hdr_len = ((vihl & 0x0f) as usize) << 2;
    if vihl >> 4 != 4 || hdr_len < IPV4_HLEN {
        return Err(Reason::DropBadIpv4);
    }
    if tot_len < hdr_len || l3_off + tot_len > frame_len {
        return Err(Reason::DropBadIpv4);
    }
    // Options: move over them; the next take() re-checks the bound with the variable offset.
    let l4_off = l3_off + hdr_len;
    if !cur.seek(l4_off) {
        return Err(Reason::DropTruncatedIpv4);
    }
    let l4 = if frag_off & IP_OFFSET != 0 {
        L4::Fragment
    } else {
        l4_kind(proto)
    };
    Ok(Parsed {
        l3_off,
        l4_off,
        l4,
        flow: Flow {
            saddr,
            daddr,
            sport: 0,
            dport: 0,
            proto,
        },
        tcp_flags: 0,
        ip_id,
        first_fragment: frag_off & (IP_MF | IP_OFFSET) == IP_MF,
    })
}

#[inline(always)]
fn l4_kind(proto: u8) -> L4 {
    match proto {
        IPPROTO_TCP => L4::Tcp,
        IPPROTO_UDP => L4::Udp,
        IPPROTO_ICMP => L4::Icmp,
        _ => L4::Other,
    }
}

/// Reads the ports (TCP/UDP) or checks the header is present (ICMP).
#[inline(always)]
fn parse_l4(cur: &mut Cursor, pkt: &mut Parsed) -> Result<(), Reason> {
    match pkt.l4 {
        L4::Tcp => {
            let tcp = cur.take::<TcpHdr>().ok_or(Reason::DropTruncatedL4)?;
            unsafe {
                pkt.flow.sport = (*tcp).source;
                pkt.flow.dport = (*tcp).dest;
                pkt.tcp_flags = (*tcp).flags();
            }
        }
        L4::Udp => {
            let udp = cur.take::<UdpHdr>().ok_or(Reason::DropTruncatedL4)?;
            unsafe {
                pkt.flow.sport = (*udp).source;
                pkt.flow.dport = (*udp).dest;
            }
        }
        L4::Icmp => {
            cur.take::<IcmpHdr>().ok_or(Reason::DropTruncatedL4)?;
        }
        L4::Other | L4::Fragment => {}
    }
    Ok(())
}

/// Parses Ethernet, VLAN, IP and the transport header. `Err` carries the verdict reason for
/// frames that are not IPv4 or are malformed. (IPv6 goes here next: a parse step for its
/// header after `parse_l2`, the same `Parsed` with a wider `Flow` address.)
#[inline(always)]
pub fn parse(data: usize, data_end: usize, frame_len: usize) -> Result<Parsed, Reason> {
    let mut cur = Cursor::new(data, data_end);
    if parse_l2(&mut cur)? != ETH_P_IPV4.to_be() {
        return Err(Reason::PassNotIpv4);
    }
    let mut pkt = parse_ipv4_hdr(&mut cur, frame_len)?;
    parse_l4(&mut cur, &mut pkt)?;
    Ok(pkt)
}

/// The pass reason for a well-formed packet no rule applied to.
#[inline(always)]
pub fn pass_reason(l4: L4) -> Reason {
    match l4 {
        L4::Tcp => Reason::PassTcp,
        L4::Udp => Reason::PassUdp,
        L4::Icmp => Reason::PassIcmp,
        L4::Other => Reason::PassOtherL4,
        L4::Fragment => Reason::PassFragment,
    }
}

/// Bytes of an untagged IPv4 frame that [`parse`] reads: through the fixed TCP or UDP header,
/// else the whole window (ICMP errors carry the headers they quote; VLAN tags, IP options).
#[inline(always)]
pub fn parsed_len(first: Option<EthIpv4>) -> u32 {
    let Some(h) = first else {
        return PARSE_WINDOW;
    };
    let (eth, ip) = (h.eth, h.ip);
    if !eth.is_ipv4() {
        return PARSE_WINDOW;
    }
    let l4 = (ETH_HLEN + ip.hdr_len()) as u32;
    match ip.proto {
        IPPROTO_TCP => l4 + core::mem::size_of::<TcpHdr>() as u32,
        IPPROTO_UDP => l4 + core::mem::size_of::<UdpHdr>() as u32,
        _ => PARSE_WINDOW,
    }
}
