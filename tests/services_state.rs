//! Services while state changes under them, in a lab cluster: backend churn moving UDP flows,
//! conntrack entries listed and expired, a full conntrack table, ICMP errors about translated
//! connections reaching the client's socket.

mod support;

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use dataplane::{model::Protocol, services};
use dataplane_common::{Hook, Reason};
use dataplane_lab::{lab::Cni, netns, traffic::Reply};
use support::cluster::{backend, cluster_ip, echo, io_kind, servers, two_nodes, Cluster};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const T: Duration = Duration::from_secs(3);

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
    let c = echo(Cni::Flannel, &[Protocol::Udp, Protocol::Tcp], 5353);
    let (pods, all) = (servers(&c), &c.backends);
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
fn conntrack_lists_entries_and_expires_idle_ones() {
    let c = Cluster::start(&two_nodes(Cni::Flannel)).unwrap();
    let b = c.lab.pod(1, 0);
    let vip = SocketAddrV4::new(VIP, 53);
    let _u = c.serve_dns(b, vip);
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
    let c = Cluster::start(&two_nodes(Cni::Flannel)).unwrap();
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
        .expect_err("must fail");
    assert_eq!(io_kind(&err), Some(ErrorKind::ConnectionRefused), "{err:#}");
    assert!(
        c.stats(0)
            .packets(Hook::TcPodEgress, Reason::IcmpErrorTranslated)
            >= 1
    );
}

#[test]
fn fragmentation_needed_from_the_node_reaches_the_client_socket() {
    let c = Cluster::start(&two_nodes(Cni::Flannel)).unwrap();
    let b = c.lab.pod(1, 0);
    let vip = SocketAddrV4::new(VIP, 53);
    let _u = c.serve_dns(b, vip);
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

    let c = echo(Cni::Flannel, &[Protocol::Tcp], 8080);
    let vip = SocketAddrV4::new(VIP, 80);
    c.sync(&[cluster_ip("web", vip, Protocol::Tcp, c.backends.clone())])
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
