//! Every BPF map the programs use. Names carry the layout version; see bpf-maps.md.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use dataplane_common::{
    ct::{Config, CtKey, CtValue, FragKey, FragValue, CT_MAX_ENTRIES, MAX_FRAG_DATAGRAMS},
    lb::{
        AffinityKey, AffinityValue, BackendKey, BackendValue, RejectBucket, ServiceKey,
        ServiceValue, SockAffinityKey, SockRevNatKey, SockRevNatValue, SourceRangeKey,
        MAX_AFFINITY, MAX_BACKEND_SLOTS, MAX_FRONTENDS, MAX_LB_ADDRS, MAX_SOCK_ENTRIES,
        MAX_SOURCE_RANGES,
    },
    monitor::{MonitorTokens, EVENTS_RING_BYTES},
    overlay::{
        OverlayConfig, OverlayNextHop, OverlayPeer, OverlayRoute, MAX_OVERLAY_NEXTHOPS,
        MAX_OVERLAY_PEERS, MAX_OVERLAY_ROUTES,
    },
    StatsValue, STATS_ENTRIES,
};

/// Monitor: which verdicts produce events (`MON_F_*`, index 0), written by `dataplane monitor`.
#[map(name = "MONITOR_V1")]
pub static MONITOR_V1: Array<u32> = Array::pinned(1, 0);

/// Monitor: the per-CPU token bucket that rate-limits events, and what it refused.
#[map(name = "MONITOR_TOKENS_V1")]
pub static MONITOR_TOKENS_V1: PerCpuArray<MonitorTokens> = PerCpuArray::pinned(1, 0);

/// Monitor: the events (`MonitorEvent`), read by `dataplane monitor`.
#[map(name = "EVENTS_V1")]
pub static EVENTS_V1: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

/// Packets and bytes per (hook, verdict reason), per CPU. Index: `stats_index(hook, reason)`.
#[map(name = "STATS_V2")]
pub static STATS_V2: PerCpuArray<StatsValue> = PerCpuArray::pinned(STATS_ENTRIES, 0);

/// Service frontends (address:port:proto) -> current backend set. Written by the loader only.
#[map(name = "SERVICES_V1")]
pub static SERVICES_V1: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_FRONTENDS, 0);

/// (backend set, slot) -> backend address:port. Written by the loader only.
#[map(name = "BACKENDS_V1")]
pub static BACKENDS_V1: HashMap<BackendKey, BackendValue> = HashMap::pinned(MAX_BACKEND_SLOTS, 0);

/// Connection tracking, one entry per direction and phase of a NATed connection (LRU: a full
/// table evicts the least recently used entries, never the active ones first; the agent's GC
/// removes timed-out connections whole).
#[map(name = "CT_V2")]
pub static CT_V2: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CT_MAX_ENTRIES, 0);

/// Fragmented datagrams in flight: the ports of each datagram's first fragment, so the
/// fragments after it (which carry none) get the same connection's translation.
#[map(name = "FRAGS_V1")]
pub static FRAGS_V1: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(MAX_FRAG_DATAGRAMS, 0);

/// Every address a translated packet can carry at a pod hook (frontends, backends, the node's
/// own), with `ADDR_F_*` flags: the pod hooks' pre-filter. Written by the agent.
#[map(name = "LB_ADDRS_V1")]
pub static LB_ADDRS_V1: HashMap<u32, u32> = HashMap::pinned(MAX_LB_ADDRS, 0);

/// loadBalancerSourceRanges: (frontend id, client prefix) -> 1, for frontends flagged
/// `SVC_F_SOURCE_RANGES`. Written by the agent (`SourceRanges`).
#[map(name = "SOURCE_RANGES_V1")]
pub static SOURCE_RANGES_V1: LpmTrie<SourceRangeKey, u32> = LpmTrie::pinned(MAX_SOURCE_RANGES, 0);

/// sessionAffinity ClientIP: (client, frontend) -> last backend.
#[map(name = "AFFINITY_V1")]
pub static AFFINITY_V1: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(MAX_AFFINITY, 0);

/// Node-wide settings (index 0), written by the agent at start.
#[map(name = "CONFIG_V2")]
pub static CONFIG_V2: Array<Config> = Array::pinned(1, 0);

/// Socket-level balancing: the backend an unconnected UDP socket was given per service.
#[map(name = "SOCK_AFFINITY_V1")]
pub static SOCK_AFFINITY_V1: LruHashMap<SockAffinityKey, BackendValue> =
    LruHashMap::pinned(MAX_SOCK_ENTRIES, 0);

/// Socket-level balancing: (socket, backend) -> service address, for recvmsg/getpeername.
#[map(name = "SOCK_REVNAT_V1")]
pub static SOCK_REVNAT_V1: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(MAX_SOCK_ENTRIES, 0);

/// The no-endpoint REJECT's token bucket (index 0), per CPU. Written by the programs only.
#[map(name = "REJECT_TOKENS_V1")]
pub static REJECT_TOKENS_V1: PerCpuArray<RejectBucket> = PerCpuArray::pinned(1, 0);

/// Overlay: this node's tunnel settings (index 0), written by the agent at start.
#[map(name = "OVERLAY_CONFIG_V1")]
pub static OVERLAY_CONFIG_V1: Array<OverlayConfig> = Array::pinned(1, 0);

/// Overlay: pod CIDRs (longest prefix match, key = prefix length + network-order address) ->
/// the node they live on. Written by the agent (`OverlayTable`).
#[map(name = "OVERLAY_ROUTES_V1")]
pub static OVERLAY_ROUTES_V1: LpmTrie<u32, OverlayRoute> = LpmTrie::pinned(MAX_OVERLAY_ROUTES, 0);

/// Overlay: node addresses tunnel packets are accepted from. Written by the agent.
#[map(name = "OVERLAY_PEERS_V1")]
pub static OVERLAY_PEERS_V1: HashMap<u32, OverlayPeer> = HashMap::pinned(MAX_OVERLAY_PEERS, 0);

/// Overlay: the underlay next hop toward each node, cached by the encapsulation for
/// `NEXTHOP_TTL_NS` (one FIB lookup per node and second instead of one per packet).
#[map(name = "OVERLAY_NEXTHOP_V1")]
pub static OVERLAY_NEXTHOP_V1: LruHashMap<u32, OverlayNextHop> =
    LruHashMap::pinned(MAX_OVERLAY_NEXTHOPS, 0);

/// Overlay: IPv4 ID of the next outer header, per CPU (like the kernel's ident counters).
#[map(name = "OVERLAY_IPID_V1")]
pub static OVERLAY_IPID_V1: PerCpuArray<u32> = PerCpuArray::pinned(1, 0);
