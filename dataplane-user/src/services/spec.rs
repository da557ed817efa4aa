//! kube-proxy's per-frontend semantics, evaluated once per update so the datapath does no
//! per-packet policy work: which endpoints are eligible, and the flags a frontend carries.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use dataplane_common::lb::{
    BackendValue, ServiceKey, ServiceValue, BE_F_LOCAL, SVC_F_AFFINITY, SVC_F_DROP_IF_EMPTY,
    SVC_F_EXTERNAL, SVC_F_LOCAL_ONLY, SVC_F_MASQUERADE, SVC_F_SOURCE_RANGES,
};

use super::LocalContext;
use crate::model::{Backend, Frontend, FrontendKind, Hint, ServicePort, TrafficPolicy};

/// What one frontend must look like in the maps, minus the ids the table allocates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FrontendSpec {
    /// `SVC_F_*` flags.
    pub flags: u32,
    /// sessionAffinity timeout (0 without `SVC_F_AFFINITY`).
    pub affinity_timeout_secs: u32,
    /// Eligible backends, deduplicated and in [`backend_order`], so an unchanged endpoint set
    /// compares equal to what the maps hold and produces no writes.
    pub backends: Vec<BackendValue>,
}

impl FrontendSpec {
    /// The `SERVICES_V2` value for this spec under the given ids.
    pub fn value(&self, frontend_id: u32, set_id: u32) -> ServiceValue {
        ServiceValue {
            frontend_id,
            set_id,
            count: self.backends.len() as u32,
            flags: self.flags,
            affinity_timeout_secs: self.affinity_timeout_secs,
            _pad: 0,
        }
    }
}

/// The map specs of every frontend of `svc`. A frontend listed twice (same address, port and
/// protocol) is kept once, the first in `Frontend` order, i.e. the most internal kind.
pub(crate) fn frontend_specs(
    svc: &ServicePort,
    local: &LocalContext,
) -> HashMap<ServiceKey, FrontendSpec> {
    let mut frontends = svc.frontends.clone();
    frontends.sort();
    let mut out = HashMap::new();
    for fe in &frontends {
        let key = service_key(fe);
        if out.contains_key(&key) {
            log::warn!(
                "{}: frontend {} listed twice; keeping the first",
                svc.name,
                show_key(&key)
            );
            continue;
        }
        out.insert(key, frontend_spec(svc, fe.kind, local));
    }
    out
}

/// The spec of one frontend of `svc` reached as `kind`.
pub(crate) fn frontend_spec(
    svc: &ServicePort,
    kind: FrontendKind,
    local: &LocalContext,
) -> FrontendSpec {
    let external = kind != FrontendKind::ClusterIp;
    // kube-proxy: internalTrafficPolicy for the ClusterIP, externalTrafficPolicy for the rest.
    let policy = if external {
        svc.external_policy
    } else {
        svc.internal_policy
    };
    let eligible = eligible_backends(&svc.backends, policy, local);
    let mut flags = frontend_flags(external, policy, svc.affinity_timeout_secs.is_some());
    if eligible.is_empty() && has_usable_endpoints(&svc.backends) {
        flags |= SVC_F_DROP_IF_EMPTY;
    }
    if has_source_ranges(svc, kind, local) {
        flags |= SVC_F_SOURCE_RANGES;
    }
    FrontendSpec {
        flags,
        affinity_timeout_secs: svc.affinity_timeout_secs.unwrap_or(0),
        backends: backend_set(&eligible, local),
    }
}

/// The endpoints a frontend under `policy` sends new connections to, as kube-proxy's
/// `CategorizeEndpoints` (pkg/proxy/topology.go) picks them:
/// - Cluster: the ready endpoints the topology hints leave for this node (see [`Topology`]);
///   if none is ready anywhere, the serving-and-terminating ones (KEP-1669), hints ignored;
/// - Local: this node's ready endpoints, else its serving-and-terminating ones; hints never
///   apply (the policy already is the narrowest topology).
pub(crate) fn eligible_backends<'a>(
    backends: &'a [Backend],
    policy: TrafficPolicy,
    local: &LocalContext,
) -> Vec<&'a Backend> {
    let candidates: Vec<&Backend> = match policy {
        TrafficPolicy::Cluster => backends.iter().collect(),
        TrafficPolicy::Local => backends.iter().filter(|b| is_local(b, local)).collect(),
    };
    let topology = match policy {
        TrafficPolicy::Cluster => Topology::from_hints(backends),
        TrafficPolicy::Local => Topology::Any,
    };
    let ready: Vec<&Backend> = candidates
        .iter()
        .copied()
        .filter(|b| b.ready && topology.admits(b))
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .into_iter()
        .filter(|b| b.serving && b.terminating)
        .collect()
}

