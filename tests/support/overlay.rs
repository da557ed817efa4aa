//! The overlay lab harness: a lab with `dataplane run --overlay` on some of its nodes, the
//! counters where tunnel packets are opened, echo and bulk TCP transfers checked end to end,
//! AF_PACKET captures of the underlay decoded, the two-address node case.
//!
//! Every lab here has `underlay_routes: false`: nodes have no route to each other's pod CIDRs,
//! only a default route to an unused address, so any cross-node pod traffic that works went
//! through the overlay.

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

use dataplane::{
    host::netdev,
    model::NodeInfo,
    overlay::{OverlayTable, SyncReport},
    stats::Stats,
};
use dataplane_common::{Hook, Reason};
use dataplane_lab::{
    lab::{Cni, Host, LabSpec, Node},
    netns,
    packet::{self, Parsed},
};

use super::node::{CheckedLab, DataplaneNode};

pub const T: Duration = Duration::from_secs(5);

/// A lab with `dataplane run` on some of its nodes. Nodes are declared before the lab so they
/// stop before it is torn down.
pub struct Overlay {
    pub dp: Vec<DataplaneNode>,
    pub lab: CheckedLab,
}

pub fn spec(cni: Cni, pod_mtu: u32) -> LabSpec {
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
    pub fn start(
        spec: &LabSpec,
        nodes: &[usize],
        args: &[&str],
        prepare: impl FnOnce(&CheckedLab),
    ) -> Overlay {
        let per_node: Vec<(usize, &[&str])> = nodes.iter().map(|&i| (i, args)).collect();
        Overlay::start_each(spec, &per_node, prepare)
    }

    /// Like [`Overlay::start`], with arguments per node.
    pub fn start_each(
        spec: &LabSpec,
        nodes: &[(usize, &[&str])],
        prepare: impl FnOnce(&CheckedLab),
    ) -> Overlay {
        super::require_root();
        let lab = CheckedLab::build(spec).expect("building the lab");
        prepare(&lab);
        let dp = nodes
            .iter()
            .map(|&(i, args)| DataplaneNode::start(&lab, i, args).expect("starting dataplane"))
            .collect();
        Overlay { dp, lab }
    }

    pub fn node(&self, i: usize) -> &Node {
        self.lab.node(i)
    }

    /// The cluster's nodes as the control plane describes them: our VTEP MAC is the uplink's.
    pub fn node_infos(&self) -> Vec<NodeInfo> {
        self.lab
            .nodes()
            .iter()
            .map(|n| node_info(n, uplink_mac(n)))
            .collect()
    }

    /// `OverlayTable::sync` for agent `k`, from a thread in its node's namespace (where its
    /// kernel routes live).
    pub fn sync(&self, k: usize, nodes: &[NodeInfo]) -> SyncReport {
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

    pub fn sync_all(&self) {
        let nodes = self.node_infos();
        for k in 0..self.dp.len() {
            self.sync(k, &nodes);
        }
    }

    pub fn stats(&self, k: usize) -> dataplane::stats::Stats {
        self.dp[k].stats().unwrap()
    }
}

pub fn node_info(n: &Node, vtep_mac: [u8; 6]) -> NodeInfo {
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
pub fn uplink_in(s: &Stats, reason: Reason) -> u64 {
    s.packets(Hook::XdpUplink, reason) + s.packets(Hook::TcUplinkIngress, reason)
}

pub fn uplink_in_bytes(s: &Stats, reason: Reason) -> u64 {
    s.rows
        .iter()
        .filter(|r| {
            (r.hook == Hook::XdpUplink || r.hook == Hook::TcUplinkIngress) && r.reason == reason
        })
        .map(|r| r.bytes)
        .sum()
}

pub fn uplink_mac(n: &Node) -> [u8; 6] {
    netns::in_netns(&n.ns, || netdev::mac("eth0"))
        .unwrap()
        .unwrap()
}

pub fn sh(ns: &str, argv: &[&str]) -> String {
    netns::run_in(ns, argv).unwrap_or_else(|e| panic!("{e:#}"))
}

/// TCP and UDP echo from `client` to `server` on `port`: the reply comes from the server and the
/// server saw the client's own address.
pub fn echo_both(client: &Host, server: &Host, port: u16, expect_peer: Ipv4Addr) {
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

pub fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= *b as u64;
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

pub fn fill(buf: &mut [u8], at: usize) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(at + k);
    }
}

/// A one-connection server in `host`: reads `[up: u32][down: u32]`, `up` bytes (hashing them),
/// answers with the hash, then sends `down` pattern bytes.
pub fn bulk_server(host: &Host, port: u16) -> JoinHandle<()> {
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
pub fn bulk(client: &Host, server: &Host, port: u16, up: usize, down: usize) -> Duration {
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
pub struct Capture {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    pub fn start(ns: &str, iface: &str) -> Capture {
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
    pub fn finish(mut self) -> Vec<Parsed> {
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
pub fn vxlan_frames(frames: &[Parsed], port: u16) -> Vec<(Parsed, u32, Parsed)> {
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

pub fn icmp_echo(ip: &packet::Ipv4Packet) -> Option<bool> {
    match ip.icmp()?.kind {
        packet::IcmpKind::Echo { request, .. } => Some(request),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// A node with two underlay addresses
// ---------------------------------------------------------------------------------------------

/// The calico seed's case 2: a node whose routing picks another of its addresses as the source
/// toward its peers. Tunnel packets must still leave from the configured tunnel address (the
/// one its peers know): otherwise the peer drops them as from an unknown node and nothing works.
pub fn second_address_case(cni: Cni, mtu: u32, mode: &str, proto_check: fn(&Parsed) -> bool) {
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
