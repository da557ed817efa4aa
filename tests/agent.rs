//! `dataplane run` driven by its control plane: manifest files in, services on the wire, and the
//! operator endpoints (/metrics, /healthz).

mod support;

use std::{
    collections::BTreeSet,
    net::SocketAddrV4,
    path::Path,
    time::{Duration, Instant},
};

use std::net::Ipv4Addr;

use dataplane::model::Protocol;
use dataplane_common::map_names;
use dataplane_lab::{
    lab::{Lab, Pod},
    netns,
};
use support::agent::*;
use support::cluster::echo_servers;
use support::node::{bpftool, DataplaneNode};

#[test]
fn manifests_drive_the_services_and_metrics_report_them() {
    let (lab, dir) = lab_with_manifests(2, 2);
    let (b1, b2) = (lab.pod(0, 1), lab.pod(1, 0));
    let _srv = echo_servers(&[b1, b2], &[Protocol::Tcp], 8080);
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

/// The XDP program id attached to the uplink of `node` (from `ip -d link`), if any.
fn xdp_prog_id(lab: &Lab, node: usize) -> Option<u32> {
    let out = netns::run_in(&lab.node(node).ns, &["ip", "-d", "link", "show", "eth0"]).unwrap();
    let at = out.find("prog/xdp id ")? + "prog/xdp id ".len();
    out[at..].split_whitespace().next()?.parse().ok()
}

#[test]
fn restart_keeps_connections_and_the_datapath_running() {
    let (lab, dir) = lab_with_manifests(2, 2);
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
    let (lab, dir) = lab_with_manifests(1, 2);
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
    let (lab, dir) = lab_with_manifests(1, 2);
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
    let (lab, dir) = lab_with_manifests(1, 3);
    let (b1, b2, client) = (lab.pod(0, 0), lab.pod(0, 1), lab.pod(0, 2));
    let _srv = echo_servers(&[b1, b2], &[Protocol::Tcp], 8080);
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
    // BACKENDS_V2 is an array of 1,048,576 slots: looked up by index below, not dumped.
    for map in [map_names::SERVICES, map_names::CT] {
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
        .unwrap_or_else(|| panic!("no formatted SERVICES_V2 entry for {VIP}: {services:?}"));
    assert_eq!(vip["key"]["port"].as_u64(), Some(be16(80)), "{vip}");
    assert_eq!(vip["key"]["proto"].as_u64(), Some(6), "{vip}");
    assert_eq!(vip["value"]["count"].as_u64(), Some(1), "{vip}");
    assert!(vip["value"]["set_id"].is_u64(), "{vip}");
    // A set id is its first slot's index in BACKENDS_V2.
    let set_id = vip["value"]["set_id"].as_u64().unwrap() as u32;
    let path = node.pin_dir().join(map_names::BACKENDS);
    let index: Vec<String> = set_id.to_ne_bytes().iter().map(u8::to_string).collect();
    let mut args = vec![
        bpftool(),
        "-j",
        "map",
        "lookup",
        "pinned",
        path.to_str().unwrap(),
        "key",
    ];
    args.extend(index.iter().map(String::as_str));
    let json = netns::run(&args).unwrap_or_else(|e| panic!("bpftool map lookup: {e:#}"));
    println!(
        "# bpftool map lookup pinned {} key {index:?}\n{json}",
        path.display()
    );
    let entry: serde_json::Value = serde_json::from_str(&json).unwrap();
    let slot = &entry["formatted"];
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
