//! Translation of the 1.33-1.35 fields: topology hints resolved against this node's zone,
//! healthCheckNodePort, loadBalancerSourceRanges, `--nodeport-addresses`, and the Node's
//! deletion marks (KEP-3836).

use std::net::Ipv4Addr;

use super::{decode, translate, Format, LocalNode, NodePortAddresses, Problem};
use crate::model::{ClusterState, FrontendKind, Hint, Hints, ServicePort};

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn local() -> LocalNode {
    LocalNode {
        name: "n1".into(),
        addresses: vec![ip("192.168.100.1"), ip("10.0.5.1"), ip("172.17.0.1")],
        ..Default::default()
    }
}

fn run_at(yaml: &str, local: &LocalNode) -> (ClusterState, Vec<Problem>) {
    let decoded = decode(yaml, Format::Yaml).expect("test YAML parses");
    assert!(decoded.problems.is_empty(), "{:#?}", decoded.problems);
    translate(&decoded.objects, local)
}

fn clean(yaml: &str) -> ClusterState {
    let (state, problems) = run_at(yaml, &local());
    assert!(problems.is_empty(), "unexpected problems: {problems:#?}");
    state
}

fn service<'a>(state: &'a ClusterState, name: &str) -> &'a ServicePort {
    state
        .services
        .iter()
        .find(|s| s.name.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:#?}", state.services))
}

const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: n1
  labels: {topology.kubernetes.io/zone: zone-a}
status:
  addresses:
  - {type: Hostname, address: n1}
  - {type: ExternalIP, address: 203.0.113.1}
  - {type: InternalIP, address: 192.168.100.1}
"#;

const HINTED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: t}
spec:
  clusterIP: 10.96.0.10
  trafficDistribution: PreferSameZone
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: t, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.244.1.1]
  nodeName: n1
  hints: {forZones: [{name: zone-a}], forNodes: [{name: n1}]}
- addresses: [10.244.2.1]
  nodeName: n2
  hints: {forZones: [{name: zone-a}, {name: zone-b}], forNodes: [{name: n2}]}
- addresses: [10.244.3.1]
  nodeName: n3
  hints: {forZones: []}
"#;

#[test]
fn hints_are_resolved_against_this_node_and_its_zone_label() {
    let state = clean(&format!("{HINTED}---{NODE}"));
    let hints: Vec<(u8, Hints)> = service(&state, "web")
        .backends
        .iter()
        .map(|b| (b.ip.octets()[2], b.hints))
        .collect();
    let h = |node, zone| Hints { node, zone };
    assert_eq!(
        hints,
        [
            (1, h(Hint::Here, Hint::Here)),
            (2, h(Hint::Elsewhere, Hint::Here)),
            (3, h(Hint::Absent, Hint::Absent)),
        ]
    );
    // Without this node's Node object there is no zone: zone hints name nothing here.
    let state = clean(HINTED);
    let zones: Vec<Hint> = service(&state, "web")
        .backends
        .iter()
        .map(|b| b.hints.zone)
        .collect();
    assert_eq!(zones, [Hint::Elsewhere, Hint::Elsewhere, Hint::Absent]);
}

const LB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: t}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [" 198.51.100.0/24", 203.0.113.7/32, 10.1.2.3/8, "2001:db8::/32"]
  ports: [{port: 443, nodePort: 30443}]
status:
  loadBalancer:
    ingress: [{ip: 192.0.2.10}]
"#;

#[test]
fn health_check_node_port_and_source_ranges_of_a_load_balancer() {
    let (state, problems) = run_at(LB, &local());
    let lb = service(&state, "lb");
    assert_eq!(lb.health_check_node_port, Some(32000));
    assert_eq!(
        lb.source_ranges,
        [
            (ip("10.0.0.0"), 8),
            (ip("192.0.2.10"), 32),
            (ip("198.51.100.0"), 24),
            (ip("203.0.113.7"), 32)
        ],
        "sorted, host bits cleared like ParseCIDRSloppy, blanks trimmed; 10.0.0.0/8 holds the \
         node's 10.0.5.1, so the LB IP itself is allowed too (kube-proxy's allowFromNode)"
    );
    // Without a node address in any range, the LB IP is not added.
    let far = LocalNode {
        addresses: vec![ip("192.168.100.1")],
        ..local()
    };
    let (state, _) = run_at(LB, &far);
    assert!(!service(&state, "lb")
        .source_ranges
        .contains(&(ip("192.0.2.10"), 32)));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0]
            .to_string()
            .contains("loadBalancerSourceRanges[3]"),
        "{}",
        problems[0]
    );
}

