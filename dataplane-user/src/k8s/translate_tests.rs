//! Translation tests: manifests in, exact [`ClusterState`] and problems out.

use std::net::Ipv4Addr;

use serde_json::Value;

use super::{decode, translate, Format, LocalNode, Objects, Problem, Severity};
use crate::model::{
    Backend, ClusterState, Frontend, FrontendKind, NodeInfo, Protocol, ServicePort,
    ServicePortName, TrafficPolicy,
};

/// docs/seeds/k8s-service-iptables-chains.txt as kubectl prints it.
const SEED: &str = include_str!("testdata/seed.yaml");

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

/// Node k8s-2 of the seed cluster.
fn local() -> LocalNode {
    LocalNode {
        name: "k8s-2".into(),
        addresses: vec![ip("192.168.100.102")],
        ..Default::default()
    }
}

/// Decodes and translates like a source does: decode problems and translate problems together.
fn run(yaml: &str) -> (ClusterState, Vec<Problem>) {
    run_at(yaml, &local())
}

fn run_at(yaml: &str, local: &LocalNode) -> (ClusterState, Vec<Problem>) {
    let decoded = decode(yaml, Format::Yaml).expect("test YAML parses");
    let (state, mut problems) = translate(&decoded.objects, local);
    problems.extend(decoded.problems);
    problems.sort();
    (state, problems)
}

/// Translates YAML that must have no problems at all.
fn clean(yaml: &str) -> ClusterState {
    let (state, problems) = run(yaml);
    assert!(problems.is_empty(), "unexpected problems: {problems:#?}");
    state
}

fn name(namespace: &str, service: &str, port: &str) -> ServicePortName {
    ServicePortName {
        namespace: namespace.into(),
        name: service.into(),
        port: port.into(),
    }
}

fn port<'a>(
    state: &'a ClusterState,
    namespace: &str,
    service: &str,
    port: &str,
) -> &'a ServicePort {
    let want = name(namespace, service, port);
    state
        .services
        .iter()
        .find(|s| s.name == want)
        .unwrap_or_else(|| panic!("no {want} in {:#?}", state.services))
}

fn has_port(state: &ClusterState, namespace: &str, service: &str) -> bool {
    state
        .services
        .iter()
        .any(|s| s.name.namespace == namespace && s.name.name == service)
}

fn tcp(address: &str, port: u16, kind: FrontendKind) -> Frontend {
    Frontend {
        ip: ip(address),
        port,
        protocol: Protocol::Tcp,
        kind,
    }
}

fn ready(address: &str, port: u16, node: &str) -> Backend {
    Backend {
        ip: ip(address),
        port,
        node_name: Some(node.into()),
        ready: true,
        serving: true,
        terminating: false,
        hints: Default::default(),
    }
}

fn seed_backends() -> Vec<Backend> {
    vec![
        ready("10.244.1.19", 8080, "k8s-2"),
        ready("10.244.2.15", 8080, "k8s-3"),
        ready("10.244.2.16", 8080, "k8s-3"),
    ]
}

fn flannel_node(name: &str, address: &str, cidr: &str, mac_last: u8) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        address: ip(address),
        pod_cidrs: vec![(ip(cidr), 24)],
        vtep_mac: Some([0x6e, 0xd4, 0x3a, 0x1c, 0x9b, mac_last]),
        ipip_tunnel_addr: None,
        created: None,
    }
}

#[test]
fn seed_cluster_translates_exactly() {
    let state = clean(SEED);
    let expected = ClusterState {
        services: vec![
            ServicePort {
                name: name("test001", "app-svc-clusterip", ""),
                frontends: vec![tcp("10.109.117.159", 80, FrontendKind::ClusterIp)],
                backends: seed_backends(),
                external_policy: TrafficPolicy::Cluster,
                internal_policy: TrafficPolicy::Cluster,
                affinity_timeout_secs: None,
                health_check_node_port: None,
                source_ranges: Vec::new(),
            },
            ServicePort {
                name: name("test001", "app-svc-nodeport", ""),
                frontends: vec![
                    tcp("10.111.7.86", 80, FrontendKind::ClusterIp),
                    tcp("192.168.100.102", 30080, FrontendKind::NodePort),
                ],
                backends: seed_backends(),
                external_policy: TrafficPolicy::Cluster,
                internal_policy: TrafficPolicy::Cluster,
                affinity_timeout_secs: None,
                health_check_node_port: None,
                source_ranges: Vec::new(),
            },
        ],
        nodes: vec![
            flannel_node("k8s-1", "192.168.100.101", "10.244.0.0", 1),
            flannel_node("k8s-2", "192.168.100.102", "10.244.1.0", 2),
            flannel_node("k8s-3", "192.168.100.103", "10.244.2.0", 3),
        ],
        node_deleting: false,
    };
    assert_eq!(state, expected);
}

