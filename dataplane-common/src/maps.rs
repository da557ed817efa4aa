//! The map table: every BPF map of the datapath, one row each (name, kind, key and value
//! sizes, max entries, owner). The loader pins by it, `pin.rs` checks pinned maps against it,
//! `dataplane cleanup` removes what it lists, the agent's map access opens by it, and tests
//! check the built object and bpf-maps.md against it.
//!
//! The eBPF side declares the same maps in `dataplane-ebpf/src/maps.rs` (`#[btf_map]` needs
//! literal names and types there); `dataplane-user`'s object test fails if the two disagree.

use core::mem::size_of;

// Globs: the table names the key/value types and sizes of every map, as the eBPF side does.
use crate::{addr_bits::*, ct::*, lb::*, monitor::*, overlay::*, StatsValue, STATS_ENTRIES};

/// The kernel map type (`enum bpf_map_type`), of the kinds this datapath uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    PerCpuArray = 6,
    /// Least recently used entries are evicted when full (state the datapath creates).
    LruHash = 9,
    /// Longest prefix match; the key is a 4-byte prefix length then the data.
    LpmTrie = 11,
    /// No key or value: `max_entries` is its size in bytes.
    RingBuf = 27,
}

impl MapKind {
    /// `BPF_MAP_TYPE_*`.
    pub const fn bpf_type(self) -> u32 {
        self as u32
    }

    pub const fn name(self) -> &'static str {
        match self {
            MapKind::Hash => "hash",
            MapKind::Array => "array",
            MapKind::PerCpuArray => "percpu_array",
            MapKind::LruHash => "lru_hash",
            MapKind::LpmTrie => "lpm_trie",
            MapKind::RingBuf => "ringbuf",
        }
    }

    /// Whether the kernel accepts BPF_MAP_*_BATCH on it (arrays and hashes, not LPM tries
    /// or ring buffers: `map_ops` of those have no batch callbacks).
    pub const fn batch_ops(self) -> bool {
        matches!(
            self,
            MapKind::Hash | MapKind::Array | MapKind::PerCpuArray | MapKind::LruHash
        )
    }
}

/// Who writes a map's entries (ARCHITECTURE.md, "Who owns which map").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The agent's service table (`services::ServiceTable` and its source ranges).
    Services,
    /// The agent's overlay table (`overlay::OverlayTable`).
    Overlay,
    /// The agent, once at start: node-wide settings.
    AgentConfig,
    /// The programs (state per connection, per CPU or per datagram); the agent only reads,
    /// purges or garbage-collects.
    Datapath,
    /// `dataplane monitor` switches it on; the programs fill the events.
    Monitor,
}

/// One map: everything the agent must agree on with the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// The pinned name, with its layout version (`_V1`).
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub owner: Owner,
    /// Who writes it, in words (bpf-maps.md's table).
    pub writers: &'static str,
    /// Who reads it, in words (bpf-maps.md's table).
    pub readers: &'static str,
    /// `BPF_F_*` creation flags that are part of the layout (`BPF_F_MMAPABLE`: the agent
    /// writes the map through memory it maps).
    pub flags: u32,
}

impl MapSpec {
    const fn of<K, V>(name: &'static str, kind: MapKind, max_entries: u32, owner: Owner) -> Self {
        // An LPM trie key is `{ prefix_len: u32, data: K }` (packed).
        let lpm_prefix = if matches!(kind, MapKind::LpmTrie) {
            4
        } else {
            0
        };
        MapSpec {
            name,
            kind,
            key_size: (lpm_prefix + size_of::<K>()) as u32,
            value_size: size_of::<V>() as u32,
            max_entries,
            owner,
            writers: "",
            readers: "",
            flags: 0,
        }
    }

    const fn with_flags(self, flags: u32) -> Self {
        MapSpec { flags, ..self }
    }

    const fn by(self, writers: &'static str, readers: &'static str) -> Self {
        MapSpec {
            writers,
            readers,
            ..self
        }
    }

    /// The table row of `name`, if this build has such a map.
    pub fn by_name(name: &str) -> Option<&'static MapSpec> {
        pinned().find(|m| m.name == name)
    }
}

use MapKind::*;
use Owner::*;

/// Per-CPU packet/byte counters per (hook, verdict reason). Index `stats_index(hook, reason)`.
pub const STATS: MapSpec =
    MapSpec::of::<u32, StatsValue>("STATS_V2", PerCpuArray, STATS_ENTRIES, Datapath)
        .by("every program", "`dataplane stats`, tests");
/// Service frontends (address:port:proto) -> current backend set (its first slot and count).
pub const SERVICES: MapSpec =
    MapSpec::of::<ServiceKey, ServiceValue>("SERVICES_V2", Hash, MAX_FRONTENDS, Services)
        .by("agent", "`xdp_uplink`, `tc_pod_ingress`, socket hooks");
