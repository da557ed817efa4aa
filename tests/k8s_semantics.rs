//! Issue 11 end to end: `dataplane run --manifests` in a lab, real packets, the answer seen at
//! the backends: topology hints, NodePorts following the node's addresses
//! (`--nodeport-addresses`), health-check node ports and loadBalancerSourceRanges.

mod support;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use dataplane_lab::{
    lab::{Lab, LabSpec, Pod},
    netns,
};
use support::node::{dataplane_cli, CheckedLab, DataplaneNode};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const T: Duration = Duration::from_secs(3);

/// Retries `f` until it returns true or 10 s pass (the source polls files every second).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for: {what}");
}

/// A manifest directory under the temp dir, removed when dropped.
struct Manifests(PathBuf);

impl Manifests {
    fn new(lab: &Lab) -> Manifests {
        let dir = std::env::temp_dir().join(format!("{}semantics", lab.prefix()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Manifests(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Write then rename, so the poller never reads half a file.
    fn write(&self, file: &str, text: &str) {
        let tmp = self.0.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.0.join(file)).unwrap();
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Node object named like the lab's node, in `zone`.
fn node_yaml(name: &str, zone: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{topology.kubernetes.io/zone: {zone}}}\n{extra}"
    )
}

/// One endpoint of a slice, with optional hints (YAML flow mappings, e.g. `forZones: [...]`).
fn endpoint_yaml(pod: &Pod, hints: &str) -> String {
    let hints = if hints.is_empty() {
        String::new()
    } else {
        format!("\n  hints: {{{hints}}}")
    };
    format!(
        "- addresses: [{}]\n  nodeName: node{}\n  conditions: {{ready: true}}{hints}\n",
        pod.ip, pod.node_index
    )
}

/// Service `name` on VIP:`port` (plus `spec_extra` lines) and its slice, target port 8080.
fn service_yaml(name: &str, port: u16, spec_extra: &str, endpoints: &[String]) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {VIP}\n  ports: [{{name: p, port: {port}, protocol: TCP{node_port}}}]\n{spec_extra}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: p, port: 8080, protocol: TCP}}]\nendpoints:\n{}",
        endpoints.concat(),
        node_port = if spec_extra.contains("type:") {
            format!(", nodePort: {}", 30000 + port)
        } else {
            String::new()
        },
    )
}

/// The servers that answered `n` requests to `dst` from `client`.
fn servers_seen(
    client: &dataplane_lab::lab::Host,
    dst: SocketAddrV4,
    n: usize,
) -> BTreeSet<String> {
    (0..n)
        .filter_map(|i| client.tcp_request(dst, &format!("r{i}"), T).ok())
        .map(|r| r.server)
        .collect()
}

fn names(pods: &[&Pod]) -> BTreeSet<String> {
    pods.iter().map(|p| p.name.clone()).collect()
}

