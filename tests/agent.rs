//! `dataplane run` driven by its control plane: manifest files in, services on the wire, and the
//! operator endpoints (/metrics, /healthz).

mod support;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use dataplane_common::map_names;
use dataplane_lab::{
    lab::{Cni, Lab, LabSpec, Pod},
    manifests::{Endpoint, ServiceManifest},
    netns,
};
use support::node::{bpftool, CheckedLab, DataplaneNode};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const T: Duration = Duration::from_secs(3);

fn endpoint(p: &Pod) -> Endpoint {
    Endpoint {
        ip: p.ip,
        node: format!("node{}", p.node_index),
    }
}

fn web(endpoints: Vec<Endpoint>) -> ServiceManifest {
    ServiceManifest {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ip: VIP,
        port: 80,
        target_port: 8080,
        protocol: "TCP".into(),
        node_port: Some(30080),
        endpoints,
    }
}

/// Retries `f` until it returns true or 10 s pass (the source polls files every second).
fn eventually(what: &str, f: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(10), f)
}

fn eventually_within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for: {what}");
}

fn servers_seen(lab: &Lab, n: usize) -> BTreeSet<String> {
    let client = lab.pod(0, 0).host();
    (0..n)
        .filter_map(|i| {
            client
                .tcp_request(SocketAddrV4::new(VIP, 80), &format!("r{i}"), T)
                .ok()
        })
        .map(|r| r.server)
        .collect()
}

fn http_get(ns: &str, path: &'static str) -> (u16, String) {
    netns::in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&"127.0.0.1:9464".parse().unwrap(), T)
            .expect("metrics endpoint");
        s.set_read_timeout(Some(T)).unwrap();
        // A connection the server closed at once (over its limit): no answer, code 0.
        let _ = s.set_nodelay(true);
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let _ = s.write_all(request.as_bytes());
        let mut text = String::new();
        if s.read_to_string(&mut text).is_err() {
            text.clear();
        }
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (
            code,
            text.split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string(),
        )
    })
    .unwrap()
}

/// `bpftool -j map dump pinned <map>`: one JSON object per entry.
fn bpftool_dump(node: &DataplaneNode, map: &str) -> Vec<serde_json::Value> {
    let path = node.pin_dir().join(map);
    let json = netns::run(&[
        bpftool(),
        "-j",
        "map",
        "dump",
        "pinned",
        path.to_str().unwrap(),
    ])
    .unwrap_or_else(|e| panic!("bpftool map dump {}: {e:#}", path.display()));
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("bpftool output {json}: {e}"))
}

/// The maps carry BTF: bpftool prints each entry's key and value with their field names
/// (`formatted`), and the fields hold what the agent wrote (addresses and ports are network
/// order, printed as the little-endian integers they are in memory).
fn check_bpftool_fields(node: &DataplaneNode, backend: &Pod) {
    let be32 = |ip: Ipv4Addr| u64::from(u32::from_ne_bytes(ip.octets()));
    let be16 = |port: u16| u64::from(u16::from_ne_bytes(port.to_be_bytes()));
    // The text form, as an operator sees it (bpf-maps.md quotes it; `--nocapture` shows it).
    for map in [map_names::SERVICES, map_names::BACKENDS, map_names::CT] {
        let path = node.pin_dir().join(map);
        let text = netns::run(&[bpftool(), "map", "dump", "pinned", path.to_str().unwrap()]);
        println!(
            "# bpftool map dump pinned {}\n{}",
            path.display(),
            text.unwrap()
        );
    }
    let services = bpftool_dump(node, map_names::SERVICES);
    let vip = services
        .iter()
        .map(|e| &e["formatted"])
        .find(|f| f["key"]["addr"].as_u64() == Some(be32(VIP)))
        .unwrap_or_else(|| panic!("no formatted SERVICES_V1 entry for {VIP}: {services:?}"));
    assert_eq!(vip["key"]["port"].as_u64(), Some(be16(80)), "{vip}");
    assert_eq!(vip["key"]["proto"].as_u64(), Some(6), "{vip}");
    assert_eq!(vip["value"]["count"].as_u64(), Some(1), "{vip}");
    assert!(vip["value"]["set_id"].is_u64(), "{vip}");
    let backends = bpftool_dump(node, map_names::BACKENDS);
    let slot = backends
        .iter()
        .map(|e| &e["formatted"])
        .find(|f| f["key"]["set_id"] == vip["value"]["set_id"])
        .unwrap_or_else(|| panic!("no BACKENDS_V1 slot of {vip}: {backends:?}"));
    assert_eq!(
        slot["value"]["addr"].as_u64(),
        Some(be32(backend.ip)),
        "{slot}"
    );
    assert_eq!(slot["value"]["port"].as_u64(), Some(be16(8080)), "{slot}");
    // A per-CPU map: every CPU's value, named.
    let stats = bpftool_dump(node, map_names::STATS);
    let per_cpu = stats[0]["formatted"]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("per-CPU STATS_V2 values: {}", stats[0]));
    assert!(
        per_cpu.iter().all(|v| v["value"]["packets"].is_u64()),
        "{}",
        stats[0]
    );
    // An LRU map the datapath writes: the connections just made.
    let ct = bpftool_dump(node, map_names::CT);
    assert!(
        ct.iter().any(|e| e["formatted"]["key"]["daddr"].is_u64()),
        "formatted CT_V2 entries: {ct:?}"
    );
}

