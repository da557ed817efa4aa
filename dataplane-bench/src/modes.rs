//! The modes compared, each on its own lab (a 2-node cluster in namespaces), so rules,
//! conntrack state and attached programs of one mode never touch another's packets.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::{
    tc::SchedClassifierLinkId, xdp::XdpLinkId, SchedClassifier, TcAttachType, Xdp, XdpMode,
};
use dataplane::loader::{self, Datapath};
use dataplane::services::{LocalContext, ServiceTable};
use dataplane::stats::Stats;
use dataplane_common::map_names;
use dataplane_lab::lab::{Cni, Lab, LabSpec, Node};
use dataplane_lab::netns::{self, in_netns};

use crate::injector::{Injector, Templates};
use crate::netutil::{self, UdpCounter, UdpStats};

use crate::scenario::{self, NODE1_MAC};

mod control;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Mode {
    /// Plain forwarding, no NAT: the floor. Its packets are already addressed to a backend.
    NoNat,
    IptablesLegacy,
    IptablesNft,
    Nftables,
    /// This dataplane, service translation in tc (tc_pod_ingress on the ingress device).
    EbpfTc,
    /// This dataplane, service translation in XDP (xdp_uplink, tail-called by the injector).
    EbpfXdp,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Mode::NoNat,
        Mode::IptablesLegacy,
        Mode::IptablesNft,
        Mode::Nftables,
        Mode::EbpfTc,
        Mode::EbpfXdp,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Mode::NoNat => "no-nat",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::IptablesNft => "iptables-nft",
            Mode::Nftables => "nftables",
            Mode::EbpfTc => "ebpf-tc",
            Mode::EbpfXdp => "ebpf-xdp",
        }
    }

    pub fn from_key(k: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.key() == k)
    }

    pub fn is_ebpf(self) -> bool {
        matches!(self, Mode::EbpfTc | Mode::EbpfXdp)
    }

    pub fn uses_netfilter(self) -> bool {
        matches!(
            self,
            Mode::IptablesLegacy | Mode::IptablesNft | Mode::Nftables
        )
    }
}

/// A backend pod's sockets: UDP on the *service* port (a packet arriving there was not
/// translated: counted as an error) and the TCP echo server of (c) on the target port.
struct BackendPod {
    counter: UdpCounter,
    _untranslated: UdpSocket,
}