/// PreferSameZone and PreferSameNode as the EndpointSlice controller writes them (hints), seen
/// at the backends: node1's pod client reaches only its zone's (then its node's) endpoints,
/// node2's host only its own zone's; an endpoint without hints turns topology off.
#[test]
fn topology_hints_choose_the_backends_of_this_zone_then_this_node() {
    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 3,
        pods_per_node: 2,
        ..Default::default()
    })
    .unwrap();
    let dir = Manifests::new(&lab);
    // zone-a: node1 and node2; zone-b: node3.
    dir.write(
        "nodes.yaml",
        &[
            node_yaml("node1", "zone-a", ""),
            node_yaml("node2", "zone-a", ""),
            node_yaml("node3", "zone-b", ""),
        ]
        .join("---\n"),
    );
    let (a1, a2, b1, b2) = (lab.pod(0, 1), lab.pod(1, 0), lab.pod(2, 0), lab.pod(2, 1));
    let _servers: Vec<_> = [a1, a2, b1, b2]
        .iter()
        .map(|p| p.host().tcp_echo_server(8080).unwrap())
        .collect();
    let zoned = |unhinted: Option<&Pod>| {
        let eps: Vec<String> = [a1, a2, b1, b2]
            .iter()
            .map(|p| {
                let zone = if p.node_index == 3 {
                    "zone-b"
                } else {
                    "zone-a"
                };
                if unhinted.is_some_and(|u| u.ip == p.ip) {
                    endpoint_yaml(p, "")
                } else {
                    endpoint_yaml(p, &format!("forZones: [{{name: {zone}}}]"))
                }
            })
            .collect();
        service_yaml("web", 80, "  trafficDistribution: PreferSameZone\n", &eps)
    };
    dir.write("web.yaml", &zoned(None));
    let args = ["--manifests", dir.path()];
    let _agents: Vec<_> = (0..3)
        .map(|i| DataplaneNode::start(&lab, i, &args).unwrap())
        .collect();
    let vip = SocketAddrV4::new(VIP, 80);
    let pod_client = lab.pod(0, 0).host();
    eventually("node1's pod sees exactly zone-a's endpoints", || {
        servers_seen(&pod_client, vip, 30) == names(&[a1, a2])
    });
    // The node's own socket (socket-level balancing) follows the same choice. Each node's
    // agent reads the manifests on its own: node3's may apply a change after node1's.
    let node3 = lab.node(2).host();
    eventually("node3 sees exactly zone-b's endpoints", || {
        servers_seen(&node3, vip, 30) == names(&[b1, b2])
    });

    // kube-proxy uses hints only when every ready endpoint has one.
    dir.write("web.yaml", &zoned(Some(b2)));
    eventually("one endpoint without hints: every endpoint", || {
        servers_seen(&pod_client, vip, 40) == names(&[a1, a2, b1, b2])
    });

    // PreferSameNode: every endpoint hinted for its own node; node1 has a1, node3 b1 and b2;
    // node2's a2 is hinted for node2 only.
    let eps: Vec<String> = [a1, a2, b1, b2]
        .iter()
        .map(|p| {
            let zone = if p.node_index == 3 {
                "zone-b"
            } else {
                "zone-a"
            };
            endpoint_yaml(
                p,
                &format!(
                    "forZones: [{{name: {zone}}}], forNodes: [{{name: node{}}}]",
                    p.node_index
                ),
            )
        })
        .collect();
    dir.write(
        "web.yaml",
        &service_yaml("web", 80, "  trafficDistribution: PreferSameNode\n", &eps),
    );
    eventually("node1's pod sees only node1's endpoint", || {
        servers_seen(&pod_client, vip, 20) == names(&[a1])
    });
    eventually("node3 sees only node3's endpoints", || {
        servers_seen(&node3, vip, 30) == names(&[b1, b2])
    });
}

fn frontends(pin_dir: &Path) -> String {
    dataplane_cli(&["services", "--pin-dir", pin_dir.to_str().unwrap()])
        .unwrap()
        .stdout
}

/// `--nodeport-addresses`: an address added to the node later gets the NodePort without a
/// restart and loses it when removed; with a CIDR list only addresses inside it get one.
#[test]
fn node_ports_follow_the_node_addresses_at_runtime() {
    support::require_root();
    let lab = CheckedLab::build(&LabSpec::default()).unwrap();
    let dir = Manifests::new(&lab);
    let backend = lab.pod(0, 1);
    let _server = backend.host().tcp_echo_server(8080).unwrap();
    dir.write(
        "web.yaml",
        &service_yaml(
            "web",
            80,
            "  type: NodePort\n",
            &[endpoint_yaml(backend, "")],
        ),
    );
    let all = DataplaneNode::start(&lab, 0, &["--manifests", dir.path()]).unwrap();
    let node2_ip = lab.node(1).underlay_ip;
    let only = format!("{node2_ip}/32");
    let narrow = DataplaneNode::start(
        &lab,
        1,
        &["--manifests", dir.path(), "--nodeport-addresses", &only],
    )
    .unwrap();
    let ext = lab.external().unwrap();
    let served = |ip: Ipv4Addr| {
        ext.tcp_request(SocketAddrV4::new(ip, 30080), "np", T)
            .is_ok_and(|r| r.server == backend.name)
    };
    eventually("the NodePort on both nodes' addresses", || {
        served(lab.node(0).underlay_ip) && served(node2_ip)
    });

    let added = Ipv4Addr::new(198, 18, 0, 211);
    netns::ip(
        &lab.node(0).ns,
        &["addr", "add", "198.18.0.211/24", "dev", "eth0"],
    )
    .unwrap();
    eventually("the added address serves the NodePort", || served(added));
    netns::ip(
        &lab.node(0).ns,
        &["addr", "del", "198.18.0.211/24", "dev", "eth0"],
    )
    .unwrap();
    eventually("the removed address loses its frontend", || {
        !frontends(all.pin_dir()).contains("198.18.0.211:30080")
    });

    // node2 with --nodeport-addresses <its underlay IP>/32: an address outside gets nothing.
    netns::ip(
        &lab.node(1).ns,
        &["addr", "add", "198.18.0.212/24", "dev", "eth0"],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let listed = frontends(narrow.pin_dir());
    assert!(listed.contains(&format!("{node2_ip}:30080")), "{listed}");
    assert!(!listed.contains("198.18.0.212:30080"), "{listed}");
    assert!(!served(Ipv4Addr::new(198, 18, 0, 212)));
    assert!(served(node2_ip));
}

/// `curl` from namespace `ns`: (status, body), or None if no HTTP answer came (refused, timed
/// out).
fn curl(ns: &str, url: &str) -> Option<(u16, String)> {
    let out = netns::run_in(ns, &["curl", "-s", "-m", "3", "-w", "\n%{http_code}", url]).ok()?;
    let (body, code) = out.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_owned()))
}