#[test]
fn node_port_answers_on_every_local_address() {
    let local = LocalNode {
        name: "k8s-1".into(),
        addresses: vec![ip("192.168.100.101"), ip("10.244.0.1"), ip("172.17.0.1")],
        ..Default::default()
    };
    let (state, problems) = run_at(SEED, &local);
    assert!(problems.is_empty());
    let frontends = &port(&state, "test001", "app-svc-nodeport", "").frontends;
    assert_eq!(
        frontends,
        &vec![
            tcp("10.111.7.86", 80, FrontendKind::ClusterIp),
            tcp("10.244.0.1", 30080, FrontendKind::NodePort),
            tcp("172.17.0.1", 30080, FrontendKind::NodePort),
            tcp("192.168.100.101", 30080, FrontendKind::NodePort),
        ]
    );
}

#[test]
fn output_does_not_depend_on_input_order() {
    let forward = decode(SEED, Format::Yaml).unwrap().objects;
    let mut backward = forward.clone();
    backward.services.reverse();
    backward.endpoint_slices.reverse();
    backward.nodes.reverse();
    assert_eq!(
        translate(&forward, &local()),
        translate(&backward, &local())
    );
}

const MULTI_PORT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.10.10
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9090, targetPort: metrics}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: dns-tcp}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: metrics, port: 9102, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
# Same name as the UDP port but TCP: must not serve the UDP service port.
- {name: dns, port: 5454, protocol: TCP}
endpoints:
- addresses: [10.244.1.5]
  nodeName: k8s-2
"#;

#[test]
fn multi_port_service_matches_slice_ports_by_name_and_protocol() {
    let state = clean(MULTI_PORT);
    assert_eq!(state.services.len(), 4);
    let target = |port_name: &str| {
        port(&state, "shop", "web", port_name)
            .backends
            .iter()
            .map(|b| b.port)
            .collect::<Vec<_>>()
    };
    assert_eq!(target("http"), [8080]);
    assert_eq!(target("metrics"), [9102]);
    assert_eq!(target("dns"), [5353]);
    // The slice has no TCP port named dns-tcp: no backends (kube-proxy would reject traffic).
    assert_eq!(target("dns-tcp"), Vec::<u16>::new());
    let dns = port(&state, "shop", "web", "dns");
    assert_eq!(
        dns.frontends,
        [Frontend {
            ip: ip("10.96.10.10"),
            port: 53,
            protocol: Protocol::Udp,
            kind: FrontendKind::ClusterIp
        }]
    );
    // Sorted by port name.
    let names: Vec<_> = state
        .services
        .iter()
        .map(|s| s.name.port.as_str())
        .collect();
    assert_eq!(names, ["dns", "dns-tcp", "http", "metrics"]);
}

