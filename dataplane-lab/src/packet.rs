//! Packet builder and parser for `BPF_PROG_TEST_RUN` fixtures, the benchmark and wire tests.
//!
//! [`Frame`] builds Ethernet frames (optionally VLAN/QinQ tagged) carrying IPv4 with TCP, UDP,
//! ICMP or a raw protocol. Every length and checksum is correct by default; override methods
//! (`ihl`, `ip_version`, `total_len`, `ip_checksum`, `l4_checksum`, ...) break one field on
//! purpose. [`parse`] and [`parse_ip`] decode what a program emitted, verifying checksums.
//!
//! Everything on the wire is big-endian (network byte order): every multi-byte field is written
//! with `to_be_bytes` and read with `from_be_bytes`.
//!
//! ```
//! use dataplane_lab::packet::{parse, Frame, TcpFlags};
//! use std::net::Ipv4Addr;
//!
//! let frame = Frame::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
//!     .ipv4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2))
//!     .tcp(40000, 80)
//!     .flags(TcpFlags::SYN)
//!     .seq(1)
//!     .build();
//! let parsed = parse(&frame).unwrap();
//! assert!(parsed.ipv4().unwrap().checksum_ok);
//! assert_eq!(parsed.tcp().unwrap().dport, 80);
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::{BitOr, BitOrAssign};

/// An Ethernet MAC address, in wire order.
pub type Mac = [u8; 6];

/// EtherType values (the 16-bit big-endian field after the MAC addresses / VLAN tags).
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q customer VLAN tag (C-tag).
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service VLAN tag (S-tag, "QinQ").
    pub const QINQ: u16 = 0x88a8;
}

/// IP protocol numbers (the IPv4 `protocol` field).
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// IPv4-in-IPv4 (IPIP).
    pub const IPIP: u8 = 4;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// GRE.
    pub const GRE: u8 = 47;
    /// SCTP.
    pub const SCTP: u8 = 132;
    /// Reserved; what [`Frame`](super::Frame) uses when no L4 method was called.
    pub const RESERVED: u8 = 255;
}

/// ICMP type numbers.
pub mod icmp_type {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (code 4 = fragmentation needed, next-hop MTU in the low 16 bits
    /// of the rest-of-header word).
    pub const DEST_UNREACH: u8 = 3;
    /// Source quench (deprecated).
    pub const SOURCE_QUENCH: u8 = 4;
    /// Redirect.
    pub const REDIRECT: u8 = 5;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAM_PROBLEM: u8 = 12;
}

/// UDP destination port the Linux kernel (and flannel) uses for VXLAN.
pub const VXLAN_PORT_LINUX: u16 = 8472;
/// IANA-assigned VXLAN UDP port.
pub const VXLAN_PORT_IANA: u16 = 4789;
/// VXLAN header flags byte with the "VNI valid" (I) bit set.
pub const VXLAN_FLAG_VNI: u8 = 0x08;
/// ARP operation: request.
pub const ARP_REQUEST: u16 = 1;
/// ARP operation: reply.
pub const ARP_REPLY: u16 = 2;

const ETH_HLEN: usize = 14;
const IPV4_MIN_HLEN: usize = 20;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_HLEN: usize = 8;
const VXLAN_HLEN: usize = 8;
const MAX_OPTIONS: usize = 40;
const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

// ---------------------------------------------------------------------------------------------
// Checksums (RFC 1071)
// ---------------------------------------------------------------------------------------------

/// Folds a 32-bit ones'-complement accumulator to 16 bits and complements it, like the Linux
/// kernel's `csum_fold`: the result is the value to store in a checksum field.
pub fn csum_fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Adds `bytes`, read as big-endian 16-bit words (an odd trailing byte is padded with zero),
/// to a ones'-complement accumulator, with end-around carry so it never overflows.
fn csum_add(sum: u32, bytes: &[u8]) -> u32 {
    bytes.chunks(2).fold(sum, |acc, word| {
        let word = u16::from_be_bytes([word[0], word.get(1).copied().unwrap_or(0)]);
        let acc = acc + u32::from(word);
        (acc & 0xffff) + (acc >> 16)
    })
}

/// The Internet checksum (RFC 1071) of `bytes`. Over data that already contains a correct
/// checksum field the result is 0.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    csum_fold(csum_add(0, bytes))
}

/// TCP/UDP checksum of `l4_bytes` (header + payload) over the IPv4 pseudo-header
/// (src, dst, zero, protocol, length = `l4_bytes.len()`). Returns 0 when `l4_bytes` carries a
/// correct checksum. Does not apply UDP's "0 means no checksum, send 0xffff" rule.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_bytes: &[u8]) -> u16 {
    // The IPv4 pseudo-header length field is 16 bits; longer inputs wrap like on the wire.
    let len = (l4_bytes.len() as u16).to_be_bytes();
    let pseudo = csum_add(0, &src.octets());
    let pseudo = csum_add(pseudo, &dst.octets());
    let pseudo = csum_add(pseudo, &[0, proto, len[0], len[1]]);
    csum_fold(csum_add(pseudo, l4_bytes))
}

// ---------------------------------------------------------------------------------------------
// TCP flags
// ---------------------------------------------------------------------------------------------

/// The TCP flags byte (byte 13 of the TCP header). Combine with `|`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: Self = Self(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: Self = Self(0x02);
    /// Reset the connection.
    pub const RST: Self = Self(0x04);
    /// Push function.
    pub const PSH: Self = Self(0x08);
    /// Acknowledgment field significant.
    pub const ACK: Self = Self(0x10);
    /// Urgent pointer field significant.
    pub const URG: Self = Self(0x20);
    /// ECN echo.
    pub const ECE: Self = Self(0x40);
    /// Congestion window reduced.
    pub const CWR: Self = Self(0x80);

    const NAMES: [(Self, &'static str); 8] = [
        (Self::FIN, "FIN"),
        (Self::SYN, "SYN"),
        (Self::RST, "RST"),
        (Self::PSH, "PSH"),
        (Self::ACK, "ACK"),
        (Self::URG, "URG"),
        (Self::ECE, "ECE"),
        (Self::CWR, "CWR"),
    ];

    /// True if every flag set in `other` is also set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&names.join("|"))
        }
    }
}

/// A TCP MSS option (kind 2, length 4, MSS big-endian), ready for [`Frame::tcp_options`].
pub fn mss_option(mss: u16) -> [u8; 4] {
    let [hi, lo] = mss.to_be_bytes();
    [2, 4, hi, lo]
}

// ---------------------------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------------------------

/// A VLAN tag: the tag protocol identifier and the tag control information.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// [`ethertype::VLAN`] (802.1Q) or [`ethertype::QINQ`] (802.1ad).
    pub tpid: u16,
    /// PCP (3 bits) | DEI (1 bit) | VID (12 bits).
    pub tci: u16,
}

impl VlanTag {
    /// The 12-bit VLAN identifier.
    pub fn vid(&self) -> u16 {
        self.tci & 0x0fff
    }
}

/// Fluent builder of an Ethernet frame; see the module docs for an example.
///
/// Calls are grouped by layer: Ethernet (`vlan`, `qinq`, `ethertype`), then [`Frame::ipv4`]
/// and its setters, then one L4 call (`tcp`, `udp`, `icmp_echo`, `icmp_error`, `ip_proto`) and
/// its setters, then [`Frame::payload`]. Setters of a layer panic if that layer was not started
/// (a mistake in the test, not in the packet). Checksums are computed last, over the final
/// (possibly overridden) field values, so an override breaks only its own field.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct Frame {
    src: Mac,
    dst: Mac,
    tags: Vec<VlanTag>,
    ethertype: Option<u16>,
    ip: Option<Ipv4Spec>,
    l4: L4Spec,
    l4_csum: Option<u16>,
    payload: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Ipv4Spec {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    tos: u8,
    ttl: u8,
    id: u16,
    df: bool,
    mf: bool,
    frag_offset: u16,
    options: Vec<u8>,
    version: Option<u8>,
    ihl: Option<u8>,
    total_len: Option<u16>,
    checksum: Option<u16>,
}

#[derive(Clone, Debug)]
enum L4Spec {
    Tcp(TcpSpec),
    Udp {
        sport: u16,
        dport: u16,
        len: Option<u16>,
    },
    IcmpEcho {
        request: bool,
        id: u16,
        seq: u16,
    },
    IcmpError {
        icmp_type: u8,
        code: u8,
        rest: u32,
    },
    Raw(u8),
}

impl Default for L4Spec {
    fn default() -> Self {
        Self::Raw(proto::RESERVED)
    }
}

#[derive(Clone, Debug)]
struct TcpSpec {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: TcpFlags,
    window: u16,
    options: Vec<u8>,
    data_offset: Option<u8>,
}

impl Frame {
    /// Starts a frame from `src` to `dst`. Note the argument order (source first); on the wire
    /// the destination MAC comes first. Without an L3 call the EtherType is IPv4 unless set
    /// with [`Frame::ethertype`].
    ///
    /// To build a bare IP packet (an IPIP inner packet, an ICMP quote) start from
    /// `Frame::default()` and finish with [`Frame::build_ip`].
    pub fn eth(src: Mac, dst: Mac) -> Self {
        Self {
            src,
            dst,
            ..Self::default()
        }
    }

    /// Appends an 802.1Q tag (TPID 0x8100) with this TCI (VID in the low 12 bits, PCP/DEI
    /// above). Tags are written in call order, outermost first.
    pub fn vlan(mut self, tci: u16) -> Self {
        self.tags.push(VlanTag {
            tpid: ethertype::VLAN,
            tci,
        });
        self
    }

