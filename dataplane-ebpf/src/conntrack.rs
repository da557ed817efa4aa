//! Connection tracking: per-direction entries in `CT_V1` holding the rewrite for that direction.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
};
use dataplane_common::{
    ct::{
        ct_state, Config, CtKey, CtState, CtValue, CT_F_EGRESS, CT_F_REPLY, CT_F_SNAT, TCP_ACK,
        TCP_SYN,
    },
    lb::{BackendValue, ServiceValue, SVC_F_MASQUERADE},
    Reason,
};

use crate::{
    maps::{CONFIG_V1, CT_V1},
    packet::Tuple,
    parse::Ipv4Packet,
};

const NS_PER_SEC: u64 = 1_000_000_000;
/// Masquerade ports probed (from a random start) before giving up; bounded for the verifier.
/// 32 keeps refusals rare until the range is nearly full (the benchmark refused half of 100k
/// NodePort flows with 8 probes over a 4,536-port range).
const SNAT_PROBES: u32 = 32;

/// A tracked packet: the tuple to rewrite it to, and which direction it travels.
pub struct Hit {
    pub to: Tuple,
    pub reply: bool,
}

#[inline(always)]
pub fn key_of(pkt: &Ipv4Packet) -> CtKey {
    CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

/// The loader writes the config before attaching; a zeroed default keeps an unconfigured map
/// from being misread as huge timeouts.
#[inline(always)]
pub fn config() -> Config {
    match CONFIG_V1.get(0) {
        Some(c) => *c,
        None => Config::with_masq_addr(0),
    }
}

#[inline(always)]
fn expired(v: &CtValue, proto: u8, now: u64, cfg: &Config) -> bool {
    let state = ct_state(proto, v.tcp_flags_seen);
    now.saturating_sub(v.last_seen_ns) > cfg.timeout_secs(state, proto) as u64 * NS_PER_SEC
}

/// Which hooks an entry is for (see `CT_F_EGRESS`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Ingress,
    Egress,
}

/// Looks the packet up; refreshes and returns the entry's rewrite on a hit. Entries of the other
/// phase, expired entries and a new SYN on a closing connection (port reuse) count as misses.
#[inline(always)]
pub fn lookup(pkt: &Ipv4Packet, len: u32, now: u64, phase: Phase) -> Option<Hit> {
    let key = key_of(pkt);
    let v = CT_V1.get_ptr_mut(&key)?;
    let v = unsafe { &mut *v };
    if (v.flags & CT_F_EGRESS != 0) != (phase == Phase::Egress) {
        return None;
    }
    let cfg = config();
    let syn_only = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let reopened = syn_only && ct_state(pkt.proto, v.tcp_flags_seen) == CtState::Closing;
    if reopened || expired(v, pkt.proto, now, &cfg) {
        let _ = CT_V1.remove(&key);
        return None;
    }
    v.last_seen_ns = now;
    v.packets += 1;
    v.bytes += len as u64;
    v.tcp_flags_seen |= pkt.tcp_flags;
    Some(Hit {
        to: Tuple {
            saddr: v.nat_saddr,
            daddr: v.nat_daddr,
            sport: v.nat_sport,
            dport: v.nat_dport,
        },
        reply: v.flags & CT_F_REPLY != 0,
    })
}

#[inline(always)]
fn entry(to: Tuple, frontend_id: u32, flags: u8, now: u64) -> CtValue {
    CtValue {
        nat_saddr: to.saddr,
        nat_daddr: to.daddr,
        nat_sport: to.sport,
        nat_dport: to.dport,
        frontend_id,
        created_ns: now,
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
        flags,
        tcp_flags_seen: 0,
        _pad: [0; 6],
    }
}