/// Backend slots, every set a run of them: slot index -> backend address:port (0: free).
pub const BACKENDS: MapSpec =
    MapSpec::of::<u32, BackendValue>("BACKENDS_V2", Array, MAX_BACKEND_SLOTS, Services)
        .with_flags(BACKENDS_MAP_FLAGS)
        .by("agent (through mmap)", "same as `SERVICES_V2`");
/// Connection tracking, one entry per direction and phase of a NATed connection.
pub const CT: MapSpec = MapSpec::of::<CtKey, CtValue>("CT_V2", LruHash, CT_MAX_ENTRIES, Datapath)
    .by(
        "datapath; agent GC and purges",
        "datapath, agent GC, `dataplane conntrack`",
    );
/// Fragmented datagrams in flight: the first fragment's ports.
pub const FRAGS: MapSpec =
    MapSpec::of::<FragKey, FragValue>("FRAGS_V1", LruHash, MAX_FRAG_DATAGRAMS, Datapath).by(
        "packet hooks (first fragments)",
        "packet hooks (later fragments)",
    );
/// Addresses translated packets can carry at pod hooks (the pre-filter), with `ADDR_F_*`.
pub const LB_ADDRS: MapSpec = MapSpec::of::<u32, u32>("LB_ADDRS_V1", Hash, MAX_LB_ADDRS, Services)
    .by(
        "agent (`ServiceTable`, node addresses at start)",
        "`tc_pod_ingress`, `tc_pod_egress`",
    );
/// The pre-filter's Bloom filter over `LB_ADDRS_V1` (`addr_bits`): tested without a hash lookup.
pub const LB_ADDR_BITS: MapSpec =
    MapSpec::of::<u32, AddrBits>("LB_ADDR_BITS_V1", Array, ADDR_BITS_WORDS, Services).by(
        "agent (with each `LB_ADDRS_V1` write, before it)",
        "every packet hook but `tc_uplink_ingress` after XDP",
    );
/// loadBalancerSourceRanges: (frontend id, client prefix) -> 1.
pub const SOURCE_RANGES: MapSpec =
    MapSpec::of::<SourceRangeKey, u32>("SOURCE_RANGES_V1", LpmTrie, MAX_SOURCE_RANGES, Services)
        .by(
            "agent (`SourceRanges`)",
            "`xdp_uplink`, `tc_pod_ingress`, `tc_uplink_egress`",
        );
/// sessionAffinity ClientIP: (client, frontend) -> last backend.
pub const AFFINITY: MapSpec =
    MapSpec::of::<AffinityKey, AffinityValue>("AFFINITY_V1", LruHash, MAX_AFFINITY, Datapath)
        .by("datapath; agent purges", "datapath");
/// Node-wide settings (index 0).
pub const CONFIG: MapSpec = MapSpec::of::<u32, Config>("CONFIG_V2", Array, 1, AgentConfig)
    .by("agent at start", "datapath, agent GC");
/// Socket-level balancing: the backend an unconnected UDP socket was given per service.
pub const SOCK_AFFINITY: MapSpec = MapSpec::of::<SockAffinityKey, BackendValue>(
    "SOCK_AFFINITY_V1",
    LruHash,
    MAX_SOCK_ENTRIES,
    Datapath,
)
.by("`sock_sendmsg4`", "`sock_sendmsg4`");
/// Socket-level balancing: (socket, backend) -> service address.
pub const SOCK_REVNAT: MapSpec = MapSpec::of::<SockRevNatKey, SockRevNatValue>(
    "SOCK_REVNAT_V1",
    LruHash,
    MAX_SOCK_ENTRIES,
    Datapath,
)
.by(
    "`sock_connect4`, `sock_sendmsg4`",
    "`sock_recvmsg4`, `sock_getpeername4`, agent (socket destroy)",
);
/// The no-endpoint REJECT's token bucket (index 0), per CPU.
pub const REJECT_TOKENS: MapSpec =
    MapSpec::of::<u32, RejectBucket>("REJECT_TOKENS_V1", PerCpuArray, 1, Datapath)
        .by("the packet hooks that reject", "the same");
/// Overlay: this node's tunnel settings (index 0).
pub const OVERLAY_CONFIG: MapSpec =
    MapSpec::of::<u32, OverlayConfig>("OVERLAY_CONFIG_V1", Array, 1, Overlay).by(
        "agent at start",
        "`xdp_uplink`, `tc_uplink_ingress`, `tc_uplink_egress`",
    );
/// Overlay: pod CIDR (LPM) -> the node it lives on.
pub const OVERLAY_ROUTES: MapSpec =
    MapSpec::of::<u32, OverlayRoute>("OVERLAY_ROUTES_V1", LpmTrie, MAX_OVERLAY_ROUTES, Overlay).by(
        "agent (`OverlayTable`)",
        "`xdp_uplink`, `tc_uplink_ingress`, `tc_uplink_egress`",
    );