/// Whether the frontend of `svc` reached as `kind` is restricted to its loadBalancerSourceRanges:
/// the load-balancer IPs (kube-proxy), and the NodePorts too if the node says so.
pub(crate) fn has_source_ranges(
    svc: &ServicePort,
    kind: FrontendKind,
    local: &LocalContext,
) -> bool {
    !svc.source_ranges.is_empty()
        && (kind == FrontendKind::LoadBalancer
            || (kind == FrontendKind::NodePort && local.source_ranges_on_node_ports))
}

/// kube-proxy's hasAnyEndpoints: an endpoint some node may use (ready, or serving and
/// terminating). With none eligible here, this decides DROP (true) over REJECT (false).
pub(crate) fn has_usable_endpoints(backends: &[Backend]) -> bool {
    backends
        .iter()
        .any(|b| b.ready || (b.serving && b.terminating))
}

/// Which endpoints the topology hints leave to a Cluster-policy frontend on this node
/// (kube-proxy's topologyModeFromHints): decided over the ready endpoints, PreferSameNode (GA
/// in 1.35) first, then PreferSameZone; a mode is used only when every ready endpoint carries
/// that kind of hint and at least one names this node (zone), so a node never loses all its
/// endpoints to hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Topology {
    Any,
    SameNode,
    SameZone,
}

impl Topology {
    pub fn from_hints(backends: &[Backend]) -> Topology {
        let ready: Vec<&Backend> = backends.iter().filter(|b| b.ready).collect();
        let usable = |hint: fn(&Backend) -> Hint| {
            !ready.is_empty()
                && ready.iter().all(|b| hint(b) != Hint::Absent)
                && ready.iter().any(|b| hint(b) == Hint::Here)
        };
        if usable(|b| b.hints.node) {
            Topology::SameNode
        } else if usable(|b| b.hints.zone) {
            Topology::SameZone
        } else {
            Topology::Any
        }
    }

    fn admits(self, b: &Backend) -> bool {
        match self {
            Topology::Any => true,
            Topology::SameNode => b.hints.node == Hint::Here,
            Topology::SameZone => b.hints.zone == Hint::Here,
        }
    }
}

/// `SVC_F_*` flags of a frontend.
pub(crate) fn frontend_flags(external: bool, policy: TrafficPolicy, affinity: bool) -> u32 {
    let mut flags = 0;
    if external {
        flags |= SVC_F_EXTERNAL;
        // Cluster: the backend may be remote, so replies must come back through this node.
        if policy == TrafficPolicy::Cluster {
            flags |= SVC_F_MASQUERADE;
        }
    }
    if policy == TrafficPolicy::Local {
        flags |= SVC_F_LOCAL_ONLY;
    }
    if affinity {
        flags |= SVC_F_AFFINITY;
    }
    flags
}

/// Encodes, sorts and deduplicates (by address and port) the eligible endpoints.
fn backend_set(eligible: &[&Backend], local: &LocalContext) -> Vec<BackendValue> {
    let mut set: Vec<BackendValue> = eligible.iter().map(|b| backend_value(b, local)).collect();
    set.sort_by_key(backend_order);
    // The same address:port may come from two EndpointSlices; it is one backend.
    set.dedup_by_key(|b| (b.addr, b.port));
    set
}

fn backend_value(b: &Backend, local: &LocalContext) -> BackendValue {
    BackendValue {
        addr: ip_to_be(b.ip),
        port: b.port.to_be(),
        flags: if is_local(b, local) { BE_F_LOCAL } else { 0 },
    }
}

fn is_local(b: &Backend, local: &LocalContext) -> bool {
    b.node_name.as_deref() == Some(local.node_name.as_str())
}

/// The deterministic order of a backend set: numeric address, then port, then flags.
pub(crate) fn backend_order(b: &BackendValue) -> (Ipv4Addr, u16, u16) {
    (ip_from_be(b.addr), u16::from_be(b.port), b.flags)
}

