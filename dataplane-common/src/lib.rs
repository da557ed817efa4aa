//! Map key/value types and constants shared by the eBPF programs and the loader.
//!
//! Everything here is `#[repr(C)]` with explicit padding so the byte layout is the same on both
//! sides and in `bpftool map dump`. Map names carry a layout version (`_V1`): a loader that finds a
//! pinned map of another version refuses to misread it.
#![no_std]

pub mod csum;
pub mod ct;
pub mod lb;
pub mod monitor;
pub mod overlay;
pub mod programs;
pub mod ratelimit;
pub mod stats;

pub use stats::{Hook, Reason, StatsValue, MAX_REASONS, NUM_HOOKS, STATS_ENTRIES};

/// Names of the pinned maps, as they appear under the pin directory.
pub mod map_names {
    /// Per-CPU packet/byte counters per (hook, verdict reason).
    pub const STATS: &str = "STATS_V2";
    /// Service frontends -> backend set.
    pub const SERVICES: &str = "SERVICES_V1";
    /// Backend set slots -> backend.
    pub const BACKENDS: &str = "BACKENDS_V1";
    /// Connection tracking (LRU).
    pub const CT: &str = "CT_V2";
    /// sessionAffinity ClientIP (LRU).
    pub const AFFINITY: &str = "AFFINITY_V1";
    /// Fragmented datagrams in flight: (addresses, IP id, protocol) -> the first fragment's ports.
    pub const FRAGS: &str = "FRAGS_V1";
    /// Addresses translated packets can carry at pod hooks (the pod hooks' pre-filter).
    pub const LB_ADDRS: &str = "LB_ADDRS_V1";
    /// Node-wide settings.
    pub const CONFIG: &str = "CONFIG_V2";
    /// loadBalancerSourceRanges: (frontend id, client prefix) LPM trie.
    pub const SOURCE_RANGES: &str = "SOURCE_RANGES_V1";
    /// Socket-level balancing: per-socket backend for unconnected UDP (LRU).
    pub const SOCK_AFFINITY: &str = "SOCK_AFFINITY_V1";
    /// Socket-level balancing: (socket, backend) -> service address (LRU).
    pub const SOCK_REVNAT: &str = "SOCK_REVNAT_V1";
    /// Overlay: this node's tunnel settings.
    pub const OVERLAY_CONFIG: &str = "OVERLAY_CONFIG_V1";
    /// Overlay: pod CIDR (LPM) -> node tunnel endpoint and VTEP MAC.
    pub const OVERLAY_ROUTES: &str = "OVERLAY_ROUTES_V1";
    /// Overlay: nodes tunnel packets are accepted from.
    pub const OVERLAY_PEERS: &str = "OVERLAY_PEERS_V1";
    /// Overlay: per-CPU IPv4 ID counter of outer headers.
    pub const OVERLAY_IPID: &str = "OVERLAY_IPID_V1";
    pub const OVERLAY_NEXTHOP: &str = "OVERLAY_NEXTHOP_V1";
    pub const MONITOR: &str = "MONITOR_V1";
    pub const MONITOR_TOKENS: &str = "MONITOR_TOKENS_V1";
    pub const EVENTS: &str = "EVENTS_V1";
    /// Per-CPU token bucket of the no-endpoint REJECT.
    pub const REJECT_TOKENS: &str = "REJECT_TOKENS_V1";
    /// Frontend -> `namespace/name:port` of its Service, for operators' tools. Created and
    /// written by the agent from user space (not in the object: no program reads it).
    pub const SERVICE_NAMES: &str = "SERVICE_NAMES_V1";
}
