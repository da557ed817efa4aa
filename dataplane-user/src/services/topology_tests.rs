//! kube-proxy's TestCategorizeEndpoints (pkg/proxy/topology_test.go), ported: which endpoints
//! a frontend under each policy uses, given readiness, locality and topology hints, and
//! whether an empty choice drops (endpoints elsewhere) or rejects (none anywhere).
//!
//! Since 1.33 kube-proxy reads only the hints (the `service.kubernetes.io/topology-mode`
//! annotation and `trafficDistribution` act through the EndpointSlice controller, which writes
//! hints only for Services that ask); the cases that differed by annotation in older releases
//! are kept as the hint sets the controller would write.

use std::net::Ipv4Addr;

use super::{
    spec::{eligible_backends, has_usable_endpoints, Topology},
    LocalContext,
};
use crate::model::{Backend, Hint, Hints, TrafficPolicy};

const NODE: &str = "node-a";

/// An endpoint 10.0.0.n on this node (`local`) or another, hinted for `zones` and `nodes`,
/// resolved against this node (in zone `zone`) as the translation resolves them.
struct Ep {
    n: u8,
    zones: &'static [&'static str],
    nodes: &'static [&'static str],
    ready: bool,
    terminating: bool,
    local: bool,
}

const fn ready(n: u8, zones: &'static [&'static str]) -> Ep {
    Ep {
        n,
        zones,
        nodes: &[],
        ready: true,
        terminating: false,
        local: false,
    }
}

impl Ep {
    const fn local(self) -> Ep {
        Ep {
            local: true,
            ..self
        }
    }
    const fn unready(self) -> Ep {
        Ep {
            ready: false,
            ..self
        }
    }
    const fn terminating(self) -> Ep {
        Ep {
            ready: false,
            terminating: true,
            ..self
        }
    }
    const fn for_nodes(self, nodes: &'static [&'static str]) -> Ep {
        Ep { nodes, ..self }
    }

    fn backend(&self, zone: Option<&str>) -> Backend {
        let hint = |names: &[&str], this: Option<&str>| match names {
            [] => Hint::Absent,
            _ if this.is_some_and(|t| names.contains(&t)) => Hint::Here,
            _ => Hint::Elsewhere,
        };
        Backend {
            ip: Ipv4Addr::new(10, 0, 0, self.n),
            port: 80,
            node_name: Some(if self.local { NODE } else { "node-b" }.into()),
            ready: self.ready,
            serving: self.ready || self.terminating,
            terminating: self.terminating,
            hints: Hints {
                node: hint(self.nodes, Some(NODE)),
                zone: hint(self.zones, zone),
            },
        }
    }
}

struct Case {
    name: &'static str,
    zone: Option<&'static str>,
    endpoints: Vec<Ep>,
    /// Endpoint numbers a Cluster-policy frontend uses.
    cluster: &'static [u8],
    /// Endpoint numbers a Local-policy frontend uses.
    local: &'static [u8],
    /// kube-proxy's hasAnyEndpoints.
    any: bool,
}

fn chosen(backends: &[Backend], policy: TrafficPolicy) -> Vec<u8> {
    let local = LocalContext {
        node_name: NODE.into(),
        ..Default::default()
    };
    let mut out: Vec<u8> = eligible_backends(backends, policy, &local)
        .iter()
        .map(|b| b.ip.octets()[3])
        .collect();
    out.sort();
    out
}

fn zone_a_to_c() -> Vec<Ep> {
    vec![
        ready(3, &["zone-a"]),
        ready(4, &["zone-b"]),
        ready(5, &["zone-c"]),
        ready(6, &["zone-a"]),
    ]
}