fn write(dir: &Path, file: &str, text: &str) {
    // Write then rename, as kubectl/editors do, so the poller never reads half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(file)).unwrap();
}

#[test]
fn manifests_drive_the_services_and_metrics_report_them() {
    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 2,
        pods_per_node: 2,
        cni: Cni::Flannel,
        ..Default::default()
    })
    .unwrap();
    let dir = tempdir(&lab);
    let (b1, b2) = (lab.pod(0, 1), lab.pod(1, 0));
    let _s1 = b1.host().tcp_echo_server(8080).unwrap();
    let _s2 = b2.host().tcp_echo_server(8080).unwrap();
    write(
        &dir,
        "web.yaml",
        &web(vec![endpoint(b1), endpoint(b2)]).to_yaml(),
    );
    let args = [
        "--manifests",
        dir.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:9464",
    ];
    let nodes: Vec<_> = (0..2)
        .map(|i| DataplaneNode::start(&lab, i, &args).unwrap())
        .collect();

    eventually("both endpoints serve the ClusterIP", || {
        servers_seen(&lab, 30).len() == 2
    });
    let ext = lab.external().unwrap();
    let np = ext
        .tcp_request(SocketAddrV4::new(lab.node(1).underlay_ip, 30080), "np", T)
        .unwrap();
    assert!(np.server == b1.name || np.server == b2.name);

    // An edit removes one endpoint: new connections only go to the other.
    write(&dir, "web.yaml", &web(vec![endpoint(b2)]).to_yaml());
    eventually("the edit is applied", || {
        servers_seen(&lab, 20) == BTreeSet::from([b2.name.clone()])
    });
    check_bpftool_fields(&nodes[0], b2);

    // A broken file is reported and the datapath keeps its last good state.
    write(
        &dir,
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: [unclosed\n",
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(servers_seen(&lab, 10), BTreeSet::from([b2.name.clone()]));

    for path in ["/healthz", "/livez"] {
        let (code, body) = http_get(&lab.node(0).ns, path);
        assert_eq!((code, body.trim()), (200, "ok"), "{path}");
    }
    // The text is a snapshot rebuilt every 2 s: wait for one taken after the broken file.
    let needles = [
        "dataplane_service_frontends ",
        "dataplane_packets_total{hook=\"tc-pod-ingress\",reason=\"lb-new-connection\"}",
        "dataplane_conntrack_entries ",
        "dataplane_service_packets{frontend=\"10.96.0.10:80\",protocol=\"tcp\"}",
        "dataplane_source_objects{kind=\"Service\"} 1",
        "dataplane_syncs_total ",
        "dataplane_map_fill_ratio{map=\"CT_V2\"}",
        // kube-proxy's names.
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\"}",
        "kubeproxy_network_programming_duration_seconds_bucket{le=\"0.0001\"}",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds ",
        "kubeproxy_sync_proxy_rules_service_changes_total ",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total ",
        "# EOF",
    ];
    let mut metrics = String::new();
    eventually("a snapshot with everything", || {
        let (code, text) = http_get(&lab.node(0).ns, "/metrics");
        metrics = text;
        code == 200
            && needles.iter().all(|n| metrics.contains(n))
            && !metrics.contains("dataplane_source_errors_total 0\n")
    });
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    // The Service appeared (1), then an edit removed an endpoint: two endpoint changes, one
    // service change.
    assert_eq!(
        value("kubeproxy_sync_proxy_rules_service_changes_total "),
        1.0
    );
    assert_eq!(
        value("kubeproxy_sync_proxy_rules_endpoint_changes_total "),
        2.0
    );
    assert!(value("kubeproxy_sync_proxy_rules_last_timestamp_seconds ") > 1.7e9);
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dataplane_source_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(errors >= 1, "the broken manifest is counted");
    // The ClusterIP and the node's two NodePort frontends (one per node address).
    let frontends: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dataplane_service_frontends "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(frontends >= 2, "{frontends}");
    for node in nodes {
        node.stop().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(lab: &Lab) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{}manifests", lab.prefix()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The XDP program id attached to the uplink of `node` (from `ip -d link`), if any.
fn xdp_prog_id(lab: &Lab, node: usize) -> Option<u32> {
    let out = netns::run_in(&lab.node(node).ns, &["ip", "-d", "link", "show", "eth0"]).unwrap();
    let at = out.find("prog/xdp id ")? + "prog/xdp id ".len();
    out[at..].split_whitespace().next()?.parse().ok()
}

#[test]
fn restart_keeps_connections_and_the_datapath_running() {
    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 2,
        pods_per_node: 2,
        cni: Cni::Flannel,
        ..Default::default()
    })
    .unwrap();
    let dir = tempdir(&lab);
    let backends = [lab.pod(0, 1), lab.pod(1, 0), lab.pod(1, 1)];
    let _srv: Vec<_> = backends
        .iter()
        .map(|p| p.host().tcp_echo_server(8080).unwrap())
        .collect();
    write(
        &dir,
        "web.yaml",
        &web(backends.iter().map(|p| endpoint(p)).collect()).to_yaml(),
    );
    let args = ["--manifests", dir.to_str().unwrap()];
    let node1 = DataplaneNode::start(&lab, 0, &args).unwrap();
    let _node2 = DataplaneNode::start(&lab, 1, &args).unwrap();
    eventually("the service is up", || servers_seen(&lab, 10).len() == 3);
    let client = lab.pod(0, 0).host();
    let vip = SocketAddrV4::new(VIP, 80);
    let mut conn = client.tcp_connect(vip, T).unwrap();
    let server = conn.request("before").unwrap().server;
    let old_prog = xdp_prog_id(&lab, 0).expect("xdp attached");

    // The agent exits (an upgrade, a crash): its pinned links keep the datapath attached, so the
    // connection lives on and new connections are still balanced.
    node1.stop().unwrap();
    assert_eq!(
        xdp_prog_id(&lab, 0),
        Some(old_prog),
        "the datapath must outlive the agent"
    );
    assert_eq!(conn.request("while stopped").unwrap().server, server);
    assert_eq!(
        servers_seen(&lab, 40).len(),
        3,
        "new connections during the restart"
    );

    // The new agent adopts maps and links, and swaps its programs in.
    let node1 = DataplaneNode::start(&lab, 0, &args).unwrap();
    let new_prog = xdp_prog_id(&lab, 0).expect("xdp attached");
    assert_ne!(
        new_prog, old_prog,
        "the restarted agent's program serves the hook"
    );
    for i in 0..20 {
        assert_eq!(
            conn.request(&format!("after {i}")).unwrap().server,
            server,
            "the connection moved"
        );
    }
    assert_eq!(servers_seen(&lab, 40).len(), 3);

    // `dataplane cleanup` is what takes the datapath down.
    node1.stop().unwrap();
    let pin = lab.pin_dir(0).unwrap();
    let out =
        support::node::dataplane_cli(&["cleanup", "--pin-dir", pin.to_str().unwrap()]).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(xdp_prog_id(&lab, 0), None, "cleanup detaches");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pod_devices_are_attached_as_they_appear_and_detached_as_they_go() {
    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 2,
        cni: Cni::Flannel,
        ..Default::default()
    })
    .unwrap();
    let dir = tempdir(&lab);
    let b = lab.pod(0, 1);
    let _srv = b.host().tcp_echo_server(8080).unwrap();
    write(&dir, "web.yaml", &web(vec![endpoint(b)]).to_yaml());
    let pin = lab.pin_dir(0).unwrap();
    let ns = lab.node(0).ns.clone();
    let pin_s = pin.to_string_lossy().into_owned();
    // No --pod-ifaces: the devices are found by prefix, as a DaemonSet must.
    let argv = [
        support::node::DATAPLANE_BIN,
        "run",
        "--node-name",
        "node1",
        "--uplink",
        "eth0",
        "--pin-dir",
        &pin_s,
        "--pod-iface-prefix",
        "veth",
        "--manifests",
        dir.to_str().unwrap(),
    ];
    let mut child = lab.spawn_in(&ns, &argv).unwrap();
    support::node::wait_ready(&mut child, support::node::READY_TIMEOUT).unwrap();
    let links = |iface: &str| {
        pin.join("links")
            .join(format!("tc_pod_ingress@{iface}"))
            .exists()
    };
    assert!(
        links("veth0") && links("veth1"),
        "existing pod devices attached at start"
    );
    eventually("pod -> ClusterIP through a device found by prefix", || {
        servers_seen(&lab, 3).len() == 1
    });

    netns::run_in(
        &ns,
        &[
            "ip", "link", "add", "veth9", "type", "veth", "peer", "name", "x9",
        ],
    )
    .unwrap();
    netns::run_in(&ns, &["ip", "link", "set", "veth9", "up"]).unwrap();
    eventually("a new pod device is attached", || links("veth9"));
    netns::run_in(&ns, &["ip", "link", "del", "veth9"]).unwrap();
    eventually("a removed pod device is detached", || !links("veth9"));
    assert!(links("veth0"), "other pods untouched");
    child.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// (link id, program id) of each pinned cgroup link of `pin`, by program.
fn cgroup_links(pin: &Path) -> Vec<(String, u32, u32)> {
    dataplane::loader::sock_programs()
        .map(|name| {
            let path = dataplane::loader::sock_link_pin(pin, name);
            let fd = dataplane::bpf_link::obj_get(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let info = dataplane::bpf_link::link_info(std::os::fd::AsFd::as_fd(&fd)).unwrap();
            assert_eq!(
                info.link_type,
                dataplane::bpf_link::BPF_LINK_TYPE_CGROUP,
                "{name}"
            );
            (name.to_string(), info.id, info.prog_id)
        })
        .collect()
}

/// The node's own connections to a ClusterIP are balanced by the cgroup socket hooks. Their
/// links are pinned like the XDP/tc ones: a SIGKILLed agent leaves them attached, so node ->
/// ClusterIP connections keep working with no agent and across its restart (which swaps its
/// programs into the same links), and `dataplane cleanup` removes them.
#[test]
fn socket_lb_survives_sigkill_and_cleanup_detaches_it() {
    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 2,
        cni: Cni::Flannel,
        ..Default::default()
    })
    .unwrap();
    let dir = tempdir(&lab);
    let backends = [lab.pod(0, 0), lab.pod(0, 1)];
    let _srv: Vec<_> = backends
        .iter()
        .map(|p| p.host().tcp_echo_server(8080).unwrap())
        .collect();
    write(
        &dir,
        "web.yaml",
        &web(backends.iter().map(|p| endpoint(p)).collect()).to_yaml(),
    );
    let args = ["--manifests", dir.to_str().unwrap()];
    let pin = lab.pin_dir(0).unwrap();
    let node = DataplaneNode::start(&lab, 0, &args).unwrap();
    let host = lab.node(0).host();
    let vip = SocketAddrV4::new(VIP, 80);
    eventually("node -> ClusterIP", || {
        host.tcp_request(vip, "hello", T).is_ok()
    });
    let before = cgroup_links(&pin);
    let mut conn = host.tcp_connect(vip, T).unwrap();
    let server = conn.request("before").unwrap().server;

    // New connections from the node, every 50 ms, from before the kill until after the restart.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (host, stop) = (host.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match host.tcp_request(vip, "probe", T) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("{e:#}")),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    node.kill().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        cgroup_links(&pin),
        before,
        "the cgroup links outlive a SIGKILLed agent"
    );
    assert_eq!(conn.request("while dead").unwrap().server, server);
    let node = DataplaneNode::start(&lab, 0, &args).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = prober.join().unwrap();
    assert!(
        failed.is_empty(),
        "node -> ClusterIP failed {} times (of {}): {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok >= 20, "only {ok} probes ran");
    assert_eq!(conn.request("after").unwrap().server, server);

    // Adopted: the same links, now running the new agent's programs.
    let after = cgroup_links(&pin);
    for ((name, link, old_prog), (_, new_link, new_prog)) in before.iter().zip(&after) {
        assert_eq!(
            link, new_link,
            "{name}: a new link instead of the pinned one"
        );
        assert_ne!(old_prog, new_prog, "{name}: the old program still runs");
    }

    node.stop().unwrap();
    let out =
        support::node::dataplane_cli(&["cleanup", "--pin-dir", pin.to_str().unwrap()]).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let links = netns::run(&[support::node::bpftool(), "link", "show"]).unwrap();
    let cgroup = dataplane::host::cgroup::root().unwrap();
    let attached = netns::run(&[
        support::node::bpftool(),
        "cgroup",
        "show",
        cgroup.to_str().unwrap(),
    ])
    .unwrap();
    for (name, link, prog) in &after {
        assert!(
            !links.lines().any(|l| l.starts_with(&format!("{link}: "))),
            "{name}: link {link} still exists after cleanup:\n{links}"
        );
        assert!(
            !attached
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&prog.to_string())),
            "{name}: program {prog} still attached to {}:\n{attached}",
            cgroup.display()
        );
    }
    // Unpinning releases the links; the kernel frees them (and detaches the tc programs,
    // which would also translate the node's packets to the ClusterIP) from a work queue, so
    // allow it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while host
        .tcp_request(vip, "after cleanup", Duration::from_millis(500))
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "node -> ClusterIP still balanced 3 s after cleanup"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens node -> ClusterIP connections until one reaches each of `want` (by server name).
fn connections_to(
    host: &dataplane_lab::lab::Host,
    vip: SocketAddrV4,
    want: &[&str],
) -> Vec<dataplane_lab::traffic::TcpConn> {
    let mut found: Vec<Option<dataplane_lab::traffic::TcpConn>> =
        want.iter().map(|_| None).collect();
    for i in 0..100 {
        let mut conn = host.tcp_connect(vip, T).unwrap();
        let server = conn.request(&format!("c{i}")).unwrap().server;
        if let Some(at) = want.iter().position(|w| *w == server) {
            if found[at].is_none() {
                found[at] = Some(conn);
            }
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("100 connections did not reach every one of {want:?}");
}

/// A node TCP connection that socket-level balancing sent to a backend which then leaves the
/// EndpointSlice fails fast (the agent aborts it with SOCK_DESTROY: ECONNABORTED), although the
/// backend's server is still up and would answer; a connection to the remaining backend, and a
/// pod's connection to the removed one (not the node's socket), stay up.
#[test]
fn node_sockets_to_a_removed_backend_are_destroyed() {
    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 3,
        cni: Cni::Flannel,
        ..Default::default()
    })
    .unwrap();
    let dir = tempdir(&lab);
    let (b1, b2, client) = (lab.pod(0, 0), lab.pod(0, 1), lab.pod(0, 2));
    let _s1 = b1.host().tcp_echo_server(8080).unwrap();
    let _s2 = b2.host().tcp_echo_server(8080).unwrap();
    write(
        &dir,
        "web.yaml",
        &web(vec![endpoint(b1), endpoint(b2)]).to_yaml(),
    );
    let node = DataplaneNode::start(&lab, 0, &["--manifests", dir.to_str().unwrap()]).unwrap();
    let host = lab.node(0).host();
    let vip = SocketAddrV4::new(VIP, 80);
    eventually("node -> ClusterIP", || {
        host.tcp_request(vip, "hello", T).is_ok()
    });
    let mut conns = connections_to(&host, vip, &[&b1.name, &b2.name]);
    let mut pod_conns = connections_to(&client.host(), vip, &[&b1.name]);
    for c in conns.iter_mut().chain(pod_conns.iter_mut()) {
        c.set_timeout(Duration::from_secs(1));
    }

    write(&dir, "web.yaml", &web(vec![endpoint(b2)]).to_yaml());
    let removed = Instant::now();
    let err = loop {
        match conns[0].request("still there?") {
            Err(e) => break format!("{e:#}"),
            Ok(r) => assert_eq!(r.server, b1.name),
        }
        // The manifest poll (1 s) and the apply come first.
        assert!(
            removed.elapsed() < Duration::from_secs(5),
            "the connection to the removed backend still works after {:?}; agent log:\n{}",
            removed.elapsed(),
            node.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        err.contains("abort"),
        "expected ECONNABORTED from the destroyed socket, got: {err}"
    );
    assert_eq!(conns[1].request("kept").unwrap().server, b2.name);
    assert_eq!(
        pod_conns[0].request("pod kept").unwrap().server,
        b1.name,
        "a pod's connection is not the node's to destroy"
    );
    assert!(
        node.stderr().contains("destroyed 1 node TCP sockets"),
        "{}",
        node.stderr()
    );
    node.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn api(endpoints: Vec<Endpoint>) -> ServiceManifest {
    ServiceManifest {
        name: "api".into(),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 11),
        node_port: None,
        ..web(endpoints)
    }
}

/// A service the kernel refuses to write (BACKENDS_V1 is full: this test fills it behind the
/// agent's back, leaving one free slot) keeps its previous state, is named in the log, in
/// /metrics and in /readyz, while /healthz stays 200 and another service is applied; once
/// there is room the agent's retry applies it without any new event from the source.
#[test]
fn a_service_that_cannot_be_written_does_not_block_the_others() {
    use dataplane_common::lb::{BackendKey, BackendValue};
    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 2,
        cni: Cni::Flannel,
        ..Default::default()
    })
    .unwrap();
    let dir = tempdir(&lab);
    let (b1, b2) = (lab.pod(0, 0), lab.pod(0, 1));
    let _s1 = b1.host().tcp_echo_server(8080).unwrap();
    let _s2 = b2.host().tcp_echo_server(8080).unwrap();
    write(&dir, "web.yaml", &web(vec![endpoint(b1)]).to_yaml());
    let args = [
        "--manifests",
        dir.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:9464",
    ];
    let node = DataplaneNode::start(&lab, 0, &args).unwrap();
    let host = lab.node(0).host();
    let vip = SocketAddrV4::new(VIP, 80);
    let api_vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80);
    let ns = lab.node(0).ns.clone();
    eventually("web is served and ready", || {
        host.tcp_request(vip, "hello", T).is_ok() && http_get(&ns, "/readyz").0 == 200
    });

    // Fill BACKENDS_V1 with slots of set ids the agent never uses, then free one.
    let pin = lab.pin_dir(0).unwrap();
    let data =
        aya::maps::MapData::from_pin(pin.join(dataplane_common::map_names::BACKENDS)).unwrap();
    let mut backends: aya::maps::HashMap<_, BackendKey, BackendValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    let junk = |slot| BackendKey {
        set_id: 0xdead_0000,
        slot,
    };
    let mut filled = 0;
    while backends
        .insert(junk(filled), BackendValue::default(), 0)
        .is_ok()
    {
        filled += 1;
        assert!(filled < 2_000_000, "BACKENDS_V1 never filled up");
    }
    backends.remove(&junk(0)).unwrap();

    // web (two slots) cannot be written; api (one slot, sorted first) can.
    write(
        &dir,
        "web.yaml",
        &web(vec![endpoint(b1), endpoint(b2)]).to_yaml(),
    );
    write(&dir, "api.yaml", &api(vec![endpoint(b2)]).to_yaml());
    eventually("api is applied", || {
        host.tcp_request(api_vip, "api", T)
            .is_ok_and(|r| r.server == b2.name)
    });
    eventually("web's failure is reported", || {
        node.stderr().contains("service default/web:p not applied")
    });
    assert!(
        node.stderr().contains("BACKENDS_V1 is full"),
        "{}",
        node.stderr()
    );
    assert_eq!(
        servers_seen_from(&host, vip, 20),
        BTreeSet::from([b1.name.clone()]),
        "web keeps its complete previous state"
    );
    let (code, body) = http_get(&ns, "/healthz");
    assert_eq!(
        (code, body.trim()),
        (200, "ok"),
        "a failed apply is not a liveness failure"
    );
    let (code, body) = http_get(&ns, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("default/web:p"), "{body}");
    // The metrics text is a snapshot rebuilt every 2 s.
    eventually("/metrics names the failed service", || {
        let (_, metrics) = http_get(&ns, "/metrics");
        metrics.contains("dataplane_services_failed 1\n")
            && metrics.contains("dataplane_service_failed{service=\"default/web:p\"} 1\n")
    });

    // Room again: the retry (backoff 1, 2, 4 ... s) applies web with no new event.
    for slot in 1..100 {
        backends.remove(&junk(slot)).unwrap();
    }
    // The backoff may have reached 16 s by now.
    eventually_within("the retry applies web", Duration::from_secs(40), || {
        servers_seen_from(&host, vip, 20).len() == 2
    });
    eventually("ready again", || http_get(&ns, "/readyz").0 == 200);
    node.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn servers_seen_from(
    host: &dataplane_lab::lab::Host,
    vip: SocketAddrV4,
    n: usize,
) -> BTreeSet<String> {
    (0..n)
        .filter_map(|i| host.tcp_request(vip, &format!("r{i}"), T).ok())
        .map(|r| r.server)
        .collect()
}

