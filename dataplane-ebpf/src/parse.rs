//! Header cursor: parses one layer at a time, bounds-checked against `data_end`.
//!
//! Every read goes through [`Cursor::take`], which checks `pos + size_of::<T>() <= end` before
//! handing out a pointer: that comparison is what the verifier needs to see to allow the access.
//! Header fields stay in network byte order; callers convert where they compare.

use core::mem::size_of;

use dataplane_common::Reason;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Bytes the parser may need in the linear part of an skb: Ethernet + two VLAN tags + the
/// largest IPv4 header + a TCP header, rounded up.
pub const PARSE_WINDOW: u32 = 128;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// EtherType, network order.
    pub proto: u16,
}

#[repr(C)]
pub struct VlanHdr {
    /// Priority, DEI and VLAN id, network order.
    pub tci: u16,
    /// EtherType of what follows the tag, network order.
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    /// Flags (DF 0x4000, MF 0x2000) and fragment offset in 8-byte units, network order.
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

#[repr(C)]
pub struct TcpHdr {
    pub source: u16,
    pub dest: u16,
    pub seq: u32,
    pub ack_seq: u32,
    /// Data offset (4 bits), reserved bits and flags, network order.
    pub off_flags: u16,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub source: u16,
    pub dest: u16,
    pub len: u16,
    pub check: u16,
}

#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    /// Echo id/sequence, or the unused/next-hop-MTU word of an error.
    pub rest: u32,
}

/// A position in the packet. The offset is kept as an integer built from constants and masked
/// header fields, never as a pointer difference: the verifier treats `ptr - ptr` as an unbounded
/// scalar and would then refuse any later `data + offset` access.
pub struct Cursor {
    pub start: usize,
    pub off: usize,
    pub end: usize,
}

/// Largest offset any header we touch can start at: Ethernet + two VLAN tags + a 60-byte IPv4
/// header. Masking offsets with this keeps them provably bounded after register spills.
pub const MAX_L4_OFF: usize = 0x7f;

impl Cursor {
    #[inline(always)]
    pub fn new(data: usize, data_end: usize) -> Self {
        Cursor {
            start: data,
            off: 0,
            end: data_end,
        }
    }

    /// Returns a pointer to a `T` at the cursor and moves past it, or `None` if the packet is
    /// too short.
    #[inline(always)]
    pub fn take<T>(&mut self) -> Option<*const T> {
        let at = self.start + self.off;
        if at + size_of::<T>() > self.end {
            return None;
        }
        self.off += size_of::<T>();
        Some(at as *const T)
    }

    /// Offset of the cursor from the start of the frame.
    #[inline(always)]
    pub fn offset(&self) -> usize {
        self.off
    }
}

/// The transport layer of a parsed IPv4 packet.
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

/// Where the layers of an IPv4 frame start and what the flow looks like.
pub struct Ipv4Packet {
    /// Offset of the IPv4 header from the start of the frame.
    pub l3_off: usize,
    /// Offset of the transport header (after IP options).
    pub l4_off: usize,
    pub l4: L4,
    pub proto: u8,
    /// Addresses and ports in network byte order; ports are 0 without a transport header.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// IPv4 identification (network order): with the addresses and protocol it names the
    /// datagram a fragment belongs to.
    pub ip_id: u16,
    /// A first fragment (offset 0, more fragments follow): its ports are remembered for the
    /// fragments that follow without them.
    pub first_fragment: bool,
}

/// Skips the Ethernet header and up to two VLAN tags; returns the EtherType that follows.
#[inline(always)]
fn parse_l2(cur: &mut Cursor) -> Result<u16, Reason> {
    let eth = cur.take::<EthHdr>().ok_or(Reason::DropTruncatedL2)?;
    let mut proto = u16::from_be(unsafe { (*eth).proto });
    // Unrolled by hand: two tags (QinQ) is what real underlays carry.
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            return Ok(proto);
        }
        let tag = cur.take::<VlanHdr>().ok_or(Reason::DropTruncatedL2)?;
        proto = u16::from_be(unsafe { (*tag).proto });
    }
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        return Err(Reason::PassTooManyVlans);
    }
    Ok(proto)
}

/// Validates the IPv4 header at the cursor and moves past it and its options.
/// `frame_len` is the whole frame (skb->len for tc), which may exceed the linear data.
#[inline(always)]
fn parse_l3(cur: &mut Cursor, frame_len: usize) -> Result<Ipv4Packet, Reason> {
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
    if vihl >> 4 != 4 || hdr_len < size_of::<Ipv4Hdr>() {
        return Err(Reason::DropBadIpv4);
    }
    if tot_len < hdr_len || l3_off + tot_len > frame_len {
        return Err(Reason::DropBadIpv4);
    }
    // Options: move over them; the next take() re-checks the bound with the variable offset.
    let l4_off = l3_off + hdr_len;
    if cur.start + l4_off > cur.end {
        return Err(Reason::DropTruncatedIpv4);
    }
    cur.off = l4_off;
    let l4 = if frag_off & 0x1fff != 0 {
        L4::Fragment
    } else {
        l4_kind(proto)
    };
    Ok(Ipv4Packet {
        l3_off,
        l4_off: l3_off + hdr_len,
        l4,
        proto,
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        ip_id,
        first_fragment: frag_off & 0x3fff == IP_MF,
    })
}

/// More-fragments flag of the IPv4 header's flags/offset word (host order).
const IP_MF: u16 = 0x2000;

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
fn parse_l4(cur: &mut Cursor, pkt: &mut Ipv4Packet) -> Result<(), Reason> {
    match pkt.l4 {
        L4::Tcp => {
            let tcp = cur.take::<TcpHdr>().ok_or(Reason::DropTruncatedL4)?;
            unsafe {
                pkt.sport = (*tcp).source;
                pkt.dport = (*tcp).dest;
                pkt.tcp_flags = u16::from_be((*tcp).off_flags) as u8;
            }
        }
        L4::Udp => {
            let udp = cur.take::<UdpHdr>().ok_or(Reason::DropTruncatedL4)?;
            unsafe {
                pkt.sport = (*udp).source;
                pkt.dport = (*udp).dest;
            }
        }
        L4::Icmp => {
            cur.take::<IcmpHdr>().ok_or(Reason::DropTruncatedL4)?;
        }
        L4::Other | L4::Fragment => {}
    }
    Ok(())
}

/// Parses Ethernet, VLAN, IPv4 and the transport header. `Err` carries the verdict reason for
/// frames that are not IPv4 or are malformed.
#[inline(always)]
pub fn parse_ipv4(data: usize, data_end: usize, frame_len: usize) -> Result<Ipv4Packet, Reason> {
    let mut cur = Cursor::new(data, data_end);
    if parse_l2(&mut cur)? != ETH_P_IPV4 {
        return Err(Reason::PassNotIpv4);
    }
    let mut pkt = parse_l3(&mut cur, frame_len)?;
    parse_l4(&mut cur, &mut pkt)?;
    Ok(pkt)
}

/// The pass reason for a well-formed IPv4 packet no rule applied to.
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
