//! Typed header views: the wire layout of every header the datapath reads or writes.
//!
//! Fields stay in network byte order (what the map keys hold too); the accessors convert where a
//! value is compared with a host-order constant. The views are read in two ways: through the
//! bounds-checked [`Cursor`](super::cursor::Cursor) (direct packet access) or copied onto the
//! stack by the context's load helper ([`Packet::load`](super::ctx::Packet::load)); the
//! `#[repr(C, packed)]` composites below are what such a copy holds when several headers are
//! read with one helper call (packed: an Ethernet header is 14 bytes, and the IPv4 header after
//! it is not 4-byte aligned). Read a packed composite's parts by value (`let ip = v.ip;`).

use dataplane_common::ip::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4};

/// Ethernet II header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// EtherType, network order.
    pub proto: u16,
}

/// Length of [`EthHdr`] on the wire.
pub const ETH_HLEN: usize = 14;

impl EthHdr {
    /// An IPv4 frame from `src` to `dst`.
    #[inline(always)]
    pub fn ipv4(dst: [u8; 6], src: [u8; 6]) -> Self {
        EthHdr {
            dst,
            src,
            proto: ETH_P_IPV4.to_be(),
        }
    }

    #[inline(always)]
    pub fn is_ipv4(&self) -> bool {
        self.proto == ETH_P_IPV4.to_be()
    }
}

/// Whether an EtherType (network order) is an 802.1Q or 802.1ad tag.
#[inline(always)]
pub fn is_vlan_tag(proto_be: u16) -> bool {
    proto_be == ETH_P_8021Q.to_be() || proto_be == ETH_P_8021AD.to_be()
}

/// 802.1Q / 802.1ad tag.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    /// Priority, DEI and VLAN id, network order.
    pub tci: u16,
    /// EtherType of what follows the tag, network order.
    pub proto: u16,
}

/// IPv4 header without options.
#[repr(C)]
#[derive(Clone, Copy)]
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

/// Length of [`Ipv4Hdr`] (no options).
pub const IPV4_HLEN: usize = 20;
/// `vihl` of a 20-byte IPv4 header.
pub const IPV4_VIHL_NO_OPTIONS: u8 = 0x45;
/// Flags/offset word (host order): don't fragment, more fragments, the offset bits.
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

impl Ipv4Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.vihl >> 4
    }

    /// Header length in bytes (options included).
    #[inline(always)]
    pub fn hdr_len(&self) -> usize {
        ((self.vihl & 0x0f) as usize) << 2
    }

    #[inline(always)]
    pub fn tot_len(&self) -> u16 {
        u16::from_be(self.tot_len)
    }

    /// The flags/offset word, host order.
    #[inline(always)]
    pub fn frag(&self) -> u16 {
        u16::from_be(self.frag_off)
    }

    /// A fragment (first or later): MF set or a non-zero offset.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.frag() & (IP_MF | IP_OFFSET) != 0
    }

    /// A fragment after the first: no transport header in it.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        self.frag() & IP_OFFSET != 0
    }

    #[inline(always)]
    pub fn dont_fragment(&self) -> bool {
        self.frag() & IP_DF != 0
    }
}

/// TCP header without options.
#[repr(C)]
#[derive(Clone, Copy)]
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

/// Offset of the checksum in a TCP header.
pub const TCP_CHECK_OFF: usize = 16;

impl TcpHdr {
    /// The flags byte (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR).
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        u16::from_be(self.off_flags) as u8
    }
}

/// Header length in bytes (options included) from a TCP header's data offset/flags word
/// (network order).
#[inline(always)]
pub fn tcp_hdr_len(off_flags: u16) -> usize {
    ((u16::from_be(off_flags) >> 12) as usize) << 2
}

/// The first word of a TCP or UDP header: the ports, network order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct L4Ports {
    pub source: u16,
    pub dest: u16,
}

impl L4Ports {
    /// Both ports as one word, as they sit in memory (what the flow hash mixes).
    #[inline(always)]
    pub fn word(&self) -> u32 {
        u32::from_ne_bytes(*bytes_of(self))
    }
}

/// UDP header. Also the view of the first 8 bytes of any transport header an ICMP error quotes
/// (ports first, for TCP as for UDP).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub source: u16,
    pub dest: u16,
    pub len: u16,
    pub check: u16,
}

/// Offset of the checksum in a UDP header.
pub const UDP_CHECK_OFF: usize = 6;

