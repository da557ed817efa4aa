//! IPv4 fragments of translated datagrams, as Cilium's IPV4_FRAG_DATAGRAMS: only the first
//! fragment carries the ports, so each hook remembers them per datagram (addresses, IP id,
//! protocol, as the fragment arrives at that hook) and looks them up for the fragments that
//! follow, which then get their connection's address rewrite. A fragment that overtakes its
//! first fragment finds nothing and passes untranslated (`pass-fragment`).

use dataplane_common::ct::{FragKey, FragValue, IPPROTO_TCP, IPPROTO_UDP};

use crate::{maps::FRAGS_V1, parse::Ipv4Packet};

#[inline(always)]
fn key_of(pkt: &Ipv4Packet) -> FragKey {
    FragKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        id: pkt.ip_id,
        proto: pkt.proto,
        _pad: 0,
    }
}

/// Records a first fragment's ports (before the hook rewrites anything).
#[inline(always)]
pub fn remember(pkt: &Ipv4Packet) {
    if pkt.first_fragment {
        let ports = FragValue {
            sport: pkt.sport,
            dport: pkt.dport,
        };
        let _ = FRAGS_V1.insert(&key_of(pkt), &ports, 0);
    }
}

/// Gives a later fragment of a known TCP/UDP datagram its first fragment's ports.
#[inline(always)]
pub fn recall(pkt: &mut Ipv4Packet) -> bool {
    if pkt.proto != IPPROTO_TCP && pkt.proto != IPPROTO_UDP {
        return false;
    }
    match unsafe { FRAGS_V1.get(&key_of(pkt)) } {
        Some(p) => {
            pkt.sport = p.sport;
            pkt.dport = p.dport;
            true
        }
        None => false,
    }
}
