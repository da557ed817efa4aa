//! Every BPF map the programs use. Names carry the layout version; see bpf-maps.md.
//!
//! Maps are BTF-defined (`.maps` section): the key and value types go into the object's BTF
//! and the kernel keeps them with the map, so `bpftool map dump` prints named fields. aya-ebpf's
//! BTF definitions carry no `pinning` attribute: the agent pins and adopts each map by name
//! itself (`EbpfLoader::map_pin_path`, from the map table in `dataplane_common::maps`).
//! The one legacy (`maps` section) definition is the ring buffer, which has neither key nor
//! value for BTF to describe.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::{btf_map, map},
    maps::RingBuf,
};
use dataplane_common::{
    addr_bits::{AddrBits, ADDR_BITS_WORDS},
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
#[btf_map(name = "MONITOR_V1")]
pub static MONITOR_V1: Array<u32, 1> = Array::new();

/// Monitor: the per-CPU token bucket that rate-limits events, and what it refused.
#[btf_map(name = "MONITOR_TOKENS_V1")]
pub static MONITOR_TOKENS_V1: PerCpuArray<MonitorTokens, 1> = PerCpuArray::new();

/// Monitor: the events (`MonitorEvent`), read by `dataplane monitor`.
#[map(name = "EVENTS_V1")]
pub static EVENTS_V1: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

/// Packets and bytes per (hook, verdict reason), per CPU. Index: `stats_index(hook, reason)`.
#[btf_map(name = "STATS_V2")]
pub static STATS_V2: PerCpuArray<StatsValue, { STATS_ENTRIES as usize }> = PerCpuArray::new();

/// Service frontends (address:port:proto) -> current backend set. Written by the loader only.
#[btf_map(name = "SERVICES_V1")]
pub static SERVICES_V1: HashMap<ServiceKey, ServiceValue, { MAX_FRONTENDS as usize }> =
    HashMap::new();

/// (backend set, slot) -> backend address:port. Written by the loader only.
#[btf_map(name = "BACKENDS_V1")]
pub static BACKENDS_V1: HashMap<BackendKey, BackendValue, { MAX_BACKEND_SLOTS as usize }> =
    HashMap::new();

/// Connection tracking, one entry per direction and phase of a NATed connection (LRU: a full
/// table evicts the least recently used entries, never the active ones first; the agent's GC
/// removes timed-out connections whole).
#[btf_map(name = "CT_V2")]
pub static CT_V2: LruHashMap<CtKey, CtValue, { CT_MAX_ENTRIES as usize }> = LruHashMap::new();

/// Fragmented datagrams in flight: the ports of each datagram's first fragment, so the
/// fragments after it (which carry none) get the same connection's translation.
#[btf_map(name = "FRAGS_V1")]
pub static FRAGS_V1: LruHashMap<FragKey, FragValue, { MAX_FRAG_DATAGRAMS as usize }> =
    LruHashMap::new();

/// Every address a translated packet can carry at a pod hook (frontends, backends, the node's
/// own), with `ADDR_F_*` flags: the pod hooks' pre-filter. Written by the agent.
#[btf_map(name = "LB_ADDRS_V1")]
pub static LB_ADDRS_V1: HashMap<u32, u32, { MAX_LB_ADDRS as usize }> = HashMap::new();

/// The pre-filter's Bloom filter over `LB_ADDRS_V1` (`dataplane_common::addr_bits`): an array
/// read per address instead of a hash lookup. Written by the agent, before `LB_ADDRS_V1`.
#[btf_map(name = "LB_ADDR_BITS_V1")]
pub static LB_ADDR_BITS_V1: Array<AddrBits, { ADDR_BITS_WORDS as usize }> = Array::new();

/// loadBalancerSourceRanges: (frontend id, client prefix) -> 1, for frontends flagged
/// `SVC_F_SOURCE_RANGES`. Written by the agent (`SourceRanges`).
#[btf_map(name = "SOURCE_RANGES_V1")]
pub static SOURCE_RANGES_V1: LpmTrie<SourceRangeKey, u32, { MAX_SOURCE_RANGES as usize }> =
    LpmTrie::new();

/// sessionAffinity ClientIP: (client, frontend) -> last backend.
#[btf_map(name = "AFFINITY_V1")]
pub static AFFINITY_V1: LruHashMap<AffinityKey, AffinityValue, { MAX_AFFINITY as usize }> =
    LruHashMap::new();

/// Node-wide settings (index 0), written by the agent at start.
#[btf_map(name = "CONFIG_V2")]
pub static CONFIG_V2: Array<Config, 1> = Array::new();

/// Socket-level balancing: the backend an unconnected UDP socket was given per service.
#[btf_map(name = "SOCK_AFFINITY_V1")]
pub static SOCK_AFFINITY_V1: LruHashMap<
    SockAffinityKey,
    BackendValue,
    { MAX_SOCK_ENTRIES as usize },
> = LruHashMap::new();

/// Socket-level balancing: (socket, backend) -> service address, for recvmsg/getpeername.
#[btf_map(name = "SOCK_REVNAT_V1")]
pub static SOCK_REVNAT_V1: LruHashMap<
    SockRevNatKey,
    SockRevNatValue,
    { MAX_SOCK_ENTRIES as usize },
> = LruHashMap::new();

/// The no-endpoint REJECT's token bucket (index 0), per CPU. Written by the programs only.
#[btf_map(name = "REJECT_TOKENS_V1")]
pub static REJECT_TOKENS_V1: PerCpuArray<RejectBucket, 1> = PerCpuArray::new();

/// Overlay: this node's tunnel settings (index 0), written by the agent at start.
#[btf_map(name = "OVERLAY_CONFIG_V1")]
pub static OVERLAY_CONFIG_V1: Array<OverlayConfig, 1> = Array::new();

/// Overlay: pod CIDRs (longest prefix match, key = prefix length + network-order address) ->
/// the node they live on. Written by the agent (`OverlayTable`).
#[btf_map(name = "OVERLAY_ROUTES_V1")]
pub static OVERLAY_ROUTES_V1: LpmTrie<u32, OverlayRoute, { MAX_OVERLAY_ROUTES as usize }> =
    LpmTrie::new();

/// Overlay: node addresses tunnel packets are accepted from. Written by the agent.
#[btf_map(name = "OVERLAY_PEERS_V1")]
pub static OVERLAY_PEERS_V1: HashMap<u32, OverlayPeer, { MAX_OVERLAY_PEERS as usize }> =
    HashMap::new();

/// Overlay: the underlay next hop toward each node, cached by the encapsulation for
/// `NEXTHOP_TTL_NS` (one FIB lookup per node and second instead of one per packet).
#[btf_map(name = "OVERLAY_NEXTHOP_V1")]
pub static OVERLAY_NEXTHOP_V1: LruHashMap<u32, OverlayNextHop, { MAX_OVERLAY_NEXTHOPS as usize }> =
    LruHashMap::new();

/// Overlay: IPv4 ID of the next outer header, per CPU (like the kernel's ident counters).
#[btf_map(name = "OVERLAY_IPID_V1")]
pub static OVERLAY_IPID_V1: PerCpuArray<u32, 1> = PerCpuArray::new();
