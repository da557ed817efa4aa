//! Connection state under real load and faults (issue: connection state): masquerade ports
//! freed when connections close, tuple clashes resolved by remapping the client port, TCP
//! half-close, conntrack GC, and the node's own connected UDP sockets following backend
//! changes. Real packets through the programs `dataplane run` attached in lab nodes; the soak
//! uses ApacheBench against nginx.

mod support;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use dataplane::{model::Protocol, services};
use dataplane_common::{ct::CT_MAX_ENTRIES, Hook, Reason};
use dataplane_lab::{
    lab::{Child, Cni, LabSpec, Pod},
    netns,
};
use support::{
    cluster::{backend, cluster_ip, with_node_port, Cluster},
    nginx::Nginx,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const T: Duration = Duration::from_secs(3);

fn spec() -> LabSpec {
    LabSpec {
        nodes: 2,
        pods_per_node: 2,
        cni: Cni::Flannel,
        ..Default::default()
    }
}

/// A number from ApacheBench's report (`Complete requests:      100000`).
fn ab_field(out: &str, name: &str) -> u64 {
    out.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name:?} in ab's output:\n{out}"))
}

/// A 2-node lab whose NodePort 30080 on node1 (masqueraded) has one endpoint, nginx on
/// node2's pod: every connection from the external client is masqueraded to node2.
struct NodePortToNginx {
    // Dropped first: nginx stops before the lab goes.
    _nginx: Nginx,
    cluster: Cluster,
}

impl NodePortToNginx {
    fn start() -> Self {
        let c = Cluster::start(&LabSpec {
            pods_per_node: 1,
            ..spec()
        })
        .unwrap();
        let b = c.lab.pod(1, 0);
        let nginx = Nginx::start(&b.host(), 8080, "ok");
        web_with_node_port(&c, b);
        NodePortToNginx {
            _nginx: nginx,
            cluster: c,
        }
    }

    fn url(&self) -> String {
        format!("http://{}:30080/", self.cluster.lab.node(0).underlay_ip)
    }
}

/// Service `web`: VIP:80 and NodePort 30080 on node1 (masqueraded), one endpoint `b`:8080.
/// Returns node1's address.
fn web_with_node_port(c: &Cluster, b: &Pod) -> Ipv4Addr {
    let node1 = c.lab.node(0).underlay_ip;
    c.sync_each(|_| {
        let svc = cluster_ip(
            "web",
            SocketAddrV4::new(VIP, 80),
            Protocol::Tcp,
            vec![backend(b, 8080)],
        );
        vec![with_node_port(svc, &[node1], 30080)]
    })
    .unwrap();
    node1
}

fn ct_entries(pin: &Path) -> usize {
    services::list_conntrack(pin).unwrap().len()
}

/// 100,000 short HTTP connections from one external client through a NodePort whose only
/// endpoint is on the other node (masqueraded): every one answered, no masquerade port refused,
/// although the masquerade range holds 31,744 ports: closed connections give theirs back.
#[test]
fn a_hundred_thousand_short_connections_through_one_masqueraded_backend() {
    let web = NodePortToNginx::start();
    let (c, url) = (&web.cluster, web.url());
    let ext = c.lab.external().unwrap();
    let out = netns::run_in(
        &ext.ns,
        &[
            "ab", "-q", "-n", "100000", "-c", "32", "-s", "5", "-r", &url,
        ],
    )
    .expect("ab (apt-get install apache2-utils) must be installed and finish");
    let field = |name: &str| ab_field(&out, name);
    assert_eq!(field("Complete requests:"), 100_000, "{out}");
    // Above ~530 connections/s through one backend and one masquerade address, a reused port
    // meets the backend's TIME_WAIT socket of its previous connection (31,744 ports / 60 s) and
    // the backend's PAWS check rejects half of those SYNs (timestamps are offset per
    // connection): the client retries a second later. A client unlucky seven times in a row
    // gives up; kube-proxy's masquerade has the same bound. Never more than a handful.
    assert!(field("Failed requests:") <= 10, "{out}");
    let stats = c.stats(0);
    assert_eq!(
        stats.packets(Hook::XdpUplink, Reason::DropSnatPortsExhausted),
        0,
        "no masquerade port refused"
    );
    // XDP or, for the client's partially checksummed frames (veth tx offload), tc ingress.
    assert!(
        stats.packets(Hook::XdpUplink, Reason::LbNewConnection)
            + stats.packets(Hook::TcUplinkIngress, Reason::LbNewConnection)
            >= 100_000
    );
    let pin = c.nodes[0].pin_dir();
    let entries = ct_entries(pin);
    assert!(
        entries < CT_MAX_ENTRIES as usize,
        "CT_V2 stays below its capacity: {entries}"
    );
}

