//! Service load-balancing maps: `SERVICES_V2` (frontend -> backend set) and `BACKENDS_V2`
//! (slot -> backend). Replaces KUBE-SERVICES / KUBE-SVC-* / KUBE-SEP-*.
//!
//! `BACKENDS_V2` is an array: a backend set is a run of `count` consecutive slots starting at
//! its `set_id`, so a new flow's backend is one array index (which the verifier inlines: no
//! hash, no bucket walk), and the agent writes slots straight into the map's memory (mmap), not
//! one syscall element each.
//!
//! Update protocol (the only way a packet never sees a half-written service): every change of a
//! frontend's backends writes a *new* set into free slots (all of them first), then switches the
//! frontend's `SERVICES_V2` value (one hash-map update, which readers see atomically), then
//! clears the old set's slots. Cleared slots are handed out again only after a quarantine
//! (`SLOT_QUARANTINE_MS`), far longer than any program holds a service value it read. Addresses
//! and ports are in network byte order.

/// `SERVICES_V2` key: the address:port:protocol a service answers on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Frontend IPv4 address (ClusterIP, node address for NodePort, external/LB IP), network order.
    pub addr: u32,
    /// Frontend port, network order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    pub _pad: u8,
}

impl ServiceKey {
    /// The key of `addr:port` (network order) for protocol `proto`.
    pub const fn new(addr: u32, port: u16, proto: u8) -> Self {
        ServiceKey {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// `SERVICES_V2` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Stable id of this frontend (kept across backend changes): keys affinity, shown in conntrack.
    pub frontend_id: u32,
    /// The backend set currently serving this frontend: its first slot in `BACKENDS_V2` (the
    /// set is slots `set_id .. set_id + count`; never 0, slot 0 is not handed out).
    pub set_id: u32,
    /// Number of backends in the set; 0 = no endpoints: the datapath rejects (ICMP port
    /// unreachable), or drops with `SVC_F_DROP_IF_EMPTY`.
    pub count: u32,
    /// `SVC_F_*` flags.
    pub flags: u32,
    /// sessionAffinity ClientIP timeout in seconds (with `SVC_F_AFFINITY`).
    pub affinity_timeout_secs: u32,
    pub _pad: u32,
}

/// Source-NAT new connections to the node address (kube-proxy's KUBE-MARK-MASQ for NodePort,
/// externalIPs and LB IPs under externalTrafficPolicy: Cluster).
pub const SVC_F_MASQUERADE: u32 = 1 << 0;
/// sessionAffinity: ClientIP.
pub const SVC_F_AFFINITY: u32 = 1 << 1;
/// Frontend reached from outside the cluster (NodePort, externalIP, LoadBalancer).
pub const SVC_F_EXTERNAL: u32 = 1 << 2;
/// Backends restricted to this node (externalTrafficPolicy or internalTrafficPolicy Local).
pub const SVC_F_LOCAL_ONLY: u32 = 1 << 3;
/// With `count` 0: the service has usable endpoints, just none this frontend may use here (a
/// Local policy and none on this node): drop, as kube-proxy's "has no local endpoints" rule
/// does. Without it, `count` 0 means no endpoint anywhere: reject, as kube-proxy's REJECT.
pub const SVC_F_DROP_IF_EMPTY: u32 = 1 << 4;
/// loadBalancerSourceRanges: new connections only from clients `SOURCE_RANGES_V1` lists for
/// this frontend id; others are dropped (`drop-source-range`). Frontends without it skip the
/// lookup.
pub const SVC_F_SOURCE_RANGES: u32 = 1 << 5;

/// Slot `slot` of backend set `set_id`: `BACKENDS_V2` index [`BackendKey::index`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub set_id: u32,
    pub slot: u32,
}

impl BackendKey {
    /// The `BACKENDS_V2` index of this slot.
    pub const fn index(&self) -> u32 {
        self.set_id.wrapping_add(self.slot)
    }
}

/// `BACKENDS_V2` value: where a connection is sent. All zero: a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendValue {
    /// Backend (pod) IPv4 address, network order.
    pub addr: u32,
    /// Backend (target) port, network order.
    pub port: u16,
    /// `BE_F_*` flags.
    pub flags: u16,
}

/// The backend runs on this node.
pub const BE_F_LOCAL: u16 = 1 << 0;

/// `AFFINITY_V1` key: (client, frontend) for sessionAffinity ClientIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Client IPv4 address, network order.
    pub client: u32,
    pub frontend_id: u32,
}

/// `AFFINITY_V1` value: the backend the client was last sent to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend: BackendValue,
    /// bpf_ktime_get_ns() of the last new connection that used it.
    pub last_used_ns: u64,
}

/// `SOCK_AFFINITY_V1` key: keeps an unconnected UDP socket's sends to one service on one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockAffinityKey {
    /// bpf_get_socket_cookie() of the sending socket.
    pub cookie: u64,
    pub service: ServiceKey,
}