/// A LoadBalancer Service with externalTrafficPolicy Local, health-check port 32000, its
/// endpoint on `pod`'s node.
fn load_balancer_yaml(pod: &Pod) -> String {
    let spec = "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\nstatus:\n  loadBalancer:\n    ingress: [{ip: 198.18.0.250}]\n";
    service_yaml("lb", 80, spec, &[endpoint_yaml(pod, "")])
}

/// kube-proxy's health checks, asked by curl from the external client's namespace: the
/// per-Service port answers 200 only on the node with a ready local endpoint, follows the
/// endpoint when it moves and closes with the Service; the node's /healthz fails once the
/// cluster autoscaler taints the Node (KEP-3836) while /livez stays up.
#[test]
fn health_check_node_ports_and_node_health_answer_like_kube_proxy() {
    support::require_root();
    let lab = CheckedLab::build(&LabSpec::default()).unwrap();
    let dir = Manifests::new(&lab);
    let nodes = [node_yaml("node1", "z", ""), node_yaml("node2", "z", "")].join("---\n");
    dir.write("nodes.yaml", &nodes);
    dir.write("lb.yaml", &load_balancer_yaml(lab.pod(0, 1)));
    let args = ["--manifests", dir.path()];
    let _agents: Vec<_> = (0..2)
        .map(|i| DataplaneNode::start(&lab, i, &args).unwrap())
        .collect();
    let ext = &lab.external().unwrap().ns;
    let url = |node: usize, port: u16, path: &str| {
        format!("http://{}:{port}{path}", lab.node(node).underlay_ip)
    };
    let check = |node: usize| curl(ext, &url(node, 32000, "/")).map(|(c, _)| c);
    eventually("node1 healthy for lb, node2 not", || {
        check(0) == Some(200) && check(1) == Some(503)
    });
    let (_, body) = curl(ext, &url(0, 32000, "/")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["localEndpoints"], 1, "{body}");
    assert_eq!(json["service"]["name"], "lb", "{body}");
    assert_eq!(json["serviceProxyHealthy"], true, "{body}");

    // The endpoint moves to node2: the answers follow.
    dir.write("lb.yaml", &load_balancer_yaml(lab.pod(1, 0)));
    eventually("node2 healthy, node1 not", || {
        check(0) == Some(503) && check(1) == Some(200)
    });

    // The node-level server.
    let (code, body) = curl(ext, &url(0, 10256, "/healthz")).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"nodeEligible\": true"), "{body}");
    let taint = "spec:\n  taints: [{key: ToBeDeletedByClusterAutoscaler, value: \"1\", effect: NoSchedule}]\n";
    let tainted = [node_yaml("node1", "z", taint), node_yaml("node2", "z", "")].join("---\n");
    dir.write("nodes.yaml", &tainted);
    eventually("node1's /healthz fails", || {
        curl(ext, &url(0, 10256, "/healthz")).is_some_and(|(c, _)| c == 503)
    });
    let (code, body) = curl(ext, &url(0, 10256, "/healthz")).unwrap();
    assert!(body.contains("\"nodeEligible\": false"), "{code} {body}");
    assert_eq!(curl(ext, &url(0, 10256, "/livez")).unwrap().0, 200);
    assert_eq!(curl(ext, &url(1, 10256, "/healthz")).unwrap().0, 200);

    // The Service goes: its port closes on both nodes.
    std::fs::remove_file(dir.0.join("lb.yaml")).unwrap();
    eventually("port 32000 closed", || {
        check(0).is_none() && check(1).is_none()
    });
}

