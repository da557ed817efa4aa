//! The packet layer: typed header views ([`hdr`]), the bounds-checked cursor ([`cursor`]), the
//! parser ([`parse`]), flows ([`flow`]), checksums ([`csum`]) and the one load/store per hook
//! context ([`ctx`]: XDP and skb). Every other module reads and writes packets through these;
//! none indexes raw bytes.
//!
//! Shaped for IPv6 next (Katran's pckt_parsing.h and Cilium's bpf/lib/ipv6.h keep one parse
//! step per family behind one flow type): an `Ipv6Hdr` view here, a parse step beside
//! `parse_ipv4_hdr`, and a wider [`flow::Addr`]; the pipelines take `Parsed` and `Flow` whole.

pub mod csum;
pub mod ctx;
pub mod cursor;
pub mod flow;
pub mod hdr;
pub mod parse;

pub use ctx::{Packet, TcPacket, XdpPacket};
pub use flow::{Flow, Tuple};
pub use parse::{Parsed, L4};