    /// Appends an 802.1ad service tag (TPID 0x88a8) with this TCI; call before [`Frame::vlan`]
    /// for a standard QinQ frame.
    pub fn qinq(mut self, tci: u16) -> Self {
        self.tags.push(VlanTag {
            tpid: ethertype::QINQ,
            tci,
        });
        self
    }

    /// Sets the EtherType (e.g. [`ethertype::ARP`] with an ARP [`Frame::payload`]). Also
    /// overrides the 0x0800 an [`Frame::ipv4`] frame would get.
    pub fn ethertype(mut self, ethertype: u16) -> Self {
        self.ethertype = Some(ethertype);
        self
    }

    /// Adds an IPv4 header from `src` to `dst`: TTL 64, DF set, ID 0, TOS 0, no options; the
    /// protocol comes from the L4 call (255 if there is none).
    pub fn ipv4(mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        self.ip = Some(Ipv4Spec {
            src,
            dst,
            tos: 0,
            ttl: 64,
            id: 0,
            df: true,
            mf: false,
            frag_offset: 0,
            options: Vec::new(),
            version: None,
            ihl: None,
            total_len: None,
            checksum: None,
        });
        self
    }

    /// Sets the IPv4 TOS/DSCP+ECN byte.
    pub fn tos(mut self, tos: u8) -> Self {
        self.ip_mut("tos").tos = tos;
        self
    }

    /// Sets the IPv4 TTL.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ip_mut("ttl").ttl = ttl;
        self
    }

    /// Sets the IPv4 identification field.
    pub fn id(mut self, id: u16) -> Self {
        self.ip_mut("id").id = id;
        self
    }

    /// Sets or clears the IPv4 Don't Fragment flag.
    pub fn dont_fragment(mut self, df: bool) -> Self {
        self.ip_mut("dont_fragment").df = df;
        self
    }

    /// Sets the More Fragments flag and the fragment offset (in 8-byte units, at most 0x1fff).
    /// Does not touch DF; real fragments usually have it clear.
    pub fn frag(mut self, more_fragments: bool, offset_8byte_units: u16) -> Self {
        assert!(
            offset_8byte_units <= IP_OFFSET_MASK,
            "fragment offset exceeds 13 bits"
        );
        let ip = self.ip_mut("frag");
        ip.mf = more_fragments;
        ip.frag_offset = offset_8byte_units;
        self
    }

    /// Appends IPv4 options; the IHL grows accordingly. Panics unless `options` is already
    /// padded to a multiple of 4 bytes and at most 40 bytes.
    pub fn ip_options(mut self, options: &[u8]) -> Self {
        check_options("IPv4", options);
        self.ip_mut("ip_options").options = options.to_vec();
        self
    }

    /// Override: writes `ihl` (low 4 bits) as the IHL field, whatever the real header length.
    pub fn ihl(mut self, ihl: u8) -> Self {
        self.ip_mut("ihl").ihl = Some(ihl);
        self
    }

    /// Override: writes `version` (low 4 bits) as the IP version field.
    pub fn ip_version(mut self, version: u8) -> Self {
        self.ip_mut("ip_version").version = Some(version);
        self
    }

    /// Override: writes `total_len` as the IPv4 total length field.
    pub fn total_len(mut self, total_len: u16) -> Self {
        self.ip_mut("total_len").total_len = Some(total_len);
        self
    }

    /// Override: writes `checksum` as the IPv4 header checksum instead of the correct one.
    pub fn ip_checksum(mut self, checksum: u16) -> Self {
        self.ip_mut("ip_checksum").checksum = Some(checksum);
        self
    }

    /// Adds a TCP header: flags SYN, seq 0, ack 0, window 65535, no options.
    pub fn tcp(self, sport: u16, dport: u16) -> Self {
        let spec = TcpSpec {
            sport,
            dport,
            seq: 0,
            ack: 0,
            flags: TcpFlags::SYN,
            window: 65535,
            options: Vec::new(),
            data_offset: None,
        };
        self.with_l4(L4Spec::Tcp(spec), "tcp")
    }

    /// Sets the TCP flags.
    pub fn flags(mut self, flags: TcpFlags) -> Self {
        self.tcp_mut("flags").flags = flags;
        self
    }

    /// Sets the TCP sequence number.
    pub fn seq(mut self, seq: u32) -> Self {
        self.tcp_mut("seq").seq = seq;
        self
    }

    /// Sets the TCP acknowledgment number.
    pub fn ack(mut self, ack: u32) -> Self {
        self.tcp_mut("ack").ack = ack;
        self
    }

    /// Sets the TCP window.
    pub fn window(mut self, window: u16) -> Self {
        self.tcp_mut("window").window = window;
        self
    }

    /// Sets the TCP options; the data offset grows accordingly. Panics unless `options` is
    /// padded to a multiple of 4 bytes and at most 40 bytes (see [`mss_option`]).
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        check_options("TCP", options);
        self.tcp_mut("tcp_options").options = options.to_vec();
        self
    }

    /// Override: writes `data_offset` (low 4 bits) as the TCP data offset field.
    pub fn tcp_data_offset(mut self, data_offset: u8) -> Self {
        self.tcp_mut("tcp_data_offset").data_offset = Some(data_offset);
        self
    }

    /// Adds a UDP header; the length field covers header + payload.
    pub fn udp(self, sport: u16, dport: u16) -> Self {
        self.with_l4(
            L4Spec::Udp {
                sport,
                dport,
                len: None,
            },
            "udp",
        )
    }

    /// Override: writes `len` as the UDP length field.
    pub fn udp_len(mut self, len: u16) -> Self {
        match &mut self.l4 {
            L4Spec::Udp { len: l, .. } => *l = Some(len),
            _ => panic!("Frame::udp_len() needs .udp() first"),
        }
        self
    }

    /// Adds an ICMP echo request (type 8) or reply (type 0) header with this id and sequence;
    /// [`Frame::payload`] is the echo data.
    pub fn icmp_echo(self, request: bool, id: u16, seq: u16) -> Self {
        self.with_l4(L4Spec::IcmpEcho { request, id, seq }, "icmp_echo")
    }

    /// Adds an ICMP error header (`rest_of_header` is the big-endian word at bytes 4..8, e.g.
    /// the next-hop MTU for "fragmentation needed") followed by `quoted`, normally the
    /// offending IP header + 8 bytes (see [`icmp_quote`]). Replaces the payload.
    pub fn icmp_error(self, icmp_type: u8, code: u8, rest_of_header: u32, quoted: &[u8]) -> Self {
        let spec = L4Spec::IcmpError {
            icmp_type,
            code,
            rest: rest_of_header,
        };
        self.with_l4(spec, "icmp_error").payload(quoted)
    }

    /// Uses `proto` as the IPv4 protocol and `payload` verbatim as the IP payload (no L4 header
    /// is built): e.g. [`proto::IPIP`] with an inner IP packet. Replaces the payload.
    pub fn ip_proto(self, proto: u8, payload: &[u8]) -> Self {
        self.with_l4(L4Spec::Raw(proto), "ip_proto")
            .payload(payload)
    }

    /// Override: writes `checksum` as the TCP/UDP/ICMP checksum instead of the correct one.
    /// Call after the L4 method.
    pub fn l4_checksum(mut self, checksum: u16) -> Self {
        assert!(
            self.l4.checksum_offset().is_some(),
            "Frame::l4_checksum() needs tcp/udp/icmp"
        );
        self.l4_csum = Some(checksum);
        self
    }

    /// Sets the payload after the last header (replacing any previous payload): the L4 payload,
    /// the raw IP payload, or the L2 payload of a non-IP frame.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Builds the frame: Ethernet header, VLAN tags, then the IP packet or raw payload.
    pub fn build(&self) -> Vec<u8> {
        let mut frame = self.eth_header();
        match self.ip {
            Some(_) => frame.extend(self.build_ip()),
            None => frame.extend_from_slice(&self.payload),
        }
        frame
    }

    /// Builds only the IPv4 packet (no Ethernet header). Panics without [`Frame::ipv4`].
    pub fn build_ip(&self) -> Vec<u8> {
        let ip = self.ip.as_ref().expect("Frame::build_ip() needs .ipv4()");
        let segment = self.l4_segment(ip);
        let mut packet = ip.header(self.l4.protocol(), segment.len());
        packet.extend(segment);
        packet
    }

    fn eth_header(&self) -> Vec<u8> {
        let mut header = Vec::with_capacity(ETH_HLEN + 4 * self.tags.len());
        header.extend_from_slice(&self.dst);
        header.extend_from_slice(&self.src);
        for tag in &self.tags {
            header.extend(tag.tpid.to_be_bytes());
            header.extend(tag.tci.to_be_bytes());
        }
        header.extend(self.ethertype.unwrap_or(ethertype::IPV4).to_be_bytes());
        header
    }

    fn l4_segment(&self, ip: &Ipv4Spec) -> Vec<u8> {
        let mut segment = self.l4.header(self.payload.len());
        segment.extend_from_slice(&self.payload);
        if let Some(at) = self.l4.checksum_offset() {
            let sum = self
                .l4_csum
                .unwrap_or_else(|| self.l4.checksum(ip, &segment));
            segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        segment
    }

    fn with_l4(mut self, l4: L4Spec, method: &str) -> Self {
        self.ip_mut(method);
        self.l4 = l4;
        self
    }

    fn ip_mut(&mut self, method: &str) -> &mut Ipv4Spec {
        self.ip
            .as_mut()
            .unwrap_or_else(|| panic!("Frame::{method}() needs .ipv4() first"))
    }

    fn tcp_mut(&mut self, method: &str) -> &mut TcpSpec {
        match &mut self.l4 {
            L4Spec::Tcp(tcp) => tcp,
            _ => panic!("Frame::{method}() needs .tcp() first"),
        }
    }
}

