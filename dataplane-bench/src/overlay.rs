//! (f) VXLAN: pod → pod across nodes through a tunnel, this dataplane's encapsulation (tc
//! egress of the uplink) and decapsulation (XDP on the uplink) against the kernel's `vxlan`
//! device configured as flannel configures flannel.1, with host-gw routing (no tunnel) as the
//! floor. Same injector, same packets, same delivery counters as the service measurements.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dataplane::model::NodeInfo;
use dataplane::overlay::OverlayTable;
use dataplane_common::{Hook, Reason};
use dataplane_lab::lab::{Child, Cni, Lab, LabSpec, Node};
use dataplane_lab::netns::{self, in_netns};
use serde::Serialize;

use crate::injector::{Ingress, Injector, Templates};
use crate::netutil::{self, UdpCounter, UdpStats};
use crate::scenario::{self, Traffic, EST_FLOWS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum TunnelMode {
    /// No tunnel: the underlay routes pod CIDRs (host-gw). The floor.
    HostGw,
    /// The kernel's vxlan device, flannel.1-style, on both nodes.
    KernelVxlan,
    /// `dataplane run --overlay vxlan` on both nodes.
    EbpfVxlan,
    /// `dataplane run --overlay ipip` on both nodes (no kernel ipip device exists here to
    /// compare with: compared with VXLAN and host-gw).
    EbpfIpip,
    /// `dataplane run --overlay none --xdp-mode off` with host-gw routes: the same programs on
    /// the same hooks without a tunnel, so the overlay rows' program costs minus this row's are
    /// what encapsulation and decapsulation themselves cost.
    EbpfHostGw,
}

impl TunnelMode {
    pub const ALL: [TunnelMode; 5] = [
        TunnelMode::HostGw,
        TunnelMode::KernelVxlan,
        TunnelMode::EbpfVxlan,
        TunnelMode::EbpfIpip,
        TunnelMode::EbpfHostGw,
    ];

    pub fn is_ebpf(self) -> bool {
        matches!(
            self,
            TunnelMode::EbpfVxlan | TunnelMode::EbpfIpip | TunnelMode::EbpfHostGw
        )
    }

    fn tunnels(self) -> bool {
        matches!(self, TunnelMode::EbpfVxlan | TunnelMode::EbpfIpip)
    }

    pub fn key(self) -> &'static str {
        match self {
            TunnelMode::HostGw => "host-gw (no tunnel)",
            TunnelMode::KernelVxlan => "kernel vxlan (flannel.1)",
            TunnelMode::EbpfVxlan => "ebpf vxlan",
            TunnelMode::EbpfIpip => "ebpf ipip",
            TunnelMode::EbpfHostGw => "ebpf host-gw (no tunnel)",
        }
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct TunnelSample {
    pub row: String,
    pub rep: usize,
    pub frames: u32,
    pub ns_per_packet: f64,
    pub sent: u64,
    pub delivered: u64,
    pub problems: Vec<String>,
}

/// One tunnel mode's lab; agents and sockets go before the lab's namespaces.
pub struct TunnelLab {
    pub mode: TunnelMode,
    agents: Vec<Child>,
    counters: Vec<UdpCounter>,
    _untranslated: Vec<UdpSocket>,
    pin_dirs: Vec<std::path::PathBuf>,
    node1: Node,
    ifindex_pod: u32,
    pub lab: Lab,
}

fn vtep_mac(i: usize) -> [u8; 6] {
    [0x02, 0xfa, 0, 0, 0, i as u8]
}

impl TunnelLab {
    pub fn build(mode: TunnelMode, dataplane_bin: Option<&str>) -> Result<TunnelLab> {
        let spec = LabSpec {
            nodes: 2,
            pods_per_node: 10,
            cni: Cni::Calico,
            external_client: false,
            // Without the tunnel nothing crosses: no pod routes between the nodes.
            underlay_routes: matches!(mode, TunnelMode::HostGw | TunnelMode::EbpfHostGw),
            ..Default::default()
        };
        let lab =
            Lab::build(&spec).with_context(|| format!("building the lab for {}", mode.key()))?;
        let (node1, node2) = (lab.node(0).clone(), lab.node(1).clone());
        let m1 = netutil::mac(&node1.ns, "eth0")?;
        let m2 = netutil::mac(&node2.ns, "eth0")?;
        netutil::permanent_neighbor(&node1.ns, node2.underlay_ip, &m2, "eth0")?;
        netutil::permanent_neighbor(&node2.ns, node1.underlay_ip, &m1, "eth0")?;
        let mut counters = Vec::new();
        let mut sockets = Vec::new();
        for p in &node2.pods {
            let (counter, socket) = netutil::udp_backend(&node2, p)?;
            sockets.push(socket);
            counters.push(counter);
        }
        let ifindex_pod = netutil::ifindex(&node1.ns, &node1.pods[0].host_iface)?;
        let mut t = TunnelLab {
            mode,
            agents: Vec::new(),
            counters,
            _untranslated: sockets,
            pin_dirs: Vec::new(),
            node1: node1.clone(),
            ifindex_pod,
            lab,
        };
        match mode {
            TunnelMode::HostGw => {}
            TunnelMode::KernelVxlan => {
                let nodes = [node1, node2];
                for (k, n) in nodes.iter().enumerate() {
                    let peer = &nodes[1 - k];
                    let (i, j) = (n.index, peer.index);
                    let local = n.underlay_ip.to_string();
                    let peer_vtep = netutil::fmt_mac(&vtep_mac(j));
                    let (own_addr, peer_addr) =
                        (format!("10.244.{i}.0/32"), format!("10.244.{j}.0"));
                    let peer_cidr = format!("10.244.{j}.0/24");
                    let peer_ip = peer.underlay_ip.to_string();
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
                            &netutil::fmt_mac(&vtep_mac(i)),
                            "mtu",
                            "1450",
                            "up",
                        ],
                        vec!["ip", "addr", "add", &own_addr, "dev", "flannel.1"],
                        vec![
                            "ip",
                            "neigh",
                            "add",
                            &peer_addr,
                            "lladdr",
                            &peer_vtep,
                            "dev",
                            "flannel.1",
                            "nud",
                            "permanent",
                        ],
                        vec![
                            "bridge",
                            "fdb",
                            "add",
                            &peer_vtep,
                            "dev",
                            "flannel.1",
                            "dst",
                            &peer_ip,
                            "self",
                            "permanent",
                        ],
                        vec![
                            "ip",
                            "route",
                            "add",
                            &peer_cidr,
                            "via",
                            &peer_addr,
                            "dev",
                            "flannel.1",
                            "onlink",
                        ],
                    ] {
                        netns::run_in(&n.ns, &argv)?;
                    }
                }
            }
            TunnelMode::EbpfVxlan | TunnelMode::EbpfIpip | TunnelMode::EbpfHostGw => {
                let Some(bin) = dataplane_bin else {
                    bail!("DATAPLANE_BIN is not set: cannot run `dataplane run --overlay`")
                };
                let overlay = match mode {
                    TunnelMode::EbpfIpip => "ipip",
                    TunnelMode::EbpfVxlan => "vxlan",
                    _ => "none",
                };
                let nodes = [node1, node2];
                let infos: Vec<NodeInfo> = nodes
                    .iter()
                    .map(|n| -> Result<NodeInfo> {
                        Ok(NodeInfo {
                            name: n.name.clone(),
                            address: n.underlay_ip,
                            pod_cidrs: vec![n.pod_cidr],
                            vtep_mac: Some(netutil::mac(&n.ns, "eth0")?),
                            ipip_tunnel_addr: None,
                            created: None,
                        })
                    })
                    .collect::<Result<_>>()?;
                for (k, n) in nodes.iter().enumerate() {
                    let pin = t.lab.pin_dir(k)?;
                    let pin_s = pin.to_string_lossy().into_owned();
                    let ifaces = n.pod_ifaces();
                    let mut argv = vec![
                        bin,
                        "run",
                        "--node-name",
                        &n.name,
                        "--uplink",
                        "eth0",
                        "--pin-dir",
                        &pin_s,
                        "--overlay",
                        overlay,
                        "--xdp-mode",
                        if mode.tunnels() { "auto" } else { "off" },
                        "--socket-lb",
                        "false",
                        "--pod-ifaces",
                    ];
                    argv.extend(ifaces.iter().map(String::as_str));
                    let mut child = t.lab.spawn_in(&n.ns, &argv)?;
                    wait_ready(&mut child, Duration::from_secs(30))
                        .with_context(|| format!("`dataplane run` on {}", n.name))?;
                    t.agents.push(child);
                    if mode.tunnels() {
                        let (pin2, name, infos2) = (pin.clone(), n.name.clone(), infos.clone());
                        in_netns(&n.ns, move || {
                            OverlayTable::open_pinned(&pin2)?.sync(&infos2, &name)
                        })?
                        .with_context(|| format!("overlay sync on {}", n.name))?;
                    }
                    t.pin_dirs.push(pin);
                }
            }
        }
        Ok(t)
    }

    fn counts(&self) -> Result<Vec<UdpStats>> {
        self.counters.iter().map(|c| c.read()).collect()
    }

    fn stats(&self, k: usize) -> Result<Option<dataplane::stats::Stats>> {
        match self.pin_dirs.get(k) {
            Some(p) => Ok(Some(dataplane::stats::read_pinned(p)?)),
            None => Ok(None),
        }
    }
}