/// A TCP socket bound to `local` (SO_REUSEADDR, so two may share it) connected to `dst`.
fn bound_tcp(ns: &str, local: SocketAddrV4, dst: SocketAddrV4) -> TcpStream {
    netns::in_netns(ns, move || -> std::io::Result<TcpStream> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from(local).into())?;
        s.connect_timeout(&SocketAddr::from(dst).into(), T)?;
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(T))?;
        Ok(s)
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("connect {local} -> {dst}: {e}"))
}

/// Sends a line and returns the echo server's answer (`"{server} {peer} {line}"`).
fn echo(s: &mut TcpStream, line: &str) -> String {
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !got.ends_with(b"\n") {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reply to {line:?}: {e}"));
        assert!(n > 0, "connection closed before the reply to {line:?}");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).trim().to_string()
}

/// Two connections from one pod source port to two Services that share their backend: the
/// second one's reply tuple (backend -> client port) is taken, so its client port is remapped
/// (netfilter's clash resolution) instead of overwriting the first connection's entry. Both
/// stay usable, interleaved.
#[test]
fn one_client_port_to_two_services_sharing_a_backend() {
    let c = Cluster::start(&spec()).unwrap();
    let b = c.lab.pod(1, 0);
    let _srv = b.host().tcp_echo_server(8080).unwrap();
    c.sync(&[
        cluster_ip(
            "a",
            SocketAddrV4::new(VIP, 80),
            Protocol::Tcp,
            vec![backend(b, 8080)],
        ),
        cluster_ip(
            "b",
            SocketAddrV4::new(VIP2, 80),
            Protocol::Tcp,
            vec![backend(b, 8080)],
        ),
    ])
    .unwrap();
    let client = c.lab.pod(0, 0);
    let local = SocketAddrV4::new(client.ip, 41000);
    let mut a = bound_tcp(&client.ns, local, SocketAddrV4::new(VIP, 80));
    let mut bb = bound_tcp(&client.ns, local, SocketAddrV4::new(VIP2, 80));
    for i in 0..5 {
        let ra = echo(&mut a, &format!("a{i}"));
        let rb = echo(&mut bb, &format!("b{i}"));
        assert!(ra.ends_with(&format!("a{i}")), "{ra}");
        assert!(rb.ends_with(&format!("b{i}")), "{rb}");
    }
    // The backend saw the first with the client's own port, the second remapped.
    let peer_port = |r: &str| r.split_whitespace().nth(1).unwrap().to_string();
    let (pa, pb) = (
        peer_port(&echo(&mut a, "x")),
        peer_port(&echo(&mut bb, "y")),
    );
    assert_eq!(pa, format!("{}:41000", client.ip));
    assert_ne!(pb, pa, "the clashing connection got another source port");
}

/// The same client port to a NodePort (masqueraded) and to its own ClusterIP, one backend:
/// the masqueraded connection's un-DNAT entry and the plain one's would be the same tuple.
#[test]
fn a_nodeport_and_its_own_clusterip_from_one_client_port() {
    let c = Cluster::start(&spec()).unwrap();
    let b = c.lab.pod(1, 0);
    let _srv = b.host().tcp_echo_server(8080).unwrap();
    let node1 = web_with_node_port(&c, b);
    let client = c.lab.pod(0, 0);
    let local = SocketAddrV4::new(client.ip, 41001);
    let mut np = bound_tcp(&client.ns, local, SocketAddrV4::new(node1, 30080));
    let mut ci = bound_tcp(&client.ns, local, SocketAddrV4::new(VIP, 80));
    for i in 0..5 {
        assert!(echo(&mut np, &format!("np{i}")).ends_with(&format!("np{i}")));
        assert!(echo(&mut ci, &format!("ci{i}")).ends_with(&format!("ci{i}")));
    }
}