#[test]
fn categorize_endpoints_like_kube_proxy() {
    let a = Some("zone-a");
    let cases = vec![
        Case {
            name: "zone hints: this zone's endpoints",
            zone: a,
            endpoints: zone_a_to_c(),
            cluster: &[3, 6],
            local: &[],
            any: true,
        },
        Case {
            name: "Local policy ignores topology",
            zone: a,
            endpoints: vec![
                ready(3, &["zone-a"]).local(),
                ready(4, &["zone-b"]).local(),
                ready(5, &["zone-c"]),
                ready(6, &["zone-a"]),
            ],
            cluster: &[3, 6],
            local: &[3, 4],
            any: true,
        },
        Case {
            name: "node without a zone label: no filtering",
            zone: None,
            endpoints: vec![ready(3, &["zone-a"])],
            cluster: &[3],
            local: &[],
            any: true,
        },
        Case {
            name: "node in a zone no hint names: no filtering",
            zone: Some("zone-b"),
            endpoints: vec![ready(3, &["zone-a"])],
            cluster: &[3],
            local: &[],
            any: true,
        },
        Case {
            name: "unready endpoint left out",
            zone: a,
            endpoints: vec![
                ready(3, &["zone-a"]),
                ready(4, &["zone-b"]),
                ready(5, &["zone-c"]),
                ready(6, &["zone-a"]).unready(),
            ],
            cluster: &[3],
            local: &[],
            any: true,
        },
        Case {
            name: "only unready endpoints in this zone: no filtering",
            zone: a,
            endpoints: vec![
                ready(3, &["zone-a"]).unready(),
                ready(4, &["zone-b"]),
                ready(5, &["zone-c"]),
                ready(6, &["zone-a"]).unready(),
            ],
            cluster: &[4, 5],
            local: &[],
            any: true,
        },
        Case {
            name: "one ready endpoint without hints: no filtering",
            zone: a,
            endpoints: vec![
                ready(3, &["zone-a"]),
                ready(4, &["zone-b"]),
                ready(5, &[]),
                ready(6, &["zone-a"]),
            ],
            cluster: &[3, 4, 5, 6],
            local: &[],
            any: true,
        },
        Case {
            name: "several zones per endpoint",
            zone: Some("zone-c"),
            endpoints: vec![
                ready(3, &["zone-a", "zone-b", "zone-c"]),
                ready(4, &["zone-b", "zone-c"]),
                ready(5, &["zone-b", "zone-d"]),
                ready(6, &["zone-c"]),
            ],
            cluster: &[3, 4, 6],
            local: &[],
            any: true,
        },
        Case {
            name: "PreferSameNode: node hints win over zone hints",
            zone: a,
            endpoints: vec![
                ready(3, &["zone-a"]).for_nodes(&["node-b"]),
                ready(4, &["zone-a"]).for_nodes(&[NODE]).local(),
                ready(5, &["zone-b"]).for_nodes(&["node-c"]),
            ],
            cluster: &[4],
            local: &[4],
            any: true,
        },
        Case {
            name: "PreferSameNode without a hint for this node falls back to zones",
            zone: a,
            endpoints: vec![
                ready(3, &["zone-a"]).for_nodes(&["node-b"]),
                ready(5, &["zone-b"]).for_nodes(&["node-c"]),
            ],
            cluster: &[3],
            local: &[],
            any: true,
        },
        Case {
            name: "an endpoint without a node hint disables PreferSameNode",
            zone: a,
            endpoints: vec![
                ready(3, &["zone-a"]).for_nodes(&[NODE]),
                ready(4, &["zone-a"]),
                ready(5, &["zone-b"]).for_nodes(&["node-c"]),
            ],
            cluster: &[3, 4],
            local: &[],
            any: true,
        },
        Case {
            name: "no ready endpoint: serving-terminating ones, hints ignored",
            zone: a,
            endpoints: vec![
                ready(3, &["zone-b"]).terminating().local(),
                ready(4, &["zone-b"]).terminating(),
            ],
            cluster: &[3, 4],
            local: &[3],
            any: true,
        },
        Case {
            name: "Local: terminating local endpoint used while remote ones are ready",
            zone: None,
            endpoints: vec![
                ready(0, &[]),
                ready(1, &[]).unready().local(),
                ready(2, &[]).terminating().local(),
                ready(3, &[]).terminating(),
            ],
            cluster: &[0],
            local: &[2],
            any: true,
        },
        Case {
            name: "all endpoints remote",
            zone: None,
            endpoints: vec![ready(0, &[]), ready(1, &[])],
            cluster: &[0, 1],
            local: &[],
            any: true,
        },
        Case {
            name: "all endpoints remote and terminating",
            zone: None,
            endpoints: vec![ready(0, &[]).terminating(), ready(1, &[]).terminating()],
            cluster: &[0, 1],
            local: &[],
            any: true,
        },
        Case {
            name: "no usable endpoint anywhere",
            zone: None,
            endpoints: vec![ready(0, &[]).unready(), ready(1, &[]).unready().local()],
            cluster: &[],
            local: &[],
            any: false,
        },
        Case {
            name: "no endpoints",
            zone: None,
            endpoints: vec![],
            cluster: &[],
            local: &[],
            any: false,
        },
    ];
    for case in cases {
        let backends: Vec<Backend> = case
            .endpoints
            .iter()
            .map(|e| e.backend(case.zone))
            .collect();
        assert_eq!(
            chosen(&backends, TrafficPolicy::Cluster),
            case.cluster,
            "{}: Cluster",
            case.name
        );
        assert_eq!(
            chosen(&backends, TrafficPolicy::Local),
            case.local,
            "{}: Local",
            case.name
        );
        assert_eq!(
            has_usable_endpoints(&backends),
            case.any,
            "{}: any",
            case.name
        );
    }
}