/// The `SERVICES_V2` key of a frontend (network-order address and port).
pub fn service_key(fe: &Frontend) -> ServiceKey {
    ServiceKey::new(ip_to_be(fe.ip), fe.port.to_be(), fe.protocol.number())
}

/// A deterministic (human) order of frontends: address, port, protocol.
pub(crate) fn key_order(k: &ServiceKey) -> (Ipv4Addr, u16, u8) {
    (ip_from_be(k.addr), u16::from_be(k.port), k.proto)
}

/// `address:port/proto` of a frontend, for logs and listings.
pub(crate) fn show_key(k: &ServiceKey) -> String {
    format!("{}/{}", sock(k.addr, k.port), proto_name(k.proto))
}

/// A network-order address as stored in the maps.
pub(crate) fn ip_to_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The address of a network-order map field.
pub(crate) fn ip_from_be(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

/// address:port of network-order map fields.
pub(crate) fn sock(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip_from_be(addr), u16::from_be(port))
}

/// "tcp", "udp", "icmp" or the protocol number.
pub(crate) fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServicePortName};

    fn local() -> LocalContext {
        LocalContext {
            node_name: "node-a".into(),
            ..Default::default()
        }
    }

    fn ep(ip: [u8; 4], node: &str, ready: bool, serving: bool, terminating: bool) -> Backend {
        Backend {
            ip: Ipv4Addr::from(ip),
            port: 8080,
            node_name: Some(node.into()),
            ready,
            serving,
            terminating,
            hints: Default::default(),
        }
    }

    fn ips(eligible: &[&Backend]) -> Vec<Ipv4Addr> {
        eligible.iter().map(|b| b.ip).collect()
    }

    /// The addresses of the endpoints `policy` lets this node (`local()`) use.
    fn eligible(eps: &[Backend], policy: TrafficPolicy) -> Vec<Ipv4Addr> {
        ips(&eligible_backends(eps, policy, &local()))
    }

    fn svc(frontends: Vec<Frontend>, backends: Vec<Backend>) -> ServicePort {
        ServicePort {
            name: ServicePortName {
                namespace: "ns".into(),
                name: "svc".into(),
                port: String::new(),
            },
            frontends,
            backends,
            external_policy: TrafficPolicy::Cluster,
            internal_policy: TrafficPolicy::Cluster,
            affinity_timeout_secs: None,
            health_check_node_port: None,
            source_ranges: Vec::new(),
        }
    }

    fn fe(kind: FrontendKind) -> Frontend {
        Frontend {
            ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: Protocol::Tcp,
            kind,
        }
    }

    #[test]
    fn ready_endpoints_only_when_any_is_ready() {
        let eps = [
            ep([10, 0, 0, 1], "node-a", true, true, false),
            ep([10, 0, 0, 2], "node-b", false, true, true),
            ep([10, 0, 0, 3], "node-b", false, false, false),
        ];
        assert_eq!(
            eligible(&eps, TrafficPolicy::Cluster),
            [Ipv4Addr::new(10, 0, 0, 1)]
        );
    }

    #[test]
    fn serving_terminating_fallback_when_none_is_ready() {
        let eps = [
            ep([10, 0, 0, 1], "node-a", false, true, true),
            ep([10, 0, 0, 2], "node-b", false, false, true), // terminating, not serving
            ep([10, 0, 0, 3], "node-b", false, false, false), // not ready, not terminating
        ];
        assert_eq!(
            eligible(&eps, TrafficPolicy::Cluster),
            [Ipv4Addr::new(10, 0, 0, 1)]
        );
        assert!(eligible(&eps[1..], TrafficPolicy::Cluster).is_empty());
    }

    #[test]
    fn local_policy_keeps_this_nodes_endpoints() {
        let mut unknown = ep([10, 0, 0, 4], "x", true, true, false);
        unknown.node_name = None;
        let eps = [
            ep([10, 0, 0, 1], "node-a", true, true, false),
            ep([10, 0, 0, 2], "node-b", true, true, false),
            unknown,
        ];
        assert_eq!(
            eligible(&eps, TrafficPolicy::Local),
            [Ipv4Addr::new(10, 0, 0, 1)]
        );
    }

    #[test]
    fn local_policy_falls_back_to_local_terminating_even_if_remote_ready() {
        let eps = [
            ep([10, 0, 0, 1], "node-a", false, true, true),
            ep([10, 0, 0, 2], "node-b", true, true, false),
        ];
        assert_eq!(
            eligible(&eps, TrafficPolicy::Local),
            [Ipv4Addr::new(10, 0, 0, 1)]
        );
        assert!(eligible(&eps[1..], TrafficPolicy::Local).is_empty());
    }

    #[test]
    fn flags_per_frontend_kind_and_policy() {
        let mut s = svc(vec![], vec![]);
        let flags = |s: &ServicePort, k| frontend_spec(s, k, &local()).flags;
        assert_eq!(flags(&s, FrontendKind::ClusterIp), 0);
        for kind in [
            FrontendKind::NodePort,
            FrontendKind::ExternalIp,
            FrontendKind::LoadBalancer,
        ] {
            assert_eq!(
                flags(&s, kind),
                SVC_F_EXTERNAL | SVC_F_MASQUERADE,
                "{kind:?}"
            );
        }
        s.external_policy = TrafficPolicy::Local;
        assert_eq!(flags(&s, FrontendKind::ClusterIp), 0);
        assert_eq!(
            flags(&s, FrontendKind::NodePort),
            SVC_F_EXTERNAL | SVC_F_LOCAL_ONLY
        );
        s.internal_policy = TrafficPolicy::Local;
        s.affinity_timeout_secs = Some(10_800);
        assert_eq!(
            flags(&s, FrontendKind::ClusterIp),
            SVC_F_LOCAL_ONLY | SVC_F_AFFINITY
        );
        let spec = frontend_spec(&s, FrontendKind::LoadBalancer, &local());
        assert_eq!(
            spec.flags,
            SVC_F_EXTERNAL | SVC_F_LOCAL_ONLY | SVC_F_AFFINITY
        );
        assert_eq!(spec.affinity_timeout_secs, 10_800);
    }

    #[test]
    fn policy_follows_frontend_kind() {
        let mut s = svc(vec![], vec![ep([10, 0, 0, 2], "node-b", true, true, false)]);
        s.external_policy = TrafficPolicy::Local;
        // ClusterIP: internal policy (Cluster) keeps the remote endpoint; NodePort does not.
        assert_eq!(
            frontend_spec(&s, FrontendKind::ClusterIp, &local())
                .backends
                .len(),
            1
        );
        assert!(frontend_spec(&s, FrontendKind::NodePort, &local())
            .backends
            .is_empty());
    }

    #[test]
    fn backend_set_is_sorted_deduplicated_and_flags_local() {
        let eps = vec![
            ep([10, 244, 2, 16], "node-b", true, true, false),
            ep([10, 244, 1, 19], "node-a", true, true, false),
            ep([10, 244, 2, 15], "node-b", true, true, false),
            ep([10, 244, 1, 19], "node-a", true, true, false),
        ];
        let mut reversed = eps.clone();
        reversed.reverse();
        let a = frontend_spec(&svc(vec![], eps), FrontendKind::ClusterIp, &local());
        let b = frontend_spec(&svc(vec![], reversed), FrontendKind::ClusterIp, &local());
        assert_eq!(a, b, "the set must not depend on input order");
        let got: Vec<_> = a
            .backends
            .iter()
            .map(|b| (sock(b.addr, b.port), b.flags))
            .collect();
        assert_eq!(
            got,
            [
                ("10.244.1.19:8080".parse().unwrap(), BE_F_LOCAL),
                ("10.244.2.15:8080".parse().unwrap(), 0),
                ("10.244.2.16:8080".parse().unwrap(), 0),
            ]
        );
    }

    #[test]
    fn keys_are_network_order() {
        let key = service_key(&fe(FrontendKind::ClusterIp));
        assert_eq!(key.addr.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!(key.proto, 6);
        assert_eq!(show_key(&key), "10.96.0.10:80/tcp");
    }

    #[test]
    fn duplicate_frontends_are_kept_once() {
        let s = svc(
            vec![fe(FrontendKind::ExternalIp), fe(FrontendKind::ClusterIp)],
            vec![],
        );
        let specs = frontend_specs(&s, &local());
        assert_eq!(specs.len(), 1);
        assert_eq!(
            specs.values().next().unwrap().flags,
            0,
            "the ClusterIP kind wins"
        );
    }
}
