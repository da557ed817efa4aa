//! IPv4 fragments of translated datagrams, as Cilium's IPV4_FRAG_DATAGRAMS: only the first
//! fragment carries the ports, so each hook remembers them per datagram (addresses, IP id,
//! protocol, as the fragment arrives at that hook) and looks them up for the fragments that
//! follow, which then get their connection's address rewrite. A fragment that overtakes its
//! first fragment finds nothing and passes untranslated (`pass-fragment`).

use dataplane_common::{
    ct::{FragKey, FragValue},
    ip::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{maps::FRAGS_V1, net::Parsed};

#[inline(always)]
fn key_of(pkt: &Parsed) -> FragKey {
    FragKey {
        saddr: pkt.flow.saddr,
        daddr: pkt.flow.daddr,
        id: pkt.ip_id,
        proto: pkt.flow.proto,
        _pad: 0,
    }
}

/// Records a first fragment's ports (before the hook rewrites anything).
#[inline(always)]
pub fn remember(pkt: &Parsed) {
    if pkt.first_fragment {
        let ports = FragValue {
            sport: pkt.flow.sport,
            dport: pkt.flow.dport,
        };
        let _ = FRAGS_V1.insert(&key_of(pkt), &ports, 0);
    }
}

/// Gives a later fragment of a known TCP/UDP datagram its first fragment's ports.
#[inline(always)]
pub fn recall(pkt: &mut Parsed) -> bool {
    if pkt.flow.proto != IPPROTO_TCP && pkt.flow.proto != IPPROTO_UDP {
        return false;
    }
    match unsafe { FRAGS_V1.get(&key_of(pkt)) } {
        Some(p) => {
            pkt.flow.sport = p.sport;
            pkt.flow.dport = p.dport;
            true
        }
        None => false,
    }
}