#[test]
fn health_check_node_port_only_with_external_traffic_policy_local() {
    let cluster = LB.replace(
        "externalTrafficPolicy: Local",
        "externalTrafficPolicy: Cluster",
    );
    let (state, _) = run_at(&cluster, &local());
    assert_eq!(service(&state, "lb").health_check_node_port, None);
    // A NodePort Service has no load balancer: neither field applies.
    let node_port = LB.replace("type: LoadBalancer", "type: NodePort");
    let (state, _) = run_at(&node_port, &local());
    let svc = service(&state, "lb");
    assert_eq!(
        (svc.health_check_node_port, svc.source_ranges.len()),
        (None, 0)
    );
}

#[test]
fn an_unparsable_source_range_skips_the_service_instead_of_opening_it() {
    let bad = LB.replace("203.0.113.7/32", "203.0.113.7/33");
    let (state, problems) = run_at(&bad, &local());
    assert!(state.services.is_empty());
    assert!(
        problems
            .iter()
            .any(|p| p.to_string().contains("loadBalancerSourceRanges[1]")),
        "{problems:#?}"
    );
}

fn node_port_ips(state: &ClusterState) -> Vec<Ipv4Addr> {
    service(state, "lb")
        .frontends
        .iter()
        .filter(|f| f.kind == FrontendKind::NodePort)
        .map(|f| f.ip)
        .collect()
}

#[test]
fn nodeport_addresses_select_like_kube_proxy() {
    let yaml = format!("{LB}---{NODE}");
    let with = |mode: &str| {
        let local = LocalNode {
            nodeport_addresses: NodePortAddresses::parse(mode).unwrap(),
            ..local()
        };
        node_port_ips(&run_at(&yaml, &local).0)
    };
    assert_eq!(
        with(""),
        [ip("10.0.5.1"), ip("172.17.0.1"), ip("192.168.100.1")]
    );
    assert_eq!(
        with("192.168.0.0/16, 10.0.5.0/24"),
        [ip("10.0.5.1"), ip("192.168.100.1")]
    );
    assert_eq!(
        with("fd00::/8"),
        Vec::<Ipv4Addr>::new(),
        "IPv6 CIDRs match no IPv4 address"
    );
    // primary: the Node object's InternalIP, not the ExternalIP listed before it.
    assert_eq!(with("primary"), [ip("192.168.100.1")]);
    // ...and without a Node object, no address at all (kube-proxy waits for the Node).
    let local = LocalNode {
        nodeport_addresses: NodePortAddresses::Primary,
        ..local()
    };
    assert!(node_port_ips(&run_at(LB, &local).0).is_empty());
}

#[test]
fn nodeport_addresses_flag_values() {
    assert_eq!(
        NodePortAddresses::parse("10.0.0.1/8"),
        Ok(NodePortAddresses::Cidrs(vec![(ip("10.0.0.0"), 8)]))
    );
    assert!(NodePortAddresses::parse("10.0.0.0/40").is_err());
    assert!(NodePortAddresses::parse("Primary").is_err());
}

#[test]
fn node_deleting_from_deletion_timestamp_or_autoscaler_taint() {
    assert!(!clean(NODE).node_deleting);
    let tainted = format!(
        "{NODE}spec:\n  taints: [{{key: ToBeDeletedByClusterAutoscaler, value: \"1700000000\", effect: NoSchedule}}]\n"
    );
    assert!(clean(&tainted).node_deleting);
    let deleted = NODE.replace(
        "  name: n1\n",
        "  name: n1\n  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n",
    );
    assert!(clean(&deleted).node_deleting);
    // Another node's marks are not ours.
    let other = tainted.replace("name: n1", "name: n9");
    assert!(!clean(&other).node_deleting);
}