const SEVERAL_SLICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: prod}
spec:
  clusterIP: 10.96.20.20
  ports: [{name: https, port: 443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: prod, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints:
- {addresses: [10.244.3.1], nodeName: k8s-3}
- {addresses: [10.244.1.1], nodeName: k8s-1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-2, namespace: prod, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints:
- {addresses: [10.244.2.1], nodeName: k8s-2}
# Also in api-1, with another node name: listed once, and the local copy wins as in kube-proxy.
- {addresses: [10.244.1.1], nodeName: k8s-2}
---
# Same service name, other namespace: not this service's.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-x, namespace: staging, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [10.244.9.9]}]
---
# No service-name label: nobody's.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: stray, namespace: prod}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [10.244.8.8]}]
---
# The slice of a headless Service, which kube-proxy's selector drops.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-h, namespace: prod, labels: {kubernetes.io/service-name: api, service.kubernetes.io/headless: ""}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [10.244.7.7]}]
---
# FQDN slices are ignored by kube-proxy.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-fqdn, namespace: prod, labels: {kubernetes.io/service-name: api}}
addressType: FQDN
ports: [{name: https, port: 8443}]
endpoints: [{addresses: [api.example.com]}]
"#;

#[test]
fn endpoints_come_from_every_slice_of_the_service() {
    let state = clean(SEVERAL_SLICES);
    let backends = &port(&state, "prod", "api", "https").backends;
    assert_eq!(
        backends,
        &vec![
            ready("10.244.1.1", 8443, "k8s-2"),
            ready("10.244.2.1", 8443, "k8s-2"),
            ready("10.244.3.1", 8443, "k8s-3")
        ]
    );
}

const SKIPPED_SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: default}
spec:
  clusterIP: None
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  type: ExternalName
  externalName: db.example.com
---
apiVersion: v1
kind: Service
metadata: {name: other-proxy, namespace: default, labels: {service.kubernetes.io/service-proxy-name: cilium}}
spec:
  clusterIP: 10.96.30.30
  ports: [{port: 80}]
---
# Not allocated yet (clusterIP empty): kube-proxy waits.
apiVersion: v1
kind: Service
metadata: {name: pending, namespace: default}
spec:
  clusterIP: ""
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: headless-1, namespace: default, labels: {kubernetes.io/service-name: headless}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.244.1.7]}]
"#;

#[test]
fn headless_external_name_other_proxy_and_pending_services_are_skipped_quietly() {
    assert_eq!(clean(SKIPPED_SERVICES), ClusterState::default());
}

const DUAL_STACK: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: net}
spec:
  type: LoadBalancer
  clusterIP: 10.96.40.40
  clusterIPs: [10.96.40.40, "fd00:10:96::4040"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  externalIPs: [203.0.113.7, "2001:db8::7"]
  ports: [{name: http, port: 80, nodePort: 31080}]
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.9, ipMode: VIP}, {ip: "2001:db8::9"}]
---
# IPv6 primary family: the IPv4 cluster IP is second.
apiVersion: v1
kind: Service
metadata: {name: v6-first, namespace: net}
spec:
  clusterIP: "fd00:10:96::41"
  clusterIPs: ["fd00:10:96::41", 10.96.40.41]
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: v6-only, namespace: net}
spec:
  clusterIP: "fd00:10:96::42"
  clusterIPs: ["fd00:10:96::42"]
  ipFamilies: [IPv6]
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-v4, namespace: net, labels: {kubernetes.io/service-name: dual}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.1.40]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-v6, namespace: net, labels: {kubernetes.io/service-name: dual}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ["fd00:10:244:1::40"]}]
---
apiVersion: v1
kind: Node
metadata: {name: n1}
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]
status:
  addresses:
  - {type: InternalIP, address: 192.168.100.102}
  - {type: InternalIP, address: "fd00:192:168:100::102"}
"#;

