//! Connection tracking: per-direction entries in `CT_V2` holding the rewrite for that direction
//! (layout and the ring of a connection's entries: `dataplane_common::ct`).

use core::intrinsics::{atomic_or, atomic_xadd, AtomicOrdering::Relaxed};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_loop},
};
use dataplane_common::{
    config::Config,
    ct::{
        ct_state, idle_expired, next_key, reuse, seen_bits, CtKey, CtState, CtValue, Reuse,
        CT_F_FULL, CT_F_HOST, CT_F_MASQ, CT_F_REPLY, CT_F_SNAT, CT_REFRESH_NS, PHASE_EGRESS,
        PHASE_INGRESS, SEEN_SHARED, TCP_ACK, TCP_SYN,
    },
    ip::IPPROTO_TCP,
    lb::{BackendValue, ServiceValue, SVC_F_MASQUERADE},
    Reason,
};

use crate::{
    config::node as config,
    maps::CT_V2,
    net::{Flow, Parsed, Tuple},
};

/// Source ports probed (from a random start) before giving up; bounded for the verifier.
/// 32 keeps refusals rare until the range is nearly full.
const PORT_PROBES: u32 = 32;
/// A connection has at most four entries: a ring walk visits at most three others.
const RING_HOPS: usize = 3;

/// A tracked packet: the tuple to rewrite it to, and which direction it travels.
pub struct Hit {
    pub to: Tuple,
    pub reply: bool,
    /// The rewrite is the connection's whole translation (`CT_F_FULL`): the packet must not
    /// be left to the kernel's routing.
    pub full: bool,
    /// No entry of the connection rewrites this direction at egress (an ingress entry of the
    /// original direction without masquerade, or a whole translation): see
    /// `TC_INDEX_EGRESS_DONE`.
    pub egress_free: bool,
}

/// Which hooks an entry is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Ingress,
    Egress,
}

impl Phase {
    #[inline(always)]
    pub fn code(self) -> u8 {
        match self {
            Phase::Ingress => PHASE_INGRESS,
            Phase::Egress => PHASE_EGRESS,
        }
    }
}

#[inline(always)]
fn key(saddr: u32, sport: u16, daddr: u32, dport: u16, proto: u8, phase: Phase) -> CtKey {
    CtKey::new(saddr, sport, daddr, dport, proto, phase.code())
}

/// The phase-matching rule, the one place it is written: a packet at a hook of `phase` meets
/// the entry keyed by its flow as it is on the wire at that hook, and that phase. (Masqueraded
/// connections are undone in two steps: un-SNAT at ingress, un-DNAT at egress.)
#[inline(always)]
pub fn key_of(flow: &Flow, phase: Phase) -> CtKey {
    key(
        flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto, phase,
    )
}

/// The entry a packet of `flow` meets at a hook of `phase` (read only: ICMP errors look up
/// the direction their quote's reply would take).
#[inline(always)]
pub fn entry_of(flow: &Flow, phase: Phase) -> Option<CtValue> {
    unsafe { CT_V2.get(&key_of(flow, phase)) }.copied()
}

/// One branch instead of six field comparisons: ring walks are unrolled, and every branch in
/// them multiplies the states the verifier explores.
#[inline(always)]
fn same_key(a: &CtKey, b: &CtKey) -> bool {
    // SAFETY: CtKey is 16 bytes of plain integers, 4-byte aligned; read as two u64 halves.
    let (a, b) = unsafe {
        (
            core::ptr::read_unaligned(a as *const CtKey as *const [u64; 2]),
            core::ptr::read_unaligned(b as *const CtKey as *const [u64; 2]),
        )
    };
    (a[0] ^ b[0]) | (a[1] ^ b[1]) == 0
}