/// `SOCK_REVNAT_V1` key: (socket, backend it was sent to) -> the service address it asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatKey {
    pub cookie: u64,
    /// Backend address and port, network order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// `SOCK_REVNAT_V1` value: the service address:port to report instead of the backend's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatValue {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Entries of `SOCK_AFFINITY_V1` and `SOCK_REVNAT_V1` (LRU).
pub const MAX_SOCK_ENTRIES: u32 = 65_536;

/// Entries of `SERVICES_V2` (frontends). 10k services x (ClusterIP + NodePort + ...) fit.
pub const MAX_FRONTENDS: u32 = 65_536;
/// `SERVICE_NAMES_V1` value: the Service port a frontend belongs to, `namespace/name:port`
/// (`:port` only for named ports) in UTF-8, NUL-padded. Written by the agent at sync time, read
/// by `dataplane monitor` and `dataplane services`; no program reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    pub text: [u8; SERVICE_NAME_LEN],
}

/// A namespace (63) + `/` + a name (63) + `:` + a port name (15) + NUL.
pub const SERVICE_NAME_LEN: usize = 144;

impl ServiceName {
    /// `text`, cut at a character boundary if longer than the map holds (API objects never are).
    pub fn new(text: &str) -> ServiceName {
        let mut end = text.len().min(SERVICE_NAME_LEN - 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut out = [0u8; SERVICE_NAME_LEN];
        out[..end].copy_from_slice(&text.as_bytes()[..end]);
        ServiceName { text: out }
    }

    /// The text up to the first NUL (`None` if it is not UTF-8).
    pub fn as_str(&self) -> Option<&str> {
        let end = self
            .text
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.text.len());
        core::str::from_utf8(&self.text[..end]).ok()
    }
}

/// Slots of `BACKENDS_V2`: room for every frontend's set twice (old + new during an update).
pub const MAX_BACKEND_SLOTS: u32 = 1_048_576;
/// `BACKENDS_V2`'s creation flags: `BPF_F_MMAPABLE`, the agent writes slots through memory.
pub const BACKENDS_MAP_FLAGS: u32 = 1 << 10;
/// How long a cleared `BACKENDS_V2` slot stays unused before a new set may take it: a program
/// that read the old service value just before the switch finishes with it within
/// microseconds (programs run to completion under RCU), so this is a wide margin.
pub const SLOT_QUARANTINE_MS: u64 = 1_000;
/// Entries of `AFFINITY_V1`.
pub const MAX_AFFINITY: u32 = 65_536;

/// `LB_ADDRS_V1` (address, network order -> `ADDR_F_*`): every address a translated packet can
/// carry at a pod hook. Pod hooks look a packet's addresses up here first and hand on, without
/// the conntrack and service lookups, the packets none of whose addresses is listed: pod
/// traffic that has nothing to do with a service.
pub const MAX_LB_ADDRS: u32 = 131_072;
/// A frontend address (ClusterIP, NodePort node address, externalIP, LB IP).
pub const ADDR_F_FRONTEND: u32 = 1 << 0;
/// A backend address.
pub const ADDR_F_BACKEND: u32 = 1 << 1;
/// One of the node's own addresses (masquerade source, the node's own connections).
pub const ADDR_F_NODE: u32 = 1 << 2;

/// `SOURCE_RANGES_V1` key data (after the LPM trie's u32 prefix length): a frontend and a client
/// prefix. The prefix length covers `frontend_id` whole (32 bits) plus the CIDR's length, so one
/// trie holds every frontend's ranges and a lookup with length 64 matches only its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    /// `ServiceValue::frontend_id`, native order (matched exactly).
    pub frontend_id: u32,
    /// Client network, network order.
    pub addr: u32,
}

/// The LPM prefix length of a (frontend, CIDR of `len` bits) entry.
pub const fn source_range_prefix_len(len: u8) -> u32 {
    32 + len as u32
}

/// Entries of `SOURCE_RANGES_V1` (all frontends' ranges together).
pub const MAX_SOURCE_RANGES: u32 = 65_536;

/// `REJECT_TOKENS_V1` value (per-CPU array, one entry): the token bucket of the no-endpoint
/// REJECT (ICMP port unreachable sent back with XDP_TX or a redirect, to a source that may be
/// forged), at `REJECT_NS_PER_TOKEN` with `REJECT_BURST`. Beyond it the packet is dropped
/// (`drop-reject-rate-limited`).
pub type RejectBucket = crate::ratelimit::TokenBucket;

/// One token per millisecond per CPU: the kernel's own ICMP limit (net.ipv4.icmp_msgs_per_sec
/// 1000), per CPU so the bucket needs no lock.
pub const REJECT_NS_PER_TOKEN: u64 = 1_000_000;
/// The kernel's net.ipv4.icmp_msgs_burst.
pub const REJECT_BURST: u64 = 50;

user_pod!(
    SourceRangeKey,
    ServiceKey,
    ServiceValue,
    ServiceName,
    BackendKey,
    BackendValue,
    AffinityKey,
    AffinityValue,
    SockAffinityKey,
    SockRevNatKey,
    SockRevNatValue
);
