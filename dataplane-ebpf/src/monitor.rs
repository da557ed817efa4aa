//! Monitor events (`dataplane monitor`): see `dataplane_common::monitor`. `snapshot` before a
//! pipeline and `emit` after it; both return at once, after one array lookup, while no monitor
//! is attached.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use dataplane_common::{
    ip::{IPPROTO_TCP, IPPROTO_UDP},
    monitor::{
        drop_mask, EventTuple, MonitorEvent, EV_F_BEFORE, MONITOR_BURST, MONITOR_EVENTS_PER_SEC,
        MON_F_ALL, MON_F_DROPS,
    },
    Hook, Reason,
};

use crate::{
    maps::{EVENTS_V1, MONITOR_TOKENS_V1, MONITOR_V1},
    net::{
        hdr::{EthIpv4, L4Ports, ETH_HLEN, IPV4_HLEN},
        Packet,
    },
};

/// What the attached monitor asks for (`MON_F_*`), 0 when none is attached.
#[inline(always)]
pub fn mode() -> u32 {
    MONITOR_V1.get(0).copied().unwrap_or(0)
}

/// The packet's tuple and protocol (untagged IPv4; `None` otherwise or when truncated). Read
/// with the load helpers, not the parser's packet pointers: a second parse inlined at every
/// count site made the verifier's state count explode (E2BIG); helper loads into the stack
/// add no packet-pointer state.
#[inline(always)]
fn tuple<P: Packet>(p: &P) -> Option<(u8, EventTuple)> {
    let h: EthIpv4 = p.load(0)?;
    let (eth, ip) = (h.eth, h.ip);
    if !eth.is_ipv4() || ip.version() != 4 {
        return None;
    }
    let ihl = ip.hdr_len();
    let ports = if (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP)
        && !ip.is_later_fragment()
        && ihl >= IPV4_HLEN
    {
        p.load::<L4Ports>(ETH_HLEN + ihl)
    } else {
        None
    };
    let (sport, dport) = ports.map_or((0, 0), |p| (p.source, p.dest));
    let t = EventTuple {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
    };
    Some((ip.proto, t))
}

/// Keeps the packet's tuple before the pipeline rewrites it, when a monitor wants every verdict.
#[inline(always)]
pub fn snapshot<P: Packet>(p: &P) {
    if mode() & MON_F_ALL == 0 {
        return;
    }
    let Some(cpu) = MONITOR_TOKENS_V1.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value; programs on this CPU do not run concurrently with this one.
    let cpu = unsafe { &mut *cpu };
    match tuple(p) {
        Some((_, t)) => {
            cpu.before = t;
            cpu.before_valid = 1;
        }
        None => cpu.before_valid = 0,
    }
}

/// Reasons that drop (bit per reason).
const DROPS: u64 = drop_mask();

/// Sends the event of a counted verdict if the attached monitor wants it. `len` is the frame
/// length the caller counted (passed in: recomputing it from XDP's packet pointers here made
/// LLVM spill a 32-bit half of one, which the verifier refuses).
///
/// Verifier cost: every path through the pipeline reaches this with its own constant reason;
/// branching on it would make the verifier explore what follows once per reason. The reason is
/// therefore written to the per-CPU scratch and read back (an unknown value to the verifier),
/// and "is it a drop" is a bit test, so the paths' states merge here.
#[inline(always)]
pub fn emit<P: Packet>(p: &P, hook: Hook, reason: Reason, ifindex: u32, len: u32) {
    let mode = mode();
    if mode == 0 {
        return;
    }
    let Some(cpu) = MONITOR_TOKENS_V1.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value; programs on this CPU do not run concurrently with this one.
    let cpu = unsafe { &mut *cpu };
    cpu.reason = reason as u8;
    let reason = unsafe { core::ptr::read_volatile(&cpu.reason) };
    let drop = (DROPS >> (reason & 63)) & 1 != 0;
    if mode & MON_F_ALL == 0 && !(mode & MON_F_DROPS != 0 && drop) {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if !cpu
        .bucket
        .take(now, 1_000_000_000 / MONITOR_EVENTS_PER_SEC, MONITOR_BURST)
    {
        cpu.lost += 1;
        return;
    }
    let (proto, after) = tuple(p).unwrap_or_default();
    let mut ev = MonitorEvent {
        ktime_ns: now,
        hook: hook as u8,
        reason,
        proto,
        flags: 0,
        ifindex,
        len,
        _pad: 0,
        before: EventTuple::default(),
        after,
    };
    if cpu.before_valid != 0 && mode & MON_F_ALL != 0 {
        ev.before = cpu.before;
        ev.flags = EV_F_BEFORE;
    }
    cpu.before_valid = 0;
    if EVENTS_V1.output::<MonitorEvent>(&ev, 0).is_err() {
        cpu.lost += 1;
    }
}