#[test]
fn topology_mode_needs_a_ready_endpoint() {
    let b = ready(3, &["zone-a"]).unready().backend(Some("zone-a"));
    assert_eq!(Topology::from_hints(&[b]), Topology::Any);
}

/// Every combination of the two traffic policies with (local ready, local terminating only,
/// remote only, none), as kube-proxy's iptables/nftables proxiers program them
/// (TestInternalTrafficPolicy, TestTerminatingEndpointsTrafficPolicyLocal/Cluster,
/// TestNoEndpointsReject, TestOnlyLocal*): the backends a frontend uses, and whether an empty
/// choice drops ("has no local endpoints") or rejects ("has no endpoints").
#[test]
fn traffic_policy_matrix_matches_kube_proxy() {
    use super::spec::frontend_spec;
    use crate::model::{FrontendKind, ServicePort, ServicePortName};
    use dataplane_common::lb::SVC_F_DROP_IF_EMPTY;

    #[derive(Debug, PartialEq)]
    enum Empty {
        Drop,
        Reject,
    }
    let scenarios: [(&str, Vec<Ep>); 4] = [
        ("local ready", vec![ready(1, &[]).local(), ready(2, &[])]),
        (
            "local terminating only",
            vec![ready(1, &[]).terminating().local(), ready(2, &[])],
        ),
        ("remote only", vec![ready(2, &[])]),
        ("none", vec![]),
    ];
    // (scenario, policy) -> what kube-proxy uses.
    let expect = |scenario: &str, policy: TrafficPolicy| -> Result<Vec<u8>, Empty> {
        match (scenario, policy) {
            ("local ready", TrafficPolicy::Cluster) => Ok(vec![1, 2]),
            ("local ready", TrafficPolicy::Local) => Ok(vec![1]),
            ("local terminating only", TrafficPolicy::Cluster) => Ok(vec![2]),
            ("local terminating only", TrafficPolicy::Local) => Ok(vec![1]),
            ("remote only", TrafficPolicy::Cluster) => Ok(vec![2]),
            ("remote only", TrafficPolicy::Local) => Err(Empty::Drop),
            (_, _) => Err(Empty::Reject),
        }
    };
    let local = LocalContext {
        node_name: NODE.into(),
        ..Default::default()
    };
    for (scenario, endpoints) in &scenarios {
        for internal in [TrafficPolicy::Cluster, TrafficPolicy::Local] {
            for external in [TrafficPolicy::Cluster, TrafficPolicy::Local] {
                let svc = ServicePort {
                    name: ServicePortName {
                        namespace: "ns".into(),
                        name: "svc".into(),
                        port: String::new(),
                    },
                    frontends: vec![],
                    backends: endpoints.iter().map(|e| e.backend(None)).collect(),
                    external_policy: external,
                    internal_policy: internal,
                    affinity_timeout_secs: None,
                    health_check_node_port: None,
                    source_ranges: vec![],
                };
                for (kind, policy) in [
                    (FrontendKind::ClusterIp, internal),
                    (FrontendKind::NodePort, external),
                    (FrontendKind::LoadBalancer, external),
                ] {
                    let spec = frontend_spec(&svc, kind, &local);
                    let got = if spec.backends.is_empty() {
                        Err(if spec.flags & SVC_F_DROP_IF_EMPTY != 0 {
                            Empty::Drop
                        } else {
                            Empty::Reject
                        })
                    } else {
                        let mut ns: Vec<u8> = spec
                            .backends
                            .iter()
                            .map(|b| super::spec::ip_from_be(b.addr).octets()[3])
                            .collect();
                        ns.sort();
                        Ok(ns)
                    };
                    assert_eq!(
                        got,
                        expect(scenario, policy),
                        "{scenario}, iTP {internal:?}, eTP {external:?}, {kind:?}"
                    );
                }
            }
        }
    }
}