/// ICMP header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    /// Echo id/sequence, or the unused/next-hop-MTU word of an error.
    pub rest: u32,
}

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

impl IcmpHdr {
    /// An error that quotes the packet it is about (RFC 792).
    #[inline(always)]
    pub fn is_error(&self) -> bool {
        matches!(
            self.kind,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        )
    }
}

/// What an ICMP error quotes: the offending packet's IPv4 header (without options) and the first
/// 8 bytes of its transport header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Quote {
    pub ip: Ipv4Hdr,
    pub l4: UdpHdr,
}

/// An ICMP error message: the header and its quote.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpError {
    pub icmp: IcmpHdr,
    pub quote: Quote,
}

/// VXLAN header (RFC 7348).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VxlanHdr {
    /// 0x08 (I: the VNI is valid) in the first byte.
    pub flags: [u8; 4],
    /// The VNI in the high 24 bits, network order.
    pub vni_rsvd: [u8; 4],
}

/// `VxlanHdr::flags[0]`: the VNI is valid.
pub const VXLAN_F_VNI: u8 = 0x08;

impl VxlanHdr {
    #[inline(always)]
    pub fn new(vni: u32) -> Self {
        VxlanHdr {
            flags: [VXLAN_F_VNI, 0, 0, 0],
            vni_rsvd: [(vni >> 16) as u8, (vni >> 8) as u8, vni as u8, 0],
        }
    }

    #[inline(always)]
    pub fn vni_valid(&self) -> bool {
        self.flags[0] & VXLAN_F_VNI != 0
    }

    /// The 24-bit VNI, host order.
    #[inline(always)]
    pub fn vni(&self) -> u32 {
        ((self.vni_rsvd[0] as u32) << 16)
            | ((self.vni_rsvd[1] as u32) << 8)
            | self.vni_rsvd[2] as u32
    }
}

/// An untagged IPv4 frame's first headers, as one helper load copies them.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct EthIpv4 {
    pub eth: EthHdr,
    pub ip: Ipv4Hdr,
}

/// What VXLAN puts between the outer IPv4 header and the inner IPv4 packet: UDP, VXLAN and the
/// inner Ethernet header (30 bytes, what the outer UDP checksum covers of the headers).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct VxlanTunnel {
    pub udp: UdpHdr,
    pub vxlan: VxlanHdr,
    pub eth: EthHdr,
}

/// What follows an outer IPv4 header in a VXLAN packet, up to the inner IPv4 header's end.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct VxlanInner {
    pub tun: VxlanTunnel,
    pub ip: Ipv4Hdr,
}

/// The headers VXLAN encapsulation puts in front of the inner IPv4 packet (64 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct VxlanEncap {
    pub eth: EthHdr,
    pub ip: Ipv4Hdr,
    pub tun: VxlanTunnel,
}

/// The headers IPIP encapsulation puts in front of the inner IPv4 packet (34 bytes).
pub type IpipEncap = EthIpv4;

/// Reinterprets plain-old-data `T` as its bytes (headers built on the stack, for checksums and
/// the shared builders in `dataplane_common`, which work on byte arrays).
#[inline(always)]
pub fn bytes_of<T: Copy, const N: usize>(v: &T) -> &[u8; N] {
    const { assert!(core::mem::size_of::<T>() == N) };
    // SAFETY: T is a repr(C) header of N bytes without padding; u8 has alignment 1.
    unsafe { &*(v as *const T as *const [u8; N]) }
}

/// The header `T` from its wire bytes (the inverse of [`bytes_of`]).
#[inline(always)]
pub fn from_bytes<T: Copy, const N: usize>(b: &[u8; N]) -> T {
    const { assert!(core::mem::size_of::<T>() == N) };
    // SAFETY: every bit pattern is a valid header; read_unaligned: `b` has alignment 1.
    unsafe { core::ptr::read_unaligned(b as *const [u8; N] as *const T) }
}

// The wire sizes the composites stand for.
const _: () = {
    assert!(core::mem::size_of::<EthIpv4>() == 34);
    assert!(core::mem::size_of::<VxlanTunnel>() == 30);
    assert!(core::mem::size_of::<VxlanInner>() == 50);
    assert!(core::mem::size_of::<VxlanEncap>() == 64);
    assert!(core::mem::size_of::<IcmpError>() == 36);
};