/// A client that half-closes (shutdown(SHUT_WR)) keeps its connection until the server
/// answers, even long after the linger of a closed connection: one FIN is not a close.
#[test]
fn a_half_closed_connection_keeps_working() {
    let c = Cluster::start(&spec()).unwrap();
    let pin = c.nodes[0].pin_dir().to_path_buf();
    let mut cfg = dataplane::maps::read_config(&pin).unwrap();
    cfg.timeout_tcp_closed = 1;
    dataplane::maps::write_config(&pin, &cfg).unwrap();
    let b = c.lab.pod(1, 0);
    let listener = netns::in_netns(&b.ns, || TcpListener::bind("0.0.0.0:8080"))
        .unwrap()
        .unwrap();
    // Reads the request to EOF, answers 4 s later.
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = String::new();
        s.read_to_string(&mut req).unwrap();
        std::thread::sleep(Duration::from_secs(4));
        s.write_all(format!("late answer to {req}").as_bytes())
            .unwrap();
    });
    c.sync(&[cluster_ip(
        "web",
        SocketAddrV4::new(VIP, 80),
        Protocol::Tcp,
        vec![backend(b, 8080)],
    )])
    .unwrap();
    let client = c.lab.pod(0, 0);
    let mut s = netns::in_netns(&client.ns, || {
        TcpStream::connect_timeout(&SocketAddrV4::new(VIP, 80).into(), T)
    })
    .unwrap()
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"q").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "late answer to q");
    server.join().unwrap();
}

