//! The pre-filter of every packet hook: most pod packets are pod-to-pod traffic that no service is
//! involved in, and should not pay the conntrack and service lookups (a hash lookup in a
//! 262,144-entry LRU map that misses, then another). A packet can need translation at an
//! ingress hook only if its destination is a frontend or one of the node's addresses (replies
//! of masqueraded connections and of the node's own); at a pod egress hook or the uplink's
//! egress only if its source or destination is a backend, a frontend or the node's (DNATed
//! packets go to a backend, un-DNATed replies come from a frontend, the node's own connections
//! to services go to a frontend). ICMP always takes the full path (errors quote other
//! addresses).
//!
//! One test: the address bitmap `LB_ADDR_BITS_V1` (`dataplane_common::addr_bits`: one inlined
//! array read per address, no hash lookup), whose clear bits prove an address is not listed,
//! once the agent trusts it (`CFG_F_ADDR_BITS`); until then the exact `LB_ADDRS_V1` lookup.

use dataplane_common::{
    addr_bits::{self, maybe_any, maybe_ingress},
    config::{CFG_F_ADDR_BITS, CFG_F_POD_FILTER},
    lb::{ADDR_F_FRONTEND, ADDR_F_NODE},
};

use crate::{
    config,
    maps::{LB_ADDRS_V1, LB_ADDR_BITS_V1},
    net::Parsed,
};

#[inline(always)]
fn flags(addr: u32) -> u32 {
    unsafe { LB_ADDRS_V1.get(&addr) }.copied().unwrap_or(0)
}

/// Whether the bitmap proves `addr` is not listed (with `ingress`: not as a frontend or node
/// address). A failed lookup (never: the index is below the map's size) proves nothing.
#[inline(always)]
fn absent(addr: u32, ingress: bool) -> bool {
    let p = addr_bits::probe(addr);
    match LB_ADDR_BITS_V1.get(p.word) {
        Some(w) if ingress => !maybe_ingress(w, &p),
        Some(w) => !maybe_any(w, &p),
        None => false,
    }
}

/// Whether `addr` is not listed with any of `mask` (`ADDR_F_*`): proved by the bitmap when it
/// is trusted (`bits`), else looked up. A trusted bitmap's set bit is not checked against the
/// hash map: every service packet would pay that lookup to spare the bitmap's few false
/// positives (about 2% of unlisted addresses at 10,000 services) the full path, which is
/// correct for them too.
#[inline(always)]
fn unlisted(addr: u32, mask: u32, bits: bool) -> bool {
    if bits {
        absent(addr, mask != ANY)
    } else {
        flags(addr) & mask == 0
    }
}

const ANY: u32 = u32::MAX;

/// The node's filter flags: `None` while the filter is off (`CFG_F_POD_FILTER` says the agent
/// keeps `LB_ADDRS_V1`; tools that fill the service maps some other way leave it off, and every
/// packet takes the full path), else whether the bitmap covers `LB_ADDRS_V1`
/// (`CFG_F_ADDR_BITS`). One config read per packet.
#[inline(always)]
fn filter() -> Option<bool> {
    let on = config::node().flags;
    (on & CFG_F_POD_FILTER != 0).then_some(on & CFG_F_ADDR_BITS != 0)
}

/// A packet entering from a pod or the uplink that no rule can apply to.
#[inline(always)]
pub fn ingress_untouched(pkt: &Parsed) -> bool {
    let Some(bits) = filter() else {
        return false;
    };
    unlisted(pkt.flow.daddr, ADDR_F_FRONTEND | ADDR_F_NODE, bits)
}

/// A packet on its way to a pod, or out of the uplink, that no rule can apply to.
#[inline(always)]
pub fn egress_untouched(pkt: &Parsed) -> bool {
    let Some(bits) = filter() else {
        return false;
    };
    unlisted(pkt.flow.saddr, ANY, bits) && unlisted(pkt.flow.daddr, ANY, bits)
}
