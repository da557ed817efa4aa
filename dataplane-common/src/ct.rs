//! Connection tracking (`CT_V2`, an LRU hash). The node configuration it times entries out by
//! is `crate::config` (re-exported here for the agent's older imports).
//!
//! Entries are keyed by the 5-tuple *as it is on the wire* when a packet reaches a hook, plus
//! the phase of that hook, and hold the rewrite to apply to such packets. As in netfilter,
//! destination rewrites happen at ingress (before the kernel routes the packet) and source
//! rewrites at egress (after routing). A balanced connection (client C, frontend F, backend B)
//! has two entries:
//! - ingress, original `C -> F`: rewrite to `C -> B` (DNAT);
//! - egress, reply `B -> C`: rewrite to `F -> C` (un-DNAT).
//!
//! A masqueraded connection (node address:port M) has two more:
//! - egress, original `C -> B`: rewrite to `M -> B` (SNAT);
//! - ingress, reply `B -> M`: rewrite to `B -> C` (un-SNAT).
//!
//! A masqueraded connection that the XDP fast path opens (external client, backend behind the
//! same uplink) has two entries instead, both applying both rewrites at ingress (`CT_F_FULL`):
//! - ingress, original `C -> F`: rewrite to `M -> B` (DNAT and SNAT);
//! - ingress, reply `B -> M`: rewrite to `F -> C` (un-SNAT and un-DNAT).
//!
//! Their packets never reach the kernel's routing (whose martian check would drop a source
//! that is a node address): the hook that rewrote one sends it out itself (XDP_TX, or a FIB
//! lookup and redirect at tc ingress when XDP cannot finish it). No middle tuple exists, so
//! no client port is remapped.
//!
//! A connection the node itself opens to a service (per-packet host path, e.g. a connected UDP
//! socket) is translated at the uplink's egress (`N -> F` to `N -> B`) and its replies at
//! ingress (`B -> N` to `F -> N`).
//!
//! When the reply tuple a new connection needs is held by another live connection, the client's
//! source port is remapped (netfilter's NAT clash resolution): the DNAT entry then also
//! rewrites the source port, `C:p -> F` to `C:p' -> B`.
//!
//! The entries of one connection form a ring: [`next_key`] of an entry is the key of the entry
//! the same connection's packets meet next (forward ingress -> forward egress -> reply ingress
//! -> reply egress -> forward ingress, skipping the ones a connection does not have; the two
//! entries of a `CT_F_FULL` connection lead to each other). The
//! datapath walks it to share TCP close state and liveness between directions, the agent's GC to
//! remove a connection whole.
//!
//! Addresses and ports are in network byte order.

pub use crate::config::*;

/// `CT_V2` key: a 5-tuple as seen on the wire, and the phase of the hooks it applies at.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `PHASE_INGRESS` or `PHASE_EGRESS`.
    pub phase: u8,
    pub _pad: [u8; 2],
}

impl CtKey {
    /// The key of a flow (addresses and ports in network order) at the hooks of `phase`.
    #[inline(always)]
    pub const fn new(saddr: u32, sport: u16, daddr: u32, dport: u16, proto: u8, phase: u8) -> Self {
        CtKey {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            phase,
            _pad: [0; 2],
        }
    }
}

/// Entry applies at ingress hooks (XDP on the uplink, tc ingress of pod devices), before the
/// kernel routes the packet.
pub const PHASE_INGRESS: u8 = 0;
/// Entry applies at egress hooks (tc egress of the uplink and pod devices), after routing.
///
/// Like netfilter (DNAT in PREROUTING, SNAT in POSTROUTING), source rewrites happen after
/// routing: done at ingress, a source that is one of the node's own addresses (masquerade, a
/// NodePort reply) makes the stack drop the packet as a martian.
pub const PHASE_EGRESS: u8 = 1;

/// `CT_V2` value.
///
/// Several CPUs may handle packets of one connection at once (both directions, RSS): `packets`,
/// `bytes` and `seen` are only changed with atomic read-modify-write instructions; `last_seen_ns`
/// is a plain aligned 64-bit store (racing writers store nearly the same time, either is right).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// Source address/port the packet leaves with.
    pub nat_saddr: u32,
    /// Destination address/port the packet leaves with.
    pub nat_daddr: u32,
    pub nat_sport: u16,
    pub nat_dport: u16,
    /// The service frontend this connection was balanced for.
    pub frontend_id: u32,
    /// bpf_ktime_get_ns() at creation.
    pub created_ns: u64,
    /// bpf_ktime_get_ns() of the last packet in this direction (refreshed at most every
    /// `CT_REFRESH_NS`), or of the last time a packet of the other direction found it.
    pub last_seen_ns: u64,
    /// Packets and bytes in this direction (atomic adds).
    pub packets: u64,
    pub bytes: u64,
    /// Low byte: TCP flags seen in this direction; above it `SEEN_*` bits shared by every entry
    /// of the connection (atomic ORs).
    pub seen: u32,
    /// `CT_F_*` flags, fixed at creation.
    pub flags: u8,
    pub _pad: [u8; 3],
}

