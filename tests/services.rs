//! ClusterIP and NodePort load balancing in a lab cluster: real TCP and UDP through the
//! programs attached by `dataplane run` on every node, services written through ServiceTable.

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use cluster::{backend, cluster_ip, with_node_port, Cluster};
use dataplane::model::{Protocol, TrafficPolicy};
use dataplane_common::{Hook, Reason};
use dataplane_lab::lab::{Cni, LabSpec, Pod};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const T: Duration = Duration::from_secs(3);

fn spec(cni: Cni) -> LabSpec {
    LabSpec {
        nodes: 2,
        pods_per_node: 2,
        cni,
        ..Default::default()
    }
}

/// node1-pod0 is the client; the other three pods serve.
fn servers(c: &Cluster) -> Vec<&Pod> {
    vec![c.lab.pod(0, 1), c.lab.pod(1, 0), c.lab.pod(1, 1)]
}

fn assert_spread(counts: &BTreeMap<String, usize>, total: usize, backends: usize) {
    assert_eq!(
        counts.len(),
        backends,
        "every backend must be used: {counts:?}"
    );
    for (server, n) in counts {
        let share = *n as f64 / total as f64;
        assert!(
            (0.20..=0.47).contains(&share),
            "{server} got {n}/{total}: {counts:?}"
        );
    }
}

fn tcp_spread(cni: Cni) {
    let c = Cluster::start(&spec(cni)).unwrap();
    let _srv: Vec<_> = servers(&c)
        .iter()
        .map(|p| p.host().tcp_echo_server(8080).unwrap())
        .collect();
    let backends = servers(&c).iter().map(|p| backend(p, 8080)).collect();
    c.sync(&[cluster_ip(
        "web",
        SocketAddrV4::new(VIP, 80),
        Protocol::Tcp,
        backends,
    )])
    .unwrap();

    let client = c.lab.pod(0, 0);
    let mut counts = BTreeMap::new();
    for i in 0..300 {
        let reply = client
            .host()
            .tcp_request(SocketAddrV4::new(VIP, 80), &format!("req {i}"), T)
            .unwrap();
        assert_eq!(
            *reply.peer.ip(),
            client.ip,
            "pod clients keep their source IP"
        );
        assert_eq!(reply.body, format!("req {i}"));
        *counts.entry(reply.server).or_insert(0) += 1;
    }
    assert_spread(&counts, 300, 3);
    assert!(
        c.stats(0)
            .packets(Hook::TcPodIngress, Reason::LbNewConnection)
            >= 300
    );
}

#[test]
fn clusterip_tcp_spreads_over_local_and_remote_backends_flannel() {
    tcp_spread(Cni::Flannel);
}

#[test]
fn clusterip_tcp_spreads_over_local_and_remote_backends_calico() {
    tcp_spread(Cni::Calico);
}

#[test]
fn clusterip_udp_spreads_and_replies_come_from_the_service() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let _srv: Vec<_> = servers(&c)
        .iter()
        .map(|p| p.host().udp_echo_server(5353).unwrap())
        .collect();
    let backends = servers(&c).iter().map(|p| backend(p, 5353)).collect();
    c.sync(&[cluster_ip(
        "dns",
        SocketAddrV4::new(VIP, 53),
        Protocol::Udp,
        backends,
    )])
    .unwrap();

    let client = c.lab.pod(0, 0);
    let mut counts = BTreeMap::new();
    for i in 0..300 {
        // A connected UDP socket: a reply from any source but VIP:53 would be dropped.
        let reply = client
            .host()
            .udp_request(SocketAddrV4::new(VIP, 53), &format!("q{i}"), T)
            .unwrap();
        assert_eq!(*reply.peer.ip(), client.ip);
        *counts.entry(reply.server).or_insert(0) += 1;
    }
    assert_spread(&counts, 300, 3);
}

