//! The pre-filter of every packet hook: most pod packets are pod-to-pod traffic that no service is
//! involved in, and should not pay the conntrack and service lookups (a hash lookup in a
//! 262,144-entry LRU map that misses, then another). One lookup per address in `LB_ADDRS_V1`
//! tells: a packet can need translation at an ingress hook only if its destination is a
//! frontend or one of the node's addresses (replies of masqueraded connections and of the
//! node's own); at a pod egress hook or the uplink's egress only if its source or destination
//! is a backend, a frontend or the node's (DNATed packets go to a backend, un-DNATed replies
//! come from a frontend, the node's own connections to services go to a frontend). ICMP always takes the full path (errors quote other addresses).

use dataplane_common::{
    config::CFG_F_POD_FILTER,
    lb::{ADDR_F_FRONTEND, ADDR_F_NODE},
};

use crate::{config, maps::LB_ADDRS_V1, net::Parsed};

#[inline(always)]
fn flags(addr: u32) -> u32 {
    unsafe { LB_ADDRS_V1.get(&addr) }.copied().unwrap_or(0)
}

/// Whether the filter is on: the agent keeps `LB_ADDRS_V1` (tools that fill the service maps
/// some other way leave it off, and every packet takes the full path).
#[inline(always)]
fn enabled() -> bool {
    config::node().flags & CFG_F_POD_FILTER != 0
}

/// A packet entering from a pod or the uplink that no rule can apply to.
#[inline(always)]
pub fn ingress_untouched(pkt: &Parsed) -> bool {
    enabled() && flags(pkt.flow.daddr) & (ADDR_F_FRONTEND | ADDR_F_NODE) == 0
}

/// A packet on its way to a pod, or out of the uplink, that no rule can apply to.
#[inline(always)]
pub fn egress_untouched(pkt: &Parsed) -> bool {
    enabled() && flags(pkt.flow.saddr) == 0 && flags(pkt.flow.daddr) == 0
}