impl CtValue {
    /// An entry that rewrites its packets to (`saddr`:`sport` -> `daddr`:`dport`, network
    /// order) with `flags`; nothing else set (no frontend, no clock, nothing counted or seen).
    pub const fn rewriting(saddr: u32, sport: u16, daddr: u32, dport: u16, flags: u8) -> Self {
        CtValue {
            nat_saddr: saddr,
            nat_daddr: daddr,
            nat_sport: sport,
            nat_dport: dport,
            frontend_id: 0,
            created_ns: 0,
            last_seen_ns: 0,
            packets: 0,
            bytes: 0,
            seen: 0,
            flags,
            _pad: [0; 3],
        }
    }
}

/// This entry is the reply direction of its connection.
pub const CT_F_REPLY: u8 = 1 << 0;
/// The connection is source-NATed: masqueraded, or its client port remapped.
pub const CT_F_SNAT: u8 = 1 << 1;
/// The connection was opened by the node itself (translated at the uplink's egress).
pub const CT_F_HOST: u8 = 1 << 2;

/// `seen`: a FIN was sent in the connection's original direction.
pub const SEEN_FIN_ORIG: u32 = 1 << 8;
/// `seen`: a FIN was sent in the reply direction.
pub const SEEN_FIN_REPLY: u32 = 1 << 9;
/// `seen`: an RST was sent (either direction).
pub const SEEN_RST: u32 = 1 << 10;
/// `seen` bits that the datapath copies to every entry of the connection.
pub const SEEN_SHARED: u32 = SEEN_FIN_ORIG | SEEN_FIN_REPLY | SEEN_RST;

/// TCP flag bits as in the header's flags byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub use crate::ip::{IPPROTO_TCP, IPPROTO_UDP};

/// Entries of `CT_V2` (two per NATed connection, four when masqueraded outside the XDP fast
/// path).
pub const CT_MAX_ENTRIES: u32 = 262_144;
/// An entry's `last_seen_ns` is rewritten at most this often (a store per packet would bounce
/// the entry's cache line between CPUs for nothing).
pub const CT_REFRESH_NS: u64 = 1_000_000_000;
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Connection state as derived from the flags seen, for timeouts and display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    /// No ACK in this direction yet: a SYN only (or a SYN-ACK not yet acknowledged).
    SynSent,
    Established,
    /// One direction sent its FIN, the other may go on sending (`shutdown(SHUT_WR)`):
    /// netfilter's FIN_WAIT/CLOSE_WAIT.
    HalfClosed,
    /// Both directions sent FIN: netfilter's TIME_WAIT. The tuple lingers as long as the
    /// closing side's TIME_WAIT socket may (a backend that closed first keeps one for 60 s, and
    /// a new connection from the same address:port would meet it).
    Closed,
    /// An RST was seen: no TIME_WAIT socket is left, the tuple is free after a short linger.
    Reset,
    /// UDP, ICMP: no states.
    Stateless,
}

/// What an entry's `seen` bits say about the connection. Pure, shared by datapath, GC and
/// `dataplane conntrack`.
pub const fn ct_state(proto: u8, seen: u32) -> CtState {
    if proto != IPPROTO_TCP {
        return CtState::Stateless;
    }
    let both_fins = SEEN_FIN_ORIG | SEEN_FIN_REPLY;
    if seen & SEEN_RST != 0 {
        CtState::Reset
    } else if seen & both_fins == both_fins {
        CtState::Closed
    } else if seen & both_fins != 0 {
        CtState::HalfClosed
    } else if seen & TCP_ACK as u32 != 0 {
        CtState::Established
    } else {
        CtState::SynSent
    }
}

/// The `seen` bits a packet with TCP flags `tcp_flags` adds to an entry of direction `reply`.
pub const fn seen_bits(tcp_flags: u8, reply: bool) -> u32 {
    let mut bits = tcp_flags as u32;
    if tcp_flags & TCP_FIN != 0 {
        bits |= if reply { SEEN_FIN_REPLY } else { SEEN_FIN_ORIG };
    }
    if tcp_flags & TCP_RST != 0 {
        bits |= SEEN_RST;
    }
    bits
}