/// The metrics server against hostile clients: connections that never send a request take the
/// connection slots only until the header timeout, the connection beyond the limit is closed at
/// once, and a flood of scrapes delays neither the health answers nor the agent's applies (the
/// server and the snapshot run off the sync loop; a scrape never reads a map).
#[test]
fn the_metrics_server_withstands_idle_connections_and_scrape_floods() {
    use dataplane::metrics::{HEADER_TIMEOUT, MAX_CONNECTIONS};
    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 2,
        cni: Cni::Flannel,
        ..Default::default()
    })
    .unwrap();
    let dir = tempdir(&lab);
    let (b1, b2) = (lab.pod(0, 0), lab.pod(0, 1));
    let _s1 = b1.host().tcp_echo_server(8080).unwrap();
    let _s2 = b2.host().tcp_echo_server(8080).unwrap();
    write(&dir, "web.yaml", &web(vec![endpoint(b1)]).to_yaml());
    let args = [
        "--manifests",
        dir.to_str().unwrap(),
        "--metrics-bind-address",
        "127.0.0.1:9464",
    ];
    let node = DataplaneNode::start(&lab, 0, &args).unwrap();
    let ns = lab.node(0).ns.clone();
    assert_eq!(http_get(&ns, "/healthz").0, 200);
    // Slowloris: every slot taken by a connection that sends nothing.
    let idle: Vec<TcpStream> = netns::in_netns(&ns, || {
        (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect("127.0.0.1:9464").unwrap())
            .collect()
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        http_get(&ns, "/healthz").0,
        0,
        "the connection beyond {MAX_CONNECTIONS} is closed unanswered"
    );
    // The header timeout frees the slots; the server answers again.
    std::thread::sleep(HEADER_TIMEOUT + Duration::from_millis(500));
    assert_eq!(http_get(&ns, "/healthz").0, 200);
    drop(idle);
    // A scrape flood while the source changes: the edit is applied as fast as ever.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let (ns, stop) = (ns.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert_eq!(http_get(&ns, "/metrics").0, 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    write(&dir, "web.yaml", &web(vec![endpoint(b2)]).to_yaml());
    eventually("the edit applies during the flood", || {
        servers_seen(&lab, 10) == BTreeSet::from([b2.name.clone()])
    });
    assert_eq!(http_get(&ns, "/healthz").0, 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes: u32 = flood.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(scrapes > 20, "{scrapes} scrapes");
    node.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
