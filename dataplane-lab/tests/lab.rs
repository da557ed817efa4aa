//! Integration tests of the namespace lab. They need root (namespaces, veths, bpffs) and build
//! real labs; they run in parallel threads, which is itself part of what they check.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::Path;
use std::time::{Duration, Instant};

use dataplane_lab::lab::{Cni, Host, Lab, LabSpec, CALICO_MAC};
use dataplane_lab::netns;

const TIMEOUT: Duration = Duration::from_secs(3);

fn spec(cni: Cni) -> LabSpec {
    LabSpec {
        cni,
        ..Default::default()
    }
}

/// Namespaces currently named with `prefix`.
fn namespaces_with(prefix: &str) -> Vec<String> {
    netns::list_ns()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Interface names of the root namespace.
fn root_links() -> BTreeSet<String> {
    netns::run(&["ip", "-o", "link", "show"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap().to_string())
        .collect()
}

fn ping_ok(from: &Host, to: std::net::Ipv4Addr) {
    from.ping(to, 2)
        .unwrap_or_else(|e| panic!("{} -> {to}: {e:#}", from.name));
}

/// The connectivity matrix every CNI flavour must provide.
fn check_connectivity(lab: &Lab) {
    let (p00, p01, p10) = (
        lab.pod(0, 0).host(),
        lab.pod(0, 1).host(),
        lab.pod(1, 0).host(),
    );
    ping_ok(&p00, p01.ip); // same node
    ping_ok(&p00, p10.ip); // other node, via the underlay routes
    ping_ok(&lab.node(0).host(), p00.ip); // node -> own pod
    ping_ok(&lab.node(0).host(), p10.ip); // node -> other node's pod
    let ext = lab.external().expect("external client");
    ping_ok(ext, lab.node(0).underlay_ip);
    ping_ok(ext, lab.node(1).underlay_ip);
}

/// TCP, UDP and HTTP from node1-pod0 to node2-pod0 see the real pod IP and the right server.
fn check_echo(lab: &Lab) {
    let (client, server) = (lab.pod(0, 0).host(), lab.pod(1, 0).host());
    let _tcp = server.tcp_echo_server(8080).unwrap();
    let _udp = server.udp_echo_server(8081).unwrap();
    let _http = server.http_server(8082).unwrap();

    let reply = client
        .tcp_request(SocketAddrV4::new(server.ip, 8080), "hello", TIMEOUT)
        .unwrap();
    assert_eq!(reply.server, "node2-pod0");
    assert_eq!(reply.body, "hello");
    assert_eq!(*reply.peer.ip(), client.ip);
    assert_eq!(reply.peer, reply.local);

    let reply = client
        .udp_request(SocketAddrV4::new(server.ip, 8081), "dgram 1", TIMEOUT)
        .unwrap();
    assert_eq!(reply.server, "node2-pod0");
    assert_eq!(reply.body, "dgram 1");
    assert_eq!(*reply.peer.ip(), client.ip);
    assert_eq!(reply.peer, reply.local);

    let body = client
        .http_get(SocketAddrV4::new(server.ip, 8082), "/", TIMEOUT)
        .unwrap();
    assert_eq!(body, "node2-pod0\n");
}

/// Node details that change datapath behaviour (lab-realism.md).
fn check_node_realism(lab: &Lab) {
    for node in lab.nodes() {
        // Read with the sysctl tool through nsenter, independently of how the lab wrote them.
        let host = node.host();
        let read = |key: &str| host.run(&["sysctl", "-n", key]).unwrap().trim().to_string();
        assert_eq!(read("net.ipv4.ip_forward"), "1");
        assert_eq!(read("net.ipv4.conf.all.rp_filter"), "0");
        assert_eq!(read("net.ipv4.conf.eth0.rp_filter"), "0");
        let routes = node
            .host()
            .run(&["ip", "route", "show", "default"])
            .unwrap();
        assert!(
            routes.contains("via 198.18.0.1 dev eth0"),
            "{}: {routes}",
            node.name
        );
    }
}

#[test]
fn flannel_two_nodes() {
    let lab = Lab::build(&spec(Cni::Flannel)).unwrap();
    check_connectivity(&lab);
    check_echo(&lab);
    check_node_realism(&lab);
    for node in lab.nodes() {
        let links = node.host().run(&["bridge", "-d", "link", "show"]).unwrap();
        for veth in node.pod_ifaces() {
            let line = links
                .lines()
                .skip_while(|l| !l.contains(&format!(" {veth}@")))
                .take(2);
            let text: String = line.collect::<Vec<_>>().join(" ");
            assert!(text.contains("master cni0"), "{veth} not on cni0: {links}");
            assert!(
                text.contains("hairpin on"),
                "{veth} without hairpin: {links}"
            );
        }
    }
    let route = lab
        .pod(0, 0)
        .host()
        .run(&["ip", "route", "show", "default"])
        .unwrap();
    assert!(route.contains("via 10.244.1.1"), "{route}");

    // node2 answers UDP sent to its cni0 address from that address, not from its routing
    // source (eth0): otherwise the connected client socket would drop the reply.
    let node2 = lab.node(1).host();
    let _udp = node2.udp_echo_server(5353).unwrap();
    let dst = SocketAddrV4::new(lab.node(1).gateway, 5353);
    let reply = lab
        .node(0)
        .host()
        .udp_request(dst, "via cni0", TIMEOUT)
        .unwrap();
    assert_eq!(
        (reply.server.as_str(), *reply.peer.ip()),
        ("node2", lab.node(0).underlay_ip)
    );
}

#[test]
fn calico_two_nodes() {
    let lab = Lab::build(&spec(Cni::Calico)).unwrap();
    check_connectivity(&lab);
    check_echo(&lab);
    check_node_realism(&lab);
    let node = lab.node(0);
    let link = node
        .host()
        .run(&["ip", "link", "show", "dev", "cali0"])
        .unwrap();
    assert!(link.contains(CALICO_MAC), "{link}");
    assert_eq!(
        netns::get_sysctl(&node.ns, "net.ipv4.conf.cali0.proxy_arp").unwrap(),
        "1"
    );
    let route = lab
        .pod(0, 0)
        .host()
        .run(&["ip", "route", "show", "default"])
        .unwrap();
    assert!(route.contains("via 169.254.1.1 dev eth0"), "{route}");
    // The pod resolved its gateway through proxy ARP to calico's fixed MAC.
    let neigh = lab
        .pod(0, 0)
        .host()
        .run(&["ip", "neigh", "show", "169.254.1.1"])
        .unwrap();
    assert!(neigh.contains(CALICO_MAC), "{neigh}");
}

#[test]
fn pod_mtu_and_no_underlay_routes() {
    let lab = Lab::build(&LabSpec {
        pod_mtu: 1450,
        underlay_routes: false,
        external_client: false,
        ..Default::default()
    })
    .unwrap();
    assert!(lab.external().is_none());
    let pod = lab.pod(0, 0).host();
    assert!(pod
        .run(&["ip", "link", "show", "eth0"])
        .unwrap()
        .contains("mtu 1450"));
    assert!(lab
        .node(0)
        .host()
        .run(&["ip", "link", "show", "veth0"])
        .unwrap()
        .contains("mtu 1450"));
    ping_ok(&pod, lab.pod(0, 1).ip);
    // Without host-gw routes, cross-node pod traffic has nowhere to go but the dead gateway.
    assert!(pod.ping(lab.pod(1, 0).ip, 1).is_err());
    let routes = lab.node(0).host().run(&["ip", "route"]).unwrap();
    assert!(!routes.contains("10.244.2.0/24"), "{routes}");
}

#[test]
fn long_lived_tcp_connection() {
    let lab = Lab::build(&LabSpec {
        nodes: 1,
        external_client: false,
        ..Default::default()
    })
    .unwrap();
    let server = lab.node(0).host();
    let _srv = server.tcp_echo_server(9000).unwrap();
    let client = lab.pod(0, 1).host();
    let mut conn = client
        .tcp_connect(SocketAddrV4::new(server.ip, 9000), TIMEOUT)
        .unwrap();
    let first = conn.request("one").unwrap();
    let second = conn.request("two").unwrap();
    assert_eq!((first.body.as_str(), second.body.as_str()), ("one", "two"));
    assert_eq!(first.peer, second.peer, "same connection, same 5-tuple");
    assert_eq!(first.server, "node1");
    // Nothing listens here: connect is refused quickly, not hung.
    assert!(client
        .tcp_request(SocketAddrV4::new(server.ip, 9999), "x", TIMEOUT)
        .is_err());
    // No route to 198.18.0.1's neighbour: the client gives up at its timeout.
    let dead = SocketAddrV4::new("198.18.0.1".parse().unwrap(), 9);
    let start = std::time::Instant::now();
    assert!(client
        .udp_request(dead, "x", Duration::from_millis(300))
        .is_err());
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn spawned_process_output_and_stop() {
    let lab = Lab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 0,
        ..Default::default()
    })
    .unwrap();
    let node = lab.node(0);
    let mut child = lab
        .spawn_in(
            &node.ns,
            &["sh", "-c", "ip -o addr show dev eth0; echo err >&2"],
        )
        .unwrap();
    let status = child.wait_timeout(TIMEOUT).unwrap().expect("exited");
    assert!(status.success());
    assert!(
        child.stdout().contains("198.18.0.11/24"),
        "{}",
        child.stdout()
    );
    assert_eq!(child.stderr(), "err\n");

    let sleeper = lab.spawn_in(&node.ns, &["sleep", "600"]).unwrap();
    // spawn_in returns once nsenter runs; it joins the namespace a moment later (under load,
    // after the first look).
    let deadline = Instant::now() + TIMEOUT;
    while !netns::ns_pids(&node.ns)
        .unwrap()
        .contains(&(sleeper.pid() as i32))
    {
        assert!(
            Instant::now() < deadline,
            "the sleeper never showed up in {}",
            node.ns
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = sleeper.stop().unwrap();
    assert!(!status.success(), "killed by SIGTERM");
}

#[test]
fn drop_removes_everything() {
    let links_before = root_links();
    let lab = Lab::build(&spec(Cni::Calico)).unwrap();
    let prefix = lab.prefix().to_string();
    assert_eq!(namespaces_with(&prefix).len(), 1 + 1 + 2 + 4);
    let pin = lab.pin_dir(1).unwrap();
    assert!(pin.ends_with("node2") && pin.is_dir());
    let base = lab.pin_base().to_path_buf();
    let sleeper = lab.spawn_in(&lab.node(0).ns, &["sleep", "600"]).unwrap();
    let pid = sleeper.pid();
    std::mem::forget(sleeper); // only the lab can stop it now
                               // A process started behind the lab's back is killed too.
    let mut stray = std::process::Command::new("nsenter")
        .args([
            format!("--net=/run/netns/{}", lab.pod(0, 0).ns).as_str(),
            "--",
            "sleep",
            "600",
        ])
        .spawn()
        .unwrap();

    drop(lab);

    assert!(
        namespaces_with(&prefix).is_empty(),
        "{:?}",
        namespaces_with(&prefix)
    );
    let listed = netns::run(&["ip", "netns", "list"]).unwrap();
    assert!(!listed.contains(&prefix), "{listed}");
    assert!(!base.exists());
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid));
    assert!(
        exits_within(&mut stray, TIMEOUT),
        "stray process in a pod was killed"
    );
    let links_after = root_links();
    let new: Vec<_> = links_after.difference(&links_before).collect();
    assert!(new.is_empty(), "new root interfaces: {new:?}");
}

/// Waits (bounded) for a plain std child to exit.
fn exits_within(child: &mut std::process::Child, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Whether process `pid` is in the named network namespace `ns` within `timeout` (same nsfs
/// inode).
fn joins_within(pid: u32, ns: &str, timeout: Duration) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let ns_inode = std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let inode = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
        if inode.ok() == Some(ns_inode) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

#[test]
fn drop_during_panic_removes_lab() {
    let prefix = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::build(&LabSpec {
            nodes: 1,
            ..Default::default()
        })
        .unwrap();
        *prefix.lock().unwrap() = lab.prefix().to_string();
        lab.pin_dir(0).unwrap();
        panic!("test failure inside a lab");
    });
    assert!(result.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert!(namespaces_with(&prefix).is_empty());
    assert!(!Path::new("/sys/fs/bpf")
        .join(prefix.trim_end_matches('-'))
        .exists());
}

#[test]
fn stale_leftovers_are_removed() {
    // pid 4000000 is above any pid this machine hands out in practice: a "dead" lab.
    let stale_ns = "dpl-4000000-0-node1";
    let stale_pin = Path::new("/sys/fs/bpf/dpl-4000000-0");
    if !netns::list_ns().iter().any(|n| n == stale_ns) {
        netns::add_ns(stale_ns).unwrap();
    }
    let mut inside = std::process::Command::new("nsenter")
        .args([
            format!("--net=/run/netns/{stale_ns}").as_str(),
            "--",
            "sleep",
            "600",
        ])
        .spawn()
        .unwrap();
    // spawn() returns once nsenter runs, not once it has entered the namespace: a cleanup
    // before its setns finds nobody inside, and the sleep then lives on in the unnamed netns.
    assert!(
        joins_within(inside.id(), stale_ns, TIMEOUT),
        "nsenter entered {stale_ns}"
    );
    {
        // Under the labs' lock so that two mounts of bpffs cannot race.
        let _lock = netns::GlobalLock::acquire().unwrap();
        netns::ensure_bpffs().unwrap();
    }
    std::fs::create_dir_all(stale_pin.join("node1")).unwrap();

    let lab = Lab::build(&LabSpec {
        nodes: 1,
        pods_per_node: 1,
        ..Default::default()
    })
    .unwrap();

    assert!(!netns::list_ns().iter().any(|n| n == stale_ns));
    assert!(!stale_pin.exists());
    assert!(
        exits_within(&mut inside, TIMEOUT),
        "process in the stale namespace was killed"
    );
    // Our own, live lab is of course kept.
    assert_eq!(namespaces_with(lab.prefix()).len(), 1 + 1 + 1 + 1);
}

#[test]
fn parallel_labs_do_not_collide() {
    let threads: Vec<_> = [Cni::Flannel, Cni::Calico, Cni::Flannel]
        .into_iter()
        .map(|cni| {
            std::thread::spawn(move || {
                let lab = Lab::build(&spec(cni)).unwrap();
                ping_ok(&lab.pod(0, 0).host(), lab.pod(1, 1).ip);
                let server = lab.pod(1, 1).host();
                let _srv = server.udp_echo_server(53).unwrap();
                let dst = SocketAddrV4::new(server.ip, 53);
                let reply = lab.pod(0, 0).host().udp_request(dst, "q", TIMEOUT).unwrap();
                assert_eq!(reply.server, "node2-pod1");
                lab.prefix().to_string()
            })
        })
        .collect();
    let prefixes: BTreeSet<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(prefixes.len(), 3);
    for prefix in prefixes {
        assert!(namespaces_with(&prefix).is_empty());
    }
}