/// The key of the entry the connection's packets meet after the one at `key` (see the module
/// doc): an ingress entry of a masqueraded connection is followed by the egress entry of the
/// packet it produced; any other entry by the entry of the other phase that the reply of the
/// packet it produced meets.
pub const fn next_key(key: &CtKey, value: &CtValue) -> CtKey {
    if value.flags & CT_F_FULL != 0 {
        // Both entries at ingress: the other one is keyed by the packet this one produces,
        // reversed.
        return CtKey {
            saddr: value.nat_daddr,
            daddr: value.nat_saddr,
            sport: value.nat_dport,
            dport: value.nat_sport,
            proto: key.proto,
            phase: key.phase,
            _pad: [0; 2],
        };
    }
    if key.phase == PHASE_INGRESS && value.flags & CT_F_MASQ != 0 {
        CtKey {
            saddr: value.nat_saddr,
            daddr: value.nat_daddr,
            sport: value.nat_sport,
            dport: value.nat_dport,
            proto: key.proto,
            phase: PHASE_EGRESS,
            _pad: [0; 2],
        }
    } else {
        CtKey {
            saddr: value.nat_daddr,
            daddr: value.nat_saddr,
            sport: value.nat_dport,
            dport: value.nat_sport,
            proto: key.proto,
            phase: if key.phase == PHASE_INGRESS {
                PHASE_EGRESS
            } else {
                PHASE_INGRESS
            },
            _pad: [0; 2],
        }
    }
}

/// The connection is masqueraded (source address rewritten to the node's at egress): it has
/// the two extra entries of the module doc, and its ingress entries lead to an egress entry of
/// the tuple they produce.
pub const CT_F_MASQ: u8 = 1 << 3;
/// The entry applies the connection's whole translation at ingress (DNAT and SNAT, or their
/// reverse): one of the two entries of a connection the XDP fast path opened (module doc). A
/// packet rewritten by it must leave by the hook itself, not through the kernel's routing.
pub const CT_F_FULL: u8 = 1 << 4;

/// Whether an entry has been idle longer than its state allows, by its own clock.
pub const fn idle_expired(value: &CtValue, proto: u8, now_ns: u64, cfg: &Config) -> bool {
    let idle = now_ns.saturating_sub(value.last_seen_ns);
    let state = ct_state(proto, value.seen);
    idle > cfg.timeout_secs(state, proto) as u64 * NS_PER_SEC
}

/// A closed connection's tuple is not taken by a new connection for this long after its last
/// packet: the last ACK and a retransmitted FIN still find their entry (`last_seen_ns` is
/// refreshed only every `CT_REFRESH_NS`).
pub const CLOSED_REUSE_NS: u64 = 2 * NS_PER_SEC;
/// After this long a TIME_WAIT socket the tuple's previous connection left (Linux keeps them
/// 60 s) is gone: a new connection can take the tuple without meeting it. Taken sooner, the
/// new SYN meets the old socket, whose PAWS check rejects it half the time (timestamps are
/// offset per connection), and the client retries a second later.
pub const TIME_WAIT_SAFE_NS: u64 = 61 * NS_PER_SEC;

/// Whether a new connection may take an entry's tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reuse {
    /// The entry's connection is alive.
    No,
    /// Only if no free tuple is found: closed a little while, but a TIME_WAIT socket of it may
    /// still exist at the closing side.
    LastResort,
    /// As good as free: timed out, reset, or closed long enough ago.
    Free,
}

/// How freely a new connection may take the entry's tuple (netfilter lets a new connection
/// take a TIME_WAIT tuple when it needs it: nf_nat_used_tuple_harder).
pub const fn reuse(value: &CtValue, proto: u8, now_ns: u64, cfg: &Config) -> Reuse {
    if idle_expired(value, proto, now_ns, cfg) {
        return Reuse::Free;
    }
    let idle = now_ns.saturating_sub(value.last_seen_ns);
    match ct_state(proto, value.seen) {
        CtState::Reset if idle > CLOSED_REUSE_NS => Reuse::Free,
        CtState::Closed if idle > TIME_WAIT_SAFE_NS => Reuse::Free,
        CtState::Closed if idle > CLOSED_REUSE_NS => Reuse::LastResort,
        _ => Reuse::No,
    }
}