/// The agent's GC removes connections that timed out, all their entries, with no packet to
/// trigger it (an idle table is emptied, not left for the LRU).
#[test]
fn gc_removes_timed_out_connections_whole() {
    let c = Cluster::start_with(&spec(), &["--conntrack-gc-interval", "1"]).unwrap();
    let pin = c.nodes[0].pin_dir().to_path_buf();
    let mut cfg = dataplane::maps::read_config(&pin).unwrap();
    cfg.timeout_udp = 2;
    dataplane::maps::write_config(&pin, &cfg).unwrap();
    let b = c.lab.pod(1, 0);
    let vip = SocketAddrV4::new(VIP, 53);
    let _u = c.serve_dns(b, vip);
    let client = c.lab.pod(0, 0).host();
    for i in 0..50 {
        client.udp_request(vip, &format!("q{i}"), T).unwrap();
    }
    let before = ct_entries(&pin);
    assert!(before >= 100, "two entries per flow: {before}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while ct_entries(&pin) > 0 {
        assert!(
            Instant::now() < deadline,
            "GC left {} entries",
            ct_entries(&pin)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A host process with one connected UDP socket to a DNS ClusterIP (a hostNetwork resolver)
/// gets answers from a live backend within 2 s of its backend's removal, without reconnecting:
/// the node's own UDP is translated per packet, and the agent's flush of the removed backend's
/// UDP flows (kube-proxy's conntrack -D) moves it.
#[test]
fn a_host_connected_udp_socket_follows_its_backend_removal() {
    let c = Cluster::start(&spec()).unwrap();
    let backends = [c.lab.pod(0, 1), c.lab.pod(1, 0)];
    let _srv: Vec<_> = backends
        .iter()
        .map(|p| p.host().udp_echo_server(5353).unwrap())
        .collect();
    let vip = SocketAddrV4::new(VIP, 53);
    let all = backends.iter().map(|p| backend(p, 5353)).collect();
    c.sync(&[cluster_ip("dns", vip, Protocol::Udp, all)])
        .unwrap();
    let node = c.lab.node(0).host();
    let sock = netns::in_netns(&node.ns, move || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(vip)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        Ok(s)
    })
    .unwrap()
    .unwrap();
    let ask = |q: &str| -> Option<String> {
        sock.send(q.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        // Only datagrams from VIP reach a socket connected to it.
        let n = sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).to_string())
    };
    let first = ask("q0").expect("an answer through the service");
    let server = first.split_whitespace().next().unwrap().to_string();
    for i in 1..5 {
        let r = ask(&format!("q{i}")).unwrap();
        assert!(r.starts_with(&server), "one flow, one backend: {r}");
    }
    let (gone, kept): (Vec<_>, Vec<_>) = backends.iter().partition(|p| p.host().name == server);
    c.sync(&[cluster_ip(
        "dns",
        vip,
        Protocol::Udp,
        vec![backend(kept[0], 5353)],
    )])
    .unwrap();
    let removed = Instant::now();
    let deadline = removed + Duration::from_secs(2);
    let mut i = 0;
    loop {
        i += 1;
        if let Some(r) = ask(&format!("after{i}")) {
            if r.starts_with(&kept[0].host().name) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "still no answer from {} {:?} after the removal of {}",
            kept[0].host().name,
            removed.elapsed(),
            gone[0].host().name
        );
    }
    assert!(
        c.stats(0)
            .packets(Hook::TcUplinkEgress, Reason::LbNewConnection)
            >= 2,
        "the node's UDP is balanced per packet at the uplink's egress"
    );
}

/// An 8 KB UDP request to a ClusterIP and its 8 KB echo, both fragmented: the fragments after
/// the first carry no ports, and get their datagram's translation from FRAGS_V1.
#[test]
fn fragmented_udp_datagrams_are_translated_both_ways() {
    let c = Cluster::start(&spec()).unwrap();
    let remote = c.lab.pod(1, 0);
    let local = c.lab.pod(0, 1);
    let _srv: Vec<_> = [remote, local]
        .iter()
        .map(|p| p.host().udp_echo_server(5353).unwrap())
        .collect();
    let client = c.lab.pod(0, 0).host();
    for (i, b) in [remote, local].into_iter().enumerate() {
        let vip = SocketAddrV4::new(VIP, 53 + i as u16);
        c.sync(&[cluster_ip(
            "big",
            vip,
            Protocol::Udp,
            vec![backend(b, 5353)],
        )])
        .unwrap();
        let payload: String = (0..8_000)
            .map(|j| (b'a' + (j % 26) as u8) as char)
            .collect();
        let reply = client
            .udp_request(vip, &payload, T)
            .unwrap_or_else(|e| panic!("8 KB through {vip} to {}: {e:#}", b.host().name));
        assert_eq!(reply.server, b.host().name);
        assert_eq!(reply.body, payload, "the whole datagram came back");
    }
    let stats = c.stats(0);
    assert!(
        stats.packets(Hook::TcPodIngress, Reason::NatForward) >= 5,
        "later fragments of the request translated at the client's pod ingress"
    );
    assert!(stats.packets(Hook::TcPodEgress, Reason::NatReply) >= 5);
}

/// NodePort traffic under load (ab against nginx behind a masqueraded NodePort) while the
/// agent on the node is SIGKILLed and started again: the pinned links keep the programs
/// attached and the restarted agent adopts the maps, conntrack included; no request fails.
#[test]
fn nodeport_load_survives_sigkill_of_the_agent() {
    let mut web = NodePortToNginx::start();
    let url = web.url();
    let c = &mut web.cluster;
    let ext = c.lab.external().unwrap().clone();
    // Keep-alive connections and new ones alike: half the clients reuse their connection.
    let mut ab = Child::spawn(
        &ext.ns,
        &[
            "ab", "-q", "-t", "8", "-n", "1000000", "-c", "8", "-s", "5", &url,
        ],
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.nodes.remove(0).kill().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let restarted = support::node::DataplaneNode::start(&c.lab, 0, &[]).unwrap();
    c.nodes.insert(0, restarted);
    let status = ab.wait_timeout(Duration::from_secs(60)).unwrap();
    let out = ab.stdout();
    assert!(
        status.is_some_and(|s| s.success()),
        "ab: {out}\n{}",
        ab.stderr()
    );
    let field = |name: &str| ab_field(&out, name);
    assert!(field("Complete requests:") > 1_000, "{out}");
    assert_eq!(field("Failed requests:"), 0, "{out}");
}