#[test]
fn connection_survives_100_backend_set_updates_that_keep_its_backend() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let pods = servers(&c);
    let _srv: Vec<_> = pods
        .iter()
        .map(|p| p.host().tcp_echo_server(8080).unwrap())
        .collect();
    let all: Vec<_> = pods.iter().map(|p| backend(p, 8080)).collect();
    let vip = SocketAddrV4::new(VIP, 80);
    c.sync(&[cluster_ip("web", vip, Protocol::Tcp, all.clone())])
        .unwrap();

    let mut conn = c.lab.pod(0, 0).host().tcp_connect(vip, T).unwrap();
    let first = conn.request("hello").unwrap().server;
    let mine = all
        .iter()
        .find(|b| pods.iter().any(|p| p.name == first && p.ip == b.ip))
        .unwrap()
        .clone();
    for round in 0..100 {
        // Alternate between "only mine", "mine + one other", "all", reordered.
        let mut set = vec![mine.clone()];
        set.extend(
            all.iter()
                .filter(|b| b.ip != mine.ip)
                .take(round % 3)
                .cloned(),
        );
        if round % 2 == 1 {
            set.reverse();
        }
        c.sync(&[cluster_ip("web", vip, Protocol::Tcp, set)])
            .unwrap();
        let reply = conn.request(&format!("round {round}")).unwrap();
        assert_eq!(reply.server, first, "round {round}: the connection moved");
    }
}

#[test]
fn hairpin_pod_reaches_itself_through_its_service() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let me = c.lab.pod(0, 0);
    let _srv = me.host().tcp_echo_server(8080).unwrap();
    let _usrv = me.host().udp_echo_server(8080).unwrap();
    let vip = SocketAddrV4::new(VIP, 80);
    c.sync(&[
        cluster_ip("self", vip, Protocol::Tcp, vec![backend(me, 8080)]),
        cluster_ip("self-udp", vip, Protocol::Udp, vec![backend(me, 8080)]),
    ])
    .unwrap();
    let node_ip = c.lab.node(0).underlay_ip;
    for i in 0..5 {
        let reply = me.host().tcp_request(vip, &format!("me {i}"), T).unwrap();
        assert_eq!(reply.server, me.name);
        assert_eq!(
            *reply.peer.ip(),
            node_ip,
            "hairpin traffic is masqueraded, as kube-proxy does"
        );
        let reply = me.host().udp_request(vip, &format!("me {i}"), T).unwrap();
        assert_eq!(*reply.peer.ip(), node_ip);
    }
}

#[test]
fn service_without_endpoints_is_rejected_like_kube_proxy() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let vip = SocketAddrV4::new(VIP, 80);
    c.sync(&[
        cluster_ip("empty", vip, Protocol::Tcp, vec![]),
        cluster_ip("empty-udp", vip, Protocol::Udp, vec![]),
    ])
    .unwrap();
    let client = c.lab.pod(0, 0).host();
    let started = std::time::Instant::now();
    let err = client.tcp_connect(vip, T).err().expect("connect must fail");
    let io = io_kind(&err);
    assert_eq!(io, Some(ErrorKind::ConnectionRefused), "{err:#}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not after SYN retries"
    );
    let err = client
        .udp_request(vip, "anyone?", T)
        .err()
        .expect("udp must fail");
    let io = io_kind(&err);
    assert_eq!(io, Some(ErrorKind::ConnectionRefused), "{err:#}");
    assert!(
        c.stats(0)
            .packets(Hook::TcPodIngress, Reason::RejectNoEndpoints)
            >= 2
    );
}

fn io_kind(err: &anyhow::Error) -> Option<ErrorKind> {
    err.chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(|e| e.kind())
}

