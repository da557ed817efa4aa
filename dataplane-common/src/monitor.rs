//! Packet monitor (`dataplane monitor`): one event per counted verdict of interest, through the
//! `EVENTS_V1` ring buffer, emitted only while `MONITOR_V1` asks for them (a monitor attached).
//! With the monitor off a packet pays one array lookup; with it on, events are rate-limited per
//! CPU so a flood of drops cannot starve the node (events over the limit are counted as lost).

/// `MONITOR_V1[0]`: which verdicts produce events (0: none, the default).
pub const MON_F_DROPS: u32 = 1 << 0;
/// Every verdict of a packet hook, not only drops (`dataplane monitor --all`).
pub const MON_F_ALL: u32 = 1 << 1;

/// Events per second and CPU, and the burst a CPU may send at once.
pub const MONITOR_EVENTS_PER_SEC: u64 = 10_000;
pub const MONITOR_BURST: u64 = 1_000;

/// Bit `r` set: reason `r` drops the packet (for the programs, which test the bit instead of
/// branching on the reason: see `dataplane-ebpf/src/monitor.rs`).
pub const fn drop_mask() -> u64 {
    let mut mask = 0u64;
    let mut i = 0;
    while i < crate::stats::NUM_REASONS {
        let r = crate::stats::Reason::ALL[i];
        if r.is_drop() {
            mask |= 1 << (r as u32);
        }
        i += 1;
    }
    mask
}

/// `EVENTS_V1` size in bytes (a power of two number of pages): about 20,000 events.
pub const EVENTS_RING_BYTES: u32 = 1 << 20;

/// An IPv4 5-tuple as the packet carried it (addresses and ports in network order; ports 0
/// without a transport header).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventTuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

/// One `EVENTS_V1` record, 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorEvent {
    /// `bpf_ktime_get_ns()` when the verdict was counted.
    pub ktime_ns: u64,
    /// `Hook` value.
    pub hook: u8,
    /// `Reason` value.
    pub reason: u8,
    /// IP protocol (0: not IPv4, or not parsed).
    pub proto: u8,
    /// Bit 0: `before` holds the tuple seen when the hook ran; `after` is then the packet as it
    /// leaves the hook (translated, for NAT verdicts). Without it only `after` is valid.
    pub flags: u8,
    /// The device the hook runs on.
    pub ifindex: u32,
    /// Frame length.
    pub len: u32,
    pub _pad: u32,
    pub before: EventTuple,
    pub after: EventTuple,
}

pub const EV_F_BEFORE: u8 = 1 << 0;

/// `MONITOR_TOKENS_V1` value, per CPU: the token bucket, what it refused, and the scratch the
/// programs keep an event's "before" tuple in while the pipeline runs (in the map rather than
/// on the stack: a value carried through the pipeline would double the verifier's work).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorTokens {
    /// `MONITOR_EVENTS_PER_SEC` with `MONITOR_BURST`.
    pub bucket: crate::ratelimit::TokenBucket,
    /// Events refused by the limit or a full ring buffer.
    pub lost: u64,
    /// The tuple of the packet being processed on this CPU, when the hook started.
    pub before: EventTuple,
    /// 1: `before` is the current packet's.
    pub before_valid: u8,
    /// Scratch for the reason of the event being built (see `dataplane-ebpf/src/monitor.rs`).
    pub reason: u8,
    pub _pad: [u8; 2],
}

user_pod!(MonitorEvent, MonitorTokens);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(core::mem::size_of::<MonitorEvent>(), 48);
        assert_eq!(core::mem::size_of::<MonitorTokens>(), 40);
    }
}