/// Whether the connection of the entry (`start`, `value`) is still alive in another entry:
/// `Some(alive)` if its entries form a ring that leads back to `start`, `None` if the walk
/// meets a missing entry or another connection's (a stale entry whose tuple was reused): such
/// an entry has no live siblings, and its walk must not be followed to remove anything.
///
/// With `for_reuse`, a sibling counts as alive unless a new connection may take it ([`reuse`]);
/// otherwise unless it timed out.
#[inline(always)]
fn siblings_alive(
    start: &CtKey,
    value: &CtValue,
    now: u64,
    cfg: &Config,
    for_reuse: bool,
) -> Option<bool> {
    let mut alive = false;
    let mut k = next_key(start, value);
    for _ in 0..RING_HOPS {
        if same_key(&k, start) {
            return Some(alive);
        }
        let v = unsafe { CT_V2.get(&k) }?;
        // For reuse, the entry found qualified by its own clock; its siblings only need to
        // belong to the same finished connection (the last ACK may have refreshed one later).
        alive |= if for_reuse {
            reuse(v, k.proto, now, cfg) == Reuse::No
                && !matches!(ct_state(k.proto, v.seen), CtState::Closed | CtState::Reset)
        } else {
            !idle_expired(v, k.proto, now, cfg)
        };
        k = next_key(&k, v);
    }
    same_key(&k, start).then_some(alive)
}

/// Removes an entry and, if `whole` (the walk closed), the rest of its connection.
#[inline(always)]
fn remove_connection(start: &CtKey, value: &CtValue, whole: bool) {
    if whole {
        let mut k = next_key(start, value);
        for _ in 0..RING_HOPS {
            if same_key(&k, start) {
                break;
            }
            let Some(v) = (unsafe { CT_V2.get(&k) }) else {
                break;
            };
            let next = next_key(&k, v);
            let _ = CT_V2.remove(&k);
            k = next;
        }
    }
    let _ = CT_V2.remove(start);
}

/// ORs `bits` into the entry at `v` and every other entry of its connection, so both
/// directions agree on FINs and RSTs (the state needs both FINs to close).
#[inline(always)]
fn share_seen(start: &CtKey, v: *mut CtValue, bits: u32) {
    let mut k = next_key(start, unsafe { &*v });
    for _ in 0..RING_HOPS {
        if same_key(&k, start) {
            return;
        }
        let Some(p) = CT_V2.get_ptr_mut(&k) else {
            return;
        };
        or_seen(p, bits);
        k = next_key(&k, unsafe { &*p });
    }
}

#[inline(always)]
fn or_seen(v: *mut CtValue, bits: u32) {
    // SAFETY: map values are 8-byte aligned and live while the program runs; other CPUs only
    // touch this word with atomic instructions too. The intrinsics, not core's atomic types:
    // the BPF target has no compare-and-swap, so core offers no fetch_* there, but LLVM lowers
    // these to BPF_ATOMIC instructions (the result is unused: no BPF_FETCH needed).
    unsafe { atomic_or::<u32, u32, { Relaxed }>(core::ptr::addr_of_mut!((*v).seen), bits) };
}

#[inline(always)]
fn count(v: *mut CtValue, len: u32) {
    // SAFETY: as in `or_seen`.
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(core::ptr::addr_of_mut!((*v).packets), 1);
        atomic_xadd::<u64, u64, { Relaxed }>(core::ptr::addr_of_mut!((*v).bytes), len as u64);
    }
}