#[test]
fn dual_stack_objects_keep_ipv4_and_note_ipv6_once_per_object() {
    let (state, problems) = run(DUAL_STACK);
    let dual = port(&state, "net", "dual", "http");
    assert_eq!(
        dual.frontends,
        [
            tcp("10.96.40.40", 80, FrontendKind::ClusterIp),
            tcp("192.168.100.102", 31080, FrontendKind::NodePort),
            tcp("198.51.100.9", 80, FrontendKind::LoadBalancer),
            tcp("203.0.113.7", 80, FrontendKind::ExternalIp),
        ]
    );
    assert_eq!(
        dual.backends.iter().map(|b| b.ip).collect::<Vec<_>>(),
        [ip("10.244.1.40")]
    );
    assert_eq!(
        port(&state, "net", "v6-first", "").frontends,
        [tcp("10.96.40.41", 80, FrontendKind::ClusterIp)]
    );
    assert!(!has_port(&state, "net", "v6-only"));
    assert_eq!(state.nodes[0].pod_cidrs, [(ip("10.244.1.0"), 24)]);
    assert_eq!(state.nodes[0].address, ip("192.168.100.102"));

    let mut summary: Vec<_> = problems
        .iter()
        .map(|p| (p.severity, p.kind, p.object.as_str(), p.field.as_str()))
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            (
                Severity::Unsupported,
                "EndpointSlice",
                "net/dual-v6",
                "addressType"
            ),
            (
                Severity::Unsupported,
                "Node",
                "n1",
                "status.addresses[1].address, spec.podCIDRs[1]"
            ),
            (
                Severity::Unsupported,
                "Service",
                "net/dual",
                "spec.clusterIPs[1], spec.externalIPs[1], status.loadBalancer.ingress[1].ip"
            ),
            (
                Severity::Unsupported,
                "Service",
                "net/v6-first",
                "spec.clusterIPs[0]"
            ),
            (
                Severity::Unsupported,
                "Service",
                "net/v6-only",
                "spec.clusterIPs[0]"
            ),
        ]
    );
}

const POLICIES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: local-np, namespace: p}
spec:
  type: NodePort
  clusterIP: 10.96.50.1
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  ports: [{port: 80, nodePort: 30001}]
---
# ETP Local on a ClusterIP Service without externalIPs means nothing (kube-proxy's
# ExternalPolicyLocal); ITP still applies.
apiVersion: v1
kind: Service
metadata: {name: local-cip, namespace: p}
spec:
  clusterIP: 10.96.50.2
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  ports: [{port: 80}]
---
# externalIPs make a ClusterIP Service externally reachable.
apiVersion: v1
kind: Service
metadata: {name: local-ext, namespace: p}
spec:
  clusterIP: 10.96.50.3
  externalIPs: [203.0.113.50]
  externalTrafficPolicy: Local
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky-default, namespace: p}
spec:
  clusterIP: 10.96.50.4
  sessionAffinity: ClientIP
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky-60, namespace: p}
spec:
  clusterIP: 10.96.50.5
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: not-sticky, namespace: p}
spec:
  clusterIP: 10.96.50.6
  sessionAffinity: None
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 80}]
"#;

#[test]
fn traffic_policies_and_affinity() {
    let state = clean(POLICIES);
    let policies = |svc: &str| {
        let p = port(&state, "p", svc, "");
        (
            p.external_policy,
            p.internal_policy,
            p.affinity_timeout_secs,
        )
    };
    use TrafficPolicy::{Cluster, Local};
    assert_eq!(policies("local-np"), (Local, Local, None));
    assert_eq!(policies("local-cip"), (Cluster, Local, None));
    assert_eq!(policies("local-ext"), (Local, Cluster, None));
    assert_eq!(policies("sticky-default"), (Cluster, Cluster, Some(10800)));
    assert_eq!(policies("sticky-60"), (Cluster, Cluster, Some(60)));
    assert_eq!(policies("not-sticky"), (Cluster, Cluster, None));
}

const CONDITIONS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: rolling, namespace: c}
spec:
  clusterIP: 10.96.60.1
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: rolling-1, namespace: c, labels: {kubernetes.io/service-name: rolling}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
# No conditions at all: ready, serving, not terminating.
- {addresses: [10.244.1.1]}
# Terminating but still serving (graceful shutdown).
- {addresses: [10.244.1.2], conditions: {ready: false, serving: true, terminating: true}}
# Not ready, serving absent: serving follows ready.
- {addresses: [10.244.1.3], conditions: {ready: false}}
# Terminating and done serving.
- {addresses: [10.244.1.4], conditions: {ready: false, serving: false, terminating: true}}
"#;

