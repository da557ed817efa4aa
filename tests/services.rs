//! ClusterIP and NodePort load balancing in a lab cluster: real TCP and UDP through the
//! programs attached by `dataplane run` on every node, services written through ServiceTable.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use dataplane::{
    model::{Protocol, TrafficPolicy},
    services,
};
use dataplane_common::{Hook, Reason};
use dataplane_lab::lab::Cni;
use support::cluster::{
    backend, backends, cluster_ip, echo, io_kind, servers, two_nodes, with_node_port, Cluster,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const T: Duration = Duration::from_secs(3);

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
    let c = echo(cni, &[Protocol::Tcp], 8080);
    let vip = SocketAddrV4::new(VIP, 80);
    c.sync(&[cluster_ip("web", vip, Protocol::Tcp, c.backends.clone())])
        .unwrap();

    let client = c.lab.pod(0, 0);
    let mut counts = BTreeMap::new();
    for i in 0..300 {
        let reply = client
            .host()
            .tcp_request(vip, &format!("req {i}"), T)
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
    let s = c.stats(0);
    assert!(s.packets(Hook::TcPodIngress, Reason::LbNewConnection) >= 300);
    // The original direction, translated at node1's pod ingress and not masqueraded, is not
    // parsed again at egress: on node1's uplink (node2's backends) and on the local backend's
    // veth. Every connection sends at least its SYN, its request and its ACK of the reply.
    let skipped = |hook| s.packets(hook, Reason::PassTranslatedAtIngress);
    let remote = (counts["node2-pod0"] + counts["node2-pod1"]) as u64;
    let local = counts["node1-pod1"] as u64;
    assert!(
        skipped(Hook::TcUplinkEgress) >= 3 * remote,
        "uplink egress skipped {} packets of {remote} connections",
        skipped(Hook::TcUplinkEgress)
    );
    assert!(
        skipped(Hook::TcPodEgress) >= 3 * local,
        "pod egress skipped {} packets of {local} connections",
        skipped(Hook::TcPodEgress)
    );
    // The replies still took their egress translation (back to the service address).
    let replies = s.packets(Hook::TcPodEgress, Reason::NatReply);
    assert!(
        replies >= 2 * 300,
        "{replies} replies translated at pod egress"
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
    let c = echo(Cni::Flannel, &[Protocol::Udp], 5353);
    let vip = SocketAddrV4::new(VIP, 53);
    c.sync(&[cluster_ip("dns", vip, Protocol::Udp, c.backends.clone())])
        .unwrap();

    let client = c.lab.pod(0, 0);
    let mut counts = BTreeMap::new();
    for i in 0..300 {
        // A connected UDP socket: a reply from any source but VIP:53 would be dropped.
        let reply = client.host().udp_request(vip, &format!("q{i}"), T).unwrap();
        assert_eq!(*reply.peer.ip(), client.ip);
        *counts.entry(reply.server).or_insert(0) += 1;
    }
    assert_spread(&counts, 300, 3);
}

#[test]
fn connection_survives_100_backend_set_updates_that_keep_its_backend() {
    let c = echo(Cni::Flannel, &[Protocol::Tcp], 8080);
    let (pods, all) = (servers(&c), &c.backends);
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
    let c = Cluster::start(&two_nodes(Cni::Flannel)).unwrap();
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
    let c = Cluster::start(&two_nodes(Cni::Flannel)).unwrap();
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
        .expect_err("udp must fail");
    let io = io_kind(&err);
    assert_eq!(io, Some(ErrorKind::ConnectionRefused), "{err:#}");
    assert!(
        c.stats(0)
            .packets(Hook::TcPodIngress, Reason::RejectNoEndpoints)
            >= 2
    );
}

fn nodeport_services(
    c: &Cluster,
    node: usize,
    policy: TrafficPolicy,
) -> Vec<dataplane::model::ServicePort> {
    let backends = backends(&servers(c), 8080);
    let mut svc = cluster_ip("web", SocketAddrV4::new(VIP, 80), Protocol::Tcp, backends);
    svc.external_policy = policy;
    vec![with_node_port(svc, &[c.lab.node(node).underlay_ip], 30080)]
}

#[test]
fn nodeport_from_an_external_client_is_masqueraded_to_backends_on_any_node() {
    let c = echo(Cni::Flannel, &[Protocol::Tcp], 8080);
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
    // The client's veth has tx offload on: its frames carry partial checksums, which XDP
    // leaves to tc ingress (`pass-partial-checksum`).
    let s = c.stats(0);
    let both = |r| s.packets(Hook::XdpUplink, r) + s.packets(Hook::TcUplinkIngress, r);
    assert!(both(Reason::LbNewConnection) >= 120);
    assert!(
        both(Reason::NatReply) > 0,
        "remote replies reverse-NATed at ingress"
    );
}

#[test]
fn nodeport_with_external_traffic_policy_local_keeps_the_client_ip() {
    let c = echo(Cni::Flannel, &[Protocol::Tcp], 8080);
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

#[test]
fn node_reaches_clusterip_through_socket_level_balancing() {
    let c = echo(Cni::Flannel, &[Protocol::Tcp, Protocol::Udp], 8080);
    let vip = SocketAddrV4::new(VIP, 80);
    c.sync(&[
        cluster_ip("web", vip, Protocol::Tcp, c.backends.clone()),
        cluster_ip("web-udp", vip, Protocol::Udp, c.backends.clone()),
    ])
    .unwrap();
    let node = c.lab.node(0).host();
    let mut counts = BTreeMap::new();
    // Each UDP request comes from a new socket, but the kernel may hand a closed socket's
    // ephemeral port out again (about one run in 16 for 60 picks): that request is a packet of
    // the still-tracked flow, not a new one. The client socket's own address tells them apart.
    let mut udp_flows = BTreeSet::new();
    for i in 0..60 {
        let reply = node.tcp_request(vip, &format!("host {i}"), T).unwrap();
        *counts.entry(reply.server).or_insert(0) += 1;
        let reply = node.udp_request(vip, &format!("host {i}"), T).unwrap();
        assert!(reply.server.contains("pod"), "{reply:?}");
        udp_flows.insert(reply.local);
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
    let udp_new = stats.packets(Hook::TcUplinkEgress, Reason::LbNewConnection);
    assert!(
        udp_flows.len() >= 50 && udp_new >= udp_flows.len() as u64,
        "UDP to a ClusterIP per packet, at the uplink's egress (it follows backend changes): \
         {udp_new} new connections for {} flows",
        udp_flows.len()
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
    let c = echo(Cni::Flannel, &[Protocol::Tcp], 8080);
    let vip = SocketAddrV4::new(VIP, 80);
    let mut svc = cluster_ip("sticky", vip, Protocol::Tcp, c.backends.clone());
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

#[test]
fn several_ports_protocols_and_shared_backends() {
    let c = Cluster::start(&two_nodes(Cni::Flannel)).unwrap();
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
    let c = echo(Cni::Flannel, &[Protocol::Tcp], 8080);
    let vip_of = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i);
    let svcs: Vec<_> = (0..10_000)
        .map(|i| {
            cluster_ip(
                &format!("svc{i}"),
                SocketAddrV4::new(vip_of(i), 80),
                Protocol::Tcp,
                c.backends.clone(),
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