#[inline(always)]
fn key(saddr: u32, sport: u16, daddr: u32, dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn insert(k: &CtKey, v: &CtValue) -> Result<(), Reason> {
    CT_V1
        .insert(k, v, BPF_ANY as u64)
        .map_err(|_| Reason::DropCtInsertFailed)
}

/// Tracks a new connection from the packet's client to `backend` and returns the tuple the
/// packet must carry now (at ingress: DNAT only). Masquerades (source NAT to the node address,
/// a free port from the SNAT range) for masquerading frontends and for hairpin (a pod reaching
/// itself through a service would otherwise see a packet from its own address and drop it).
#[inline(always)]
pub fn create(
    pkt: &Ipv4Packet,
    svc: &ServiceValue,
    backend: &BackendValue,
    len: u32,
    now: u64,
) -> Result<Tuple, Reason> {
    let snat = svc.flags & SVC_F_MASQUERADE != 0 || backend.addr == pkt.saddr;
    let (c, cp, f, fp, b, bp) = (
        pkt.saddr,
        pkt.sport,
        pkt.daddr,
        pkt.dport,
        backend.addr,
        backend.port,
    );
    let dnat = Tuple {
        saddr: c,
        daddr: b,
        sport: cp,
        dport: bp,
    };
    // Replies leave as frontend -> client.
    let restored = Tuple {
        saddr: f,
        daddr: c,
        sport: fp,
        dport: cp,
    };
    let id = svc.frontend_id;
    let proto = pkt.proto;
    let snat_flag = if snat { CT_F_SNAT } else { 0 };
    if snat {
        let cfg = config();
        let unsnat = entry(
            Tuple {
                saddr: b,
                daddr: c,
                sport: bp,
                dport: cp,
            },
            id,
            CT_F_REPLY | CT_F_SNAT,
            now,
        );
        let mp = insert_snat_reply(pkt, backend, &cfg, &unsnat)?;
        let masq = Tuple {
            saddr: cfg.masq_addr,
            daddr: b,
            sport: mp,
            dport: bp,
        };
        insert(
            &key(c, cp, b, bp, proto),
            &entry(masq, id, CT_F_SNAT | CT_F_EGRESS, now),
        )?;
    }
    // Replies are restored after routing, so a frontend that is one of the node's own addresses
    // (NodePort) never appears as the source of a packet the stack has to route.
    insert(
        &key(b, bp, c, cp, proto),
        &entry(restored, id, CT_F_REPLY | CT_F_EGRESS | snat_flag, now),
    )?;
    insert_forward(pkt, dnat, id, snat_flag, len, now)?;
    Ok(dnat)
}

/// The original-direction entry, counting the packet that created it.
#[inline(always)]
fn insert_forward(
    pkt: &Ipv4Packet,
    to: Tuple,
    id: u32,
    flags: u8,
    len: u32,
    now: u64,
) -> Result<(), Reason> {
    let mut v = entry(to, id, flags, now);
    v.packets = 1;
    v.bytes = len as u64;
    v.tcp_flags_seen = pkt.tcp_flags;
    insert(&key_of(pkt), &v)
}

/// Claims a masquerade port: the reply key (backend -> masq address:port) must not exist yet, so
/// inserting it with BPF_NOEXIST is both the uniqueness check and the reservation.
#[inline(always)]
fn insert_snat_reply(
    pkt: &Ipv4Packet,
    backend: &BackendValue,
    cfg: &Config,
    reply_val: &CtValue,
) -> Result<u16, Reason> {
    let span = (cfg.snat_port_max as u32).saturating_sub(cfg.snat_port_min as u32) + 1;
    let start = unsafe { bpf_get_prandom_u32() };
    for i in 0..SNAT_PROBES {
        let port = (cfg.snat_port_min as u32 + (start.wrapping_add(i) % span)) as u16;
        let k = key(
            backend.addr,
            backend.port,
            cfg.masq_addr,
            port.to_be(),
            pkt.proto,
        );
        if CT_V1.insert(&k, reply_val, BPF_NOEXIST as u64).is_ok() {
            return Ok(port.to_be());
        }
    }
    Err(Reason::DropSnatPortsExhausted)
}