fn nodeport_services(
    c: &Cluster,
    node: usize,
    policy: TrafficPolicy,
) -> Vec<dataplane::model::ServicePort> {
    let backends = servers(c).iter().map(|p| backend(p, 8080)).collect();
    let mut svc = cluster_ip("web", SocketAddrV4::new(VIP, 80), Protocol::Tcp, backends);
    svc.external_policy = policy;
    vec![with_node_port(svc, &[c.lab.node(node).underlay_ip], 30080)]
}

#[test]
fn nodeport_from_an_external_client_is_masqueraded_to_backends_on_any_node() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let _srv: Vec<_> = servers(&c)
        .iter()
        .map(|p| p.host().tcp_echo_server(8080).unwrap())
        .collect();
    c.sync_each(|n| nodeport_services(&c, n, TrafficPolicy::Cluster))
        .unwrap();
    let ext = c.lab.external().unwrap();
    let node1 = c.lab.node(0).underlay_ip;
    let mut counts = BTreeMap::new();
    for i in 0..120 {
        let reply = ext
            .tcp_request(SocketAddrV4::new(node1, 30080), &format!("np {i}"), T)
            .unwrap();
        assert_eq!(*reply.peer.ip(), node1, "masqueraded to the node address");
        *counts.entry(reply.server).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(c.stats(0).packets(Hook::XdpUplink, Reason::LbNewConnection) >= 120);
    assert!(
        c.stats(0).packets(Hook::XdpUplink, Reason::NatReply) > 0,
        "remote replies reverse-NATed at XDP"
    );
}

#[test]
fn nodeport_with_external_traffic_policy_local_keeps_the_client_ip() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let _srv: Vec<_> = servers(&c)
        .iter()
        .map(|p| p.host().tcp_echo_server(8080).unwrap())
        .collect();
    c.sync_each(|n| nodeport_services(&c, n, TrafficPolicy::Local))
        .unwrap();
    let ext = c.lab.external().unwrap();
    let node2 = c.lab.node(1).underlay_ip;
    let mut counts = BTreeMap::new();
    for i in 0..60 {
        let reply = ext
            .tcp_request(SocketAddrV4::new(node2, 30080), &format!("local {i}"), T)
            .unwrap();
        assert_eq!(*reply.peer.ip(), ext.ip, "Local keeps the client source IP");
        *counts.entry(reply.server).or_insert(0) += 1;
    }
    let names: Vec<_> = counts.keys().cloned().collect();
    assert_eq!(
        names,
        vec!["node2-pod0".to_string(), "node2-pod1".to_string()],
        "only node2's backends"
    );
}

// ---- Host traffic, affinity, churn, several ports, scale, conntrack, ICMP errors ---------------

use std::net::UdpSocket;

use dataplane::services;
use dataplane_lab::{netns, traffic::Reply};

#[test]
fn node_reaches_clusterip_through_socket_level_balancing() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let _tcp: Vec<_> = servers(&c)
        .iter()
        .map(|p| p.host().tcp_echo_server(8080).unwrap())
        .collect();
    let _udp: Vec<_> = servers(&c)
        .iter()
        .map(|p| p.host().udp_echo_server(8080).unwrap())
        .collect();
    let tcp_backends = servers(&c).iter().map(|p| backend(p, 8080)).collect();
    let udp_backends = servers(&c).iter().map(|p| backend(p, 8080)).collect();
    let vip = SocketAddrV4::new(VIP, 80);
    c.sync(&[
        cluster_ip("web", vip, Protocol::Tcp, tcp_backends),
        cluster_ip("web-udp", vip, Protocol::Udp, udp_backends),
    ])
    .unwrap();
    let node = c.lab.node(0).host();
    let mut counts = BTreeMap::new();
    for i in 0..60 {
        let reply = node.tcp_request(vip, &format!("host {i}"), T).unwrap();
        *counts.entry(reply.server).or_insert(0) += 1;
        let reply = node.udp_request(vip, &format!("host {i}"), T).unwrap();
        assert!(reply.server.contains("pod"), "{reply:?}");
    }
    assert_eq!(
        counts.len(),
        3,
        "host connections spread over every backend: {counts:?}"
    );
    let stats = c.stats(0);
    assert!(
        stats.packets(Hook::SockConnect4, Reason::LbNewConnection) >= 60,
        "TCP at connect()"
    );
    assert!(
        stats.packets(Hook::TcUplinkEgress, Reason::LbNewConnection) >= 60,
        "UDP to a ClusterIP per packet, at the uplink's egress (it follows backend changes)"
    );
    // Another node's sockets are not ours to balance (netns cookie scoping).
    assert_eq!(
        c.stats(1)
            .packets(Hook::SockConnect4, Reason::LbNewConnection),
        0
    );
}

