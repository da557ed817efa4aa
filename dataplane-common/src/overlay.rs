//! Overlay maps (`OVERLAY_CONFIG_V1`, `OVERLAY_ROUTES_V1`, `OVERLAY_PEERS_V1`, `OVERLAY_IPID_V1`,
//! `OVERLAY_NEXTHOP_V1`)
//! and the header arithmetic of VXLAN and IPIP encapsulation, pure so host tests cover it.
//!
//! What goes on the wire is what the kernel's own devices send as flannel and calico configure
//! them (checked against captures of the kernel devices in the lab):
//! - VXLAN (`ip link add flannel.1 type vxlan id 1 dstport 8472 nolearning`): outer IPv4 TTL =
//!   `net.ipv4.ip_default_ttl` (`ttl auto`), DF clear (`df unset`), TOS = the inner ECN bits
//!   (`tos 0`, ECN encapsulated), a fresh IP ID; UDP source port from the flow hash in the local
//!   port range (`udp_flow_src_port`), UDP checksum computed (`udpcsum`, the default); VXLAN
//!   flags 0x08 and the VNI; inner Ethernet from our VTEP MAC to the peer's VTEP MAC.
//! - IPIP (calico's `tunl0`, the ipip module's fallback device: `ttl inherit`, `tos 0`,
//!   `nopmtudisc`): outer TTL = inner TTL, DF = inner DF (the seed capture: a DF request gets a
//!   DF outer header, a reply without DF one without), TOS = inner ECN bits, a fresh IP ID,
//!   protocol 4. The outer source is always the configured tunnel address (never what the
//!   routing table would pick: the misrouting cases of the calico seed).
//!
//! Addresses and ports are in network byte order, like every map of the datapath.

use crate::csum;

/// `OverlayConfig::mode`: no overlay (direct routing; the overlay maps are ignored).
pub const MODE_NONE: u32 = 0;
/// `OverlayConfig::mode`: VXLAN (flannel's vxlan backend).
pub const MODE_VXLAN: u32 = 1;
/// `OverlayConfig::mode`: IPv4-in-IPv4 (calico's IPIP).
pub const MODE_IPIP: u32 = 2;

/// Bytes VXLAN adds: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Bytes IPIP adds: the outer IPv4 header.
pub const IPIP_OVERHEAD: u32 = 20;
/// flannel's defaults (and the Linux kernel's VXLAN port).
pub const DEFAULT_VXLAN_VNI: u32 = 1;
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

pub use crate::ip::{IPPROTO_IPIP, IPPROTO_UDP};

/// `OverlayConfig::flags`: compute the outer UDP checksum of VXLAN packets (the kernel device's
/// default, `udpcsum`). Without it, or when it cannot be computed cheaply (GSO packets, inner
/// packets without a transport checksum), the checksum is 0, which RFC 7348 allows.
pub const OVL_F_UDP_CSUM: u32 = 1 << 0;

/// `OVERLAY_CONFIG_V1` (single-entry array): this node's tunnel settings, written by the agent at
/// start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverlayConfig {
    /// `MODE_*`.
    pub mode: u32,
    /// Outer source address of every tunnel packet, and the only outer destination accepted,
    /// network order.
    pub tunnel_addr: u32,
    /// VXLAN network identifier (24 bits), host order.
    pub vni: u32,
    /// `OVL_F_*`.
    pub flags: u32,
    /// VXLAN UDP destination port, network order.
    pub vxlan_port: u16,
    /// Outer UDP source ports are picked from [src_port_min, src_port_max] (host order), like
    /// the kernel's `udp_flow_src_port` with the node's `net.ipv4.ip_local_port_range`.
    pub src_port_min: u16,
    pub src_port_max: u16,
    /// Outer TTL of VXLAN packets (the node's `net.ipv4.ip_default_ttl`).
    pub vxlan_ttl: u8,
    pub _pad0: u8,
    /// This node's VTEP MAC: the inner source MAC of VXLAN frames.
    pub vtep_mac: [u8; 6],
    pub _pad1: [u8; 2],
    /// ifindex of the uplink (in the agent's network namespace).
    pub uplink_ifindex: u32,
    pub _pad2: u32,
    /// Cookie of the agent's network namespace: the kernel routes that feed the overlay are
    /// written there only (`OverlayTable::sync` refuses to run anywhere else).
    pub netns_cookie: u64,
}