/// One mode's lab and everything attached to it. Field order is drop order: programs and
/// servers go before the lab's namespaces.
pub struct ModeLab {
    pub mode: Mode,
    pub datapath: Option<Datapath>,
    pub table: Option<ServiceTable>,
    pub tail: Option<Arc<Injector>>,
    tc_links: Vec<(&'static str, SchedClassifierLinkId)>,
    product_links: Option<(XdpLinkId, SchedClassifierLinkId)>,
    servers_stop: Arc<AtomicBool>,
    servers: Vec<std::thread::JoinHandle<()>>,
    backends: Vec<BackendPod>,
    pub node1: Node,
    pub node2: Node,
    pub ifindex_pod: u32,
    pub ifindex_uplink: u32,
    pub pin_dir: Option<PathBuf>,
    nft_loaded: bool,
    pub lab: Lab,
}

impl ModeLab {
    pub fn build(mode: Mode, templates: &Templates) -> Result<ModeLab> {
        let spec = LabSpec {
            nodes: 2,
            pods_per_node: 10,
            cni: Cni::Calico,
            external_client: false,
            ..Default::default()
        };
        let lab =
            Lab::build(&spec).with_context(|| format!("building the lab for {}", mode.key()))?;
        let node1 = lab.node(0).clone();
        let node2 = lab.node(1).clone();
        // Same uplink MAC in every lab: the NodePort frames are byte-identical across modes.
        netns::ip(
            &node1.ns,
            &[
                "link",
                "set",
                "dev",
                "eth0",
                "address",
                &netutil::fmt_mac(&NODE1_MAC),
            ],
        )?;
        let n2mac = netutil::mac(&node2.ns, "eth0")?;
        netutil::permanent_neighbor(&node1.ns, node2.underlay_ip, &n2mac, "eth0")?;
        netutil::permanent_neighbor(&node2.ns, node1.underlay_ip, &NODE1_MAC, "eth0")?;
        // Neighbours the TCP test needs, resolved up front: the lab's calico-style veths answer
        // ARP for the pod gateway by proxy ARP, which the kernel delays by up to
        // neigh.proxy_delay (0.8 s by default; calico, and the lab since, set 0): never wait for it.
        let gw = dataplane_lab::lab::CALICO_GATEWAY;
        let client = &node1.pods[0];
        netutil::permanent_neighbor(&client.ns, gw, &scenario::CALICO_MAC, "eth0")?;
        let cm = netutil::mac(&client.ns, "eth0")?;
        netutil::permanent_neighbor(&node1.ns, client.ip, &cm, &client.host_iface)?;
        let mut backends = Vec::new();
        for p in &node2.pods {
            netutil::permanent_neighbor(&p.ns, gw, &scenario::CALICO_MAC, "eth0")?;
            let (counter, untranslated) = netutil::udp_backend(&node2, p)?;
            backends.push(BackendPod {
                counter,
                _untranslated: untranslated,
            });
        }
        let ifindex_pod = netutil::ifindex(&node1.ns, &node1.pods[0].host_iface)?;
        let ifindex_uplink = netutil::ifindex(&node1.ns, "eth0")?;
        let mut ml = ModeLab {
            mode,
            datapath: None,
            table: None,
            tail: None,
            tc_links: Vec::new(),
            product_links: None,
            servers_stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            backends,
            node1,
            node2,
            ifindex_pod,
            ifindex_uplink,
            pin_dir: None,
            nft_loaded: false,
            lab,
        };
        ml.start_tcp_servers()?;
        if mode.is_ebpf() {
            ml.load_dataplane(templates)?;
        }
        Ok(ml)
    }

    fn load_dataplane(&mut self, templates: &Templates) -> Result<()> {
        let pin_dir = self.lab.pin_dir(0)?;
        // ebpf-xdp is the product on an uplink whose XDP may forward (a NIC in native mode):
        // NodePort packets to a remote backend leave by XDP_TX.
        let forward = self.mode == Mode::EbpfXdp;
        let dp = loader::load_for(&pin_dir, true, forward).context("loading the dataplane")?;
        if forward {
            self.set_switch_napi(true)?;
        }
        let masq = self.node1.underlay_ip;
        dataplane::maps::write_config(
            &dp.ebpf,
            &dataplane_common::ct::Config::with_masq_addr(u32::from(masq).to_be()),
        )?;
        let veth = self.node1.pods[0].host_iface.clone();
        // The egress half of the product is always there: tc_uplink_egress (SNAT of
        // masqueraded connections, un-DNAT of replies leaving by the uplink) and tc_pod_egress
        // on the client pod's veth (un-DNAT of replies to it).
        let mut set = vec![
            ("tc_uplink_egress", "eth0".to_string(), TcAttachType::Egress),
            ("tc_pod_egress", veth.clone(), TcAttachType::Egress),
        ];
        match self.mode {
            // Every service translation at tc: tc_pod_ingress on the pod's veth (the product's
            // ClusterIP path) and the same program on the uplink's tc ingress (NodePort at tc,
            // what XDP is compared with).
            Mode::EbpfTc => {
                set.push(("tc_pod_ingress", veth.clone(), TcAttachType::Ingress));
                set.push(("tc_pod_ingress", "eth0".to_string(), TcAttachType::Ingress));
            }
            // Service translation at XDP: xdp_uplink, run by the injector at the point where the
            // frame enters (for NodePort frames that is exactly the product's hook; for pod frames
            // it is XDP on the host-side pod veth, which the product does not attach today), and
            // the uplink's tc ingress observer as deployed.
            Mode::EbpfXdp => {
                set.push((
                    "tc_uplink_ingress",
                    "eth0".to_string(),
                    TcAttachType::Ingress,
                ));
                let prog: &Xdp = dp
                    .ebpf
                    .program("xdp_uplink")
                    .ok_or_else(|| anyhow!("no xdp_uplink"))?
                    .try_into()?;
                self.tail = Some(Arc::new(Injector::load(
                    templates,
                    Some(prog),
                    "bench_inj_xdp",
                )?));
            }
            _ => unreachable!(),
        }
        let (dp, links) = attach_tc(&self.node1.ns, dp, set)?;
        self.tc_links = links;
        let mut table = ServiceTable::from_ebpf(
            &dp.ebpf,
            LocalContext {
                node_name: "node1".into(),
                ..Default::default()
            },
        )?;
        // As the agent runs it: the pre-filter on, trusting the address bitmap.
        dataplane::agent::enable_pod_filter_for(&mut table, &dp.ebpf, &[u32::from(masq).to_be()])?;
        self.table = Some(table);
        self.datapath = Some(dp);
        self.pin_dir = Some(pin_dir);
        Ok(())
    }