/// Looks the packet up; refreshes and returns the entry's rewrite on a hit. A new SYN on a
/// closed connection (port reuse) and an entry whose whole connection timed out count as
/// misses (and are removed).
#[inline(always)]
pub fn lookup(pkt: &Parsed, len: u32, now: u64, phase: Phase) -> Option<Hit> {
    let key = key_of(&pkt.flow, phase);
    let v = CT_V2.get_ptr_mut(&key)?;
    // Shared reads of an entry other CPUs may be updating: only the atomically updated words
    // change under us, and any value read from them is a valid one.
    let cur = unsafe { &*v };
    let cfg = config();
    let syn_only = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let state = ct_state(pkt.flow.proto, cur.seen);
    if syn_only && (state == CtState::Closed || state == CtState::Reset) {
        let whole = siblings_alive(&key, cur, now, cfg, true).is_some();
        remove_connection(&key, cur, whole);
        return None;
    }
    if idle_expired(cur, pkt.flow.proto, now, cfg) {
        // Idle in this direction, but the connection may be busy in the other one (a one-way
        // UDP stream, a download): it lives as long as any of its entries does.
        match siblings_alive(&key, cur, now, cfg, false) {
            Some(true) => {}
            ring => {
                remove_connection(&key, cur, ring.is_some());
                return None;
            }
        }
    }
    let last_seen = cur.last_seen_ns;
    let seen = cur.seen;
    let reply = cur.flags & CT_F_REPLY != 0;
    let full = cur.flags & CT_F_FULL != 0;
    let egress_free = full || cur.flags & (CT_F_REPLY | CT_F_MASQ | CT_F_HOST) == 0;
    let to = Tuple {
        saddr: cur.nat_saddr,
        daddr: cur.nat_daddr,
        sport: cur.nat_sport,
        dport: cur.nat_dport,
    };
    if now.saturating_sub(last_seen) > CT_REFRESH_NS {
        unsafe { (*v).last_seen_ns = now };
    }
    count(v, len);
    if pkt.flow.proto == IPPROTO_TCP {
        let bits = seen_bits(pkt.tcp_flags, reply);
        if bits & !seen != 0 {
            or_seen(v, bits);
            if bits & SEEN_SHARED & !seen != 0 {
                share_seen(&key, v, bits & SEEN_SHARED);
            }
        }
    }
    Some(Hit {
        to,
        reply,
        full,
        egress_free: phase == Phase::Ingress && egress_free,
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
        seen: 0,
        flags,
        _pad: [0; 3],
    }
}

/// Points `v` at another rewrite (one value is reused for every entry `create` writes: four
/// 56-byte values would crowd the 512-byte stack).
#[inline(always)]
fn retarget(v: &mut CtValue, to: Tuple, flags: u8) {
    v.nat_saddr = to.saddr;
    v.nat_daddr = to.daddr;
    v.nat_sport = to.sport;
    v.nat_dport = to.dport;
    v.flags = flags;
}

#[inline(always)]
fn insert(k: &CtKey, v: &CtValue) -> Result<(), Reason> {
    CT_V2
        .insert(k, v, BPF_ANY as u64)
        .map_err(|_| Reason::DropCtInsertFailed)
}

/// A port of the masquerade range, from a random draw.
#[inline(always)]
fn range_port(cfg: &Config, draw: u32) -> u16 {
    let span = (cfg.snat_port_max as u32).saturating_sub(cfg.snat_port_min as u32) + 1;
    (cfg.snat_port_min as u32 + draw % span) as u16
}

/// A port search in progress (the state `probe_port` iterations share through bpf_loop).
#[repr(C)]
struct Claim {
    /// The key to claim; its destination port is what the search varies.
    key: CtKey,
    /// The entry to insert under it.
    value: CtValue,
    now: u64,
    /// Random start in the masquerade range.
    draw: u32,
    /// Port tried first (network order), 0 = none.
    keep: u16,
    /// The port claimed, or the stale one found.
    port: u16,
    /// A closed connection's port, taken if no better one turns up (0 = none).
    last_resort: u16,
    outcome: u32,
}

impl Claim {
    /// A search for `key` (its destination port varied), to insert `value` under.
    #[inline(always)]
    fn new(key: CtKey, value: CtValue, now: u64) -> Claim {
        Claim {
            key,
            value,
            now,
            draw: 0,
            keep: 0,
            port: 0,
            last_resort: 0,
            outcome: CLAIM_NONE,
        }
    }
}

const CLAIM_NONE: u32 = 0;
const CLAIM_TAKEN: u32 = 1;
const CLAIM_STALE: u32 = 2;

/// One probe of the port search. A bpf_loop callback: the verifier checks it once, where an
/// unrolled or bounded loop of 32 probes inside every caller multiplied its states past the
/// 1M-instruction limit.
#[inline(never)]
extern "C" fn probe_port(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let c = unsafe { &mut *(ctx as *mut Claim) };
    let port = if i == 0 && c.keep != 0 {
        c.keep
    } else {
        range_port(config(), c.draw.wrapping_add(i as u32)).to_be()
    };
    c.key.dport = port;
    if CT_V2.insert(&c.key, &c.value, BPF_NOEXIST as u64).is_ok() {
        c.port = port;
        c.outcome = CLAIM_TAKEN;
        return 1;
    }
    if let Some(old) = unsafe { CT_V2.get(&c.key) } {
        match reuse(old, c.key.proto, c.now, config()) {
            Reuse::Free => {
                c.port = port;
                c.outcome = CLAIM_STALE;
                return 1;
            }
            Reuse::LastResort if c.last_resort == 0 => c.last_resort = port,
            _ => {}
        }
    }
    0
}

/// Claims `c.key` with its destination port set to `keep` or, if that tuple belongs to a live
/// connection, to a free port of the masquerade range. Inserting with BPF_NOEXIST is both the
/// uniqueness check and the reservation, so two CPUs never get the same port. An entry of a
/// timed-out (or closed, see [`reuse`]) connection found on the way is reclaimed with the rest
/// of its connection, so the search treats expired tuples as free. Returns the port, network order.
#[inline(always)]
fn claim(c: &mut Claim, keep: u16) -> Option<u16> {
    // A second round with a fresh draw when the first one's candidate was taken by another CPU
    // or turned out to belong to a live connection.
    claim_round(c, keep, PORT_PROBES).or_else(|| claim_round(c, 0, PORT_PROBES))
}

/// One search of up to `probes` ports from a fresh random start.
#[inline(always)]
fn claim_round(c: &mut Claim, keep: u16, probes: u32) -> Option<u16> {
    c.keep = keep;
    c.draw = unsafe { bpf_get_prandom_u32() };
    c.outcome = CLAIM_NONE;
    c.last_resort = 0;
    unsafe {
        bpf_loop(
            probes,
            probe_port as *mut core::ffi::c_void,
            c as *mut Claim as *mut core::ffi::c_void,
            0,
        )
    };
    match c.outcome {
        CLAIM_TAKEN => return Some(c.port),
        CLAIM_STALE => {}
        _ if c.last_resort != 0 => c.port = c.last_resort,
        _ => return None,
    }
    c.key.dport = c.port;
    let old = unsafe { CT_V2.get(&c.key)? };
    let ring = siblings_alive(&c.key, old, c.now, config(), true);
    if ring == Some(true) {
        return None;
    }
    remove_connection(&c.key, old, ring.is_some());
    CT_V2.insert(&c.key, &c.value, BPF_NOEXIST as u64).ok()?;
    Some(c.port)
}

/// Tracks a new connection from the packet's client to `backend`, seen at an ingress hook, and
/// returns the tuple the packet must carry now (DNAT, and the client port if it had to be
/// remapped). Masquerades (source NAT to the node address, a free port from the SNAT range, at
/// egress) for masquerading frontends and for hairpin (a pod reaching itself through a service
/// would otherwise see a packet from its own address and drop it).
#[inline(always)]
pub fn create(
    pkt: &Parsed,
    svc: &ServiceValue,
    backend: &BackendValue,
    len: u32,
    now: u64,
) -> Result<Tuple, Reason> {
    let masq_addr = config().masq_addr;
    let masq = masquerades(pkt, svc, backend);
    let (c, cp, b, bp, proto) = (
        pkt.flow.saddr,
        pkt.flow.sport,
        backend.addr,
        backend.port,
        pkt.flow.proto,
    );
    let masq_flags = if masq { CT_F_MASQ | CT_F_SNAT } else { 0 };
    // Replies leave as frontend -> client. Their tuple (backend -> client port) is claimed
    // first: if another live connection holds it, the client port is remapped.
    // One value is reused for every entry written here: four 56-byte values would crowd the
    // 512-byte stack.
    let mut w = Claim::new(
        key(b, bp, c, 0, proto, Phase::Egress),
        entry(reply_of(pkt), svc.frontend_id, CT_F_REPLY | masq_flags, now),
        now,
    );
    let (cp2, remap) = claim_reply(&mut w, cp)?;
    let dnat = Tuple::new(c, cp2, b, bp);
    if masq {
        let back = Tuple::new(b, bp, c, cp2);
        let reply_key = w.key;
        retarget(&mut w.value, back, CT_F_REPLY | masq_flags);
        w.key = key(b, bp, masq_addr, 0, proto, Phase::Ingress);
        let Some(mp) = claim(&mut w, 0) else {
            let _ = CT_V2.remove(&reply_key);
            return Err(Reason::DropSnatPortsExhausted);
        };
        let masqueraded = Tuple::new(masq_addr, mp, b, bp);
        retarget(&mut w.value, masqueraded, masq_flags);
        insert(&key(c, cp2, b, bp, proto, Phase::Egress), &w.value)?;
    }
    retarget(&mut w.value, dnat, masq_flags | remap);
    insert_forward(pkt, Phase::Ingress, &mut w.value, len)?;
    Ok(dnat)
}

/// Whether a new connection from the packet's client to `backend` is masqueraded: for
/// masquerading frontends, and for hairpin (a pod reaching itself through a service would
/// otherwise see a packet from its own address and drop it).
#[inline(always)]
pub fn masquerades(pkt: &Parsed, svc: &ServiceValue, backend: &BackendValue) -> bool {
    svc.flags & SVC_F_MASQUERADE != 0 || backend.addr == pkt.flow.saddr
}

/// Tracks a new masqueraded connection that the calling hook sends out itself (the XDP fast
/// path), seen at ingress, with two entries that each apply the whole translation
/// (`CT_F_FULL`): `C -> F` becomes `M -> B`, the reply `B -> M` becomes `F -> C`. The
/// masquerade port claim is the only reservation: no middle tuple `C -> B` exists to clash, so
/// the client port is never remapped. Returns the tuple the packet must carry now.
#[inline(always)]
pub fn create_full(
    pkt: &Parsed,
    svc: &ServiceValue,
    backend: &BackendValue,
    len: u32,
    now: u64,
) -> Result<Tuple, Reason> {
    let m = config().masq_addr;
    let (b, bp) = (backend.addr, backend.port);
    let flags = CT_F_FULL | CT_F_MASQ | CT_F_SNAT;
    let mut w = Claim::new(
        key(b, bp, m, 0, pkt.flow.proto, Phase::Ingress),
        entry(reply_of(pkt), svc.frontend_id, CT_F_REPLY | flags, now),
        now,
    );
    // One round of twice the probes: a second round's code made the verifier's walk of
    // xdp_uplink exceed its limit.
    let mp = claim_round(&mut w, 0, 2 * PORT_PROBES).ok_or(Reason::DropSnatPortsExhausted)?;
    let reply_key = w.key;
    let to = Tuple::new(m, mp, b, bp);
    retarget(&mut w.value, to, flags);
    if let Err(reason) = insert_forward(pkt, Phase::Ingress, &mut w.value, len) {
        let _ = CT_V2.remove(&reply_key);
        return Err(reason);
    }
    Ok(to)
}

/// Tracks a connection the node itself opens to a service, seen at the uplink's egress (the
/// socket is connected to the frontend; every packet is translated, so the connection moves
/// when its backend goes away, as under kube-proxy). Replies are restored at ingress.
#[inline(always)]
pub fn create_host(
    pkt: &Parsed,
    svc: &ServiceValue,
    backend: &BackendValue,
    len: u32,
    now: u64,
) -> Result<Tuple, Reason> {
    // The node's socket n:np -> frontend becomes n:np2 -> backend b:bp; replies are keyed
    // b:bp -> n at ingress.
    let (n, np) = (pkt.flow.saddr, pkt.flow.sport);
    let (b, bp) = (backend.addr, backend.port);
    let mut w = Claim::new(
        key(b, bp, n, 0, pkt.flow.proto, Phase::Ingress),
        entry(reply_of(pkt), svc.frontend_id, CT_F_HOST | CT_F_REPLY, now),
        now,
    );
    let (np2, remap) = claim_reply(&mut w, np)?;
    let to = Tuple::new(n, np2, b, bp);
    retarget(&mut w.value, to, CT_F_HOST | remap);
    insert_forward(pkt, Phase::Egress, &mut w.value, len)?;
    Ok(to)
}

/// Claims the reply entry `w` with the connection's own source port `port`, or a free one of
/// the masquerade range if another connection holds that tuple; returns the port and the flag
/// a remapped port adds (`CT_F_SNAT`).
#[inline(always)]
fn claim_reply(w: &mut Claim, port: u16) -> Result<(u16, u8), Reason> {
    let got = claim(w, port).ok_or(Reason::DropSnatPortsExhausted)?;
    Ok((got, if got != port { CT_F_SNAT } else { 0 }))
}

/// What a reply to the packet must carry once restored: its own tuple reversed (frontend ->
/// client, or service -> node).
#[inline(always)]
fn reply_of(pkt: &Parsed) -> Tuple {
    Tuple::new(
        pkt.flow.daddr,
        pkt.flow.dport,
        pkt.flow.saddr,
        pkt.flow.sport,
    )
}

/// The original-direction entry, counting the packet that created it.
#[inline(always)]
fn insert_forward(pkt: &Parsed, phase: Phase, v: &mut CtValue, len: u32) -> Result<(), Reason> {
    v.packets = 1;
    v.bytes = len as u64;
    v.seen = seen_bits(pkt.tcp_flags, false);
    insert(&key_of(&pkt.flow, phase), v)
}