impl OverlayConfig {
    /// No overlay: the datapath leaves tunnel traffic to the kernel.
    pub const fn none() -> OverlayConfig {
        OverlayConfig {
            mode: MODE_NONE,
            tunnel_addr: 0,
            vni: DEFAULT_VXLAN_VNI,
            flags: OVL_F_UDP_CSUM,
            vxlan_port: DEFAULT_VXLAN_PORT.to_be(),
            src_port_min: 32_768,
            src_port_max: 60_999,
            vxlan_ttl: 64,
            _pad0: 0,
            vtep_mac: [0; 6],
            _pad1: [0; 2],
            uplink_ifindex: 0,
            _pad2: 0,
            netns_cookie: 0,
        }
    }

    /// Bytes the mode adds to a packet.
    pub const fn overhead(&self) -> u32 {
        match self.mode {
            MODE_VXLAN => VXLAN_OVERHEAD,
            MODE_IPIP => IPIP_OVERHEAD,
            _ => 0,
        }
    }
}

/// `OVERLAY_ROUTES_V1` key: an LPM trie key, prefix length then the IPv4 prefix (network
/// order). Same layout as `aya::maps::lpm_trie::Key<u32>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub prefix_len: u32,
    pub addr: u32,
}

/// `OVERLAY_ROUTES_V1` value: where a pod CIDR lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OverlayRoute {
    /// The node's tunnel endpoint (outer destination), network order; 0 for local CIDRs.
    pub node_addr: u32,
    /// The node's VTEP MAC (inner destination MAC of VXLAN frames); zero if unknown.
    pub vtep_mac: [u8; 6],
    /// `ROUTE_F_*`.
    pub flags: u16,
}

/// The CIDR is this node's own: never encapsulated, and the only inner destinations a
/// decapsulated packet may have.
pub const ROUTE_F_LOCAL: u16 = 1 << 0;
/// The kernel routes this remote CIDR with a route the agent did not create (static, another
/// daemon's): its packets are not encapsulated (the kernel's route decides), but tunnel
/// packets from its node with inner sources in it are still accepted.
pub const ROUTE_F_NO_ENCAP: u16 = 1 << 1;