    /// A frame node1's XDP_TX sends out of its veth uplink reaches the switch only if the
    /// switch's end of the pair runs NAPI (veth_xdp_xmit drops it otherwise): GRO on that end
    /// turns NAPI on. A NIC uplink needs nothing of the kind; it adds the NAPI pass to this
    /// mode's every packet toward the switch (tc-path frames included), not to the others'.
    /// `on` false: back to what the mode runs with (on for ebpf-xdp only).
    pub fn set_switch_napi(&self, on: bool) -> Result<()> {
        let gro = if on || self.mode == Mode::EbpfXdp {
            "on"
        } else {
            "off"
        };
        netns::run_in(
            self.lab.switch_ns(),
            &["ethtool", "-K", &self.node1.name, "gro", gro],
        )
        .context("setting NAPI (GRO) at the switch's port toward node1 (ethtool)")?;
        Ok(())
    }

    /// (c) in the XDP lab: the product exactly as `dataplane run` attaches it (xdp_uplink on
    /// the uplink, tc_pod_ingress on the client pod's veth, on top of the egress programs),
    /// only while the TCP test runs: the live-frame tests inject at those hooks themselves.
    pub fn attach_product(&mut self) -> Result<()> {
        if self.mode != Mode::EbpfXdp || self.product_links.is_some() {
            return Ok(());
        }
        let dp = self.datapath.take().expect("datapath");
        let veth = self.node1.pods[0].host_iface.clone();
        let (dp, res) = in_netns(&self.node1.ns, move || {
            let mut dp = dp;
            let res = (|| -> Result<(XdpLinkId, SchedClassifierLinkId)> {
                let x: &mut Xdp = loader::program(&mut dp.ebpf, "xdp_uplink")?;
                let xl = x
                    .attach("eth0", XdpMode::Driver)
                    .context("attaching xdp_uplink")?;
                let t: &mut SchedClassifier = loader::program(&mut dp.ebpf, "tc_pod_ingress")?;
                let tl = t
                    .attach(&veth, TcAttachType::Ingress)
                    .context("attaching tc_pod_ingress")?;
                Ok((xl, tl))
            })();
            (dp, res)
        })?;
        self.datapath = Some(dp);
        self.product_links = Some(res?);
        Ok(())
    }

    pub fn detach_product(&mut self) -> Result<()> {
        let Some((xl, tl)) = self.product_links.take() else {
            return Ok(());
        };
        let dp = self.datapath.as_mut().expect("datapath");
        let x: &mut Xdp = loader::program(&mut dp.ebpf, "xdp_uplink")?;
        x.detach(xl)?;
        let t: &mut SchedClassifier = loader::program(&mut dp.ebpf, "tc_pod_ingress")?;
        t.detach(tl)?;
        Ok(())
    }

