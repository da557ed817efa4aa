//! Protocol numbers of the headers the datapath parses, defined once for both sides.

/// EtherTypes (host order).
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Address family of IPv4 (`bpf_fib_lookup`'s `family`).
pub const AF_INET: u8 = 2;