/// `OVERLAY_NEXTHOP_V1` value: the underlay next hop toward a node (key: its address), as
/// `bpf_fib_lookup` last found it. The encapsulation keeps it per node and asks the FIB again
/// once it is `NEXTHOP_TTL_NS` old, instead of one FIB and neighbour lookup per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OverlayNextHop {
    /// Outer destination MAC (the underlay neighbour's).
    pub dmac: [u8; 6],
    /// Outer source MAC (the egress device's).
    pub smac: [u8; 6],
    /// Egress device.
    pub ifindex: u32,
    /// Largest outer packet the route toward the node takes (the route's or device's MTU).
    pub mtu: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` after which the entry is looked up again.
    pub expires_ns: u64,
}

/// How long a cached next hop is used before the FIB is asked again: the longest a changed
/// underlay neighbour MAC or route is not seen by the encapsulation.
pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;

/// `OVERLAY_NEXTHOP_V1` capacity: one entry per node (LRU: nodes gone are evicted).
pub const MAX_OVERLAY_NEXTHOPS: u32 = MAX_OVERLAY_PEERS;

/// `OVERLAY_PEERS_V1` value: a node tunnel packets are accepted from (key: its address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OverlayPeer {
    /// Number of pod CIDRs the node owns (informational).
    pub cidrs: u32,
}

/// Entries of `OVERLAY_ROUTES_V1` (pod CIDRs and tunnel addresses of the cluster's nodes).
pub const MAX_OVERLAY_ROUTES: u32 = 16_384;
/// Entries of `OVERLAY_PEERS_V1` (nodes).
pub const MAX_OVERLAY_PEERS: u32 = 16_384;

/// Outer UDP source port (host order) for a flow hash, as the kernel's `udp_flow_src_port`:
/// the hash is folded so its low bits reach the port, then scaled into [min, max).
#[inline(always)]
pub const fn udp_src_port(hash: u32, min: u16, max: u16) -> u16 {
    if min >= max {
        return min;
    }
    let h = hash ^ (hash << 16);
    (((h as u64) * ((max - min) as u64)) >> 32) as u16 + min
}

/// A flow hash of the inner addresses, protocol and ports (network order as read), for the
/// outer UDP source port of packets the stack gave no hash: the same flow always gets the same
/// value, different flows spread (murmur3's finalizer over a cheap combination).
#[inline(always)]
pub const fn flow_hash(saddr: u32, daddr: u32, proto: u8, ports: u32) -> u32 {
    let mut h = saddr ^ daddr.rotate_left(16) ^ ports.rotate_left(8) ^ proto as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The outer TOS byte: DSCP 0, the inner ECN bits (a congestion mark CE becomes ECT(0), as
/// `INET_ECN_encapsulate` does).
#[inline(always)]
pub const fn ecn_encap(inner_tos: u8) -> u8 {
    let ecn = inner_tos & 0x03;
    if ecn == 0x03 {
        0x02
    } else {
        ecn
    }
}

/// Ones'-complement sum of `N` bytes read as native 16-bit words (N even).
#[inline(always)]
pub fn sum_words<const N: usize>(bytes: &[u8; N], from: usize, to: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = from;
    while i + 1 < to && i + 1 < N {
        sum += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Native-word sum of a network-order IPv4 address.
#[inline(always)]
pub const fn sum_addr(addr_be: u32) -> u32 {
    // The u32 holds the address bytes in memory order; its two native halves are the words.
    (addr_be & 0xffff) + (addr_be >> 16)
}

/// Native-word value of a big-endian 16-bit field.
#[inline(always)]
pub const fn word(v_host: u16) -> u32 {
    v_host.to_be() as u32
}

/// The outer IPv4 header (20 bytes, no options), checksum filled in.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn ipv4_header(
    tos: u8,
    tot_len: u16,
    id: u16,
    df: bool,
    ttl: u8,
    proto: u8,
    saddr_be: u32,
    daddr_be: u32,
) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&tot_len.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    if df {
        h[6] = 0x40;
    }
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&saddr_be.to_ne_bytes());
    h[16..20].copy_from_slice(&daddr_be.to_ne_bytes());
    let c = !csum::fold(sum_words(&h, 0, 20));
    h[10..12].copy_from_slice(&c.to_ne_bytes());
    h
}

/// What the inner packet's own checksum covers, for the outer UDP checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerCsum {
    /// TCP, or UDP with a checksum: the L4 checksum covers a pseudo-header with this native sum
    /// (addresses, protocol, L4 length).
    PseudoHeader(u32),
    /// ICMP: the checksum covers the message only (no pseudo-header).
    NoPseudoHeader,
    /// No end-to-end checksum to lean on (fragments, UDP without checksum, other protocols):
    /// the outer checksum would need a pass over the payload, so it is sent as 0.
    None,
}

/// Native sum of the pseudo-header of an inner TCP/UDP packet.
#[inline(always)]
pub const fn inner_pseudo_sum(saddr_be: u32, daddr_be: u32, proto: u8, l4_len: u16) -> u32 {
    sum_addr(saddr_be) + sum_addr(daddr_be) + word(proto as u16) + word(l4_len)
}

/// The outer UDP checksum of a VXLAN packet without reading its payload (local checksum
/// offload, as the kernel's `lco_csum`): a valid (or offloaded, to be completed) inner L4
/// checksum makes the bytes from the inner L4 header to the end sum to the complement of the
/// inner pseudo-header, and a valid inner IPv4 header sums to zero. What is left is the outer
/// pseudo-header, the UDP and VXLAN headers and the inner Ethernet header.
///
/// `headers` holds the bytes from the UDP header (checksum field zero) through the inner
/// Ethernet header: 8 + 8 + 14 = 30 bytes. Returns 0 (no checksum) for [`InnerCsum::None`].
#[inline(always)]
pub fn vxlan_udp_checksum(
    saddr_be: u32,
    daddr_be: u32,
    udp_len: u16,
    headers: &[u8; 30],
    inner: InnerCsum,
) -> u16 {
    let inner_sum = match inner {
        InnerCsum::PseudoHeader(pseudo) => (!csum::fold(pseudo)) as u32,
        InnerCsum::NoPseudoHeader => 0,
        InnerCsum::None => return 0,
    };
    let sum = sum_addr(saddr_be)
        + sum_addr(daddr_be)
        + word(IPPROTO_UDP as u16)
        + word(udp_len)
        + sum_words(headers, 0, 30)
        + inner_sum;
    let c = !csum::fold(sum);
    if c == 0 {
        0xffff
    } else {
        c
    }
}

user_pod!(
    OverlayConfig,
    RouteKey,
    OverlayRoute,
    OverlayPeer,
    OverlayNextHop
);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    fn full_checksum(bytes: &[u8]) -> u16 {
        let sum: u32 = bytes
            .chunks(2)
            .map(|c| u16::from_ne_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
            .sum();
        !csum::fold(sum)
    }

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<OverlayConfig>(), 48);
        assert_eq!(core::mem::size_of::<RouteKey>(), 8);
        assert_eq!(core::mem::size_of::<OverlayRoute>(), 12);
        assert_eq!(core::mem::size_of::<OverlayPeer>(), 4);
    }

    /// The outer header flannel.1 sent in the lab (kernel 6.18):
    /// `4500 0086 8346 0000 4011 6ae5 c612000b c612000c`.
    #[test]
    fn outer_ipv4_header_matches_a_kernel_capture() {
        let h = ipv4_header(
            0,
            0x86,
            0x8346,
            false,
            64,
            IPPROTO_UDP,
            be([198, 18, 0, 11]),
            be([198, 18, 0, 12]),
        );
        assert_eq!(
            h,
            [
                0x45, 0, 0, 0x86, 0x83, 0x46, 0, 0, 0x40, 0x11, 0x6a, 0xe5, 198, 18, 0, 11, 198,
                18, 0, 12
            ]
        );
        let df = ipv4_header(
            0,
            104,
            57971,
            true,
            64,
            IPPROTO_IPIP,
            be([192, 168, 0, 111]),
            be([192, 168, 3, 110]),
        );
        assert_eq!(full_checksum(&df), 0);
        assert_eq!(df[6], 0x40);
    }

    #[test]
    fn src_port_stays_in_range_and_spreads() {
        let mut seen = std::collections::BTreeSet::new();
        let mut h = 0x9e37_79b9u32;
        for _ in 0..10_000 {
            h = h.wrapping_mul(0x0100_0193).wrapping_add(0x7f4a_7c15);
            let p = udp_src_port(h, 32_768, 60_999);
            assert!((32_768..60_999).contains(&p), "{p}");
            seen.insert(p / 1024);
        }
        assert!(seen.len() >= 27, "ports cover the range: {seen:?}");
        assert_eq!(udp_src_port(0, 32_768, 60_999), 32_768);
        assert_eq!(udp_src_port(12345, 4000, 4000), 4000);
    }

    #[test]
    fn flow_hash_is_stable_and_spreads_ports() {
        let a = flow_hash(0x0a01_0002, 0x0a02_0002, 6, 0x1234_0050);
        assert_eq!(a, flow_hash(0x0a01_0002, 0x0a02_0002, 6, 0x1234_0050));
        let mut seen = std::collections::HashSet::new();
        for sport in 0..4096u32 {
            let h = flow_hash(0x0a01_0002, 0x0a02_0002, 6, (sport << 16) | 80);
            seen.insert(udp_src_port(h, 32_768, 60_999) / 1024);
        }
        assert!(
            seen.len() >= 27,
            "source ports of one host pair cover the range: {seen:?}"
        );
    }

    #[test]
    fn ecn_is_copied_and_ce_becomes_ect0() {
        assert_eq!(ecn_encap(0xb8), 0);
        assert_eq!(ecn_encap(0xb9), 1);
        assert_eq!(ecn_encap(0x02), 2);
        assert_eq!(ecn_encap(0x03), 2);
    }

    /// Builds a whole VXLAN packet around a valid inner TCP or ICMP packet and compares the
    /// header-only checksum with a checksum over every byte.
    #[test]
    fn lco_checksum_equals_a_full_checksum() {
        let (src, dst) = ([10u8, 244, 1, 2], [10u8, 244, 2, 3]);
        for proto in [6u8, 17, 1] {
            for payload_len in [0usize, 1, 7, 100, 1399] {
                let l4_hdr = if proto == 6 { 20 } else { 8 };
                let l4_len = l4_hdr + payload_len;
                let mut l4: Vec<u8> = (0..l4_len).map(|i| (i * 7 + 3) as u8).collect();
                let csum_at = match proto {
                    6 => 16,
                    17 => 6,
                    _ => 2,
                };
                l4[csum_at] = 0;
                l4[csum_at + 1] = 0;
                let mut sum: u32 = l4
                    .chunks(2)
                    .map(|c| u16::from_ne_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
                    .sum();
                if proto != 1 {
                    sum += inner_pseudo_sum(be(src), be(dst), proto, l4_len as u16);
                }
                let c = !csum::fold(sum);
                l4[csum_at..csum_at + 2].copy_from_slice(&c.to_ne_bytes());
                let ip = ipv4_header(
                    0,
                    (20 + l4_len) as u16,
                    7,
                    true,
                    63,
                    proto,
                    be(src),
                    be(dst),
                );
                let mut inner_frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
                inner_frame.extend_from_slice(&ip);
                inner_frame.extend_from_slice(&l4);
                let udp_len = (16 + inner_frame.len()) as u16;
                let mut headers = [0u8; 30];
                headers[0..2].copy_from_slice(&40_000u16.to_be_bytes());
                headers[2..4].copy_from_slice(&8472u16.to_be_bytes());
                headers[4..6].copy_from_slice(&udp_len.to_be_bytes());
                headers[8] = 0x08;
                headers[12..15].copy_from_slice(&[0, 0, 1]);
                headers[16..30].copy_from_slice(&inner_frame[..14]);
                let (osrc, odst) = (be([198, 18, 0, 11]), be([198, 18, 0, 12]));
                let inner = match proto {
                    1 => InnerCsum::NoPseudoHeader,
                    _ => InnerCsum::PseudoHeader(inner_pseudo_sum(
                        be(src),
                        be(dst),
                        proto,
                        l4_len as u16,
                    )),
                };
                let lco = vxlan_udp_checksum(osrc, odst, udp_len, &headers, inner);
                // The reference: pseudo-header + the whole UDP datagram.
                let mut datagram = headers[..16].to_vec();
                datagram.extend_from_slice(&inner_frame);
                let mut pseudo = vec![198, 18, 0, 11, 198, 18, 0, 12, 0, 17];
                pseudo.extend_from_slice(&udp_len.to_be_bytes());
                let mut all = pseudo;
                all.extend_from_slice(&datagram);
                let reference = match full_checksum(&all) {
                    0 => 0xffff,
                    c => c,
                };
                assert_eq!(lco, reference, "proto {proto}, payload {payload_len}");
                assert_eq!(
                    vxlan_udp_checksum(osrc, odst, udp_len, &headers, InnerCsum::None),
                    0
                );
            }
        }
    }
}
