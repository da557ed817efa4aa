//! The overlay in the lab: VXLAN and IPIP between nodes running `dataplane run --overlay`,
//! interop with the kernel's own vxlan device configured exactly as flannel configures it,
//! the outer headers on the wire (captured with AF_PACKET on the underlay switch), MTU
//! behaviour, what decapsulation refuses, and the outer source of a node with two addresses.
//!
//! Every lab here has `underlay_routes: false`: nodes have no route to each other's pod CIDRs,
//! only a default route to an unused address, so any cross-node pod traffic that works went
//! through the overlay.

#[allow(dead_code)]
#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData};
use dataplane::{
    host::netdev,
    model::{NodeInfo, Protocol},
    overlay::{OverlayTable, SyncReport},
    services::{LocalContext, ServiceTable},
    stats::Stats,
};
use dataplane_common::{map_names, overlay::OverlayNextHop, Hook, Reason};
use dataplane_lab::{
    lab::{Cni, Host, LabSpec, Node},
    netns,
    packet::{self, Parsed},
};
use support::node::{CheckedLab, DataplaneNode};

const T: Duration = Duration::from_secs(5);
const FLANNEL_VTEP_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0, 0x02];

/// A lab with `dataplane run` on some of its nodes. Nodes are declared before the lab so they
/// stop before it is torn down.
struct Overlay {
    dp: Vec<DataplaneNode>,
    lab: CheckedLab,
}

fn spec(cni: Cni, pod_mtu: u32) -> LabSpec {
    LabSpec {
        nodes: 2,
        pods_per_node: 2,
        cni,
        pod_mtu,
        underlay_routes: false,
        external_client: true,
    }
}

impl Overlay {
    /// Builds the lab; `prepare` runs before any agent starts; agents run on `nodes` with `args`.
    fn start(
        spec: &LabSpec,
        nodes: &[usize],
        args: &[&str],
        prepare: impl FnOnce(&CheckedLab),
    ) -> Overlay {
        let per_node: Vec<(usize, &[&str])> = nodes.iter().map(|&i| (i, args)).collect();
        Overlay::start_each(spec, &per_node, prepare)
    }

    /// Like [`Overlay::start`], with arguments per node.
    fn start_each(
        spec: &LabSpec,
        nodes: &[(usize, &[&str])],
        prepare: impl FnOnce(&CheckedLab),
    ) -> Overlay {
        support::require_root();
        let lab = CheckedLab::build(spec).expect("building the lab");
        prepare(&lab);
        let dp = nodes
            .iter()
            .map(|&(i, args)| DataplaneNode::start(&lab, i, args).expect("starting dataplane"))
            .collect();
        Overlay { dp, lab }
    }

    fn node(&self, i: usize) -> &Node {
        self.lab.node(i)
    }

    /// The cluster's nodes as the control plane describes them: our VTEP MAC is the uplink's.
    fn node_infos(&self) -> Vec<NodeInfo> {
        self.lab
            .nodes()
            .iter()
            .map(|n| node_info(n, uplink_mac(n)))
            .collect()
    }

    /// `OverlayTable::sync` for agent `k`, from a thread in its node's namespace (where its
    /// kernel routes live).
    fn sync(&self, k: usize, nodes: &[NodeInfo]) -> SyncReport {
        let dp = &self.dp[k];
        let (pin, name, nodes) = (
            dp.pin_dir().to_path_buf(),
            dp.node_name().to_string(),
            nodes.to_vec(),
        );
        netns::in_netns(dp.ns(), move || {
            OverlayTable::open_pinned(&pin)?.sync(&nodes, &name)
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("overlay sync on {}: {e:#}", dp.node_name()))
    }

    fn sync_all(&self) {
        let nodes = self.node_infos();
        for k in 0..self.dp.len() {
            self.sync(k, &nodes);
        }
    }

    fn stats(&self, k: usize) -> dataplane::stats::Stats {
        self.dp[k].stats().unwrap()
    }
}

fn node_info(n: &Node, vtep_mac: [u8; 6]) -> NodeInfo {
    NodeInfo {
        name: n.name.clone(),
        address: n.underlay_ip,
        pod_cidrs: vec![n.pod_cidr],
        vtep_mac: Some(vtep_mac),
        ipip_tunnel_addr: None,
        created: None,
    }
}

/// Counted where tunnel packets are opened: XDP, or tc ingress when no XDP is attached (the
/// agent attaches none on a veth uplink with an overlay).
fn uplink_in(s: &Stats, reason: Reason) -> u64 {
    s.packets(Hook::XdpUplink, reason) + s.packets(Hook::TcUplinkIngress, reason)
}

fn uplink_in_bytes(s: &Stats, reason: Reason) -> u64 {
    s.rows
        .iter()
        .filter(|r| {
            (r.hook == Hook::XdpUplink || r.hook == Hook::TcUplinkIngress) && r.reason == reason
        })
        .map(|r| r.bytes)
        .sum()
}

fn uplink_mac(n: &Node) -> [u8; 6] {
    netns::in_netns(&n.ns, || netdev::mac("eth0"))
        .unwrap()
        .unwrap()
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn sh(ns: &str, argv: &[&str]) -> String {
    netns::run_in(ns, argv).unwrap_or_else(|e| panic!("{e:#}"))
}

/// TCP and UDP echo from `client` to `server` on `port`: the reply comes from the server and the
/// server saw the client's own address.
fn echo_both(client: &Host, server: &Host, port: u16, expect_peer: Ipv4Addr) {
    let _tcp = server.tcp_echo_server(port).unwrap();
    let _udp = server.udp_echo_server(port).unwrap();
    let dst = SocketAddrV4::new(server.ip, port);
    for i in 0..3 {
        let r = client
            .tcp_request(dst, &format!("tcp {i}"), T)
            .unwrap_or_else(|e| panic!("{} -> {}: {e:#}", client.name, server.name));
        assert_eq!(
            (r.server.as_str(), *r.peer.ip(), r.body.as_str()),
            (
                server.name.as_str(),
                expect_peer,
                format!("tcp {i}").as_str()
            )
        );
        let r = client
            .udp_request(dst, &format!("udp {i}"), T)
            .unwrap_or_else(|e| panic!("{} -> {} UDP: {e:#}", client.name, server.name));
        assert_eq!(
            (r.server.as_str(), *r.peer.ip()),
            (server.name.as_str(), expect_peer)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bulk TCP transfers
// ---------------------------------------------------------------------------------------------

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= *b as u64;
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn fill(buf: &mut [u8], at: usize) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(at + k);
    }
}

/// A one-connection server in `host`: reads `[up: u32][down: u32]`, `up` bytes (hashing them),
/// answers with the hash, then sends `down` pattern bytes.
fn bulk_server(host: &Host, port: u16) -> JoinHandle<()> {
    let listener = netns::in_netns(&host.ns, move || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
    })
    .unwrap()
    .unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut hdr = [0u8; 8];
        s.read_exact(&mut hdr).unwrap();
        let up = u32::from_be_bytes(hdr[..4].try_into().unwrap()) as usize;
        let down = u32::from_be_bytes(hdr[4..].try_into().unwrap()) as usize;
        let (mut h, mut got, mut buf) = (0xcbf2_9ce4_8422_2325u64, 0usize, vec![0u8; 65536]);
        while got < up {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "client closed after {got} of {up} bytes");
            fnv(&mut h, &buf[..n]);
            got += n;
        }
        s.write_all(&h.to_be_bytes()).unwrap();
        let mut sent = 0;
        while sent < down {
            let n = (down - sent).min(buf.len());
            fill(&mut buf[..n], sent);
            s.write_all(&buf[..n]).unwrap();
            sent += n;
        }
    })
}