fn check_options(layer: &str, options: &[u8]) {
    assert!(
        options.len().is_multiple_of(4),
        "{layer} options must be padded to a multiple of 4 bytes"
    );
    assert!(
        options.len() <= MAX_OPTIONS,
        "{layer} options longer than {MAX_OPTIONS} bytes"
    );
}

fn to_u16(len: usize, what: &str) -> u16 {
    u16::try_from(len).unwrap_or_else(|_| panic!("{what} of {len} bytes does not fit 16 bits"))
}

impl Ipv4Spec {
    /// The header (with options) for an L4 segment of `l4_len` bytes, checksum filled in.
    fn header(&self, protocol: u8, l4_len: usize) -> Vec<u8> {
        let hlen = IPV4_MIN_HLEN + self.options.len();
        let version = self.version.unwrap_or(4);
        let ihl = self.ihl.unwrap_or((hlen / 4) as u8);
        let total_len = self
            .total_len
            .unwrap_or_else(|| to_u16(hlen + l4_len, "IPv4 packet"));
        let flags = if self.df { IP_DF } else { 0 } | if self.mf { IP_MF } else { 0 };
        let mut h = Vec::with_capacity(hlen);
        h.push((version << 4) | (ihl & 0x0f));
        h.push(self.tos);
        h.extend(total_len.to_be_bytes());
        h.extend(self.id.to_be_bytes());
        h.extend((flags | self.frag_offset).to_be_bytes());
        h.extend([self.ttl, protocol, 0, 0]);
        h.extend(self.src.octets());
        h.extend(self.dst.octets());
        h.extend_from_slice(&self.options);
        let checksum = self.checksum.unwrap_or_else(|| internet_checksum(&h));
        h[10..12].copy_from_slice(&checksum.to_be_bytes());
        h
    }
}

impl L4Spec {
    fn protocol(&self) -> u8 {
        match self {
            Self::Tcp(_) => proto::TCP,
            Self::Udp { .. } => proto::UDP,
            Self::IcmpEcho { .. } | Self::IcmpError { .. } => proto::ICMP,
            Self::Raw(proto) => *proto,
        }
    }

    /// Where the checksum field sits in the L4 header, if this protocol has one we compute.
    fn checksum_offset(&self) -> Option<usize> {
        match self {
            Self::Tcp(_) => Some(16),
            Self::Udp { .. } => Some(6),
            Self::IcmpEcho { .. } | Self::IcmpError { .. } => Some(2),
            Self::Raw(_) => None,
        }
    }

    /// The L4 header with a zero checksum field.
    fn header(&self, payload_len: usize) -> Vec<u8> {
        match self {
            Self::Tcp(tcp) => tcp.header(),
            Self::Udp { sport, dport, len } => {
                let len = len.unwrap_or_else(|| to_u16(UDP_HLEN + payload_len, "UDP datagram"));
                [
                    sport.to_be_bytes(),
                    dport.to_be_bytes(),
                    len.to_be_bytes(),
                    [0, 0],
                ]
                .concat()
            }
            Self::IcmpEcho { request, id, seq } => {
                let icmp_type = if *request {
                    icmp_type::ECHO_REQUEST
                } else {
                    icmp_type::ECHO_REPLY
                };
                let ([i0, i1], [s0, s1]) = (id.to_be_bytes(), seq.to_be_bytes());
                vec![icmp_type, 0, 0, 0, i0, i1, s0, s1]
            }
            Self::IcmpError {
                icmp_type,
                code,
                rest,
            } => [[*icmp_type, *code, 0, 0], rest.to_be_bytes()].concat(),
            Self::Raw(_) => Vec::new(),
        }
    }

    /// The correct checksum of `segment` (whose checksum field is zero).
    fn checksum(&self, ip: &Ipv4Spec, segment: &[u8]) -> u16 {
        match self {
            Self::Tcp(_) => l4_checksum(ip.src, ip.dst, proto::TCP, segment),
            // RFC 768: a computed 0 is sent as all ones (0 means "no checksum").
            Self::Udp { .. } => match l4_checksum(ip.src, ip.dst, proto::UDP, segment) {
                0 => 0xffff,
                sum => sum,
            },
            _ => internet_checksum(segment),
        }
    }
}

impl TcpSpec {
    fn header(&self) -> Vec<u8> {
        let hlen = TCP_MIN_HLEN + self.options.len();
        let data_offset = self.data_offset.unwrap_or((hlen / 4) as u8);
        let mut h = Vec::with_capacity(hlen);
        h.extend(self.sport.to_be_bytes());
        h.extend(self.dport.to_be_bytes());
        h.extend(self.seq.to_be_bytes());
        h.extend(self.ack.to_be_bytes());
        h.extend([data_offset << 4, self.flags.0]);
        h.extend(self.window.to_be_bytes());
        h.extend([0, 0, 0, 0]); // checksum, urgent pointer
        h.extend_from_slice(&self.options);
        h
    }
}

/// The 8-byte VXLAN header (flags 0x08, VNI in bytes 4..7 big-endian) followed by
/// `inner_frame`: the UDP payload of an outer `udp(sport, VXLAN_PORT_LINUX)`.
pub fn vxlan(vni: u32, inner_frame: &[u8]) -> Vec<u8> {
    assert!(vni < 1 << 24, "VNI exceeds 24 bits");
    let mut out = Vec::with_capacity(VXLAN_HLEN + inner_frame.len());
    out.extend([VXLAN_FLAG_VNI, 0, 0, 0]);
    out.extend((vni << 8).to_be_bytes());
    out.extend_from_slice(inner_frame);
    out
}

/// What an ICMP error quotes of `ip_packet`: its IP header (per its IHL) and the next 8 bytes,
/// or less if the packet is shorter.
pub fn icmp_quote(ip_packet: &[u8]) -> &[u8] {
    let hlen = ip_packet.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
    &ip_packet[..ip_packet.len().min(hlen + 8)]
}

/// A 28-byte Ethernet/IPv4 ARP payload (operation [`ARP_REQUEST`] or [`ARP_REPLY`]), for
/// `Frame::eth(..).ethertype(ethertype::ARP).payload(&arp_payload(..))`.
pub fn arp_payload(op: u16, sender: (Mac, Ipv4Addr), target: (Mac, Ipv4Addr)) -> Vec<u8> {
    let mut out = vec![0, 1, 8, 0, 6, 4]; // htype Ethernet, ptype IPv4, hlen 6, plen 4
    out.extend(op.to_be_bytes());
    out.extend(sender.0);
    out.extend(sender.1.octets());
    out.extend(target.0);
    out.extend(target.1.octets());
    out
}

/// Splits an IPv4 packet (no Ethernet header) into fragments carrying at most `max_payload`
/// bytes of IP payload each (rounded down to a multiple of 8). Every fragment gets a copy of
/// the header (options included), DF clear, MF set on all but the last (which keeps the
/// original MF) and a fresh header checksum. Works on already-fragmented packets too.
/// Panics on a malformed packet or `max_payload < 8`.
pub fn fragment_ipv4(packet: &[u8], max_payload: usize) -> Vec<Vec<u8>> {
    let step = max_payload / 8 * 8;
    assert!(step > 0, "fragment payload must be at least 8 bytes");
    let hlen = usize::from(packet[0] & 0x0f) * 4;
    let (header, body) = packet[..usize::from(be16(packet, 2))].split_at(hlen);
    let frag_field = be16(packet, 6);
    let base = usize::from(frag_field & IP_OFFSET_MASK);
    let chunks: Vec<&[u8]> = match body.is_empty() {
        true => vec![body],
        false => body.chunks(step).collect(),
    };
    let last = chunks.len().saturating_sub(1);
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let more = i < last || frag_field & IP_MF != 0;
            one_fragment(header, chunk, base + i * step / 8, more)
        })
        .collect()
}