impl TunnelLab {
    /// Ids of the BPF programs the agents hold (prog and link fds, /proc/PID/fdinfo).
    fn agent_program_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .agents
            .iter()
            .flat_map(|a| {
                std::fs::read_dir(format!("/proc/{}/fdinfo", a.pid()))
                    .into_iter()
                    .flatten()
            })
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .flat_map(|info| {
                info.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Per program name (both nodes' agents summed): (run_time_ns, run_cnt).
    fn program_stats(&self) -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
        let mut m = std::collections::BTreeMap::new();
        for id in self.agent_program_ids() {
            let (name, t, c) = crate::rawbpf::prog_stats_by_id(id)?;
            // The kernel keeps 15 characters of a program's name.
            let name = crate::measure::PROGRAMS
                .iter()
                .find(|p| p.starts_with(name.as_str()))
                .map_or(name, |p| p.to_string());
            let e = m.entry(name).or_insert((0, 0));
            e.0 += t;
            e.1 += c;
        }
        Ok(m)
    }
}

/// One bulk TCP measurement: iperf3, node1's first pod to node2's first pod.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ThroughputSample {
    pub row: String,
    pub rep: usize,
    pub secs: u32,
    pub gbit_per_s: f64,
    pub retransmits: u64,
    pub problems: Vec<String>,
}

/// Bulk TCP pod → pod across the nodes with iperf3 (one stream, `secs` seconds): what the
/// tunnel does to GSO/GRO, checksum offload and per-burst costs, which 64-byte frames cannot
/// show.
pub fn throughput(t: &TunnelLab, secs: u32, rep: usize) -> Result<ThroughputSample> {
    let (client, server) = (&t.lab.pod(0, 0), &t.lab.pod(1, 0));
    let port = "5201";
    let mut srv = t
        .lab
        .spawn_in(&server.ns, &["iperf3", "-s", "-1", "-p", port])
        .context("starting iperf3 -s (apt-get install iperf3)")?;
    std::thread::sleep(Duration::from_millis(300));
    let dst = server.ip.to_string();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", client.ns))
        .args(["--", "iperf3", "-c", &dst, "-p", port, "-J", "-t"])
        .arg(secs.to_string())
        .output()
        .context("running iperf3 -c")?;
    let _ = srv.try_wait();
    let _ = srv.stop();
    let mut problems = Vec::new();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    if !out.status.success() || bps <= 0.0 {
        problems.push(format!(
            "iperf3 failed ({}): {}",
            out.status,
            v["error"].as_str().unwrap_or("no result")
        ));
    }
    Ok(ThroughputSample {
        row: t.mode.key().to_string(),
        rep,
        secs,
        gbit_per_s: bps / 1e9,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        problems,
    })
}

/// The ebpf vxlan lab's programs, per packet (untimed pass with BPF run-time stats on).
pub fn profile(
    t: &TunnelLab,
    pass: &Arc<Injector>,
    templates: &Templates,
    repeat: u32,
    cpu: usize,
) -> Result<crate::measure::Profile> {
    let floor = crate::measure::StatsFloor::attach(&t.node1.ns, t.ifindex_pod)?;
    let _enabled = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let floor0 = floor.run_stats()?;
    let before = t.program_stats()?;
    let s = run(t, pass, templates, repeat, 0, cpu)?;
    let after = t.program_stats()?;
    let stats_floor_ns = crate::measure::StatsFloor::ns_per_run(floor0, floor.run_stats()?, s.sent);
    let programs = after
        .iter()
        .filter_map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or((0, 0));
            (a.1 > b.1).then(|| crate::measure::ProgramProfile {
                program: format!("{name} (both nodes)"),
                ns_per_run: (a.0 - b.0) as f64 / (a.1 - b.1) as f64,
                runs_per_packet: (a.1 - b.1) as f64 / s.sent as f64,
            })
        })
        .collect();
    Ok(crate::measure::Profile {
        row: t.mode.key().to_string(),
        services: 0,
        traffic: Traffic::ClusterEst,
        total_ns_per_packet: s.ns_per_packet,
        programs,
        stats_floor_ns,
    })
}

