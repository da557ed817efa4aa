//! Map key/value types and constants shared by the eBPF programs and the loader.
//!
//! Everything here is `#[repr(C)]` with explicit padding so the byte layout is the same on both
//! sides and in `bpftool map dump`. Map names carry a layout version (`_V1`): a loader that finds a
//! pinned map of another version refuses to misread it.
#![no_std]

/// `aya::Pod` for map key/value types, with the `user` feature only (the programs have no
/// aya): every type here is `#[repr(C)]` with explicit padding, so any bytes of its size are a
/// value. Defined before the modules so that each can use it.
macro_rules! user_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $t {}
        )+
    };
}

pub mod addr_bits;
pub mod config;
pub mod csum;
pub mod ct;
pub mod ip;
pub mod lb;
pub mod maps;
pub mod monitor;
pub mod overlay;
pub mod programs;
pub mod ratelimit;
pub mod stats;

pub use stats::{Hook, Reason, StatsValue, MAX_REASONS, NUM_HOOKS, STATS_ENTRIES};

/// Names of the pinned maps, as they appear under the pin directory (the `name` column of
/// [`maps::ALL`], kept for brevity at call sites).
pub mod map_names {
    pub const STATS: &str = crate::maps::STATS.name;
    pub const SERVICES: &str = crate::maps::SERVICES.name;
    pub const BACKENDS: &str = crate::maps::BACKENDS.name;
    pub const CT: &str = crate::maps::CT.name;
    pub const AFFINITY: &str = crate::maps::AFFINITY.name;
    pub const FRAGS: &str = crate::maps::FRAGS.name;
    pub const LB_ADDRS: &str = crate::maps::LB_ADDRS.name;
    pub const LB_ADDR_BITS: &str = crate::maps::LB_ADDR_BITS.name;
    pub const CONFIG: &str = crate::maps::CONFIG.name;
    pub const SOURCE_RANGES: &str = crate::maps::SOURCE_RANGES.name;
    pub const SOCK_AFFINITY: &str = crate::maps::SOCK_AFFINITY.name;
    pub const SOCK_REVNAT: &str = crate::maps::SOCK_REVNAT.name;
    pub const OVERLAY_CONFIG: &str = crate::maps::OVERLAY_CONFIG.name;
    pub const OVERLAY_ROUTES: &str = crate::maps::OVERLAY_ROUTES.name;
    pub const OVERLAY_PEERS: &str = crate::maps::OVERLAY_PEERS.name;
    pub const OVERLAY_IPID: &str = crate::maps::OVERLAY_IPID.name;
    pub const OVERLAY_NEXTHOP: &str = crate::maps::OVERLAY_NEXTHOP.name;
    pub const MONITOR: &str = crate::maps::MONITOR.name;
    pub const MONITOR_TOKENS: &str = crate::maps::MONITOR_TOKENS.name;
    pub const EVENTS: &str = crate::maps::EVENTS.name;
    pub const REJECT_TOKENS: &str = crate::maps::REJECT_TOKENS.name;
    pub const SERVICE_NAMES: &str = crate::maps::SERVICE_NAMES.name;
}