fn one_fragment(header: &[u8], chunk: &[u8], offset: usize, more: bool) -> Vec<u8> {
    assert!(
        offset <= usize::from(IP_OFFSET_MASK),
        "fragment offset exceeds 13 bits"
    );
    let flags = if more { IP_MF } else { 0 };
    let mut out = [header, chunk].concat();
    let total_len = to_u16(out.len(), "fragment");
    out[2..4].copy_from_slice(&total_len.to_be_bytes());
    out[6..8].copy_from_slice(&(flags | offset as u16).to_be_bytes());
    out[10..12].copy_from_slice(&[0, 0]);
    let checksum = internet_checksum(&out[..header.len()]);
    out[10..12].copy_from_slice(&checksum.to_be_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// The header being decoded when a [`ParseError`] happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Ethernet header.
    Ethernet,
    /// 802.1Q / 802.1ad tag.
    Vlan,
    /// IPv4 header or packet.
    Ipv4,
    /// TCP header.
    Tcp,
    /// UDP header.
    Udp,
    /// ICMP header.
    Icmp,
    /// VXLAN header.
    Vxlan,
}

/// Why a frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than `layer` needs (`need` counts from the start of that layer).
    Truncated {
        /// The header being decoded.
        layer: Layer,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// EtherType IPv4 but the version nibble is not 4.
    BadIpVersion(u8),
    /// IHL below 5.
    BadIhl(u8),
    /// IPv4 total length smaller than the header length.
    BadTotalLen(u16),
    /// TCP data offset below 5.
    BadTcpDataOffset(u8),
    /// UDP length below 8, or beyond the IP payload of an unfragmented packet.
    BadUdpLen(u16),
    /// VXLAN flags without the VNI-valid bit.
    BadVxlanFlags(u8),
    /// Asked to decapsulate a packet that does not carry that encapsulation.
    NotEncapsulated(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { layer, need, have } => {
                write!(f, "truncated {layer:?}: need {need} bytes, have {have}")
            }
            Self::BadIpVersion(v) => write!(f, "IP version {v} in an IPv4 frame"),
            Self::BadIhl(ihl) => write!(f, "IPv4 IHL {ihl} below 5"),
            Self::BadTotalLen(len) => write!(f, "IPv4 total length {len} below header length"),
            Self::BadTcpDataOffset(off) => write!(f, "TCP data offset {off} below 5"),
            Self::BadUdpLen(len) => write!(f, "UDP length {len} out of range"),
            Self::BadVxlanFlags(flags) => write!(f, "VXLAN flags {flags:#04x} lack the I bit"),
            Self::NotEncapsulated(what) => write!(f, "not encapsulated: {what}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// A decoded Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Destination MAC (first on the wire).
    pub dst: Mac,
    /// Source MAC.
    pub src: Mac,
    /// VLAN tags, outermost first.
    pub vlans: Vec<VlanTag>,
    /// The EtherType after the tags.
    pub ethertype: u16,
    /// What the frame carries.
    pub network: Network,
}

/// The layer-3 content of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// An IPv4 packet (EtherType 0x0800).
    Ipv4(Ipv4Packet),
    /// Any other EtherType (ARP, IPv6, ...): the bytes after the EtherType.
    Other(Vec<u8>),
}

/// A decoded IPv4 packet. Bytes past `total_len` (Ethernet padding) are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Packet {
    /// TOS byte.
    pub tos: u8,
    /// Header length in 32-bit words.
    pub ihl: u8,
    /// Total length field.
    pub total_len: u16,
    /// Identification.
    pub id: u16,
    /// Don't Fragment flag.
    pub dont_fragment: bool,
    /// More Fragments flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol.
    pub protocol: u8,
    /// Header checksum as found.
    pub checksum: u16,
    /// Whether the header checksum is correct.
    pub checksum_ok: bool,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Options (the header bytes past 20).
    pub options: Vec<u8>,
    /// The decoded L4 header.
    pub l4: L4,
    /// The L4 payload; the whole IP payload for [`L4::Fragment`] and [`L4::Other`].
    pub payload: Vec<u8>,
}

/// The layer-4 header of an IPv4 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP.
    Tcp(Tcp),
    /// UDP.
    Udp(Udp),
    /// ICMP.
    Icmp(Icmp),
    /// A non-first fragment (offset > 0): no L4 header to decode.
    Fragment,
    /// Another protocol (IPIP, GRE, ...), with its number.
    Other(u8),
}

/// A decoded TCP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Data offset in 32-bit words.
    pub data_offset: u8,
    /// Flags.
    pub flags: TcpFlags,
    /// Window.
    pub window: u16,
    /// Checksum as found.
    pub checksum: u16,
    /// Whether the checksum over the pseudo-header and the segment present is correct.
    pub checksum_ok: bool,
    /// Urgent pointer.
    pub urgent: u16,
    /// Options (header bytes past 20).
    pub options: Vec<u8>,
}

impl Tcp {
    /// The MSS option value, if present.
    pub fn mss(&self) -> Option<u16> {
        let mut rest = self.options.as_slice();
        while let [kind, tail @ ..] = rest {
            match (*kind, tail) {
                (0, _) => return None,
                (1, _) => rest = tail,
                (2, [4, hi, lo, ..]) => return Some(u16::from_be_bytes([*hi, *lo])),
                (_, [len, ..]) if *len >= 2 => rest = rest.get(usize::from(*len)..)?,
                _ => return None,
            }
        }
        None
    }
}

/// A decoded UDP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Udp {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Length field (header + payload).
    pub len: u16,
    /// Checksum as found.
    pub checksum: u16,
    /// Whether the checksum is correct; true when it is 0 ("no checksum").
    pub checksum_ok: bool,
}

/// A decoded ICMP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Icmp {
    /// Type.
    pub icmp_type: u8,
    /// Code.
    pub code: u8,
    /// Checksum as found.
    pub checksum: u16,
    /// Whether the checksum over the ICMP message is correct.
    pub checksum_ok: bool,
    /// Bytes 4..8 as a big-endian word (id/seq for echo, MTU for frag-needed, ...).
    pub rest_of_header: u32,
    /// Type-specific decoding.
    pub kind: IcmpKind,
}

/// Type-specific content of an ICMP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    /// Echo request (type 8) or reply (type 0).
    Echo {
        /// True for a request.
        request: bool,
        /// Identifier.
        id: u16,
        /// Sequence number.
        seq: u16,
    },
    /// An error (types 3, 4, 5, 11, 12) and its quoted packet, `None` if the quote is not a
    /// decodable IPv4 header.
    Error(Option<QuotedIpv4>),
    /// Any other type.
    Other,
}

/// The offending packet quoted in an ICMP error: its IPv4 header and first L4 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotedIpv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub protocol: u8,
    /// TTL.
    pub ttl: u8,
    /// Total length field of the original packet.
    pub total_len: u16,
    /// Whether the quoted header's checksum is correct.
    pub checksum_ok: bool,
    /// Source port for TCP/UDP/SCTP with at least 4 quoted L4 bytes.
    pub sport: Option<u16>,
    /// Destination port, likewise.
    pub dport: Option<u16>,
    /// The quoted L4 bytes (up to 8; for a quoted ICMP echo, id is at 4..6).
    pub l4_head: Vec<u8>,
}

impl Parsed {
    /// The IPv4 packet, if the frame carries one.
    pub fn ipv4(&self) -> Option<&Ipv4Packet> {
        match &self.network {
            Network::Ipv4(ip) => Some(ip),
            Network::Other(_) => None,
        }
    }

    /// The TCP header, if any.
    pub fn tcp(&self) -> Option<&Tcp> {
        self.ipv4()?.tcp()
    }

    /// The UDP header, if any.
    pub fn udp(&self) -> Option<&Udp> {
        self.ipv4()?.udp()
    }

    /// The ICMP header, if any.
    pub fn icmp(&self) -> Option<&Icmp> {
        self.ipv4()?.icmp()
    }

    /// The innermost payload: the IPv4 packet's payload, or the bytes after the EtherType.
    pub fn payload(&self) -> &[u8] {
        match &self.network {
            Network::Ipv4(ip) => &ip.payload,
            Network::Other(bytes) => bytes,
        }
    }

    /// Decodes a UDP payload as VXLAN: returns the VNI and the parsed inner frame.
    pub fn decap_vxlan(&self) -> Result<(u32, Parsed), ParseError> {
        self.udp()
            .ok_or(ParseError::NotEncapsulated("no UDP header"))?;
        let (vni, inner) = parse_vxlan(self.payload())?;
        Ok((vni, parse(inner)?))
    }

    /// Decodes the IPIP (protocol 4) payload as the inner IPv4 packet.
    pub fn decap_ipip(&self) -> Result<Ipv4Packet, ParseError> {
        self.ipv4()
            .ok_or(ParseError::NotEncapsulated("not IPv4"))?
            .decap_ipip()
    }
}

impl Ipv4Packet {
    /// The TCP header, if any.
    pub fn tcp(&self) -> Option<&Tcp> {
        match &self.l4 {
            L4::Tcp(tcp) => Some(tcp),
            _ => None,
        }
    }

    /// The UDP header, if any.
    pub fn udp(&self) -> Option<&Udp> {
        match &self.l4 {
            L4::Udp(udp) => Some(udp),
            _ => None,
        }
    }

    /// The ICMP header, if any.
    pub fn icmp(&self) -> Option<&Icmp> {
        match &self.l4 {
            L4::Icmp(icmp) => Some(icmp),
            _ => None,
        }
    }

    /// True if MF is set or the offset is non-zero.
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.frag_offset != 0
    }

    /// Decodes the payload of an unfragmented IPIP (protocol 4) packet as the inner packet.
    pub fn decap_ipip(&self) -> Result<Ipv4Packet, ParseError> {
        if self.protocol != proto::IPIP || self.is_fragment() {
            return Err(ParseError::NotEncapsulated(
                "not an unfragmented IPIP packet",
            ));
        }
        parse_ip(&self.payload)
    }
}

/// Decodes an Ethernet frame (with any number of 802.1Q/802.1ad tags). IPv4 is decoded down to
/// L4; other EtherTypes are returned raw. Never panics, whatever the input.
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    need(frame, ETH_HLEN, Layer::Ethernet)?;
    let (mut at, mut ethertype, mut vlans) = (12, be16(frame, 12), Vec::new());
    while ethertype == ethertype::VLAN || ethertype == ethertype::QINQ {
        need(frame, at + 6, Layer::Vlan)?;
        vlans.push(VlanTag {
            tpid: ethertype,
            tci: be16(frame, at + 2),
        });
        at += 4;
        ethertype = be16(frame, at);
    }
    let body = &frame[at + 2..];
    let network = match ethertype {
        ethertype::IPV4 => Network::Ipv4(parse_ip(body)?),
        _ => Network::Other(body.to_vec()),
    };
    Ok(Parsed {
        dst: mac_at(frame, 0),
        src: mac_at(frame, 6),
        vlans,
        ethertype,
        network,
    })
}

/// Decodes an IPv4 packet without Ethernet header (e.g. an IPIP inner packet).
pub fn parse_ip(packet: &[u8]) -> Result<Ipv4Packet, ParseError> {
    let (header, body) = split_ipv4(packet)?;
    let mut ip = ipv4_fields(header);
    let (l4, payload) = parse_l4(&ip, body)?;
    ip.l4 = l4;
    ip.payload = payload.to_vec();
    Ok(ip)
}