    /// TCP echo servers on every backend: one reply line per connection, then wait for the
    /// client to close (it aborts with RST, so nobody keeps TIME_WAIT state).
    fn start_tcp_servers(&mut self) -> Result<()> {
        for (i, p) in self.node2.pods.iter().enumerate() {
            let listener = in_netns(&p.ns, || {
                TcpListener::bind(SocketAddrV4::new(
                    Ipv4Addr::UNSPECIFIED,
                    scenario::TARGET_PORT,
                ))
            })??;
            let stop = self.servers_stop.clone();
            self.servers
                .push(std::thread::spawn(move || serve(listener, i, stop)));
        }
        Ok(())
    }

    pub fn backend_counts(&self) -> Result<Vec<UdpStats>> {
        self.backends.iter().map(|b| b.counter.read()).collect()
    }

    /// Empties this mode's connection tracking: the kernel's (conntrack -F) for netfilter
    /// modes, CT_V2 for the dataplane.
    pub fn flush_conntrack(&self) -> Result<()> {
        if self.mode.uses_netfilter() {
            netns::run_in(&self.node1.ns, &["conntrack", "-F"])
                .map(drop)
                .or_else(|e| {
                    // conntrack -F fails with "Operation not supported" when nothing is tracked yet.
                    if e.to_string().contains("not supported") {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
        }
        if let Some(dp) = &self.datapath {
            let map = dp
                .ebpf
                .map(map_names::CT)
                .ok_or_else(|| anyhow!("CT_V2 missing"))?;
            let fd = match map {
                aya::maps::Map::LruHashMap(d) | aya::maps::Map::HashMap(d) => {
                    d.fd().as_fd().as_raw_fd()
                }
                _ => bail!("CT_V2 has an unexpected type"),
            };
            crate::rawbpf::drain_hash(fd, 16, 56)?;
        }
        Ok(())
    }

    pub fn stats(&self) -> Result<Option<Stats>> {
        match &self.pin_dir {
            Some(p) => Ok(Some(dataplane::stats::read_pinned(p)?)),
            None => Ok(None),
        }
    }
}

impl Drop for ModeLab {
    fn drop(&mut self) {
        self.servers_stop.store(true, Ordering::Relaxed);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
        let _ = self.detach_product();
        self.table = None;
        self.tail = None;
        self.datapath = None;
    }
}

fn serve(listener: TcpListener, index: usize, stop: Arc<AtomicBool>) {
    use std::io::{Read, Write};
    let reply = format!("backend-{index}\n");
    let mut buf = [0u8; 256];
    let _ = listener.set_nonblocking(false);
    while !stop.load(Ordering::Relaxed) {
        // Wait for a connection without polling delays: poll(2) with a timeout only to notice
        // the stop flag.
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.set_nodelay(true);
            // One request line, one reply, then until the client closes.
            if let Ok(n) = s.read(&mut buf) {
                if n > 0 {
                    let _ = s.write_all(reply.as_bytes());
                    let _ = s.read(&mut buf);
                }
            }
        }
    }
}

/// Attaches tc programs of `dp` (name, interface, direction) from inside namespace `ns`.
#[allow(clippy::type_complexity)]
fn attach_tc(
    ns: &str,
    dp: Datapath,
    set: Vec<(&'static str, String, TcAttachType)>,
) -> Result<(Datapath, Vec<(&'static str, SchedClassifierLinkId)>)> {
    let (dp, links) = in_netns(ns, move || {
        let mut dp = dp;
        let mut links = Vec::new();
        let res = (|| -> Result<()> {
            for (name, iface, kind) in &set {
                let prog: &mut SchedClassifier = loader::program(&mut dp.ebpf, name)?;
                let id = prog
                    .attach(iface, *kind)
                    .with_context(|| format!("attaching {name} to {iface} {kind:?}"))?;
                links.push((*name, id));
            }
            Ok(())
        })();
        (dp, res.map(|_| links))
    })?;
    Ok((dp, links?))
}