/// loadBalancerSourceRanges with real packets: curl from the external namespace, once from a
/// listed source address and once from an unlisted one, to the LB IP (routed to node1 or
/// node2) and to the NodePorts. node2 runs with --lb-source-ranges-node-ports.
#[test]
fn load_balancer_source_ranges_allow_listed_clients_and_drop_others() {
    use dataplane_common::{Hook, Reason};
    support::require_root();
    let lab = CheckedLab::build(&LabSpec::default()).unwrap();
    let dir = Manifests::new(&lab);
    let backend = lab.pod(0, 1);
    let _server = backend.host().http_server(8080).unwrap();
    let lb_ip = Ipv4Addr::new(198, 18, 5, 10);
    let spec = format!(
        "  type: LoadBalancer\n  loadBalancerSourceRanges: [198.18.0.100/32]\nstatus:\n  loadBalancer:\n    ingress: [{{ip: {lb_ip}}}]\n"
    );
    dir.write(
        "lb.yaml",
        &service_yaml("lb", 80, &spec, &[endpoint_yaml(backend, "")]),
    );
    let node1 = DataplaneNode::start(&lab, 0, &["--manifests", dir.path()]).unwrap();
    let node2 = DataplaneNode::start(
        &lab,
        1,
        &["--manifests", dir.path(), "--lb-source-ranges-node-ports"],
    )
    .unwrap();
    let ext = lab.external().unwrap();
    netns::ip(&ext.ns, &["addr", "add", "198.18.0.101/24", "dev", "eth0"]).unwrap();
    let route_lb_to = |node: usize| {
        let via = lab.node(node).underlay_ip.to_string();
        netns::ip(
            &ext.ns,
            &["route", "replace", "198.18.5.10/32", "via", &via],
        )
        .unwrap();
    };
    let get = |from: &str, dst: Ipv4Addr, port: u16| -> Option<String> {
        let url = format!("http://{dst}:{port}/");
        netns::run_in(
            &ext.ns,
            &["curl", "-s", "-m", "2", "--interface", from, &url],
        )
        .ok()
        .map(|body| body.trim().to_owned())
    };
    let (listed, unlisted) = ("198.18.0.100", "198.18.0.101");
    route_lb_to(0);
    eventually("the listed client reaches the LB IP", || {
        get(listed, lb_ip, 80).as_deref() == Some(backend.name.as_str())
    });
    // XDP drops it, or tc ingress when XDP deferred the frame (a partial checksum).
    let source_range_drops = || {
        let s = node1.stats().unwrap();
        s.packets(Hook::XdpUplink, Reason::DropSourceRange)
            + s.packets(Hook::TcUplinkIngress, Reason::DropSourceRange)
    };
    let before = source_range_drops();
    assert_eq!(
        get(unlisted, lb_ip, 80),
        None,
        "an unlisted client is dropped"
    );
    let after = source_range_drops();
    assert!(
        after > before,
        "counted as drop-source-range ({before} -> {after})"
    );
    // kube-proxy leaves the NodePort open to everyone...
    let node1_ip = lab.node(0).underlay_ip;
    assert_eq!(
        get(unlisted, node1_ip, 30080).as_deref(),
        Some(backend.name.as_str())
    );
    // ...node2 was told to restrict it too; its LB IP is restricted either way.
    let node2_ip = lab.node(1).underlay_ip;
    assert_eq!(
        get(listed, node2_ip, 30080).as_deref(),
        Some(backend.name.as_str())
    );
    assert_eq!(get(unlisted, node2_ip, 30080), None);
    route_lb_to(1);
    assert_eq!(
        get(listed, lb_ip, 80).as_deref(),
        Some(backend.name.as_str())
    );
    assert_eq!(get(unlisted, lb_ip, 80), None);
    let node2_stats = node2.stats().unwrap();
    assert!(
        node2_stats.packets(Hook::XdpUplink, Reason::DropSourceRange)
            + node2_stats.packets(Hook::TcUplinkIngress, Reason::DropSourceRange)
            >= 2
    );

    // Ranges widened: the other client gets in without a restart.
    dir.write(
        "lb.yaml",
        &service_yaml(
            "lb",
            80,
            &spec.replace("198.18.0.100/32", "198.18.0.96/27"),
            &[endpoint_yaml(backend, "")],
        ),
    );
    eventually("the widened range admits .101", || {
        get(unlisted, lb_ip, 80).as_deref() == Some(backend.name.as_str())
    });
}
