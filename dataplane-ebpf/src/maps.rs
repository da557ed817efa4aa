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
// Globs: this file only names the shared key/value types and sizes of every map.
use dataplane_common::{
    addr_bits::*, ct::*, lb::*, monitor::*, overlay::*, StatsValue, STATS_ENTRIES,
};

/// Declares the BTF-defined maps. `#[btf_map]` without a name exports each static under its
/// own identifier, which is the map's versioned name (what the agent pins and
/// `dataplane_common::maps::ALL` lists), so the name is written once.
macro_rules! btf_maps {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[doc = $doc])*
            #[btf_map]
            pub static $name: $ty = <$ty>::new();
        )*
    };
}

/// Monitor: the events (`MonitorEvent`), read by `dataplane monitor`.
#[map(name = "EVENTS_V1")]
pub static EVENTS_V1: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

btf_maps! {
    /// Monitor: which verdicts produce events (`MON_F_*`, index 0), written by `dataplane monitor`.
    MONITOR_V1: Array<u32, 1>;

    /// Monitor: the per-CPU token bucket that rate-limits events, and what it refused.
    MONITOR_TOKENS_V1: PerCpuArray<MonitorTokens, 1>;

    /// Packets and bytes per (hook, verdict reason), per CPU. Index: `stats_index(hook, reason)`.
    STATS_V2: PerCpuArray<StatsValue, { STATS_ENTRIES as usize }>;

    /// Service frontends (address:port:proto) -> current backend set. Written by the loader only.
    SERVICES_V2: HashMap<ServiceKey, ServiceValue, { MAX_FRONTENDS as usize }>;

    /// Backend slots: a set is `count` slots from its `set_id`; all zero is a free slot. Written
    /// by the agent through mmap (`BPF_F_MMAPABLE`).
    BACKENDS_V2: Array<BackendValue, { MAX_BACKEND_SLOTS as usize }, { BACKENDS_MAP_FLAGS as usize }>;

    /// Connection tracking, one entry per direction and phase of a NATed connection (LRU: a full
    /// table evicts the least recently used entries, never the active ones first; the agent's GC
    /// removes timed-out connections whole).
    CT_V2: LruHashMap<CtKey, CtValue, { CT_MAX_ENTRIES as usize }>;

    /// Fragmented datagrams in flight: the ports of each datagram's first fragment, so the
    /// fragments after it (which carry none) get the same connection's translation.
    FRAGS_V1: LruHashMap<FragKey, FragValue, { MAX_FRAG_DATAGRAMS as usize }>;

    /// Every address a translated packet can carry at a pod hook (frontends, backends, the node's
    /// own), with `ADDR_F_*` flags: the pod hooks' pre-filter. Written by the agent.
    LB_ADDRS_V1: HashMap<u32, u32, { MAX_LB_ADDRS as usize }>;

    /// The pre-filter's Bloom filter over `LB_ADDRS_V1` (`dataplane_common::addr_bits`): an array
    /// read per address instead of a hash lookup. Written by the agent, before `LB_ADDRS_V1`.
    LB_ADDR_BITS_V1: Array<AddrBits, { ADDR_BITS_WORDS as usize }>;

    /// loadBalancerSourceRanges: (frontend id, client prefix) -> 1, for frontends flagged
    /// `SVC_F_SOURCE_RANGES`. Written by the agent (`SourceRanges`).
    SOURCE_RANGES_V1: LpmTrie<SourceRangeKey, u32, { MAX_SOURCE_RANGES as usize }>;

    /// sessionAffinity ClientIP: (client, frontend) -> last backend.
    AFFINITY_V1: LruHashMap<AffinityKey, AffinityValue, { MAX_AFFINITY as usize }>;

    /// Node-wide settings (index 0), written by the agent at start.
    CONFIG_V2: Array<Config, 1>;

    /// Socket-level balancing: the backend an unconnected UDP socket was given per service.
    SOCK_AFFINITY_V1: LruHashMap<SockAffinityKey, BackendValue, { MAX_SOCK_ENTRIES as usize }>;

    /// Socket-level balancing: (socket, backend) -> service address, for recvmsg/getpeername.
    SOCK_REVNAT_V1: LruHashMap<SockRevNatKey, SockRevNatValue, { MAX_SOCK_ENTRIES as usize }>;

    /// The no-endpoint REJECT's token bucket (index 0), per CPU. Written by the programs only.
    REJECT_TOKENS_V1: PerCpuArray<RejectBucket, 1>;

    /// Overlay: this node's tunnel settings (index 0), written by the agent at start.
    OVERLAY_CONFIG_V1: Array<OverlayConfig, 1>;

    /// Overlay: pod CIDRs (longest prefix match, key = prefix length + network-order address) ->
    /// the node they live on. Written by the agent (`OverlayTable`).
    OVERLAY_ROUTES_V1: LpmTrie<u32, OverlayRoute, { MAX_OVERLAY_ROUTES as usize }>;

    /// Overlay: node addresses tunnel packets are accepted from. Written by the agent.
    OVERLAY_PEERS_V1: HashMap<u32, OverlayPeer, { MAX_OVERLAY_PEERS as usize }>;

    /// Overlay: the underlay next hop toward each node, cached by the encapsulation for
    /// `NEXTHOP_TTL_NS` (one FIB lookup per node and second instead of one per packet).
    OVERLAY_NEXTHOP_V1: LruHashMap<u32, OverlayNextHop, { MAX_OVERLAY_NEXTHOPS as usize }>;

    /// Overlay: IPv4 ID of the next outer header, per CPU (like the kernel's ident counters).
    OVERLAY_IPID_V1: PerCpuArray<u32, 1>;
}
