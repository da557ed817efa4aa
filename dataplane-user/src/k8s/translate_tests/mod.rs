//! Translation tests: manifests in, exact [`ClusterState`] and problems out. General cases
//! here; EndpointSlices in `endpoints`, Nodes in `nodes`, invalid input in `invalid`.

use std::net::Ipv4Addr;

use super::{decode, translate, Format, LocalNode, Objects, Problem, Severity};
use crate::model::{
    Backend, ClusterState, Frontend, FrontendKind, NodeInfo, Protocol, ServicePort,
    ServicePortName, TrafficPolicy,
};

mod endpoints;
mod invalid;
mod nodes;

/// docs/seeds/k8s-service-iptables-chains.txt as kubectl prints it.
const SEED: &str = include_str!("../testdata/seed.yaml");

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
        ]
        .into(),
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

#[test]
fn empty_objects_give_an_empty_state() {
    assert_eq!(
        translate(&Objects::default(), &local()),
        (ClusterState::default(), vec![])
    );
}
