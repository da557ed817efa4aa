//! Flows and rewrite targets, in network byte order. The address type is the one place the
//! family shows: pipelines, conntrack and the service lookup handle flows whole.

/// An IPv4 address as it sits in the header (network order). IPv6 widens this.
pub type Addr = u32;

/// Addresses and ports a packet should carry after a rewrite.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: Addr,
    pub daddr: Addr,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    /// `saddr:sport -> daddr:dport` (the argument order of `CtKey::new`).
    #[inline(always)]
    pub const fn new(saddr: Addr, sport: u16, daddr: Addr, dport: u16) -> Tuple {
        Tuple {
            saddr,
            daddr,
            sport,
            dport,
        }
    }
}

/// A packet's flow as it is on the wire: addresses, ports (0 without a transport header),
/// protocol.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: Addr,
    pub daddr: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Flow {
    /// The flow of the other direction (what a reply carries).
    #[inline(always)]
    pub fn reversed(&self) -> Flow {
        Flow {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}