impl Drop for TunnelLab {
    fn drop(&mut self) {
        for a in self.agents.drain(..) {
            let _ = a.stop();
        }
    }
}

fn wait_ready(child: &mut Child, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.stdout().lines().any(|l| l.trim() == "ready") {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("exited ({status}) before `ready`: {}", child.stderr());
        }
        if Instant::now() > deadline {
            bail!("no `ready` within {timeout:?}: {}", child.stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pod → pod frames (node1's pods to node2's, UDP to port 8080; the established ClusterIP set
/// with its destination already a pod), `repeat` of them, injected at node1's pod veth.
pub fn run(
    t: &TunnelLab,
    pass: &Arc<Injector>,
    templates: &Templates,
    repeat: u32,
    rep: usize,
    cpu: usize,
) -> Result<TunnelSample> {
    let off = scenario::set_offset(Traffic::ClusterEst, true);
    let first = templates.get(off);
    let c0 = t.counts()?;
    let s0 = (t.stats(0)?, t.stats(1)?);
    templates.walk(off, EST_FLOWS)?;
    let (inj, ifindex) = (pass.clone(), t.ifindex_pod);
    let res = in_netns(&t.node1.ns, move || -> Result<_> {
        netutil::pin_to_cpu(cpu)?;
        inj.run_live(Ingress { ifindex }, &first, repeat, 64)
    })??;
    let sent = repeat as u64;
    let deadline = Instant::now() + Duration::from_millis(500);
    let deltas: Vec<UdpStats> = loop {
        let d: Vec<UdpStats> = t.counts()?.iter().zip(&c0).map(|(a, b)| *a - *b).collect();
        if d.iter().map(|x| x.no_ports).sum::<u64>() >= sent || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let total = deltas.iter().fold(UdpStats::default(), |a, b| UdpStats {
        no_ports: a.no_ports + b.no_ports,
        csum_errors: a.csum_errors + b.csum_errors,
        in_datagrams: a.in_datagrams + b.in_datagrams,
        rcvbuf_errors: a.rcvbuf_errors + b.rcvbuf_errors,
    });
    let mut problems = Vec::new();
    crate::measure::check_delivery(&mut problems, sent, &deltas, &total);
    if let (Some(a0), Some(b0), true) = (s0.0, s0.1, t.mode.tunnels()) {
        let (a1, b1) = (t.stats(0)?.expect("stats"), t.stats(1)?.expect("stats"));
        let enc = a1.packets(Hook::TcUplinkEgress, Reason::OverlayEncap)
            - a0.packets(Hook::TcUplinkEgress, Reason::OverlayEncap);
        // Opened in XDP, or at tc ingress when the agent attached no XDP (a veth uplink).
        let dec = |s: &dataplane::stats::Stats| {
            s.packets(Hook::XdpUplink, Reason::OverlayDecap)
                + s.packets(Hook::TcUplinkIngress, Reason::OverlayDecap)
        };
        let dec = dec(&b1) - dec(&b0);
        if enc != sent || dec != sent {
            problems.push(format!(
                "node1 encapsulated {enc}, node2 decapsulated {dec} of {sent}"
            ));
        }
    }
    Ok(TunnelSample {
        row: t.mode.key().to_string(),
        rep,
        frames: repeat,
        ns_per_packet: res.ns_per_frame,
        sent,
        delivered: total.no_ports,
        problems,
    })
}