#[test]
fn endpoint_conditions_use_the_api_defaults() {
    let state = clean(CONDITIONS);
    let flags: Vec<_> = port(&state, "c", "rolling", "")
        .backends
        .iter()
        .map(|b| {
            (
                b.ip.octets()[3],
                b.ready,
                b.serving,
                b.terminating,
                b.node_name.clone(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            (1, true, true, false, None),
            (2, false, true, true, None),
            (3, false, false, false, None),
            (4, false, false, true, None)
        ]
    );
}

const LOAD_BALANCER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: l}
spec:
  type: LoadBalancer
  clusterIP: 10.96.70.1
  allocateLoadBalancerNodePorts: false
  ports: [{port: 443}]
status:
  loadBalancer:
    ingress:
    - {ip: 198.51.100.1}
    # The load balancer proxies to node ports itself: kube-proxy does not program its IP.
    - {ip: 198.51.100.2, ipMode: Proxy}
    - {hostname: lb.example.com}
"#;

#[test]
fn load_balancer_ingress_ips_except_proxy_mode() {
    let state = clean(LOAD_BALANCER);
    assert_eq!(
        port(&state, "l", "lb", "").frontends,
        [
            tcp("10.96.70.1", 443, FrontendKind::ClusterIp),
            tcp("198.51.100.1", 443, FrontendKind::LoadBalancer)
        ]
    );
}

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: calico-1
  creationTimestamp: "2024-01-02T03:04:05Z"
  annotations:
    projectcalico.org/IPv4Address: 192.168.100.111/24
    projectcalico.org/IPv4IPIPTunnelAddr: 192.168.208.192
spec: {podCIDR: 10.244.5.0/24}
status:
  addresses: [{type: InternalIP, address: 10.0.0.111}]
---
# flannel host-gw writes backend-data null.
apiVersion: v1
kind: Node
metadata:
  name: hostgw-1
  annotations:
    flannel.alpha.coreos.com/backend-data: "null"
    flannel.alpha.coreos.com/backend-type: host-gw
spec: {podCIDRs: [10.244.6.0/24]}
status:
  addresses:
  - {type: Hostname, address: hostgw-1}
  - {type: ExternalIP, address: 203.0.113.66}
  - {type: InternalIP, address: 192.168.100.66}
---
# A node without pod CIDRs yet is still a node.
apiVersion: v1
kind: Node
metadata: {name: bare-1}
status:
  addresses: [{type: InternalIP, address: 192.168.100.77}]
"#;

#[test]
fn nodes_from_calico_flannel_and_plain_addresses() {
    let state = clean(NODES);
    assert_eq!(
        state.nodes,
        [
            NodeInfo {
                name: "bare-1".into(),
                address: ip("192.168.100.77"),
                pod_cidrs: vec![],
                vtep_mac: None,
                ipip_tunnel_addr: None,
                created: None,
            },
            NodeInfo {
                name: "calico-1".into(),
                address: ip("192.168.100.111"),
                pod_cidrs: vec![(ip("10.244.5.0"), 24)],
                vtep_mac: None,
                ipip_tunnel_addr: Some(ip("192.168.208.192")),
                created: Some(1704164645),
            },
            NodeInfo {
                name: "hostgw-1".into(),
                address: ip("192.168.100.66"),
                pod_cidrs: vec![(ip("10.244.6.0"), 24)],
                vtep_mac: None,
                ipip_tunnel_addr: None,
                created: None,
            },
        ]
    );
}

#[test]
fn sctp_ports_are_skipped_with_a_note_and_the_rest_served() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: sig, namespace: t}
spec:
  clusterIP: 10.96.80.1
  ports: [{name: sctp, port: 3868, protocol: SCTP}, {name: tcp, port: 3868}]
"#;
    let (state, problems) = run(yaml);
    assert_eq!(
        state
            .services
            .iter()
            .map(|s| s.name.port.as_str())
            .collect::<Vec<_>>(),
        ["tcp"]
    );
    assert_eq!(problems.len(), 1);
    assert_eq!(
        (problems[0].severity, problems[0].field.as_str()),
        (Severity::Unsupported, "spec.ports[0].protocol")
    );
}

/// One invalid object (appended to the seed cluster) and the problem it must produce.
struct BadCase {
    yaml: &'static str,
    kind: &'static str,
    object: &'static str,
    field: &'static str,
    /// A word the message must contain.
    says: &'static str,
}

const fn bad(
    kind: &'static str,
    object: &'static str,
    field: &'static str,
    says: &'static str,
    yaml: &'static str,
) -> BadCase {
    BadCase {
        yaml,
        kind,
        object,
        field,
        says,
    }
}