#[test]
fn session_affinity_client_ip_sticks_until_its_timeout() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let _srv: Vec<_> = servers(&c)
        .iter()
        .map(|p| p.host().tcp_echo_server(8080).unwrap())
        .collect();
    let backends: Vec<_> = servers(&c).iter().map(|p| backend(p, 8080)).collect();
    let vip = SocketAddrV4::new(VIP, 80);
    let mut svc = cluster_ip("sticky", vip, Protocol::Tcp, backends);
    svc.affinity_timeout_secs = Some(1);
    c.sync(&[svc]).unwrap();
    let client = c.lab.pod(0, 0).host();
    let first = client.tcp_request(vip, "a", T).unwrap().server;
    for i in 0..30 {
        assert_eq!(
            client.tcp_request(vip, &format!("a{i}"), T).unwrap().server,
            first,
            "sticky within the timeout"
        );
    }
    // After the timeout the choice is random again: over 8 expiries three backends cannot all
    // come out the same except with probability (1/3)^7.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..8 {
        std::thread::sleep(Duration::from_millis(1200));
        seen.insert(client.tcp_request(vip, &format!("b{i}"), T).unwrap().server);
    }
    assert!(seen.len() > 1, "affinity never expired: {seen:?}");
}

/// A UDP request from a fixed source port, so successive calls are one flow (one CT entry).
fn udp_from_port(
    host: &dataplane_lab::lab::Host,
    sport: u16,
    dst: SocketAddrV4,
    payload: &str,
) -> anyhow::Result<Reply> {
    let payload = payload.to_string();
    netns::in_netns(&host.ns, move || -> anyhow::Result<Reply> {
        let sock = UdpSocket::bind(("0.0.0.0", sport))?;
        sock.connect(dst)?;
        sock.set_read_timeout(Some(T))?;
        sock.send(payload.as_bytes())?;
        let mut buf = [0u8; 2048];
        let n = sock.recv(&mut buf)?;
        let local = match sock.local_addr()? {
            std::net::SocketAddr::V4(a) => a,
            other => anyhow::bail!("unexpected {other}"),
        };
        Reply::parse(&String::from_utf8_lossy(&buf[..n]), local)
    })?
}