/// Overlay: node addresses tunnel packets are accepted from.
pub const OVERLAY_PEERS: MapSpec =
    MapSpec::of::<u32, OverlayPeer>("OVERLAY_PEERS_V1", Hash, MAX_OVERLAY_PEERS, Overlay).by(
        "agent (`OverlayTable`)",
        "`xdp_uplink`, `tc_uplink_ingress`",
    );
/// Overlay: the underlay next hop toward each node, cached by the encapsulation.
pub const OVERLAY_NEXTHOP: MapSpec = MapSpec::of::<u32, OverlayNextHop>(
    "OVERLAY_NEXTHOP_V1",
    LruHash,
    MAX_OVERLAY_NEXTHOPS,
    Datapath,
)
.by("`tc_uplink_egress`", "`tc_uplink_egress`");
/// Overlay: IPv4 ID of the next outer header, per CPU.
pub const OVERLAY_IPID: MapSpec =
    MapSpec::of::<u32, u32>("OVERLAY_IPID_V1", PerCpuArray, 1, Datapath)
        .by("`tc_uplink_egress`", "`tc_uplink_egress`");
/// Monitor: which verdicts produce events (`MON_F_*`, index 0).
pub const MONITOR: MapSpec = MapSpec::of::<u32, u32>("MONITOR_V1", Array, 1, Monitor)
    .by("`dataplane monitor`", "every packet program");
/// Monitor: the per-CPU token bucket that rate-limits events.
pub const MONITOR_TOKENS: MapSpec =
    MapSpec::of::<u32, MonitorTokens>("MONITOR_TOKENS_V1", PerCpuArray, 1, Datapath)
        .by("every packet program", "`dataplane monitor`");
/// Monitor: the events ring buffer (no key or value; max_entries is its size in bytes).
pub const EVENTS: MapSpec = MapSpec {
    name: "EVENTS_V1",
    kind: RingBuf,
    key_size: 0,
    value_size: 0,
    max_entries: EVENTS_RING_BYTES,
    owner: Datapath,
    writers: "every packet program",
    readers: "`dataplane monitor`",
    flags: 0,
};

/// Every map the programs use and the agent pins.
pub const ALL: &[MapSpec] = &[
    STATS,
    SERVICES,
    BACKENDS,
    CT,
    LB_ADDRS,
    LB_ADDR_BITS,
    FRAGS,
    AFFINITY,
    CONFIG,
    SOURCE_RANGES,
    SOCK_AFFINITY,
    SOCK_REVNAT,
    OVERLAY_CONFIG,
    OVERLAY_ROUTES,
    OVERLAY_PEERS,
    OVERLAY_IPID,
    OVERLAY_NEXTHOP,
    MONITOR,
    MONITOR_TOKENS,
    EVENTS,
    REJECT_TOKENS,
];

/// Frontend -> `namespace/name:port` of its Service port, for operators' tools.
pub const SERVICE_NAMES: MapSpec =
    MapSpec::of::<ServiceKey, ServiceName>("SERVICE_NAMES_V1", Hash, MAX_FRONTENDS, Services).by(
        "agent (`ServiceNames`, once per changed frontend)",
        "`dataplane monitor`, `dataplane services`",
    );

/// Maps the agent creates from user space: no program uses them, so they are not in the
/// object; they are pinned, checked and cleaned like the others.
pub const AGENT_CREATED: &[MapSpec] = &[SERVICE_NAMES];

/// Every map a pin directory holds: the object's ([`ALL`]) and the agent's own.
pub fn pinned() -> impl Iterator<Item = &'static MapSpec> {
    ALL.iter().chain(AGENT_CREATED)
}

/// Maps of layouts this build replaced (`CT_V1` by `CT_V2`, ...): no program of this build uses
/// them, and their entries are not carried over.
pub const RETIRED: &[&str] = &[
    "CT_V1",
    "CONFIG_V1",
    "STATS_V1",
    "SERVICES_V1",
    "BACKENDS_V1",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_versioned() {
        let all: [&MapSpec; ALL.len() + AGENT_CREATED.len()] = {
            let mut v = [&STATS; ALL.len() + AGENT_CREATED.len()];
            for (slot, m) in v.iter_mut().zip(pinned()) {
                *slot = m;
            }
            v
        };
        for (i, m) in all.iter().enumerate() {
            assert!(all[..i].iter().all(|o| o.name != m.name), "{}", m.name);
            let (_, version) = m.name.rsplit_once("_V").expect(m.name);
            assert!(version.parse::<u32>().is_ok(), "{}", m.name);
            assert!(!RETIRED.contains(&m.name), "{}", m.name);
        }
    }

    #[test]
    fn lpm_keys_carry_the_prefix_length() {
        assert_eq!(OVERLAY_ROUTES.key_size, 8);
        assert_eq!(
            SOURCE_RANGES.key_size,
            4 + size_of::<SourceRangeKey>() as u32
        );
    }
}