/// `FRAGS_V1` key: the datagram a fragment belongs to, as the fragment is on the wire when it
/// reaches a hook (before that hook translates it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    /// IPv4 identification, network order.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `FRAGS_V1` value: the ports the datagram's first fragment carried (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub sport: u16,
    pub dport: u16,
}

/// Entries of `FRAGS_V1` (LRU: datagrams in flight, like Cilium's IPV4_FRAG_DATAGRAMS).
pub const MAX_FRAG_DATAGRAMS: u32 = 8_192;

user_pod!(CtKey, CtValue, FragKey, FragValue);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<CtKey>(), 16);
        assert_eq!(core::mem::size_of::<CtValue>(), 56);
        assert_eq!(core::mem::size_of::<Config>(), 48);
    }

    #[test]
    fn tcp_states_need_both_fins_or_a_reset_to_close() {
        let syn = seen_bits(TCP_SYN, false);
        assert_eq!(ct_state(6, syn), CtState::SynSent);
        let est = syn | seen_bits(TCP_ACK, false);
        assert_eq!(ct_state(6, est), CtState::Established);
        let half = est | seen_bits(TCP_FIN | TCP_ACK, false);
        assert_eq!(ct_state(6, half), CtState::HalfClosed);
        // The other direction's FIN arrives through the ring as SEEN_FIN_REPLY.
        assert_eq!(ct_state(6, half | SEEN_FIN_REPLY), CtState::Closed);
        assert_eq!(ct_state(6, est | seen_bits(TCP_RST, true)), CtState::Reset);
        assert_eq!(ct_state(17, 0), CtState::Stateless);
    }

    fn entry(nat: (u32, u16, u32, u16), flags: u8) -> CtValue {
        CtValue::rewriting(nat.0, nat.1, nat.2, nat.3, flags)
    }

    fn key(t: (u32, u16, u32, u16), phase: u8) -> CtKey {
        CtKey::new(t.0, t.1, t.2, t.3, 6, phase)
    }

    /// The four entries `create` writes for a masqueraded connection with a remapped client
    /// port, and the two of a plain one, each lead to the next and back to the first.
    #[test]
    fn rings_close() {
        let (c, cp, cp2, f, fp, b, bp, m, mp) = (1, 10, 11, 2, 20, 3, 30, 4, 40);
        let masq = CT_F_SNAT | CT_F_MASQ;
        let ring = [
            (
                key((c, cp, f, fp), PHASE_INGRESS),
                entry((c, cp2, b, bp), masq),
            ),
            (
                key((c, cp2, b, bp), PHASE_EGRESS),
                entry((m, mp, b, bp), masq),
            ),
            (
                key((b, bp, m, mp), PHASE_INGRESS),
                entry((b, bp, c, cp2), masq | CT_F_REPLY),
            ),
            (
                key((b, bp, c, cp2), PHASE_EGRESS),
                entry((f, fp, c, cp), masq | CT_F_REPLY),
            ),
        ];
        for i in 0..4 {
            assert_eq!(
                next_key(&ring[i].0, &ring[i].1),
                ring[(i + 1) % 4].0,
                "hop {i}"
            );
        }
        let plain = [
            (key((c, cp, f, fp), PHASE_INGRESS), entry((c, cp, b, bp), 0)),
            (
                key((b, bp, c, cp), PHASE_EGRESS),
                entry((f, fp, c, cp), CT_F_REPLY),
            ),
        ];
        for i in 0..2 {
            assert_eq!(next_key(&plain[i].0, &plain[i].1), plain[(i + 1) % 2].0);
        }
        // The node's own connection: egress first, reply at ingress.
        let (n, np) = (5, 50);
        let host = [
            (
                key((n, np, f, fp), PHASE_EGRESS),
                entry((n, np, b, bp), CT_F_HOST),
            ),
            (
                key((b, bp, n, np), PHASE_INGRESS),
                entry((f, fp, n, np), CT_F_HOST | CT_F_REPLY),
            ),
        ];
        for i in 0..2 {
            assert_eq!(next_key(&host[i].0, &host[i].1), host[(i + 1) % 2].0);
        }
        // The XDP fast path's masqueraded connection: both entries at ingress.
        let full = CT_F_FULL | masq;
        let fast = [
            (
                key((c, cp, f, fp), PHASE_INGRESS),
                entry((m, mp, b, bp), full),
            ),
            (
                key((b, bp, m, mp), PHASE_INGRESS),
                entry((f, fp, c, cp), full | CT_F_REPLY),
            ),
        ];
        for i in 0..2 {
            assert_eq!(next_key(&fast[i].0, &fast[i].1), fast[(i + 1) % 2].0);
        }
    }
}