#[test]
fn backend_churn_moves_udp_flows_and_sends_no_new_connections_to_removed_backends() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let pods = servers(&c);
    let _srv: Vec<_> = pods
        .iter()
        .map(|p| p.host().udp_echo_server(5353).unwrap())
        .collect();
    let _tsrv: Vec<_> = pods
        .iter()
        .map(|p| p.host().tcp_echo_server(5353).unwrap())
        .collect();
    let all: Vec<_> = pods.iter().map(|p| backend(p, 5353)).collect();
    let vip = SocketAddrV4::new(VIP, 53);
    c.sync(&[
        cluster_ip("dns", vip, Protocol::Udp, all.clone()),
        cluster_ip("dns-tcp", vip, Protocol::Tcp, all.clone()),
    ])
    .unwrap();
    let client = c.lab.pod(0, 0).host();
    let first = udp_from_port(&client, 40555, vip, "one").unwrap().server;
    assert_eq!(
        udp_from_port(&client, 40555, vip, "two").unwrap().server,
        first,
        "one flow, one backend"
    );
    // A long-lived TCP connection to a backend that stays must survive the change.
    let mut conn = client.tcp_connect(vip, T).unwrap();
    let mut tcp_server = conn.request("x").unwrap().server;
    while tcp_server == first {
        conn = client.tcp_connect(vip, T).unwrap();
        tcp_server = conn.request("x").unwrap().server;
    }
    let remaining: Vec<_> = all
        .iter()
        .filter(|b| pods.iter().any(|p| p.ip == b.ip && p.name != first))
        .cloned()
        .collect();
    c.sync(&[
        cluster_ip("dns", vip, Protocol::Udp, remaining.clone()),
        cluster_ip("dns-tcp", vip, Protocol::Tcp, remaining),
    ])
    .unwrap();
    // The same UDP flow is answered at once by a live backend (not black-holed until a timeout).
    let moved = udp_from_port(&client, 40555, vip, "three").unwrap().server;
    assert_ne!(moved, first, "the UDP flow stayed on the removed backend");
    assert_eq!(conn.request("still there").unwrap().server, tcp_server);
    for i in 0..60 {
        let reply = client.udp_request(vip, &format!("n{i}"), T).unwrap();
        assert_ne!(
            reply.server, first,
            "a removed backend got a new connection"
        );
    }
}

#[test]
fn several_ports_protocols_and_shared_backends() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let b = c.lab.pod(1, 0);
    let _t1 = b.host().tcp_echo_server(8080).unwrap();
    let _t2 = b.host().tcp_echo_server(9090).unwrap();
    let _u = b.host().udp_echo_server(8080).unwrap();
    let vip2 = Ipv4Addr::new(10, 96, 0, 20);
    c.sync(&[
        // One service with two ports, target port != port, and TCP + UDP on the same port.
        cluster_ip(
            "multi-http",
            SocketAddrV4::new(VIP, 80),
            Protocol::Tcp,
            vec![backend(b, 8080)],
        ),
        cluster_ip(
            "multi-admin",
            SocketAddrV4::new(VIP, 81),
            Protocol::Tcp,
            vec![backend(b, 9090)],
        ),
        cluster_ip(
            "multi-udp",
            SocketAddrV4::new(VIP, 80),
            Protocol::Udp,
            vec![backend(b, 8080)],
        ),
        // The same backend behind another service.
        cluster_ip(
            "other",
            SocketAddrV4::new(vip2, 443),
            Protocol::Tcp,
            vec![backend(b, 8080)],
        ),
    ])
    .unwrap();
    let client = c.lab.pod(0, 0).host();
    assert_eq!(
        client
            .tcp_request(SocketAddrV4::new(VIP, 80), "http", T)
            .unwrap()
            .server,
        b.name
    );
    assert_eq!(
        client
            .tcp_request(SocketAddrV4::new(VIP, 81), "admin", T)
            .unwrap()
            .server,
        b.name
    );
    assert_eq!(
        client
            .udp_request(SocketAddrV4::new(VIP, 80), "udp", T)
            .unwrap()
            .server,
        b.name
    );
    assert_eq!(
        client
            .tcp_request(SocketAddrV4::new(vip2, 443), "other", T)
            .unwrap()
            .server,
        b.name
    );
}

#[test]
fn ten_thousand_services_at_once() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let _srv: Vec<_> = servers(&c)
        .iter()
        .map(|p| p.host().tcp_echo_server(8080).unwrap())
        .collect();
    let backends: Vec<_> = servers(&c).iter().map(|p| backend(p, 8080)).collect();
    let vip_of = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i);
    let svcs: Vec<_> = (0..10_000)
        .map(|i| {
            cluster_ip(
                &format!("svc{i}"),
                SocketAddrV4::new(vip_of(i), 80),
                Protocol::Tcp,
                backends.clone(),
            )
        })
        .collect();
    c.sync(&svcs).unwrap();
    let rows = services::list_services(c.nodes[0].pin_dir()).unwrap();
    assert_eq!(rows.len(), 10_000);
    let client = c.lab.pod(0, 0).host();
    for i in [0, 1, 777, 4242, 9998, 9999] {
        let reply = client
            .tcp_request(SocketAddrV4::new(vip_of(i), 80), "hi", T)
            .unwrap();
        assert!(reply.server.contains("pod"), "service {i}: {reply:?}");
    }
}