/// Uploads `up` bytes and downloads `down` bytes over one connection; checks both contents.
fn bulk(client: &Host, server: &Host, port: u16, up: usize, down: usize) -> Duration {
    let srv = bulk_server(server, port);
    let started = Instant::now();
    let dst = SocketAddrV4::new(server.ip, port);
    let mut s = netns::in_netns(&client.ns, move || {
        TcpStream::connect_timeout(&dst.into(), T)
    })
    .unwrap()
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut hdr = [0u8; 8];
    hdr[..4].copy_from_slice(&(up as u32).to_be_bytes());
    hdr[4..].copy_from_slice(&(down as u32).to_be_bytes());
    s.write_all(&hdr).unwrap();
    let (mut h, mut buf, mut sent) = (0xcbf2_9ce4_8422_2325u64, vec![0u8; 65536], 0);
    while sent < up {
        let n = (up - sent).min(buf.len());
        fill(&mut buf[..n], sent);
        fnv(&mut h, &buf[..n]);
        s.write_all(&buf[..n]).unwrap_or_else(|e| {
            panic!(
                "{} -> {}: upload stalled after {sent} bytes: {e}",
                client.name, server.name
            )
        });
        sent += n;
    }
    let mut echo = [0u8; 8];
    s.read_exact(&mut echo).unwrap_or_else(|e| {
        panic!(
            "{} -> {}: no hash after upload: {e}",
            client.name, server.name
        )
    });
    assert_eq!(u64::from_be_bytes(echo), h, "upload arrived corrupted");
    let (mut got, mut want) = (0, vec![0u8; 65536]);
    while got < down {
        let n = s.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "{} <- {}: download stalled after {got} bytes: {e}",
                client.name, server.name
            )
        });
        assert!(n > 0, "server closed after {got} of {down} bytes");
        fill(&mut want[..n], got);
        assert_eq!(&buf[..n], &want[..n], "download corrupted at {got}");
        got += n;
    }
    srv.join().unwrap();
    started.elapsed()
}

// ---------------------------------------------------------------------------------------------
// Capturing the underlay
// ---------------------------------------------------------------------------------------------

/// Frames seen on one interface (AF_PACKET, both directions), collected by a thread.
struct Capture {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    fn start(ns: &str, iface: &str) -> Capture {
        let name = iface.to_string();
        let fd = netns::in_netns(ns, move || -> std::io::Result<OwnedFd> {
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            let fd = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let index = netdev::index(&name).map_err(std::io::Error::other)?;
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = index as i32;
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            Ok(fd)
        })
        .unwrap()
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (s, f) = (stop.clone(), frames.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536 + 64];
            while !s.load(Ordering::Relaxed) {
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                if n > 0 {
                    f.lock().unwrap().push(buf[..n as usize].to_vec());
                }
            }
        });
        Capture {
            stop,
            frames,
            thread: Some(thread),
        }
    }

    /// Stops and returns every frame, parsed (frames that do not parse are skipped).
    fn finish(mut self) -> Vec<Parsed> {
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let frames = std::mem::take(&mut *self.frames.lock().unwrap());
        frames
            .iter()
            .filter_map(|f| packet::parse(f).ok())
            .collect()
    }
}

/// VXLAN frames among `frames`, decoded: (outer frame, VNI, inner frame).
fn vxlan_frames(frames: &[Parsed], port: u16) -> Vec<(Parsed, u32, Parsed)> {
    frames
        .iter()
        .filter(|f| f.udp().is_some_and(|u| u.dport == port))
        .filter_map(|f| {
            f.decap_vxlan()
                .ok()
                .map(|(vni, inner)| (f.clone(), vni, inner))
        })
        .collect()
}