const BAD_CASES: &[BadCase] = &[
    bad("Service", "bad/ip", "spec.clusterIP", "10.0.0.300", "
apiVersion: v1
kind: Service
metadata: {name: ip, namespace: bad}
spec: {clusterIP: 10.0.0.300, ports: [{port: 80}]}"),
    bad("Service", "bad/ips", "spec.clusterIPs[0]", "not an IP", "
apiVersion: v1
kind: Service
metadata: {name: ips, namespace: bad}
spec: {clusterIPs: [ten.0.0.1], ports: [{port: 80}]}"),
    bad("Service", "bad/port0", "spec.ports[0].port", "port number", "
apiVersion: v1
kind: Service
metadata: {name: port0, namespace: bad}
spec: {clusterIP: 10.96.90.1, ports: [{port: 0}]}"),
    bad("Service", "bad/port-range", "spec.ports[1].port", "70000", "
apiVersion: v1
kind: Service
metadata: {name: port-range, namespace: bad}
spec: {clusterIP: 10.96.90.2, ports: [{name: a, port: 80}, {name: b, port: 70000}]}"),
    bad("Service", "bad/nodeport", "spec.ports[0].nodePort", "-5", "
apiVersion: v1
kind: Service
metadata: {name: nodeport, namespace: bad}
spec: {type: NodePort, clusterIP: 10.96.90.3, ports: [{port: 80, nodePort: -5}]}"),
    bad("Service", "bad/proto", "spec.ports[0].protocol", "HTTP", "
apiVersion: v1
kind: Service
metadata: {name: proto, namespace: bad}
spec: {clusterIP: 10.96.90.4, ports: [{port: 80, protocol: HTTP}]}"),
    bad("Service", "bad/port-type", "spec.ports[0].port", "invalid type", "
apiVersion: v1
kind: Service
metadata: {name: port-type, namespace: bad}
spec: {clusterIP: 10.96.90.5, ports: [{port: eighty}]}"),
    // k8s-openapi decodes a missing port as 0.
    bad("Service", "bad/no-port", "spec.ports[0].port", "not a port number", "
apiVersion: v1
kind: Service
metadata: {name: no-port, namespace: bad}
spec: {clusterIP: 10.96.90.6, ports: [{name: http}]}"),
    bad("Service", "bad/no-ports", "spec.ports", "at least one port", "
apiVersion: v1
kind: Service
metadata: {name: no-ports, namespace: bad}
spec: {clusterIP: 10.96.90.7}"),
    bad("Service", "bad/dup-name", "spec.ports[1].name", "duplicate", "
apiVersion: v1
kind: Service
metadata: {name: dup-name, namespace: bad}
spec: {clusterIP: 10.96.90.8, ports: [{name: a, port: 80}, {name: a, port: 81}]}"),
    bad("Service", "bad/dup-port", "spec.ports[1].port", "duplicate", "
apiVersion: v1
kind: Service
metadata: {name: dup-port, namespace: bad}
spec: {clusterIP: 10.96.90.9, ports: [{name: a, port: 80}, {name: b, port: 80}]}"),
    bad("Service", "bad/ext", "spec.externalIPs[1]", "not an IP", "
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: bad}
spec: {clusterIP: 10.96.90.10, externalIPs: [203.0.113.1, nope], ports: [{port: 80}]}"),
    bad("Service", "bad/lb", "status.loadBalancer.ingress[0].ip", "not an IP", "
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: bad}
spec: {type: LoadBalancer, clusterIP: 10.96.90.11, ports: [{port: 80, nodePort: 30011}]}
status: {loadBalancer: {ingress: [{ip: 1.2.3}]}}"),
    bad("Service", "bad/type", "spec.type", "Sideways", "
apiVersion: v1
kind: Service
metadata: {name: type, namespace: bad}
spec: {type: Sideways, clusterIP: 10.96.90.12, ports: [{port: 80}]}"),
    bad("Service", "bad/etp", "spec.externalTrafficPolicy", "Global", "
apiVersion: v1
kind: Service
metadata: {name: etp, namespace: bad}
spec: {type: NodePort, externalTrafficPolicy: Global, clusterIP: 10.96.90.13, ports: [{port: 80, nodePort: 30013}]}"),
    bad("Service", "bad/itp", "spec.internalTrafficPolicy", "Nearby", "
apiVersion: v1
kind: Service
metadata: {name: itp, namespace: bad}
spec: {internalTrafficPolicy: Nearby, clusterIP: 10.96.90.14, ports: [{port: 80}]}"),
    bad("Service", "bad/affinity", "spec.sessionAffinity", "Cookie", "
apiVersion: v1
kind: Service
metadata: {name: affinity, namespace: bad}
spec: {sessionAffinity: Cookie, clusterIP: 10.96.90.15, ports: [{port: 80}]}"),
    bad("Service", "bad/timeout", "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "out of range", "
apiVersion: v1
kind: Service
metadata: {name: timeout, namespace: bad}
spec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, clusterIP: 10.96.90.16, ports: [{port: 80}]}"),
    bad("Service", "bad/<unnamed>", "metadata.name", "missing", "
apiVersion: v1
kind: Service
metadata: {namespace: bad}
spec: {clusterIP: 10.96.90.17, ports: [{port: 80}]}"),
    bad("Service", "test001/app-svc-clusterip", "metadata.name", "duplicate", "
apiVersion: v1
kind: Service
metadata: {name: app-svc-clusterip, namespace: test001}
spec: {clusterIP: 10.96.90.18, ports: [{port: 80}]}"),
    // A bad slice of a seed service: that slice is skipped, the seed's own slice still applies.
    bad("EndpointSlice", "test001/extra", "endpoints[1].addresses[0]", "not an IPv4", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.50]}, {addresses: [\"fd00::50\"]}]"),
    bad("EndpointSlice", "test001/extra", "endpoints[0].addresses", "no address", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: []}]"),
    bad("EndpointSlice", "test001/extra", "ports[0].port", "port number", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPv4
ports: [{port: 0}]
endpoints: [{addresses: [10.244.1.50]}]"),
    bad("EndpointSlice", "test001/extra", "ports[0].protocol", "QUIC", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPv4
ports: [{port: 8080, protocol: QUIC}]
endpoints: [{addresses: [10.244.1.50]}]"),
    bad("EndpointSlice", "test001/extra", "addressType", "IPX", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPX
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.50]}]"),
    bad("EndpointSlice", "test001/extra", "addressType", "missing", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.50]}]"),
    bad("EndpointSlice", "test001/extra", "endpoints[0].conditions.ready", "invalid type", "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: extra, namespace: test001, labels: {kubernetes.io/service-name: app-svc-clusterip}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.50], conditions: {ready: maybe}}]"),
    bad("Node", "n-cidr", "spec.podCIDR", "not an address/prefix", "
apiVersion: v1
kind: Node
metadata: {name: n-cidr}
spec: {podCIDR: 10.244.9.0}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-hostbits", "spec.podCIDRs[0]", "host bits", "
apiVersion: v1
kind: Node
metadata: {name: n-hostbits}
spec: {podCIDRs: [10.244.9.1/24]}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-noaddr", "status.addresses", "no IPv4 InternalIP", "
apiVersion: v1
kind: Node
metadata: {name: n-noaddr}
spec: {podCIDR: 10.244.9.0/24}
status: {addresses: [{type: Hostname, address: n-noaddr}]}"),
    bad("Node", "n-badaddr", "status.addresses[0].address", "not an IP", "
apiVersion: v1
kind: Node
metadata: {name: n-badaddr}
status: {addresses: [{type: InternalIP, address: 192.168.100}]}"),
    bad("Node", "n-pubip", "metadata.annotations[flannel.alpha.coreos.com/public-ip]", "not an IPv4", "
apiVersion: v1
kind: Node
metadata: {name: n-pubip, annotations: {flannel.alpha.coreos.com/public-ip: \"fd00::9\"}}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-json", "metadata.annotations[flannel.alpha.coreos.com/backend-data]", "not JSON", "
apiVersion: v1
kind: Node
metadata: {name: n-json, annotations: {flannel.alpha.coreos.com/backend-data: \"{VNI: 1\"}}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-mac", "metadata.annotations[flannel.alpha.coreos.com/backend-data].VtepMAC", "not a MAC", "
apiVersion: v1
kind: Node
metadata: {name: n-mac, annotations: {flannel.alpha.coreos.com/backend-data: '{\"VNI\":1,\"VtepMAC\":\"6e:d4:3a:1c:9b\"}'}}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-calico", "metadata.annotations[projectcalico.org/IPv4Address]", "address/prefix", "
apiVersion: v1
kind: Node
metadata: {name: n-calico, annotations: {projectcalico.org/IPv4Address: 192.168.100.9}}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "n-tunl", "metadata.annotations[projectcalico.org/IPv4IPIPTunnelAddr]", "not an IP", "
apiVersion: v1
kind: Node
metadata: {name: n-tunl, annotations: {projectcalico.org/IPv4IPIPTunnelAddr: tunl0}}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
    bad("Node", "k8s-1", "metadata.name", "duplicate", "
apiVersion: v1
kind: Node
metadata: {name: k8s-1}
status: {addresses: [{type: InternalIP, address: 192.168.100.9}]}"),
];

#[test]
fn every_invalid_object_is_named_with_its_field_and_the_rest_still_applies() {
    let baseline = clean(SEED);
    for case in BAD_CASES {
        let yaml = format!("{SEED}\n---{}\n", case.yaml);
        let (state, problems) = run(&yaml);
        let context = format!(
            "case {}/{} {}: {problems:#?}",
            case.kind, case.object, case.field
        );
        assert_eq!(problems.len(), 1, "{context}");
        let problem = &problems[0];
        assert_eq!(
            (
                problem.severity,
                problem.kind,
                problem.object.as_str(),
                problem.field.as_str()
            ),
            (Severity::Invalid, case.kind, case.object, case.field),
            "{context}"
        );
        assert!(problem.message.contains(case.says), "{context}");
        // The log line names the object and the field.
        let line = problem.to_string();
        assert!(
            line.contains(case.object) && line.contains(case.field),
            "{line}"
        );
        // The invalid object added nothing and removed nothing.
        assert_eq!(state, baseline, "{context}");
    }
}

/// Every way of breaking one field of the seed cluster (wrong type, null, empty, negative,
/// huge, nonsense) must give problems, never a panic, and never lose the objects it did not
/// touch (checked by counting).
#[test]
fn no_input_makes_translation_panic() {
    let documents = super::documents(SEED, Format::Yaml).unwrap();
    assert_eq!(documents.len(), 1);
    let replacements = [
        Value::Null,
        Value::from(""),
        Value::from(-1),
        Value::from(70000),
        Value::from(i64::MAX),
        Value::from("x/y:z"),
        Value::from("None"),
        Value::Array(vec![]),
        Value::Object(Default::default()),
        Value::from(true),
    ];
    let mut paths = Vec::new();
    collect_paths(&documents[0], &mut Vec::new(), &mut paths);
    assert!(paths.len() > 150, "only {} paths", paths.len());
    let local = local();
    let mut runs = 0;
    for path in &paths {
        for replacement in &replacements {
            let mut document = documents[0].clone();
            *pointer_mut(&mut document, path) = replacement.clone();
            let text = serde_json::to_string(&document).unwrap();
            let decoded = decode(&text, Format::Json).unwrap();
            let _ = translate(&decoded.objects, &local);
            runs += 1;
        }
    }
    assert_eq!(runs, paths.len() * replacements.len());
}

/// JSON-pointer-like paths of every value in `value` (objects and arrays included).
fn collect_paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if !prefix.is_empty() {
        out.push(prefix.clone());
    }
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return,
    };
    for (key, child) in children {
        prefix.push(key);
        collect_paths(child, prefix, out);
        prefix.pop();
    }
}

fn pointer_mut<'a>(value: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(value, |v, key| match v {
        Value::Object(map) => map.get_mut(key).unwrap(),
        Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
        _ => unreachable!("paths only lead through objects and arrays"),
    })
}

#[test]
fn empty_objects_give_an_empty_state() {
    assert_eq!(
        translate(&Objects::default(), &local()),
        (ClusterState::default(), vec![])
    );
}