#[test]
fn conntrack_lists_entries_and_expires_idle_ones() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let b = c.lab.pod(1, 0);
    let _u = b.host().udp_echo_server(5353).unwrap();
    let vip = SocketAddrV4::new(VIP, 53);
    c.sync(&[cluster_ip(
        "dns",
        vip,
        Protocol::Udp,
        vec![backend(b, 5353)],
    )])
    .unwrap();
    let pin = c.nodes[0].pin_dir().to_path_buf();
    let mut cfg = dataplane::maps::read_config(&pin).unwrap();
    cfg.timeout_udp = 1;
    dataplane::maps::write_config(&pin, &cfg).unwrap();
    let client = c.lab.pod(0, 0);
    udp_from_port(&client.host(), 40777, vip, "first").unwrap();
    let rows = services::list_conntrack(&pin).unwrap();
    let fwd = rows
        .iter()
        .find(|r| r.src == SocketAddrV4::new(client.ip, 40777) && r.dst == vip)
        .expect("forward entry");
    assert_eq!(fwd.nat_dst, SocketAddrV4::new(b.ip, 5353));
    let cli =
        support::node::dataplane_cli(&["conntrack", "--pin-dir", pin.to_str().unwrap()]).unwrap();
    assert!(
        cli.stdout.contains(&format!("{}:40777", client.ip))
            && cli.stdout.contains(&format!("{}:5353", b.ip)),
        "{}",
        cli.stdout
    );
    let new_before = c
        .stats(0)
        .packets(Hook::TcPodIngress, Reason::LbNewConnection);
    udp_from_port(&client.host(), 40777, vip, "again").unwrap();
    assert_eq!(
        c.stats(0)
            .packets(Hook::TcPodIngress, Reason::LbNewConnection),
        new_before,
        "within the timeout: same entry"
    );
    std::thread::sleep(Duration::from_millis(2200));
    udp_from_port(&client.host(), 40777, vip, "after expiry").unwrap();
    assert_eq!(
        c.stats(0)
            .packets(Hook::TcPodIngress, Reason::LbNewConnection),
        new_before + 1,
        "an expired entry is a new connection"
    );
}

#[test]
fn icmp_port_unreachable_from_a_backend_reaches_the_client_socket() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    // The backend pod has nothing listening on 5353: its kernel answers port unreachable,
    // quoting the DNATed datagram. The client's connected socket only gets ECONNREFUSED if the
    // error was translated back to VIP:53.
    let vip = SocketAddrV4::new(VIP, 53);
    c.sync(&[cluster_ip(
        "dns",
        vip,
        Protocol::Udp,
        vec![backend(c.lab.pod(1, 0), 5353)],
    )])
    .unwrap();
    let err = c
        .lab
        .pod(0, 0)
        .host()
        .udp_request(vip, "anyone?", T)
        .err()
        .expect("must fail");
    assert_eq!(io_kind(&err), Some(ErrorKind::ConnectionRefused), "{err:#}");
    assert!(
        c.stats(0)
            .packets(Hook::TcPodEgress, Reason::IcmpErrorTranslated)
            >= 1
    );
}

