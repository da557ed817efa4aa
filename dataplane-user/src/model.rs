//! The desired state of this node's datapath, independent of where it came from (Kubernetes API,
//! manifest files, tests) and of how the maps encode it. Control-plane sources produce it;
//! `services::ServiceTable` and the overlay table turn it into map entries by diff.
//!
//! One [`ServicePort`] per (Service, port): that is the unit kube-proxy builds one KUBE-SVC-*
//! chain for.

use std::{net::Ipv4Addr, ops::Deref, sync::Arc};

/// Transport protocol of a service port. SCTP is not supported by the datapath yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IANA protocol number, as in the IPv4 header.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// namespace/name:port-name, for logs and `dataplane services`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's name in the Service (may be empty for single-port services).
    pub port: String,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// How a frontend address is reached; decides which traffic policy applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// spec.clusterIP(s): internalTrafficPolicy applies.
    ClusterIp,
    /// A node address with spec.ports[].nodePort: externalTrafficPolicy applies.
    NodePort,
    /// spec.externalIPs: externalTrafficPolicy applies.
    ExternalIp,
    /// status.loadBalancer.ingress[].ip: externalTrafficPolicy applies.
    LoadBalancer,
}

/// One address:port a service port answers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub kind: FrontendKind,
}

/// One endpoint of a service port (from an EndpointSlice), already resolved to the target port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// endpoint.nodeName, if known; compared with this node's name for the Local policies.
    pub node_name: Option<String>,
    /// conditions.ready (absent = true, as kube-proxy reads it).
    pub ready: bool,
    /// conditions.serving (absent = ready).
    pub serving: bool,
    /// conditions.terminating (absent = false).
    pub terminating: bool,
    /// What the endpoint's topology hints say about this node and its zone.
    pub hints: Hints,
}

/// What one kind of EndpointSlice hint (`hints.forNodes` or `hints.forZones`) says about this
/// node: the only facts kube-proxy's topology choice (pkg/proxy/topology.go) reads per endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hint {
    /// The endpoint has no hint of this kind.
    #[default]
    Absent,
    /// It has hints, none naming this node (or this node's zone).
    Elsewhere,
    /// A hint names this node (or this node's zone).
    Here,
}

/// An endpoint's `hints.forNodes` and `hints.forZones`, resolved against this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hints {
    pub node: Hint,
    pub zone: Hint,
}

/// Traffic policy: Cluster uses every eligible backend, Local only this node's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// One Service port with everything the datapath needs to serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    pub external_policy: TrafficPolicy,
    pub internal_policy: TrafficPolicy,
    /// sessionAffinity ClientIP: timeoutSeconds (kube default 10800); None = no affinity.
    pub affinity_timeout_secs: Option<u32>,
    /// spec.healthCheckNodePort (LoadBalancer with externalTrafficPolicy Local): where this
    /// node answers load balancers' health checks for the service.
    pub health_check_node_port: Option<u16>,
    /// spec.loadBalancerSourceRanges (IPv4): the clients its load-balancer frontends accept;
    /// empty = everyone.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
}

/// A cluster node as the overlay needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// The address tunnels are sent to (InternalIP, or flannel's public-ip annotation).
    pub address: Ipv4Addr,
    /// spec.podCIDR(s), IPv4 only.
    pub pod_cidrs: Vec<(Ipv4Addr, u8)>,
    /// flannel.alpha.coreos.com/backend-data VtepMAC, if present.
    pub vtep_mac: Option<[u8; 6]>,
    /// projectcalico.org/IPv4IPIPTunnelAddr, if present.
    pub ipip_tunnel_addr: Option<Ipv4Addr>,
    /// metadata.creationTimestamp, Unix seconds: of two Nodes claiming one range, the older
    /// keeps it (see `node_validation`).
    pub created: Option<i64>,
}

/// A state's service ports, sorted by name, each behind an `Arc`: a source builds its next
/// state from the previous one's `Arc` of every port whose inputs did not change, so comparing
/// or diffing two states (`services::ServiceDelta`) costs a pointer comparison for each
/// unchanged port and a deep one only for the changed ports.
#[derive(Clone, Debug, Default)]
pub struct ServicePorts {
    ports: Vec<Arc<ServicePort>>,
    /// No two ports share a name. Known at construction (the sort sees every neighbour), so a
    /// consumer's merge walk needs no check of 10,000 names per state.
    unique: bool,
}

impl ServicePorts {
    /// Sorts `ports` by name (stable: of two ports with one name the first stays first).
    pub fn new(mut ports: Vec<Arc<ServicePort>>) -> Self {
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        let unique = ports.windows(2).all(|w| w[0].name != w[1].name);
        ServicePorts { ports, unique }
    }

    /// Ports already sorted by name without duplicates (what an incremental source keeps);
    /// checked in debug builds only, so the source does not compare every name per change.
    pub(crate) fn from_sorted_unique(ports: Vec<Arc<ServicePort>>) -> Self {
        debug_assert!(ports.windows(2).all(|w| w[0].name < w[1].name));
        ServicePorts {
            ports,
            unique: true,
        }
    }

    /// Whether no two ports share a name (then the ports are strictly increasing by name).
    pub fn is_unique(&self) -> bool {
        self.unique
    }
}

impl Deref for ServicePorts {
    type Target = [Arc<ServicePort>];

    fn deref(&self) -> &[Arc<ServicePort>] {
        &self.ports
    }
}

/// By value; `Arc`'s equality compares pointers first, so shared ports cost no deep compare.
impl PartialEq for ServicePorts {
    fn eq(&self, other: &Self) -> bool {
        self.ports == other.ports
    }
}

impl Eq for ServicePorts {}

impl From<Vec<ServicePort>> for ServicePorts {
    fn from(ports: Vec<ServicePort>) -> Self {
        ports.into_iter().collect()
    }
}

impl FromIterator<ServicePort> for ServicePorts {
    fn from_iter<I: IntoIterator<Item = ServicePort>>(ports: I) -> Self {
        ServicePorts::new(ports.into_iter().map(Arc::new).collect())
    }
}

impl FromIterator<Arc<ServicePort>> for ServicePorts {
    fn from_iter<I: IntoIterator<Item = Arc<ServicePort>>>(ports: I) -> Self {
        ServicePorts::new(ports.into_iter().collect())
    }
}

/// Everything a source knows at one point in time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub services: ServicePorts,
    pub nodes: Vec<NodeInfo>,
    /// This node's Node object has a deletion timestamp or the cluster autoscaler's
    /// ToBeDeletedByClusterAutoscaler taint: the node-level health check fails (KEP-3836).
    pub node_deleting: bool,
}

/// An IPv4 prefix, host bits cleared (pod CIDRs, service CIDRs, routes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, len: u8) -> Cidr {
        let len = len.min(32);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        Cidr::new(ip, self.len).addr == self.addr
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// "10.96.0.0/12" (host bits are cleared) or a plain address (a /32).
    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, len) = text.split_once('/').unwrap_or((text, "32"));
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{text:?}: not an IPv4 address"))?;
        match len.parse::<u8>() {
            Ok(len) if len <= 32 => Ok(Cidr::new(addr, len)),
            _ => Err(format!("{text:?}: prefix length is not 0..=32")),
        }
    }
}