/// Decodes a VXLAN header at the start of a UDP payload: returns the VNI and the inner frame.
pub fn parse_vxlan(udp_payload: &[u8]) -> Result<(u32, &[u8]), ParseError> {
    need(udp_payload, VXLAN_HLEN, Layer::Vxlan)?;
    if udp_payload[0] & VXLAN_FLAG_VNI == 0 {
        return Err(ParseError::BadVxlanFlags(udp_payload[0]));
    }
    Ok((be32(udp_payload, 4) >> 8, &udp_payload[VXLAN_HLEN..]))
}

/// Validates version, IHL and total length; returns (header, body up to total length).
fn split_ipv4(packet: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    need(packet, IPV4_MIN_HLEN, Layer::Ipv4)?;
    let version = packet[0] >> 4;
    if version != 4 {
        return Err(ParseError::BadIpVersion(version));
    }
    let ihl = packet[0] & 0x0f;
    if usize::from(ihl) * 4 < IPV4_MIN_HLEN {
        return Err(ParseError::BadIhl(ihl));
    }
    let hlen = usize::from(ihl) * 4;
    need(packet, hlen, Layer::Ipv4)?;
    let total_len = be16(packet, 2);
    if usize::from(total_len) < hlen {
        return Err(ParseError::BadTotalLen(total_len));
    }
    need(packet, usize::from(total_len), Layer::Ipv4)?;
    Ok(packet[..usize::from(total_len)].split_at(hlen))
}

/// The header fields of a validated IPv4 header; `l4` and `payload` are placeholders.
fn ipv4_fields(h: &[u8]) -> Ipv4Packet {
    let frag = be16(h, 6);
    Ipv4Packet {
        tos: h[1],
        ihl: h[0] & 0x0f,
        total_len: be16(h, 2),
        id: be16(h, 4),
        dont_fragment: frag & IP_DF != 0,
        more_fragments: frag & IP_MF != 0,
        frag_offset: frag & IP_OFFSET_MASK,
        ttl: h[8],
        protocol: h[9],
        checksum: be16(h, 10),
        checksum_ok: internet_checksum(h) == 0,
        src: ipv4_at(h, 12),
        dst: ipv4_at(h, 16),
        options: h[IPV4_MIN_HLEN..].to_vec(),
        l4: L4::Other(h[9]),
        payload: Vec::new(),
    }
}

fn parse_l4<'a>(ip: &Ipv4Packet, body: &'a [u8]) -> Result<(L4, &'a [u8]), ParseError> {
    if ip.frag_offset != 0 {
        return Ok((L4::Fragment, body));
    }
    match ip.protocol {
        proto::TCP => parse_tcp(ip, body),
        proto::UDP => parse_udp(ip, body),
        proto::ICMP => parse_icmp(body),
        other => Ok((L4::Other(other), body)),
    }
}

fn parse_tcp<'a>(ip: &Ipv4Packet, b: &'a [u8]) -> Result<(L4, &'a [u8]), ParseError> {
    need(b, TCP_MIN_HLEN, Layer::Tcp)?;
    let data_offset = b[12] >> 4;
    let hlen = usize::from(data_offset) * 4;
    if hlen < TCP_MIN_HLEN {
        return Err(ParseError::BadTcpDataOffset(data_offset));
    }
    need(b, hlen, Layer::Tcp)?;
    let tcp = Tcp {
        sport: be16(b, 0),
        dport: be16(b, 2),
        seq: be32(b, 4),
        ack: be32(b, 8),
        data_offset,
        flags: TcpFlags(b[13]),
        window: be16(b, 14),
        checksum: be16(b, 16),
        checksum_ok: l4_checksum(ip.src, ip.dst, proto::TCP, b) == 0,
        urgent: be16(b, 18),
        options: b[TCP_MIN_HLEN..hlen].to_vec(),
    };
    Ok((L4::Tcp(tcp), &b[hlen..]))
}

/// UDP: the length field bounds the datagram. In a first fragment (MF set) the datagram may
/// extend past this packet, so the bytes present are used instead.
fn parse_udp<'a>(ip: &Ipv4Packet, b: &'a [u8]) -> Result<(L4, &'a [u8]), ParseError> {
    need(b, UDP_HLEN, Layer::Udp)?;
    let len = be16(b, 4);
    let covered = match usize::from(len) {
        n if n < UDP_HLEN => return Err(ParseError::BadUdpLen(len)),
        n if n > b.len() && !ip.more_fragments => return Err(ParseError::BadUdpLen(len)),
        n => n.min(b.len()),
    };
    let datagram = &b[..covered];
    let checksum = be16(b, 6);
    let checksum_ok = checksum == 0 || l4_checksum(ip.src, ip.dst, proto::UDP, datagram) == 0;
    let udp = Udp {
        sport: be16(b, 0),
        dport: be16(b, 2),
        len,
        checksum,
        checksum_ok,
    };
    Ok((L4::Udp(udp), &datagram[UDP_HLEN..]))
}

fn parse_icmp(b: &[u8]) -> Result<(L4, &[u8]), ParseError> {
    need(b, ICMP_HLEN, Layer::Icmp)?;
    let kind = match b[0] {
        icmp_type::ECHO_REQUEST | icmp_type::ECHO_REPLY => IcmpKind::Echo {
            request: b[0] == icmp_type::ECHO_REQUEST,
            id: be16(b, 4),
            seq: be16(b, 6),
        },
        3 | 4 | 5 | 11 | 12 => IcmpKind::Error(parse_quote(&b[ICMP_HLEN..])),
        _ => IcmpKind::Other,
    };
    let icmp = Icmp {
        icmp_type: b[0],
        code: b[1],
        checksum: be16(b, 2),
        checksum_ok: internet_checksum(b) == 0,
        rest_of_header: be32(b, 4),
        kind,
    };
    Ok((L4::Icmp(icmp), &b[ICMP_HLEN..]))
}

/// Decodes an ICMP error's quote: a (possibly truncated) IPv4 header and up to 8 L4 bytes.
fn parse_quote(q: &[u8]) -> Option<QuotedIpv4> {
    let hlen = usize::from(q.first()? & 0x0f) * 4;
    if q.len() < IPV4_MIN_HLEN || q[0] >> 4 != 4 || hlen < IPV4_MIN_HLEN || q.len() < hlen {
        return None;
    }
    let l4_head = &q[hlen..q.len().min(hlen + 8)];
    let has_ports = matches!(q[9], proto::TCP | proto::UDP | proto::SCTP) && l4_head.len() >= 4;
    let port = |at| has_ports.then(|| be16(l4_head, at));
    Some(QuotedIpv4 {
        src: ipv4_at(q, 12),
        dst: ipv4_at(q, 16),
        protocol: q[9],
        ttl: q[8],
        total_len: be16(q, 2),
        checksum_ok: internet_checksum(&q[..hlen]) == 0,
        sport: port(0),
        dport: port(2),
        l4_head: l4_head.to_vec(),
    })
}

fn need(bytes: &[u8], need: usize, layer: Layer) -> Result<(), ParseError> {
    match bytes.len() {
        have if have < need => Err(ParseError::Truncated { layer, need, have }),
        _ => Ok(()),
    }
}