#[test]
fn fragmentation_needed_from_the_node_reaches_the_client_socket() {
    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let b = c.lab.pod(1, 0);
    let _u = b.host().udp_echo_server(5353).unwrap();
    let vip = SocketAddrV4::new(VIP, 53);
    c.sync(&[cluster_ip(
        "dns",
        vip,
        Protocol::Udp,
        vec![backend(b, 5353)],
    )])
    .unwrap();
    // A smaller MTU on node1's uplink: forwarding a 1478-byte DF datagram to the remote backend
    // makes node1 send "fragmentation needed, MTU 1400" quoting the DNATed datagram.
    netns::run_in(
        &c.lab.node(0).ns,
        &["ip", "link", "set", "eth0", "mtu", "1400"],
    )
    .unwrap();
    let mtu = netns::in_netns(&c.lab.pod(0, 0).ns, move || -> anyhow::Result<i32> {
        use std::os::fd::AsRawFd;
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        let fd = sock.as_raw_fd();
        let on: libc::c_int = libc::IP_PMTUDISC_DO;
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&on as *const i32).cast(),
                4,
            )
        };
        sock.connect(vip)?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        let _ = sock.send(&[0u8; 1450]);
        let mut buf = [0u8; 2048];
        let _ = sock.recv(&mut buf); // EMSGSIZE once the error is matched to this socket
        let mut mtu: libc::c_int = 0;
        let mut len = 4 as libc::socklen_t;
        unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU,
                (&mut mtu as *mut i32).cast(),
                &mut len,
            )
        };
        Ok(mtu)
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        mtu, 1400,
        "the path MTU to the service learned from the translated ICMP error"
    );
    assert!(
        c.stats(0)
            .packets(Hook::TcPodEgress, Reason::IcmpErrorTranslated)
            >= 1
    );
}

/// Fills CT_V2 far past its size (as a SYN flood of new connections would) while a long-lived
/// connection keeps talking: the LRU table evicts idle entries, the active connection survives,
/// and new connections are still tracked.
#[test]
fn a_full_conntrack_table_keeps_established_flows() {
    use aya::maps::{HashMap as BpfHash, Map, MapData};
    use dataplane_common::ct::{CtKey, CtValue, CT_MAX_ENTRIES};

    let c = Cluster::start(&spec(Cni::Flannel)).unwrap();
    let _srv: Vec<_> = servers(&c)
        .iter()
        .map(|p| p.host().tcp_echo_server(8080).unwrap())
        .collect();
    let backends = servers(&c).iter().map(|p| backend(p, 8080)).collect();
    let vip = SocketAddrV4::new(VIP, 80);
    c.sync(&[cluster_ip("web", vip, Protocol::Tcp, backends)])
        .unwrap();
    let client = c.lab.pod(0, 0).host();
    let mut conn = client.tcp_connect(vip, T).unwrap();
    let server = conn.request("first").unwrap().server;

    let pin = c.nodes[0].pin_dir().join(dataplane_common::map_names::CT);
    let data = MapData::from_pin(&pin).unwrap();
    let mut ct: BpfHash<_, CtKey, CtValue> =
        BpfHash::try_from(Map::from_map_data(data).unwrap()).unwrap();
    let junk = CtValue::default();
    let total = CT_MAX_ENTRIES + CT_MAX_ENTRIES / 2;
    for i in 0..total {
        // Idle entries of connections that never talk again (unroutable documentation range).
        let key = CtKey {
            saddr: u32::from(Ipv4Addr::new(192, 0, 2, 1)).to_be() + (i >> 16),
            daddr: 1,
            sport: i as u16,
            dport: 80u16.to_be(),
            proto: 6,
            phase: 0,
            _pad: [0; 2],
        };
        ct.insert(key, junk, 0).unwrap();
        if i % 16_384 == 0 {
            assert_eq!(
                conn.request(&format!("during {i}")).unwrap().server,
                server,
                "evicted while active"
            );
        }
    }
    assert_eq!(conn.request("after").unwrap().server, server);
    for i in 0..20 {
        client
            .tcp_request(vip, &format!("new {i}"), T)
            .expect("new connections are still balanced");
    }
}