fn icmp_echo(ip: &packet::Ipv4Packet) -> Option<bool> {
    match ip.icmp()?.kind {
        packet::IcmpKind::Echo { request, .. } => Some(request),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. VXLAN between two nodes of ours
// ---------------------------------------------------------------------------------------------

/// Where the uplink has native XDP (forced here; `auto` attaches none to a veth uplink with an
/// overlay), XDP opens tunnel packets and tc ingress sees only inner packets; IPIP and VXLAN
/// both, with bulk transfers in both directions.
#[test]
fn with_native_xdp_tunnel_packets_are_opened_in_xdp() {
    for (mode, mtu) in [("vxlan", 1450), ("ipip", 1480)] {
        let o = Overlay::start(
            &spec(Cni::Calico, mtu),
            &[0, 1],
            &["--overlay", mode, "--xdp-mode", "native"],
            |_| {},
        );
        o.sync_all();
        for k in 0..2 {
            let link = sh(&o.node(k).ns, &["ip", "-d", "link", "show", "eth0"]);
            assert!(link.contains("prog/xdp"), "{mode}: {link}");
        }
        let (p1, p2) = (o.lab.pod(0, 0).host(), o.lab.pod(1, 0).host());
        echo_both(&p1, &p2, 7401, p1.ip);
        bulk(&p1, &p2, 7402, 2 << 20, 2 << 20);
        for k in 0..2 {
            let s = o.stats(k);
            assert!(
                s.packets(Hook::XdpUplink, Reason::OverlayDecap) >= 20
                    && s.packets(Hook::TcUplinkIngress, Reason::OverlayDecap) == 0,
                "{mode} node{}: {s:?}",
                k + 1
            );
        }
    }
}

#[test]
fn vxlan_carries_pod_node_and_service_traffic_between_our_nodes() {
    let o = Overlay::start(
        &spec(Cni::Flannel, 1450),
        &[0, 1],
        &["--overlay", "vxlan"],
        |_| {},
    );
    let (p1, p2) = (o.lab.pod(0, 0).host(), o.lab.pod(1, 0).host());
    // Without the overlay's routes nothing crosses: the lab has no pod routes between nodes.
    assert!(
        p1.ping(p2.ip, 1).is_err(),
        "pods must not reach each other before the overlay is synced"
    );

    o.sync_all();
    let route = sh(&o.node(0).ns, &["ip", "route", "get", "10.244.2.2"]);
    assert!(
        route.contains("via 10.244.2.0 dev eth0")
            && route.contains("src 10.244.1.0")
            && route.contains("mtu 1450"),
        "{route}"
    );
    p1.ping(p2.ip, 1).unwrap();

    // Sync is by diff: the same nodes again change nothing, in the maps or the kernel.
    let nodes = o.node_infos();
    assert!(o.sync(0, &nodes).is_empty());
    // node2 leaves: its route, neighbour and peer go, and its pods are unreachable ...
    let r = o.sync(0, &nodes[..1]);
    assert_eq!(
        (r.routes_deleted, r.peers_deleted, r.kernel_changes),
        (1, 1, 2),
        "{r:?}"
    );
    assert!(!sh(&o.node(0).ns, &["ip", "route"]).contains("10.244.2.0/24"));
    assert!(p1.ping(p2.ip, 1).is_err());
    // ... and comes back.
    let r = o.sync(0, &nodes);
    assert_eq!(
        (r.routes_written, r.peers_written, r.kernel_changes),
        (1, 1, 2),
        "{r:?}"
    );

    p1.ping(p2.ip, 3).unwrap();
    p2.ping(p1.ip, 3).unwrap();
    echo_both(&p1, &p2, 7001, p1.ip);
    echo_both(&p2, &p1, 7002, p2.ip);
    // The node's own traffic to a remote pod leaves from its overlay address and comes back.
    let n1 = o.node(0).host();
    n1.ping(p2.ip, 2).unwrap();
    echo_both(&n1, &p2, 7003, Ipv4Addr::new(10, 244, 1, 0));
    echo_both(&o.node(1).host(), &p1, 7004, Ipv4Addr::new(10, 244, 2, 0));

    for k in 0..2 {
        let s = o.stats(k);
        assert!(
            s.packets(Hook::TcUplinkEgress, Reason::OverlayEncap) >= 20,
            "node{}: {s:?}",
            k + 1
        );
        assert!(
            uplink_in(&s, Reason::OverlayDecap) >= 20,
            "node{}: {s:?}",
            k + 1
        );
        for r in [
            Reason::DropOverlayUnknownPeer,
            Reason::DropOverlayNotLocal,
            Reason::DropOverlayMalformed,
            Reason::DropOverlayTooBig,
            Reason::DropOverlayEncapFailed,
        ] {
            assert_eq!(
                s.packets(Hook::TcUplinkEgress, r) + uplink_in(&s, r),
                0,
                "node{}: {} {s:?}",
                k + 1,
                r.name()
            );
        }
    }

    // A ClusterIP whose only backend is on node2: DNAT at node1's pod ingress, then the tunnel;
    // the backend's replies are decapsulated in XDP, then reverse-NATed.
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    let backend = o.lab.pod(1, 1);
    let _srv = backend.host().tcp_echo_server(8080).unwrap();
    let _usrv = backend.host().udp_echo_server(8080).unwrap();
    let tcp = cluster::cluster_ip(
        "web",
        vip,
        Protocol::Tcp,
        vec![cluster::backend(backend, 8080)],
    );
    let udp = cluster::cluster_ip(
        "dns",
        vip,
        Protocol::Udp,
        vec![cluster::backend(backend, 8080)],
    );
    for dp in &o.dp {
        let local = LocalContext {
            node_name: dp.node_name().to_string(),
            ..Default::default()
        };
        ServiceTable::open_pinned(dp.pin_dir(), local)
            .unwrap()
            .sync(&[tcp.clone(), udp.clone()])
            .unwrap();
    }
    let before = o.stats(0);
    for i in 0..5 {
        let r = p1.tcp_request(vip, &format!("svc {i}"), T).unwrap();
        assert_eq!(
            (r.server.as_str(), *r.peer.ip()),
            (backend.name.as_str(), p1.ip)
        );
        let r = p1.udp_request(vip, &format!("svc {i}"), T).unwrap();
        assert_eq!(
            (r.server.as_str(), *r.peer.ip()),
            (backend.name.as_str(), p1.ip)
        );
    }
    let after = o.stats(0);
    let delta = |h, r| after.packets(h, r) - before.packets(h, r);
    assert!(
        delta(Hook::TcPodIngress, Reason::LbNewConnection) >= 10,
        "{after:?}"
    );
    let nat_replies: u64 = Hook::PACKET
        .iter()
        .map(|&h| delta(h, Reason::NatReply))
        .sum();
    assert!(
        nat_replies >= 10,
        "replies reverse-NATed after decapsulation: {after:?}"
    );
    assert!(
        delta(Hook::XdpUplink, Reason::OverlayDecap)
            + delta(Hook::TcUplinkIngress, Reason::OverlayDecap)
            >= 10,
        "{after:?}"
    );

    // NodePort on node1 from the external client, backend on node2.
    let np = cluster::with_node_port(
        cluster::cluster_ip(
            "np",
            SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80),
            Protocol::Tcp,
            vec![cluster::backend(backend, 8080)],
        ),
        &[o.node(0).underlay_ip],
        30080,
    );
    for dp in &o.dp {
        let local = LocalContext {
            node_name: dp.node_name().to_string(),
            ..Default::default()
        };
        ServiceTable::open_pinned(dp.pin_dir(), local)
            .unwrap()
            .sync(&[tcp.clone(), udp.clone(), np.clone()])
            .unwrap();
    }
    let ext = o.lab.external().unwrap().clone();
    // Frames from another machine arrive with complete checksums, never as CHECKSUM_PARTIAL
    // skbs of a local stack (what veth hands over with offload on): XDP's incremental NAT
    // updates need the former.
    sh(&ext.ns, &["ethtool", "-K", "eth0", "tx", "off"]);
    let r = ext
        .tcp_request(
            SocketAddrV4::new(o.node(0).underlay_ip, 30080),
            "nodeport",
            T,
        )
        .unwrap();
    assert_eq!(r.server, backend.name);
    // In and out of eth0 without a tunnel device: the node must not send ICMP redirects.
    assert_eq!(snmp(&o.node(0).ns, "Icmp", "OutRedirects"), 0);
}

/// The next hop toward node2 as node1's encapsulation cached it (`OVERLAY_NEXTHOP_V1`).
fn cached_next_hop(dp: &DataplaneNode, node_addr: Ipv4Addr) -> Option<OverlayNextHop> {
    let data = MapData::from_pin(dp.pin_dir().join(map_names::OVERLAY_NEXTHOP)).unwrap();
    let map: aya::maps::HashMap<_, u32, OverlayNextHop> =
        aya::maps::HashMap::try_from(Map::LruHashMap(data)).unwrap();
    map.get(&u32::from_ne_bytes(node_addr.octets()), 0).ok()
}

/// The encapsulation caches the underlay next hop per node and asks the FIB again once the
/// entry is a second old: when a node's uplink MAC changes (a replaced NIC, a moved VM) and the
/// neighbour entry follows, its pods are reached again within about a second, with no agent
/// involved; while the entry is fresh, packets take the cached MAC.
#[test]
fn encapsulation_follows_a_changed_underlay_neighbour() {
    let o = Overlay::start(
        &spec(Cni::Flannel, 1450),
        &[0, 1],
        &["--overlay", "vxlan"],
        |_| {},
    );
    o.sync_all();
    let (p1, p2) = (o.lab.pod(0, 0).host(), o.lab.pod(1, 0).host());
    // The first packet finds node2's underlay neighbour unresolved (bpf_redirect_neigh resolves
    // it; nothing is cached); the next ones take the FIB's answer and cache it.
    p1.ping(p2.ip, 3).unwrap();
    let node2 = o.node(1);
    let dump = || {
        let pin = o.dp[0].pin_dir().join(map_names::OVERLAY_NEXTHOP);
        sh(
            &o.node(0).ns,
            &[
                support::node::bpftool(),
                "map",
                "dump",
                "pinned",
                pin.to_str().unwrap(),
            ],
        )
    };
    let hop = cached_next_hop(&o.dp[0], node2.underlay_ip)
        .unwrap_or_else(|| panic!("next hop not cached: {}\n{:?}", dump(), o.stats(0)));
    assert_eq!(hop.dmac, uplink_mac(node2), "{hop:?}");
    assert_eq!(hop.mtu, 1500, "the underlay route's MTU: {hop:?}");

    let new_mac = [0x02, 0, 0, 0, 0x99, 0x02];
    sh(
        &node2.ns,
        &[
            "ip",
            "link",
            "set",
            "dev",
            "eth0",
            "address",
            &mac_text(new_mac),
        ],
    );
    let addr = node2.underlay_ip.to_string();
    sh(
        &o.node(0).ns,
        &[
            "ip",
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &mac_text(new_mac),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    let changed = Instant::now();
    while p1.ping(p2.ip, 1).is_err() {
        assert!(
            changed.elapsed() < Duration::from_secs(4),
            "node2 unreachable after its MAC changed"
        );
    }
    let recovered = changed.elapsed();
    assert!(
        recovered < Duration::from_millis(2500),
        "took {recovered:?}"
    );
    let hop = cached_next_hop(&o.dp[0], node2.underlay_ip).expect("next hop cached");
    assert_eq!(hop.dmac, new_mac, "{hop:?}");
    assert!(
        o.stats(0)
            .packets(Hook::TcUplinkEgress, Reason::DropOverlayEncapFailed)
            == 0
    );
}

/// A counter of /proc/net/snmp in namespace `ns`.
fn snmp(ns: &str, group: &str, field: &str) -> u64 {
    let text = sh(ns, &["cat", "/proc/net/snmp"]);
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == field)
        .unwrap_or_else(|| panic!("{field} not in {names}"));
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// 2. Interop with flannel.1
// ---------------------------------------------------------------------------------------------

/// node2 as flannel configures it: vxlan id 1 dstport 8472 nolearning, MTU 1450, its CIDR's
/// first address, static ARP + FDB for node1's VTEP, the onlink route through flannel.1.
fn configure_flannel(lab: &CheckedLab, node1_vtep: [u8; 6]) {
    let (n1, n2) = (lab.node(0), lab.node(1));
    let ns = n2.ns.as_str();
    let local = n2.underlay_ip.to_string();
    let vtep = mac_text(node1_vtep);
    for argv in [
        vec![
            "ip",
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
            "nolearning",
            "local",
            &local,
            "dev",
            "eth0",
        ],
        vec![
            "ip",
            "link",
            "set",
            "flannel.1",
            "address",
            &mac_text(FLANNEL_VTEP_MAC),
            "mtu",
            "1450",
            "up",
        ],
        vec!["ip", "addr", "add", "10.244.2.0/32", "dev", "flannel.1"],
        vec![
            "ip",
            "neigh",
            "add",
            "10.244.1.0",
            "lladdr",
            &vtep,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ],
        vec![
            "bridge",
            "fdb",
            "add",
            &vtep,
            "dev",
            "flannel.1",
            "dst",
            &n1.underlay_ip.to_string(),
            "self",
            "permanent",
        ],
        vec![
            "ip",
            "route",
            "add",
            "10.244.1.0/24",
            "via",
            "10.244.1.0",
            "dev",
            "flannel.1",
            "onlink",
        ],
    ] {
        sh(ns, &argv);
    }
}

#[test]
fn vxlan_interoperates_with_flannel_1_both_ways() {
    let o = Overlay::start(
        &spec(Cni::Flannel, 1450),
        &[0],
        &["--overlay", "vxlan"],
        |lab| {
            configure_flannel(lab, uplink_mac(lab.node(0)));
        },
    );
    let nodes = vec![
        node_info(o.node(0), uplink_mac(o.node(0))),
        node_info(o.node(1), FLANNEL_VTEP_MAC),
    ];
    o.sync(0, &nodes);
    let (p1, p2) = (o.lab.pod(0, 0).host(), o.lab.pod(1, 0).host());

    let cap = Capture::start(o.lab.switch_ns(), "node1");
    p1.ping(p2.ip, 2).unwrap();
    p2.ping(p1.ip, 2).unwrap();
    let frames = cap.finish();
    let vx = vxlan_frames(&frames, 8472);
    let ours: Vec<_> = vx
        .iter()
        .filter(|(f, _, _)| f.ipv4().unwrap().src == o.node(0).underlay_ip)
        .collect();
    let kernel: Vec<_> = vx
        .iter()
        .filter(|(f, _, _)| f.ipv4().unwrap().src == o.node(1).underlay_ip)
        .collect();
    assert!(
        ours.len() >= 4 && kernel.len() >= 4,
        "ours {}, kernel {}: {frames:?}",
        ours.len(),
        kernel.len()
    );
    let n1_mac = uplink_mac(o.node(0));
    for (outer, vni, inner) in &ours {
        let (ip, udp) = (outer.ipv4().unwrap(), outer.udp().unwrap());
        assert_eq!(*vni, 1);
        assert_eq!((ip.dst, udp.dport), (o.node(1).underlay_ip, 8472));
        assert_eq!(
            (inner.dst, inner.src),
            (FLANNEL_VTEP_MAC, n1_mac),
            "inner MACs: VTEP to VTEP"
        );
        assert_eq!(outer.src, n1_mac);
        assert!(
            ip.checksum_ok && udp.checksum != 0 && udp.checksum_ok,
            "outer checksums: {ip:?} {udp:?}"
        );
        assert!((32768..61000).contains(&udp.sport), "{udp:?}");
    }
    // Field by field against what the kernel's device sent in the same conversation.
    let (k_outer, k_vni, _) = kernel[0];
    let (kip, kudp) = (k_outer.ipv4().unwrap(), k_outer.udp().unwrap());
    for (outer, vni, inner) in &ours {
        let ip = outer.ipv4().unwrap();
        assert_eq!(
            (
                ip.tos,
                ip.ttl,
                ip.dont_fragment,
                ip.more_fragments,
                ip.frag_offset,
                ip.ihl,
                ip.options.len(),
                *vni
            ),
            (
                kip.tos,
                kip.ttl,
                kip.dont_fragment,
                kip.more_fragments,
                kip.frag_offset,
                kip.ihl,
                kip.options.len(),
                *k_vni
            ),
            "outer IPv4 fields like flannel.1's"
        );
        assert_eq!(
            ip.total_len as usize,
            20 + 8 + 8 + 14 + inner.ipv4().unwrap().total_len as usize
        );
        assert_eq!(outer.udp().unwrap().len, ip.total_len - 20);
        assert_eq!(
            &outer.payload()[..8],
            &k_outer.payload()[..8],
            "VXLAN header like flannel.1's"
        );
        assert_ne!(
            kudp.checksum, 0,
            "flannel.1 sends UDP checksums (udpcsum is the kernel's default)"
        );
    }
    // One flow, one outer source port (the underlay keeps it on one path, as flannel.1 does):
    // every packet of a ping flow (requests or replies) leaves with the same port, from the
    // range flannel.1 uses. (The
    // port itself need not be flannel.1's: packets without a stack hash are hashed from their
    // inner 5-tuple here, by the kernel's flow dissector there.)
    let mut flows: std::collections::HashMap<(Ipv4Addr, Ipv4Addr, u32), u16> = Default::default();
    let (ports_min, ports_max) = (32_768, 60_999);
    for (outer, _, inner) in &ours {
        let ip = inner.ipv4().unwrap();
        let (Some(_), Some(id)) = (icmp_echo(ip), ip.icmp().map(|i| i.rest_of_header >> 16)) else {
            continue;
        };
        let sport = outer.udp().unwrap().sport;
        assert!(
            (ports_min..=ports_max).contains(&sport),
            "outer source port {sport}"
        );
        let first = *flows.entry((ip.src, ip.dst, id)).or_insert(sport);
        assert_eq!(first, sport, "one ping flow, two outer source ports");
    }
    assert!(
        flows.len() >= 2,
        "both pings' flows seen (ours: requests of one, replies of the other): {flows:?}"
    );
    for (k, _, _) in &kernel {
        let sport = k.udp().unwrap().sport;
        assert!(
            (ports_min..=ports_max).contains(&sport),
            "flannel.1's source port {sport}"
        );
    }
    let ids: Vec<u16> = ours.iter().map(|(f, _, _)| f.ipv4().unwrap().id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] != w[1]),
        "fresh IP IDs: {ids:?}"
    );

    // Traffic both ways, including the nodes' own and bulk TCP (GSO, offloaded checksums).
    echo_both(&p1, &p2, 7101, p1.ip);
    echo_both(&p2, &p1, 7102, p2.ip);
    echo_both(&o.node(0).host(), &p2, 7103, Ipv4Addr::new(10, 244, 1, 0));
    echo_both(&o.node(1).host(), &p1, 7104, Ipv4Addr::new(10, 244, 2, 0));
    bulk(&p1, &p2, 7105, 4 << 20, 4 << 20);
    bulk(&p2, &p1, 7106, 4 << 20, 4 << 20);
    let s = o.stats(0);
    // Bytes, not packets: a GSO burst from flannel.1 is decapsulated whole, as one packet.
    assert!(uplink_in_bytes(&s, Reason::OverlayDecap) > 4 << 20, "{s:?}");
    assert!(
        s.packets(Hook::TcUplinkEgress, Reason::OverlayEncap) > 100,
        "{s:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. IPIP: headers like calico's tunl0, traffic between our nodes
// ---------------------------------------------------------------------------------------------

fn ipip_frames(frames: &[Parsed]) -> Vec<(Parsed, packet::Ipv4Packet)> {
    frames
        .iter()
        .filter(|f| {
            f.ipv4()
                .is_some_and(|ip| ip.protocol == packet::proto::IPIP)
        })
        .filter_map(|f| f.decap_ipip().ok().map(|inner| (f.clone(), inner)))
        .collect()
}

/// Every field of a captured IPIP packet against what tunl0 emits (see the calico seed:
/// `(tos 0x0, ttl 64, id 57971, offset 0, flags [DF], proto IPIP (4), length 104)` around an
/// inner `(tos 0x0, ttl 64, id 18953, offset 0, flags [DF], proto ICMP (1), length 84)`, and
/// `flags [none]` outside an inner packet without DF).
fn check_tunl0_like(
    outer: &Parsed,
    inner: &packet::Ipv4Packet,
    src: (Ipv4Addr, [u8; 6]),
    dst: (Ipv4Addr, [u8; 6]),
) {
    let ip = outer.ipv4().unwrap();
    assert_eq!(
        (outer.src, outer.dst),
        (src.1, dst.1),
        "outer MACs: the nodes' uplinks"
    );
    assert!(outer.vlans.is_empty());
    assert_eq!(
        (ip.src, ip.dst),
        (src.0, dst.0),
        "outer addresses: the nodes' tunnel addresses"
    );
    assert_eq!((ip.ihl, ip.options.len(), ip.protocol), (5, 0, 4));
    assert_eq!(ip.tos, inner.tos & 0x03, "TOS: DSCP 0, the inner ECN bits");
    assert_eq!(ip.ttl, inner.ttl, "TTL inherited from the inner packet");
    assert_eq!(
        ip.dont_fragment, inner.dont_fragment,
        "DF copied from the inner packet (nopmtudisc)"
    );
    assert!(!ip.more_fragments && ip.frag_offset == 0);
    assert_eq!(ip.total_len, inner.total_len + 20);
    assert!(ip.checksum_ok && inner.checksum_ok, "header checksums");
    assert_eq!(outer.payload().len(), inner.total_len as usize);
}

#[test]
fn ipip_headers_match_tunl0_and_traffic_flows() {
    let o = Overlay::start(
        &spec(Cni::Calico, 1480),
        &[0, 1],
        &["--overlay", "ipip"],
        |_| {},
    );
    o.sync_all();
    let (p1, p2) = (o.lab.pod(0, 0).host(), o.lab.pod(1, 0).host());
    let route = sh(&o.node(0).ns, &["ip", "route", "get", "10.244.2.2"]);
    assert!(route.contains("mtu 1480"), "{route}");

    let cap = Capture::start(o.lab.switch_ns(), "node1");
    p1.ping(p2.ip, 3).unwrap();
    // UDP without DF (IP_PMTUDISC_DONT), to see DF follow the inner packet.
    let _u = p2.udp_echo_server(7201).unwrap();
    sh(
        &p1.ns,
        &[
            "ping",
            "-n",
            "-c",
            "2",
            "-i",
            "0.2",
            "-M",
            "dont",
            &p2.ip.to_string(),
        ],
    );
    let frames = cap.finish();
    let ipip = ipip_frames(&frames);
    let (n1, n2) = (o.node(0), o.node(1));
    let (a, b) = (
        (n1.underlay_ip, uplink_mac(n1)),
        (n2.underlay_ip, uplink_mac(n2)),
    );
    let mut seen = (0, 0, 0, 0);
    let mut ids = Vec::new();
    for (outer, inner) in &ipip {
        let from1 = outer.ipv4().unwrap().src == n1.underlay_ip;
        if from1 {
            check_tunl0_like(outer, inner, a, b)
        } else {
            check_tunl0_like(outer, inner, b, a)
        }
        if inner.protocol == 1 {
            assert_eq!(
                outer.ipv4().unwrap().total_len,
                104,
                "a 64-byte ping is 104 bytes of IPIP, as in the seed"
            );
            assert_eq!(
                icmp_echo(inner),
                Some(from1),
                "requests from node1, replies from node2"
            );
            assert_eq!(
                inner.ttl, 63,
                "the forwarded inner packet, TTL decremented once"
            );
        }
        match (from1, inner.dont_fragment) {
            (true, true) => seen.0 += 1,
            (true, false) => seen.1 += 1,
            (false, true) => seen.2 += 1,
            (false, false) => seen.3 += 1,
        }
        if from1 {
            ids.push(outer.ipv4().unwrap().id);
        }
    }
    // Requests with DF (default ping) and without (-M dont); replies without DF.
    assert!(
        seen.0 >= 3 && seen.1 >= 2 && seen.3 >= 5,
        "{seen:?} in {} IPIP frames",
        ipip.len()
    );
    ids.dedup();
    assert!(
        ids.len() >= 5 && !ids.contains(&0),
        "fresh, non-zero IDs: {ids:?}"
    );

    p2.ping(p1.ip, 2).unwrap();
    echo_both(&p1, &p2, 7202, p1.ip);
    echo_both(&p2, &p1, 7203, p2.ip);
    echo_both(&n1.host(), &p2, 7204, Ipv4Addr::new(10, 244, 1, 0));
    bulk(&p1, &p2, 7205, 2 << 20, 2 << 20);
    for k in 0..2 {
        let s = o.stats(k);
        assert!(
            s.packets(Hook::TcUplinkEgress, Reason::OverlayEncap) >= 20,
            "{s:?}"
        );
        assert!(uplink_in(&s, Reason::OverlayDecap) >= 20, "{s:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. MTU
// ---------------------------------------------------------------------------------------------

#[test]
fn vxlan_mtu_frag_needed_and_bulk_transfers() {
    let o = Overlay::start(
        &spec(Cni::Flannel, 1450),
        &[0, 1],
        &["--overlay", "vxlan"],
        |lab| {
            // The external client routes pod CIDRs through node1 (with a full 1500-byte MTU).
            sh(
                &lab.external().unwrap().ns,
                &["ip", "route", "add", "10.244.0.0/16", "via", "198.18.0.11"],
            );
        },
    );
    o.sync_all();
    let p2 = o.lab.pod(1, 0).host();
    let dst = p2.ip.to_string();
    let n1 = &o.node(0).ns;
    // The node's own packets: the route's MTU, like flannel.1's.
    let err = netns::run_in(
        n1,
        &[
            "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", "1472", &dst,
        ],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("mtu=1450"), "{err:#}");
    sh(
        n1,
        &[
            "ping", "-n", "-c", "2", "-W", "1", "-M", "do", "-s", "1422", &dst,
        ],
    );
    // Forwarded packets: ICMP fragmentation needed with the tunnel's MTU.
    let ext = o.lab.external().unwrap().ns.clone();
    let err = netns::run_in(
        &ext,
        &[
            "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", "1472", &dst,
        ],
    )
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("Frag needed") && text.contains("mtu = 1450"),
        "{text}"
    );
    // One that fits is tunnelled, but node2 refuses it: its inner source (the external client)
    // is not node1's (a pod of node1's or node1 itself), and accepting it would let anyone who
    // forges node1's outer address inject packets from any address (hostile-input issue).
    let spoofed = uplink_in(&o.stats(1), Reason::DropOverlaySpoofedSource);
    netns::run_in(
        &ext,
        &[
            "ping", "-n", "-c", "2", "-W", "1", "-M", "do", "-s", "1422", &dst,
        ],
    )
    .unwrap_err();
    assert_eq!(
        uplink_in(&o.stats(1), Reason::DropOverlaySpoofedSource) - spoofed,
        2,
        "node2 drops the external source's packets node1 tunnelled"
    );
    let s = o.stats(0);
    assert_eq!(
        s.packets(Hook::TcUplinkEgress, Reason::DropOverlayTooBig),
        0,
        "the kernel, not the datapath, refuses: {s:?}"
    );

    // 10 MB each way: pod to pod (forwarded, GRO/GSO) and node to pod (local TCP, TSO). The
    // GSO bursts cross the veth underlay whole and are decapsulated whole on node2; p2's host
    // veth has TSO/GSO off, so the kernel segments the decapsulated bursts in software there
    // (skb->encapsulation and the tunnel GSO type survive bpf_skb_adjust_room's shrink on
    // this kernel): the transfer's content check covers that.
    sh(
        &o.node(1).ns,
        &[
            "ethtool",
            "-K",
            &o.lab.pod(1, 0).host_iface,
            "tso",
            "off",
            "gso",
            "off",
        ],
    );
    let before = uplink_in_bytes(&o.stats(1), Reason::OverlayDecap);
    let before_n = uplink_in(&o.stats(1), Reason::OverlayDecap);
    let took = bulk(&o.lab.pod(0, 0).host(), &p2, 7301, 10 << 20, 10 << 20);
    eprintln!("pod <-> pod 2 x 10 MB: {took:?}");
    let s = o.stats(1);
    let (bytes, n) = (
        uplink_in_bytes(&s, Reason::OverlayDecap) - before,
        uplink_in(&s, Reason::OverlayDecap) - before_n,
    );
    assert!(
        bytes > 10 << 20 && bytes / n > 1514,
        "decapsulated {n} packets of {bytes} bytes: GSO bursts should arrive whole"
    );
    // Segments as large as flannel.1's: the route's MTU gives TCP an MSS whose segments, with
    // the 50 bytes of VXLAN, fill the underlay's 1500 exactly. The switch port toward node2
    // gets TSO/GSO off, so it segments what it forwards as a NIC's TSO would put it on the
    // wire (captured there, after segmentation).
    sh(
        o.lab.switch_ns(),
        &["ethtool", "-K", "node2", "tso", "off", "gso", "off"],
    );
    let cap = Capture::start(o.lab.switch_ns(), "node2");
    let took = bulk(&o.node(0).host(), &p2, 7302, 10 << 20, 10 << 20);
    eprintln!("node <-> pod 2 x 10 MB: {took:?}");
    let frames = cap.finish();
    let sizes: Vec<usize> = vxlan_frames(&frames, 8472)
        .iter()
        .filter(|(f, _, _)| f.ipv4().unwrap().src == o.node(0).underlay_ip)
        .map(|(f, _, _)| 14 + f.ipv4().unwrap().total_len as usize)
        .collect();
    let full = sizes.iter().filter(|&&n| n == 14 + 1500).count();
    assert!(
        sizes.iter().all(|&n| n <= 14 + 1500),
        "no frame above the underlay MTU: {:?}",
        sizes.iter().max()
    );
    assert!(full > 5000, "{full} full-size frames of {}", sizes.len());
}

// ---------------------------------------------------------------------------------------------
// 5. What decapsulation refuses
// ---------------------------------------------------------------------------------------------

/// A UDP socket in `host` on `port` that records every datagram's payload.
fn udp_sink(host: &Host, port: u16) -> (Arc<Mutex<Vec<String>>>, Arc<AtomicBool>) {
    let sock = netns::in_netns(&host.ns, move || {
        std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
    })
    .unwrap()
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let (got, stop) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let (g, s) = (got.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                g.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    });
    (got, stop)
}

#[test]
fn decapsulation_accepts_only_tunnel_packets_for_this_node_from_known_nodes() {
    let o = Overlay::start(
        &spec(Cni::Flannel, 1450),
        &[0],
        &["--overlay", "vxlan"],
        |_| {},
    );
    let nodes = o.node_infos();
    o.sync(0, &nodes);
    let n1 = o.node(0);
    let pod = o.lab.pod(0, 0);
    let ext = o.lab.external().unwrap();
    let (got, stop) = udp_sink(&pod.host(), 7401);
    let n1_mac = uplink_mac(n1);
    let ext_mac = netns::in_netns(&ext.ns, || netdev::mac("eth0"))
        .unwrap()
        .unwrap();
    let node2 = o.node(1).underlay_ip;
    // A VXLAN frame from `outer_src` (with the external client's MAC) to node1's MAC.
    let from = |inner_src: Ipv4Addr,
                outer_src: Ipv4Addr,
                outer_dst: Ipv4Addr,
                vni: u32,
                inner_dst: Ipv4Addr,
                tag: &str| {
        let inner = packet::Frame::eth([2, 0, 0, 0, 0, 9], n1_mac)
            .ipv4(inner_src, inner_dst)
            .udp(5555, 7401)
            .payload(tag.as_bytes())
            .build();
        packet::Frame::eth(ext_mac, n1_mac)
            .ipv4(outer_src, outer_dst)
            .udp(40000, 8472)
            .payload(&packet::vxlan(vni, &inner))
            .build()
    };
    let frame =
        |outer_src: Ipv4Addr, outer_dst: Ipv4Addr, vni: u32, inner_dst: Ipv4Addr, tag: &str| {
            let inner = packet::Frame::eth([2, 0, 0, 0, 0, 9], n1_mac)
                .ipv4(Ipv4Addr::new(10, 244, 2, 9), inner_dst)
                .udp(5555, 7401)
                .payload(tag.as_bytes())
                .build();
            packet::Frame::eth(ext_mac, n1_mac)
                .ipv4(outer_src, outer_dst)
                .udp(40000, 8472)
                .payload(&packet::vxlan(vni, &inner))
                .build()
        };
    let cases = [
        (
            "unknown peer",
            frame(ext.ip, n1.underlay_ip, 1, pod.ip, "unknown peer"),
            Reason::DropOverlayUnknownPeer,
        ),
        (
            "another address",
            frame(
                node2,
                Ipv4Addr::new(198, 18, 0, 99),
                1,
                pod.ip,
                "another address",
            ),
            Reason::DropOverlayNotLocal,
        ),
        (
            "relay",
            frame(node2, n1.underlay_ip, 1, ext.ip, "relay"),
            Reason::DropOverlayNotLocal,
        ),
        (
            "wrong vni",
            frame(node2, n1.underlay_ip, 2, pod.ip, "wrong vni"),
            Reason::DropOverlayWrongVni,
        ),
        // node2's outer address forged by the external client, inner sources not node2's: a
        // packet "from" anywhere to a pod (and the pod's answer reflected to the victim).
        (
            "spoofed outside source",
            from(ext.ip, node2, n1.underlay_ip, 1, pod.ip, "spoofed outside"),
            Reason::DropOverlaySpoofedSource,
        ),
        (
            "spoofed local pod source",
            from(
                o.lab.pod(0, 1).ip,
                node2,
                n1.underlay_ip,
                1,
                pod.ip,
                "spoofed local",
            ),
            Reason::DropOverlaySpoofedSource,
        ),
        (
            "spoofed node1 source",
            from(
                n1.underlay_ip,
                node2,
                n1.underlay_ip,
                1,
                pod.ip,
                "spoofed node1",
            ),
            Reason::DropOverlaySpoofedSource,
        ),
    ];
    for (name, f, reason) in cases {
        let before = uplink_in(&o.stats(0), reason);
        support::inject(&ext.ns, vec![f]);
        std::thread::sleep(Duration::from_millis(200));
        let after = uplink_in(&o.stats(0), reason);
        assert_eq!(after - before, 1, "{name}: counted as {}", reason.name());
    }
    // The control: the same frame from a known node's address is delivered.
    support::inject(
        &ext.ns,
        vec![frame(node2, n1.underlay_ip, 1, pod.ip, "from node2")],
    );
    let deadline = Instant::now() + T;
    while got.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        *got.lock().unwrap(),
        ["from node2"],
        "only the known node's packet reaches the pod"
    );
    // The relay attempt did not leave node1 toward the external client either.
    let s = o.stats(0);
    assert_eq!(uplink_in(&s, Reason::OverlayDecap), 1, "{s:?}");
}

// ---------------------------------------------------------------------------------------------
// 6. A node with two underlay addresses
// ---------------------------------------------------------------------------------------------

/// The calico seed's case 2: a node whose routing picks another of its addresses as the source
/// toward its peers. Tunnel packets must still leave from the configured tunnel address (the
/// one its peers know): otherwise the peer drops them as from an unknown node and nothing works.
fn second_address_case(cni: Cni, mtu: u32, mode: &str, proto_check: fn(&Parsed) -> bool) {
    let node1: &[&str] = &["--overlay", mode, "--tunnel-ip", "198.18.0.11"];
    let o = Overlay::start_each(
        &spec(cni, mtu),
        &[(0, node1), (1, &["--overlay", mode])],
        |lab| {
            // 198.18.1.11 becomes the uplink's first address, and the kernel's choice of source
            // toward the other node.
            let ns = &lab.node(0).ns;
            sh(ns, &["ip", "addr", "flush", "dev", "eth0"]);
            sh(ns, &["ip", "addr", "add", "198.18.1.11/24", "dev", "eth0"]);
            sh(ns, &["ip", "addr", "add", "198.18.0.11/24", "dev", "eth0"]);
            sh(
                ns,
                &[
                    "ip",
                    "route",
                    "replace",
                    "198.18.0.0/24",
                    "dev",
                    "eth0",
                    "src",
                    "198.18.1.11",
                ],
            );
            sh(
                ns,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    "198.18.0.1",
                    "dev",
                    "eth0",
                ],
            );
        },
    );
    let route = sh(&o.node(0).ns, &["ip", "route", "get", "198.18.0.12"]);
    assert!(
        route.contains("src 198.18.1.11"),
        "the trap is armed: {route}"
    );
    let first = netns::in_netns(&o.node(0).ns, || {
        dataplane::host::netdev::first_ipv4("eth0")
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        first,
        Ipv4Addr::new(198, 18, 1, 11),
        "and 198.18.1.11 is the uplink's first address"
    );
    o.sync_all();
    let (p1, p2) = (o.lab.pod(0, 0).host(), o.lab.pod(1, 0).host());
    let cap = Capture::start(o.lab.switch_ns(), "node1");
    p1.ping(p2.ip, 3).unwrap();
    echo_both(&p1, &p2, 7501, p1.ip);
    echo_both(&o.node(0).host(), &p2, 7502, Ipv4Addr::new(10, 244, 1, 0));
    let frames = cap.finish();
    let tunnel: Vec<&Parsed> = frames
        .iter()
        .filter(|f| proto_check(f))
        .filter(|f| f.ipv4().unwrap().dst == o.node(1).underlay_ip)
        .collect();
    assert!(tunnel.len() >= 10, "{} tunnel packets", tunnel.len());
    for f in tunnel {
        assert_eq!(
            f.ipv4().unwrap().src,
            Ipv4Addr::new(198, 18, 0, 11),
            "outer source: {f:?}"
        );
    }
    assert_eq!(uplink_in(&o.stats(1), Reason::DropOverlayUnknownPeer), 0);
}

#[test]
fn ipip_outer_source_is_the_tunnel_address_on_a_node_with_two_addresses() {
    second_address_case(Cni::Calico, 1480, "ipip", |f| {
        f.ipv4().is_some_and(|ip| ip.protocol == 4)
    });
}

#[test]
fn vxlan_outer_source_is_the_tunnel_address_on_a_node_with_two_addresses() {
    second_address_case(Cni::Flannel, 1450, "vxlan", |f| {
        f.udp().is_some_and(|u| u.dport == 8472)
    });
}

// ---------------------------------------------------------------------------------------------
// The agent drives the overlay from Node objects
// ---------------------------------------------------------------------------------------------

/// A Node as the API server shows it for a flannel (vxlan) node.
fn node_yaml(n: &Node, vtep: [u8; 6]) -> String {
    let (net, len) = n.pod_cidr;
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    \
         flannel.alpha.coreos.com/backend-data: '{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}'\n    \
         flannel.alpha.coreos.com/backend-type: vxlan\n    flannel.alpha.coreos.com/public-ip: {ip}\n\
         spec:\n  podCIDR: {net}/{len}\n  podCIDRs:\n  - {net}/{len}\n\
         status:\n  addresses:\n  - address: {ip}\n    type: InternalIP\n",
        name = n.name,
        mac = mac_text(vtep),
        ip = n.underlay_ip,
    )
}

#[test]
fn the_agent_builds_the_overlay_from_node_objects() {
    support::require_root();
    let lab = CheckedLab::build(&spec(Cni::Flannel, 1450)).unwrap();
    let dir = std::env::temp_dir().join(format!("{}overlay-manifests", lab.prefix()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let docs: Vec<String> = lab
        .nodes()
        .iter()
        .map(|n| node_yaml(n, uplink_mac(n)))
        .collect();
    std::fs::write(dir.join("nodes.yaml"), docs.join("---\n")).unwrap();
    let args = ["--overlay", "vxlan", "--manifests", dir.to_str().unwrap()];
    let dp: Vec<_> = (0..2)
        .map(|i| DataplaneNode::start(&lab, i, &args).unwrap())
        .collect();
    let (p1, p2) = (lab.pod(0, 0).host(), lab.pod(1, 0).host());
    let deadline = Instant::now() + Duration::from_secs(15);
    while p1.ping(p2.ip, 1).is_err() {
        assert!(
            Instant::now() < deadline,
            "the agents never set the overlay up:\n{}\n{}",
            dp[0].stderr(),
            dp[1].stderr()
        );
    }
    p2.ping(p1.ip, 2).unwrap();
    echo_both(&p1, &p2, 7601, p1.ip);
    let route = sh(&lab.node(0).ns, &["ip", "route", "get", "10.244.2.2"]);
    assert!(
        route.contains("src 10.244.1.0") && route.contains("mtu 1450"),
        "{route}"
    );
    // Stopping leaves the datapath (and its routes) running; `dataplane cleanup` in the node
    // takes both down.
    let pins: Vec<_> = dp.iter().map(|d| d.pin_dir().to_path_buf()).collect();
    for node in dp {
        node.stop().unwrap();
    }
    p1.ping(p2.ip, 1).unwrap();
    let pin = pins[0].to_str().unwrap();
    let out = std::process::Command::new("nsenter")
        .args([
            &format!("--net=/run/netns/{}", lab.node(0).ns),
            "--",
            support::node::DATAPLANE_BIN,
            "cleanup",
            "--pin-dir",
            pin,
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("removed the overlay's kernel routes"),
        "{stdout}\n{stderr}"
    );
    let left = sh(&lab.node(0).ns, &["ip", "route", "show", "proto", "73"])
        + &sh(&lab.node(0).ns, &["ip", "addr", "show", "dev", "lo"]);
    assert!(
        !left.contains("10.244.2.0") && !left.contains("lo:overlay"),
        "{left}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
