//! `dataplane monitor`: with the real agent in a lab node, malformed frames sent from the
//! external client onto the node's uplink each give one decoded drop event (hook, reason,
//! device, addresses); well-formed traffic gives none; `--all` shows translations with the
//! tuple before and after; and once the monitor exits the programs emit nothing.
mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use dataplane::host::netdev;
use dataplane_common::map_names;
use dataplane_lab::{
    lab::LabSpec,
    netns,
    packet::{Frame, TcpFlags},
};
use support::node::{CheckedLab, DataplaneNode, DATAPLANE_BIN};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0x01];

/// `dataplane monitor` in the node's network namespace (device names are resolved there).
fn start_monitor(ns: &str, pin: &str, args: &[&str]) -> Child {
    let netns_path = format!("--net=/run/netns/{ns}");
    Command::new("nsenter")
        .args([
            netns_path.as_str(),
            DATAPLANE_BIN,
            "monitor",
            "--pin-dir",
            pin,
            "-o",
            "json",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting dataplane monitor")
}

fn monitor_flags(pin: &str) -> u32 {
    let data = MapData::from_pin(format!("{pin}/{}", map_names::MONITOR)).unwrap();
    let a: Array<_, u32> = Array::try_from(Map::Array(data)).unwrap();
    a.get(&0, 0).unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the monitor's JSON lines until it exits.
fn events(child: Child) -> Vec<serde_json::Value> {
    let out = child.wait_with_output().expect("waiting for the monitor");
    assert!(
        out.status.success(),
        "monitor: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    BufReader::new(&out.stdout[..])
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).expect("a JSON event per line"))
        .collect()
}

#[test]
fn drops_are_shown_one_event_per_packet_and_nothing_once_the_monitor_exits() {
    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 1,
        external_client: true,
        ..Default::default()
    })
    .unwrap();
    let node = DataplaneNode::start(&lab, 0, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let pin = node.pin_dir().to_string_lossy().into_owned();
    let n = lab.node(0);
    let external = lab.external().expect("external client");
    let node_mac = netns::in_netns(&n.ns, || netdev::mac("eth0"))
        .unwrap()
        .unwrap();
    let syn = || {
        Frame::eth(CLIENT_MAC, node_mac)
            .ipv4(external.ip, n.underlay_ip)
            .tcp(40000, 80)
            .flags(TcpFlags::SYN)
            .payload(b"x")
    };
    // A bad IPv4 header is sent by a pod: tc ingress of its host-side veth sees it before any
    // bridge (the underlay switch is a bridge, and a host with br_netfilter loaded drops such
    // frames there, before they would reach the node).
    let pod = &n.pods[0];
    let ihl4 = Frame::eth(CLIENT_MAC, node_mac)
        .ipv4(pod.ip, n.underlay_ip)
        .tcp(40000, 80)
        .flags(TcpFlags::SYN)
        .ihl(4)
        .build();
    let mut tcp_cut = syn().total_len(20 + 10).build();
    tcp_cut.truncate(14 + 20 + 10);

    assert_eq!(
        monitor_flags(&pin),
        0,
        "events are off while no monitor runs"
    );
    let monitor = start_monitor(&n.ns, &pin, &["--drops", "--duration", "3"]);
    wait_for("the monitor to turn events on", || monitor_flags(&pin) != 0);
    support::inject(&pod.ns, vec![ihl4.clone(), ihl4.clone(), ihl4.clone()]);
    support::inject(&external.ns, vec![tcp_cut.clone(), tcp_cut.clone()]);
    // Well-formed traffic is not a drop: no event.
    external.ping(n.underlay_ip, 2).unwrap();
    let seen = events(monitor);
    assert_eq!(
        monitor_flags(&pin),
        0,
        "the monitor turned events off on exit"
    );

    let count = |reason: &str| seen.iter().filter(|e| e["reason"] == reason).count();
    assert_eq!(count("drop-bad-ipv4"), 3, "{seen:#?}");
    assert_eq!(count("drop-truncated-l4"), 2, "{seen:#?}");
    assert_eq!(seen.len(), 5, "only the dropped frames: {seen:#?}");
    let node_ip = n.underlay_ip.to_string();
    for e in &seen {
        assert_eq!(e["verdict"], "DROP");
        let dst = e["after"]["dst"].as_str().unwrap();
        assert_eq!(dst.split(':').next(), Some(node_ip.as_str()), "{e}");
        let at = (e["hook"].as_str().unwrap(), e["iface"].as_str().unwrap());
        if e["reason"] == "drop-bad-ipv4" {
            // The header is bad: its addresses are shown, no ports are read behind it.
            assert_eq!(at, ("tc-pod-ingress", pod.host_iface.as_str()), "{e}");
            assert_eq!(e["after"]["src"], format!("{}:0", pod.ip), "{e}");
        } else {
            assert_eq!(at, ("xdp-uplink", "eth0"), "{e}");
            assert_eq!(e["after"]["src"], format!("{}:40000", external.ip), "{e}");
        }
    }

    // Drops with no monitor attached: counted, not emitted (the next monitor starts with an
    // empty ring, so it sees only what happens while it runs).
    support::inject(&pod.ns, vec![ihl4.clone()]);
    let monitor = start_monitor(&n.ns, &pin, &["--all", "--duration", "2"]);
    wait_for("the monitor to turn events on", || monitor_flags(&pin) != 0);
    external.ping(n.underlay_ip, 1).unwrap();
    let seen = events(monitor);
    assert!(
        seen.iter().all(|e| e["reason"] != "drop-bad-ipv4"),
        "{seen:#?}"
    );
    let icmp: Vec<_> = seen.iter().filter(|e| e["proto"] == "icmp").collect();
    assert!(
        !icmp.is_empty(),
        "--all shows passed packets too: {seen:#?}"
    );
    for e in &icmp {
        assert_eq!(e["verdict"], "PASS");
        assert!(
            !e["before"].is_null(),
            "--all carries the tuple before the hook: {e}"
        );
        assert_eq!(
            e["before"], e["after"],
            "nothing translated a ping to the node: {e}"
        );
    }
    let from_client = format!("{}:0", external.ip);
    assert!(
        icmp.iter().any(|e| e["after"]["src"] == from_client),
        "{icmp:#?}"
    );
    node.stop().unwrap_or_else(|e| panic!("{e:#}"));
    lab.teardown();
}

/// Services from manifest files: the agent names their frontends in SERVICE_NAMES_V1, so the
/// monitor (another process) prints `service default/web:p`, `--service NS/NAME` keeps only that
/// Service's events, service drops (no local endpoint) carry their Service's name, and
/// `dataplane services` heads each frontend with it. A service removed from the manifests loses
/// its name; `dataplane cleanup` removes the map.
#[test]
fn events_name_their_service_and_filter_by_it() {
    use dataplane_lab::manifests::{Endpoint, ServiceManifest};
    use std::net::{Ipv4Addr, SocketAddrV4};

    support::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 2,
        external_client: false,
        ..Default::default()
    })
    .unwrap();
    let n = lab.node(0);
    let (client, backend) = (n.pods[0].host(), &n.pods[1]);
    let _server = backend.host().tcp_echo_server(8080).unwrap();
    let dir = std::env::temp_dir().join(format!("{}monitor-manifests", lab.prefix()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let svc = |name: &str, ip: [u8; 4], endpoints: Vec<Endpoint>| ServiceManifest {
        namespace: "default".into(),
        name: name.into(),
        cluster_ip: Ipv4Addr::from(ip),
        port: 80,
        target_port: 8080,
        protocol: "TCP".into(),
        node_port: None,
        endpoints,
    };
    let here = vec![Endpoint {
        ip: backend.ip,
        node: n.name.clone(),
    }];
    // internalTrafficPolicy Local with its only endpoint on another node: kube-proxy drops.
    let elsewhere = vec![Endpoint {
        ip: Ipv4Addr::new(10, 244, 9, 9),
        node: "node9".into(),
    }];
    let local_only = svc("local", [10, 96, 0, 30], elsewhere).to_yaml().replace(
        "    type: ClusterIP\n",
        "    type: ClusterIP\n    internalTrafficPolicy: Local\n",
    );
    std::fs::write(
        dir.join("web.yaml"),
        svc("web", [10, 96, 0, 10], here).to_yaml(),
    )
    .unwrap();
    std::fs::write(dir.join("local.yaml"), &local_only).unwrap();
    let node = DataplaneNode::start(&lab, 0, &["--manifests", dir.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pin = node.pin_dir().to_string_lossy().into_owned();
    let listed = support::node::dataplane_cli(&["services", "--pin-dir", &pin]).unwrap();
    assert!(
        listed
            .stdout
            .contains("10.96.0.10:80/tcp  default/web:p  frontend")
            && listed
                .stdout
                .contains("10.96.0.30:80/tcp  default/local:p  frontend"),
        "{}",
        listed.stdout
    );

    let web = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    let local = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 30), 80);
    let monitor = start_monitor(
        &n.ns,
        &pin,
        &["--all", "--service", "default/web", "--duration", "3"],
    );
    wait_for("the monitor to turn events on", || monitor_flags(&pin) != 0);
    client
        .tcp_request(web, "hi", Duration::from_secs(2))
        .unwrap();
    assert!(client
        .tcp_request(local, "hi", Duration::from_millis(500))
        .is_err());
    let seen = events(monitor);
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|e| e["service"] == "default/web:p"),
        "only default/web's events: {seen:#?}"
    );
    let new_conn = seen
        .iter()
        .find(|e| e["reason"] == "lb-new-connection")
        .unwrap_or_else(|| panic!("{seen:#?}"));
    assert_eq!(new_conn["before"]["dst"], "10.96.0.10:80");
    assert_eq!(new_conn["after"]["dst"], format!("{}:8080", backend.ip));
    assert_eq!(new_conn["frontend"], "10.96.0.10:80/tcp");

    // Drops of a service carry its name, in JSON and in text.
    let monitor = start_monitor(&n.ns, &pin, &["--drops", "--duration", "2"]);
    wait_for("the monitor to turn events on", || monitor_flags(&pin) != 0);
    assert!(client
        .tcp_request(local, "hi", Duration::from_millis(500))
        .is_err());
    let seen = events(monitor);
    let drop = seen
        .iter()
        .find(|e| e["reason"] == "drop-no-local-endpoints")
        .unwrap_or_else(|| panic!("{seen:#?}"));
    assert_eq!(drop["service"], "default/local:p", "{drop}");
    assert_eq!(drop["verdict"], "DROP");
    let netns_path = format!("--net=/run/netns/{}", n.ns);
    let text = Command::new("nsenter")
        .args([&netns_path, DATAPLANE_BIN, "monitor", "--pin-dir", &pin])
        .args([
            "--service",
            "default/local",
            "--count",
            "1",
            "--duration",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the monitor to turn events on", || monitor_flags(&pin) != 0);
    let _ = client.tcp_request(local, "hi", Duration::from_millis(500));
    let out = text.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.starts_with("DROP") && line.contains("service default/local:p"),
        "{line}"
    );
    let bad =
        support::node::dataplane_cli(&["monitor", "--pin-dir", &pin, "--service", "web"]).unwrap();
    assert!(
        !bad.status.success() && bad.stderr.contains("NAMESPACE/NAME"),
        "{}",
        bad.stderr
    );

    // A removed service loses its name (the manifests are re-read on change).
    std::fs::remove_file(dir.join("local.yaml")).unwrap();
    wait_for("default/local to leave SERVICE_NAMES_V1", || {
        let dump = support::node::dataplane_cli(&["services", "--pin-dir", &pin]).unwrap();
        !dump.stdout.contains("default/local") && dump.stdout.contains("default/web:p")
    });
    node.stop().unwrap_or_else(|e| panic!("{e:#}"));
    let names = format!("{pin}/{}", map_names::SERVICE_NAMES);
    assert!(
        std::path::Path::new(&names).exists(),
        "pinned beside the others"
    );
    let cleaned = support::node::dataplane_cli(&["cleanup", "--pin-dir", &pin]).unwrap();
    assert!(cleaned.status.success(), "{}", cleaned.stderr);
    assert!(!std::path::Path::new(&names).exists(), "cleanup removes it");
    let _ = std::fs::remove_dir_all(&dir);
    lab.teardown();
}