/// Big-endian u16 at `at`; the caller has checked the length.
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Big-endian u32 at `at`; the caller has checked the length.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn mac_at(b: &[u8], at: usize) -> Mac {
    [b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;

    const MAC_A: Mac = [2, 0, 0, 0, 0, 1];
    const MAC_B: Mac = [2, 0, 0, 0, 0, 2];
    const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const ETH_IP: usize = ETH_HLEN; // IPv4 header start in an untagged frame
    const ETH_L4: usize = ETH_HLEN + IPV4_MIN_HLEN; // L4 header start without IP options

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn base() -> Frame {
        Frame::eth(MAC_A, MAC_B).ipv4(IP_A, IP_B)
    }

    fn tcp_frame() -> Frame {
        base()
            .tcp(40000, 80)
            .flags(TcpFlags::SYN)
            .seq(1)
            .payload(b"hello tcp")
    }

    fn ip_of(parsed: &Parsed) -> &Ipv4Packet {
        parsed.ipv4().expect("IPv4 packet")
    }

    /// Independent checksum: sum all 16-bit words in a u64, fold at the end.
    fn manual_checksum(bytes: &[u8]) -> u16 {
        let mut sum: u64 = bytes
            .chunks(2)
            .map(|w| (u64::from(w[0]) << 8) | u64::from(*w.get(1).unwrap_or(&0)))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Positions where two equally long byte strings differ.
    fn diff(a: &[u8], b: &[u8]) -> Vec<usize> {
        assert_eq!(a.len(), b.len());
        (0..a.len()).filter(|&i| a[i] != b[i]).collect()
    }

    /// Asserts `bad` differs from `good` in `field` and otherwise only in the 2-byte checksum
    /// at `checksum` that covers the field.
    fn assert_only_field_changed(good: &[u8], bad: &[u8], field: Range<usize>, checksum: usize) {
        let changed = diff(good, bad);
        assert!(
            changed.iter().any(|i| field.contains(i)),
            "field {field:?} unchanged"
        );
        let allowed = |i: &usize| field.contains(i) || (checksum..checksum + 2).contains(i);
        assert!(
            changed.iter().all(allowed),
            "changed {changed:?}, field {field:?}"
        );
    }

    // ---- checksum helpers ----

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum = !ddf2).
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&bytes), !0xddf2);
        assert_eq!(internet_checksum(&bytes), 0x220d);
    }

    #[test]
    fn csum_fold_folds_carries_and_complements() {
        assert_eq!(csum_fold(0), 0xffff);
        assert_eq!(csum_fold(0xffff), 0);
        assert_eq!(csum_fold(0x0001_fffe), 0); // fffe + 1 = ffff
        assert_eq!(csum_fold(0xffff_ffff), 0); // ffff + ffff = 1fffe -> ffff
        assert_eq!(csum_fold(0x0002_0001), !0x0003);
    }

    #[test]
    fn checksum_odd_length_pads_with_zero() {
        assert_eq!(
            internet_checksum(&[0x12, 0x34, 0x56]),
            internet_checksum(&[0x12, 0x34, 0x56, 0])
        );
        assert_eq!(internet_checksum(&[0xab]), !0xab00);
    }

    #[test]
    fn checksum_of_large_input_does_not_overflow() {
        let bytes = vec![0xff; 200_000];
        assert_eq!(internet_checksum(&bytes), manual_checksum(&bytes));
    }

    // ---- golden bytes ----

    #[test]
    fn golden_ipv4_header_wikipedia() {
        // The classic example: 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7.
        let packet = Frame::default()
            .ipv4(
                Ipv4Addr::new(192, 168, 0, 1),
                Ipv4Addr::new(192, 168, 0, 199),
            )
            .udp(1, 2)
            .payload(&[0; 0x73 - 28])
            .build_ip();
        assert_eq!(
            packet[..20],
            hex("45000073000040004011b861c0a80001c0a800c7")
        );
        assert_eq!(internet_checksum(&packet[..20]), 0);
    }

    #[test]
    fn golden_icmp_echo_request() {
        // Echo request id 1 seq 1, no data: 0800 + 0001 + 0001 = 0802 -> checksum f7fd.
        let frame = base().icmp_echo(true, 1, 1).build();
        let expected = hex(concat!(
            "020000000002",
            "020000000001",
            "0800",
            "4500001c000040004001",
            "26df",
            "0a000001",
            "0a000002",
            "0800f7fd00010001",
        ));
        assert_eq!(frame, expected);
        assert_eq!(manual_checksum(&frame[ETH_IP..ETH_L4]), 0);
    }

    #[test]
    fn golden_tcp_syn_validated_by_tshark() {
        // Built once and checked with `tshark -o tcp.check_checksum:TRUE` (IP 0x1492, TCP 0xce86).
        let frame = base()
            .id(0x1234)
            .tcp(40000, 80)
            .flags(TcpFlags::SYN)
            .seq(0x0102_0304)
            .tcp_options(&[mss_option(1460), [1, 1, 4, 2]].concat())
            .build();
        let expected = hex(concat!(
            "020000000002020000000001080045000030123440004006",
            "1492",
            "0a0000010a000002",
            "9c40005001020304000000007002ffff",
            "ce86",
            "0000020405b401010402",
        ));
        assert_eq!(frame, expected);
    }

    #[test]
    fn tcp_checksum_matches_manual_pseudo_header_sum() {
        let frame = tcp_frame().payload(b"odd-length payload!").build();
        let segment = &frame[ETH_L4..];
        let mut words = Vec::new();
        words.extend(IP_A.octets());
        words.extend(IP_B.octets());
        words.extend([0, 6]);
        words.extend((segment.len() as u16).to_be_bytes());
        words.extend(segment);
        let at = 12 + 16; // pseudo-header + TCP checksum offset
        let stored = u16::from_be_bytes([words[at], words[at + 1]]);
        words[at..at + 2].copy_from_slice(&[0, 0]);
        assert_eq!(stored, manual_checksum(&words));
        assert_eq!(l4_checksum(IP_A, IP_B, proto::TCP, segment), 0);
    }

    #[test]
    fn udp_zero_checksum_is_sent_as_ffff() {
        // Pick the last payload word so the computed checksum is exactly 0.
        let probe = base().udp(1000, 2000).payload(&[0, 0]).build();
        let c = u16::from_be_bytes([probe[ETH_L4 + 6], probe[ETH_L4 + 7]]);
        let frame = base().udp(1000, 2000).payload(&c.to_be_bytes()).build();
        assert_eq!(frame[ETH_L4 + 6..ETH_L4 + 8], [0xff, 0xff]);
        let udp = parse(&frame).unwrap().udp().unwrap().clone();
        assert_eq!(udp.checksum, 0xffff);
        assert!(udp.checksum_ok);
        let mut zeroed = frame[ETH_L4..].to_vec();
        zeroed[6..8].copy_from_slice(&[0, 0]);
        assert_eq!(l4_checksum(IP_A, IP_B, proto::UDP, &zeroed), 0);
    }

    // ---- round trips ----

    #[test]
    fn tcp_round_trip() {
        let frame = base()
            .ttl(17)
            .id(0xbeef)
            .tos(0xb8)
            .tcp(40000, 443)
            .flags(TcpFlags::SYN | TcpFlags::ACK)
            .seq(0xdead_beef)
            .ack(42)
            .window(1024)
            .tcp_options(&mss_option(1400))
            .payload(b"data")
            .build();
        let p = parse(&frame).unwrap();
        assert_eq!((p.src, p.dst, p.ethertype), (MAC_A, MAC_B, ethertype::IPV4));
        assert!(p.vlans.is_empty());
        let ip = ip_of(&p);
        assert_eq!(
            (ip.src, ip.dst, ip.ttl, ip.id, ip.tos),
            (IP_A, IP_B, 17, 0xbeef, 0xb8)
        );
        assert_eq!(
            (ip.protocol, ip.ihl, usize::from(ip.total_len)),
            (6, 5, frame.len() - 14)
        );
        assert!(ip.checksum_ok && ip.dont_fragment && !ip.more_fragments && ip.frag_offset == 0);
        let tcp = p.tcp().unwrap();
        assert_eq!(
            (tcp.sport, tcp.dport, tcp.seq, tcp.ack),
            (40000, 443, 0xdead_beef, 42)
        );
        assert_eq!(
            (tcp.flags, tcp.window, tcp.data_offset),
            (TcpFlags(0x12), 1024, 6)
        );
        assert_eq!(tcp.mss(), Some(1400));
        assert!(tcp.checksum_ok);
        assert_eq!(p.payload(), b"data");
    }

    #[test]
    fn udp_round_trip() {
        let frame = base()
            .dont_fragment(false)
            .udp(5353, 53)
            .payload(b"query")
            .build();
        let p = parse(&frame).unwrap();
        assert!(!ip_of(&p).dont_fragment && ip_of(&p).checksum_ok);
        let udp = p.udp().unwrap();
        assert_eq!((udp.sport, udp.dport, udp.len), (5353, 53, 13));
        assert!(udp.checksum_ok);
        assert_eq!(p.payload(), b"query");
        assert!(p.tcp().is_none() && p.icmp().is_none());
    }

    #[test]
    fn udp_checksum_zero_means_none() {
        let frame = base().udp(1, 2).l4_checksum(0).payload(b"x").build();
        let udp = parse(&frame).unwrap().udp().unwrap().clone();
        assert_eq!(udp.checksum, 0);
        assert!(udp.checksum_ok);
    }

    #[test]
    fn icmp_echo_round_trip() {
        for request in [true, false] {
            let frame = base()
                .icmp_echo(request, 0x42, 7)
                .payload(b"pingdata")
                .build();
            let icmp = parse(&frame).unwrap().icmp().unwrap().clone();
            assert_eq!(icmp.icmp_type, if request { 8 } else { 0 });
            assert_eq!(
                icmp.kind,
                IcmpKind::Echo {
                    request,
                    id: 0x42,
                    seq: 7
                }
            );
            assert!(icmp.checksum_ok);
        }
    }

    #[test]
    fn icmp_frag_needed_quotes_inner_packet() {
        let inner = Frame::default()
            .ipv4(Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 96, 0, 10))
            .ttl(5)
            .udp(40001, 53)
            .payload(&[7; 100])
            .build_ip();
        let quote = icmp_quote(&inner);
        assert_eq!(quote.len(), 28);
        let frame = base()
            .icmp_error(icmp_type::DEST_UNREACH, 4, 1400, quote)
            .build();
        let p = parse(&frame).unwrap();
        let icmp = p.icmp().unwrap();
        assert_eq!(
            (icmp.icmp_type, icmp.code, icmp.rest_of_header),
            (3, 4, 1400)
        );
        assert!(icmp.checksum_ok);
        let IcmpKind::Error(Some(q)) = &icmp.kind else {
            panic!("no quote: {icmp:?}")
        };
        assert_eq!(
            (q.src, q.dst),
            (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 96, 0, 10))
        );
        assert_eq!((q.protocol, q.ttl, q.total_len), (proto::UDP, 5, 128));
        assert_eq!((q.sport, q.dport), (Some(40001), Some(53)));
        assert!(q.checksum_ok);
        assert_eq!(q.l4_head, inner[20..28]);
        assert_eq!(p.payload(), quote);
    }

    #[test]
    fn icmp_error_with_garbage_quote_has_no_quote() {
        let frame = base()
            .icmp_error(icmp_type::TIME_EXCEEDED, 0, 0, &[0x45, 0, 1])
            .build();
        let icmp = parse(&frame).unwrap().icmp().unwrap().clone();
        assert_eq!(icmp.kind, IcmpKind::Error(None));
        assert!(icmp.checksum_ok);
    }

    #[test]
    fn raw_protocol_and_default_protocol() {
        let frame = base().ip_proto(proto::GRE, b"gre!").build();
        let ip = parse_ip(&frame[ETH_IP..]).unwrap();
        assert_eq!((ip.protocol, &ip.l4), (proto::GRE, &L4::Other(proto::GRE)));
        assert_eq!(ip.payload, b"gre!");
        let bare = base().payload(b"?").build();
        assert_eq!(ip_of(&parse(&bare).unwrap()).protocol, proto::RESERVED);
    }

    #[test]
    fn defaults_are_ttl64_df_id0() {
        let p = parse(&base().udp(1, 2).build()).unwrap();
        let ip = ip_of(&p);
        assert_eq!((ip.ttl, ip.id, ip.dont_fragment, ip.tos), (64, 0, true, 0));
        assert_eq!(p.tcp(), None);
        let tcp = parse(&base().tcp(1, 2).build())
            .unwrap()
            .tcp()
            .unwrap()
            .clone();
        assert_eq!(
            (tcp.flags, tcp.seq, tcp.ack, tcp.window),
            (TcpFlags::SYN, 0, 0, 65535)
        );
    }

    // ---- L2 ----

    #[test]
    fn vlan_frame() {
        let frame = base().vlan(0x2064).udp(1, 2).build(); // PCP 1, VID 100
        assert_eq!(frame[12..18], [0x81, 0x00, 0x20, 0x64, 0x08, 0x00]);
        let p = parse(&frame).unwrap();
        assert_eq!(
            p.vlans,
            [VlanTag {
                tpid: ethertype::VLAN,
                tci: 0x2064
            }]
        );
        assert_eq!(p.vlans[0].vid(), 100);
        assert!(p.udp().unwrap().checksum_ok);
    }

    #[test]
    fn qinq_frame() {
        let frame = Frame::eth(MAC_A, MAC_B)
            .qinq(10)
            .vlan(20)
            .ipv4(IP_A, IP_B)
            .tcp(5, 6)
            .build();
        assert_eq!(
            frame[12..22],
            [0x88, 0xa8, 0, 10, 0x81, 0x00, 0, 20, 0x08, 0x00]
        );
        let p = parse(&frame).unwrap();
        let vids: Vec<(u16, u16)> = p.vlans.iter().map(|t| (t.tpid, t.vid())).collect();
        assert_eq!(vids, [(ethertype::QINQ, 10), (ethertype::VLAN, 20)]);
        assert_eq!(p.ethertype, ethertype::IPV4);
        assert!(p.tcp().unwrap().checksum_ok);
    }

    #[test]
    fn arp_frame() {
        let arp = arp_payload(ARP_REQUEST, (MAC_A, IP_A), ([0; 6], IP_B));
        let frame = Frame::eth(MAC_A, [0xff; 6])
            .ethertype(ethertype::ARP)
            .payload(&arp)
            .build();
        assert_eq!(frame.len(), 42);
        let p = parse(&frame).unwrap();
        assert_eq!((p.ethertype, p.dst), (ethertype::ARP, [0xff; 6]));
        assert_eq!(p.network, Network::Other(arp.clone()));
        assert_eq!(p.ipv4(), None);
        assert_eq!(arp[6..8], [0, 1]);
        assert_eq!(arp[24..28], IP_B.octets());
    }

    #[test]
    fn ipv6_ethertype_is_opaque() {
        let frame = Frame::eth(MAC_A, MAC_B)
            .ethertype(ethertype::IPV6)
            .payload(&[0x60; 40])
            .build();
        let p = parse(&frame).unwrap();
        assert_eq!(p.ethertype, 0x86dd);
        assert_eq!(p.payload(), [0x60; 40]);
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut frame = base().udp(1, 2).payload(b"hi").build();
        frame.resize(60, 0);
        let p = parse(&frame).unwrap();
        assert_eq!(p.payload(), b"hi");
        assert!(p.udp().unwrap().checksum_ok);
    }

    // ---- IP options ----

    #[test]
    fn ip_options_shift_l4_header() {
        for (options, ihl) in [
            (vec![1, 1, 1, 0], 6u8),
            (vec![0x94, 4, 0, 0, 1, 1, 1, 0], 7),
        ] {
            let frame = tcp_frame().ip_options(&options).build();
            let l4_at = ETH_IP + usize::from(ihl) * 4;
            assert_eq!(frame[ETH_IP] & 0x0f, ihl);
            assert_eq!(frame[l4_at..l4_at + 4], [0x9c, 0x40, 0, 80]);
            let p = parse(&frame).unwrap();
            let ip = ip_of(&p);
            assert_eq!((ip.ihl, &ip.options), (ihl, &options));
            assert!(ip.checksum_ok);
            let tcp = p.tcp().unwrap();
            assert_eq!((tcp.sport, tcp.dport), (40000, 80));
            assert!(tcp.checksum_ok);
            assert_eq!(p.payload(), b"hello tcp");
        }
    }

    #[test]
    #[should_panic(expected = "multiple of 4")]
    fn unpadded_ip_options_panic() {
        let _ = base().ip_options(&[1, 1, 1]);
    }

    #[test]
    #[should_panic(expected = "longer than 40")]
    fn oversized_ip_options_panic() {
        let _ = base().ip_options(&[1; 44]);
    }

    #[test]
    #[should_panic(expected = "needs .ipv4() first")]
    fn ip_setter_without_ipv4_panics() {
        let _ = Frame::eth(MAC_A, MAC_B).ttl(3);
    }

    #[test]
    #[should_panic(expected = "needs .tcp() first")]
    fn tcp_setter_without_tcp_panics() {
        let _ = base().udp(1, 2).seq(3);
    }

    // ---- overrides break exactly one field ----

    #[test]
    fn override_ihl() {
        let good = tcp_frame().build();
        let bad = tcp_frame().ihl(4).build();
        assert_only_field_changed(&good, &bad, ETH_IP..ETH_IP + 1, ETH_IP + 10);
        assert_eq!(parse(&bad), Err(ParseError::BadIhl(4)));
        // IHL 6 over a 20-byte header: the first 4 payload bytes are read as options.
        let longer = base().ip_proto(proto::GRE, &[0, 0, 0, 0, 9]).ihl(6).build();
        let ip = ip_of(&parse(&longer).unwrap()).clone();
        assert_eq!(
            (ip.ihl, ip.options.as_slice(), ip.payload.as_slice()),
            (6, &[0; 4][..], &[9][..])
        );
        assert!(ip.checksum_ok); // zero "options" do not change the sum
        assert!(parse(&tcp_frame().ihl(6).build()).is_err()); // TCP header misaligned
    }

    #[test]
    fn override_ip_version() {
        let good = tcp_frame().build();
        let bad = tcp_frame().ip_version(6).build();
        assert_only_field_changed(&good, &bad, ETH_IP..ETH_IP + 1, ETH_IP + 10);
        assert_eq!(bad[ETH_IP], 0x65);
        assert_eq!(parse(&bad), Err(ParseError::BadIpVersion(6)));
    }

    #[test]
    fn override_total_len() {
        let good = tcp_frame().build();
        let too_long = tcp_frame().total_len(1000).build();
        assert_only_field_changed(&good, &too_long, ETH_IP + 2..ETH_IP + 4, ETH_IP + 10);
        assert!(matches!(
            parse(&too_long),
            Err(ParseError::Truncated {
                layer: Layer::Ipv4,
                ..
            })
        ));
        let short = parse(&tcp_frame().total_len(40).build()).unwrap();
        assert!(ip_of(&short).checksum_ok);
        assert!(short.payload().is_empty()); // payload cut off by total length
        assert!(!short.tcp().unwrap().checksum_ok);
        assert_eq!(
            parse(&tcp_frame().total_len(19).build()),
            Err(ParseError::BadTotalLen(19))
        );
    }

    #[test]
    fn override_ip_checksum() {
        let good = tcp_frame().build();
        let bad = tcp_frame().ip_checksum(0xdead).build();
        assert_eq!(diff(&good, &bad), [ETH_IP + 10, ETH_IP + 11]);
        let p = parse(&bad).unwrap();
        assert_eq!(ip_of(&p).checksum, 0xdead);
        assert!(!ip_of(&p).checksum_ok);
        assert!(p.tcp().unwrap().checksum_ok);
    }

    #[test]
    fn override_l4_checksum() {
        let cases = [
            (tcp_frame(), 16),
            (base().udp(1, 2).payload(b"u"), 6),
            (base().icmp_echo(true, 1, 2), 2),
            (base().icmp_error(11, 0, 0, &[0; 28]), 2),
        ];
        for (frame, offset) in cases {
            let good = frame.clone().build();
            let bad = frame.l4_checksum(0x1234).build();
            assert_eq!(diff(&good, &bad), [ETH_L4 + offset, ETH_L4 + offset + 1]);
            let p = parse(&bad).unwrap();
            assert!(ip_of(&p).checksum_ok);
            let (checksum, ok) = match &ip_of(&p).l4 {
                L4::Tcp(t) => (t.checksum, t.checksum_ok),
                L4::Udp(u) => (u.checksum, u.checksum_ok),
                L4::Icmp(i) => (i.checksum, i.checksum_ok),
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!((checksum, ok), (0x1234, false));
        }
    }

    #[test]
    #[should_panic(expected = "needs tcp/udp/icmp")]
    fn l4_checksum_on_raw_protocol_panics() {
        let _ = base().ip_proto(47, b"x").l4_checksum(1);
    }

    #[test]
    fn override_tcp_data_offset_and_udp_len() {
        let good = tcp_frame().build();
        let bad = tcp_frame().tcp_data_offset(4).build();
        assert_only_field_changed(&good, &bad, ETH_L4 + 12..ETH_L4 + 13, ETH_L4 + 16);
        assert_eq!(parse(&bad), Err(ParseError::BadTcpDataOffset(4)));
        let udp = base().udp(1, 2).payload(b"abc");
        assert_eq!(
            parse(&udp.clone().udp_len(7).build()),
            Err(ParseError::BadUdpLen(7))
        );
        assert_eq!(
            parse(&udp.clone().udp_len(12).build()),
            Err(ParseError::BadUdpLen(12))
        );
        let shorter = parse(&udp.udp_len(9).build()).unwrap();
        assert_eq!(shorter.payload(), b"a");
    }

    #[test]
    fn override_ethertype_on_ip_frame() {
        let frame = base().udp(1, 2).ethertype(ethertype::IPV6).build();
        assert_eq!(parse(&frame).unwrap().ipv4(), None);
    }

    // ---- fragments ----

    #[test]
    fn built_fragments_parse() {
        let first = base().dont_fragment(false).id(7).frag(true, 0).udp(1, 2);
        let first = parse(&first.udp_len(8 + 24).payload(&[1; 16]).build()).unwrap();
        let ip = ip_of(&first);
        assert!(ip.more_fragments && ip.frag_offset == 0 && ip.is_fragment());
        assert_eq!((first.udp().unwrap().len, first.payload().len()), (32, 16));

        let middle = base()
            .dont_fragment(false)
            .id(7)
            .frag(true, 3)
            .ip_proto(proto::UDP, &[2; 8]);
        let middle = parse(&middle.build()).unwrap();
        let ip = ip_of(&middle);
        assert_eq!(
            (ip.more_fragments, ip.frag_offset, &ip.l4),
            (true, 3, &L4::Fragment)
        );
        assert_eq!(middle.payload(), [2; 8]);

        let last = base()
            .dont_fragment(false)
            .id(7)
            .frag(false, 4)
            .ip_proto(proto::UDP, &[3; 5]);
        let last = parse(&last.build()).unwrap();
        let ip = ip_of(&last);
        assert_eq!(
            (ip.more_fragments, ip.frag_offset, &ip.l4),
            (false, 4, &L4::Fragment)
        );
        assert!(ip.checksum_ok && ip.is_fragment() && !ip.dont_fragment);
    }

    #[test]
    fn fragment_ipv4_splits_and_reassembles() {
        let packet = Frame::default()
            .ipv4(IP_A, IP_B)
            .ip_options(&[1, 1, 1, 0])
            .id(99)
            .udp(1, 2)
            .payload(&(0..100).collect::<Vec<u8>>())
            .build_ip();
        let frags = fragment_ipv4(&packet, 45); // rounded down to 40
        assert_eq!(frags.len(), 3); // 108 bytes of UDP: 40 + 40 + 28
        let mut body = Vec::new();
        for (i, frag) in frags.iter().enumerate() {
            let ip = parse_ip(frag).unwrap();
            assert!(ip.checksum_ok && !ip.dont_fragment);
            assert_eq!((ip.id, ip.ihl, ip.frag_offset), (99, 6, i as u16 * 5));
            assert_eq!(ip.more_fragments, i < 2);
            assert_eq!(matches!(ip.l4, L4::Fragment), i > 0);
            body.extend_from_slice(&frag[24..]);
        }
        assert_eq!(body, packet[24..]);
        let first = parse_ip(&frags[0]).unwrap();
        assert_eq!((first.udp().unwrap().len, first.payload.len()), (108, 32));
        let whole = fragment_ipv4(&packet, 1500);
        assert_eq!(whole.len(), 1);
        let ip = parse_ip(&whole[0]).unwrap();
        assert!(ip.checksum_ok && !ip.is_fragment() && !ip.dont_fragment);
        assert_eq!(whole[0][12..], packet[12..]);
        let empty = Frame::default().ipv4(IP_A, IP_B).build_ip();
        assert_eq!(fragment_ipv4(&empty, 8).len(), 1);
    }

    // ---- encapsulation ----

    #[test]
    fn vxlan_round_trip() {
        let inner = Frame::eth(MAC_B, MAC_A)
            .ipv4(Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 3))
            .tcp(1234, 80)
            .payload(b"GET /")
            .build();
        let encap = vxlan(0x0a0b0c, &inner);
        assert_eq!(encap[..8], [0x08, 0, 0, 0, 0x0a, 0x0b, 0x0c, 0]);
        let outer = base().udp(33333, VXLAN_PORT_LINUX).payload(&encap).build();
        let p = parse(&outer).unwrap();
        assert!(p.udp().unwrap().checksum_ok);
        let (vni, inner_parsed) = p.decap_vxlan().unwrap();
        assert_eq!(vni, 0x0a0b0c);
        assert_eq!(inner_parsed, parse(&inner).unwrap());
        assert_eq!(inner_parsed.tcp().unwrap().dport, 80);
        assert_eq!(
            parse_vxlan(&[0, 0, 0, 0, 0, 0, 1, 0]),
            Err(ParseError::BadVxlanFlags(0))
        );
        assert!(parse(&tcp_frame().build()).unwrap().decap_vxlan().is_err());
    }

    #[test]
    fn ipip_round_trip() {
        let inner = Frame::default()
            .ipv4(Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 3))
            .udp(5353, 53)
            .payload(b"hello")
            .build_ip();
        let outer = base().ip_proto(proto::IPIP, &inner).build();
        let p = parse(&outer).unwrap();
        assert_eq!(ip_of(&p).l4, L4::Other(proto::IPIP));
        let decap = p.decap_ipip().unwrap();
        assert_eq!(decap, parse_ip(&inner).unwrap());
        assert_eq!(
            (decap.udp().unwrap().dport, decap.payload.as_slice()),
            (53, &b"hello"[..])
        );
        assert!(parse(&tcp_frame().build()).unwrap().decap_ipip().is_err());
    }

    // ---- robustness ----

    fn sample_frames() -> Vec<Vec<u8>> {
        let inner = tcp_frame().build();
        vec![
            tcp_frame().tcp_options(&mss_option(1460)).build(),
            base()
                .vlan(5)
                .ip_options(&[1, 1, 1, 0])
                .udp(1, 2)
                .payload(b"abc")
                .build(),
            base().icmp_echo(true, 1, 2).payload(b"ping").build(),
            base()
                .icmp_error(3, 4, 1400, icmp_quote(&inner[ETH_IP..]))
                .build(),
            base()
                .udp(9, VXLAN_PORT_LINUX)
                .payload(&vxlan(1, &inner))
                .build(),
            base().ip_proto(proto::IPIP, &inner[ETH_IP..]).build(),
            base().frag(false, 2).ip_proto(proto::TCP, b"frag").build(),
        ]
    }

    #[test]
    fn every_strict_prefix_is_an_error() {
        for frame in sample_frames() {
            assert!(parse(&frame).is_ok());
            for len in 0..frame.len() {
                let mut cut = frame.clone();
                cut.truncate(len);
                assert!(
                    parse(&cut).is_err(),
                    "prefix of {len} bytes parsed: {frame:02x?}"
                );
            }
        }
    }

    #[test]
    fn truncated_errors_name_the_layer() {
        let frame = tcp_frame().build();
        let err = |len| parse(&frame[..len]).unwrap_err();
        assert_eq!(
            err(5),
            ParseError::Truncated {
                layer: Layer::Ethernet,
                need: 14,
                have: 5
            }
        );
        assert!(matches!(
            err(20),
            ParseError::Truncated {
                layer: Layer::Ipv4,
                need: 20,
                ..
            }
        ));
        assert!(err(20).to_string().contains("Ipv4"));
        let vlan = base().vlan(1).build();
        assert!(matches!(
            parse(&vlan[..16]),
            Err(ParseError::Truncated {
                layer: Layer::Vlan,
                ..
            })
        ));
    }

    #[test]
    fn truncated_l4_inside_valid_ip_is_an_error() {
        // total_len claims only 4 bytes of TCP: the IP packet is complete, the header is not.
        let frame = tcp_frame().total_len(24).build();
        assert!(matches!(
            parse(&frame),
            Err(ParseError::Truncated {
                layer: Layer::Tcp,
                ..
            })
        ));
        let frame = base().icmp_echo(true, 1, 1).total_len(24).build();
        assert!(matches!(
            parse(&frame),
            Err(ParseError::Truncated {
                layer: Layer::Icmp,
                ..
            })
        ));
    }

    #[test]
    fn random_mutations_never_panic() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for frame in sample_frames() {
            for _ in 0..2000 {
                let mut m = frame.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % m.len();
                    m[at] = next() as u8;
                }
                m.truncate((next() as usize) % (m.len() + 1));
                let _ = parse(&m);
                let _ = parse_ip(&m);
            }
        }
    }

    #[test]
    fn tcp_flags_debug_and_mss_scan() {
        assert_eq!(format!("{:?}", TcpFlags::SYN | TcpFlags::ACK), "SYN|ACK");
        assert_eq!(format!("{:?}", TcpFlags::default()), "(none)");
        let mut flags = TcpFlags::FIN;
        flags |= TcpFlags::RST;
        assert!(flags.contains(TcpFlags::RST) && !flags.contains(TcpFlags::SYN));
        let options = [
            &[1u8, 1, 4, 2, 8, 10][..],
            &[0; 8],
            &mss_option(1200),
            &[0, 0],
        ]
        .concat();
        let frame = base().tcp(1, 2).tcp_options(&options).build();
        assert_eq!(parse(&frame).unwrap().tcp().unwrap().mss(), Some(1200));
        let no_mss = base().tcp(1, 2).tcp_options(&[1, 1, 1, 0]).build();
        assert_eq!(parse(&no_mss).unwrap().tcp().unwrap().mss(), None);
    }
}
