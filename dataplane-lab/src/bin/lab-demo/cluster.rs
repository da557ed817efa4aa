//! The demo's cluster: which lab to build for the chosen CNI and overlay, the Services and
//! Nodes it writes as manifest files, the servers its steps talk to, and the node that keeps
//! the kernel's flannel.1 instead of running the dataplane.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::ValueEnum;
use dataplane_lab::flannel::{self, Peer};
use dataplane_lab::lab::{Cni, Host, Lab, LabSpec, Node};
use dataplane_lab::manifests::{flannel_node_yaml, Endpoint, ServiceManifest};
use dataplane_lab::traffic::Server;

/// Echo servers every pod and node runs for the tour (and for an operator while `--hold`).
pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 8081;

/// The demo's services: `web` (ClusterIP 10.96.0.10:80/TCP, NodePort 30080) and `dns`
/// (10.96.0.53:53/UDP), backed by every pod but node1-pod0, which plays the client.
pub const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
pub const NODE_PORT: u16 = 30080;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CniArg {
    /// Bridge cni0 with a /24 per node.
    Flannel,
    /// Routed /32 veths with proxy ARP.
    Calico,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OverlayArg {
    /// No tunnel: host-gw routes on the underlay carry pod traffic between nodes.
    None,
    /// `dataplane run --overlay vxlan` (flannel.1's wire format) on two nodes, and a third node
    /// on the kernel's own flannel.1 device.
    Vxlan,
    /// `dataplane run --overlay ipip` (calico tunl0's wire format) on both nodes.
    Ipip,
}

impl OverlayArg {
    /// The CNI's own tunnel: flannel's vxlan backend, calico's IPIP.
    pub fn default_for(cni: CniArg) -> OverlayArg {
        match cni {
            CniArg::Flannel => OverlayArg::Vxlan,
            CniArg::Calico => OverlayArg::Ipip,
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            OverlayArg::None => "none",
            OverlayArg::Vxlan => "vxlan",
            OverlayArg::Ipip => "ipip",
        }
    }

    /// Pod MTU as the CNI sets it for the tunnel (the underlay's 1500 minus the headers).
    fn pod_mtu(self) -> u32 {
        match self {
            OverlayArg::None => 1500,
            OverlayArg::Vxlan => flannel::MTU,
            OverlayArg::Ipip => 1480,
        }
    }
}

/// What the demo runs on: the lab plus which of its nodes keep flannel.1.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub cni: CniArg,
    pub overlay: OverlayArg,
}

impl Plan {
    /// 2 dataplane nodes (2 pods each) and an external client; with VXLAN a third node runs
    /// the kernel's flannel.1. With an overlay the nodes have no route to each other's pod
    /// CIDRs on the underlay: cross-node pod traffic that works went through the tunnel.
    pub fn lab_spec(&self) -> LabSpec {
        let tunnel = self.overlay != OverlayArg::None;
        LabSpec {
            nodes: if self.overlay == OverlayArg::Vxlan {
                3
            } else {
                2
            },
            pods_per_node: 2,
            cni: match self.cni {
                CniArg::Flannel => Cni::Flannel,
                CniArg::Calico => Cni::Calico,
            },
            pod_mtu: self.overlay.pod_mtu(),
            underlay_routes: !tunnel,
            external_client: true,
        }
    }

    /// Whether node `i` (0-based) keeps the kernel's flannel.1 instead of a dataplane.
    pub fn is_flannel_node(&self, i: usize) -> bool {
        self.overlay == OverlayArg::Vxlan && i == 2
    }

    /// The nodes that run `dataplane run`.
    pub fn agent_nodes(&self, lab: &Lab) -> Vec<usize> {
        (0..lab.nodes().len())
            .filter(|&i| !self.is_flannel_node(i))
            .collect()
    }

    /// The VTEP MAC each node publishes in its Node object: a dataplane node's VXLAN packets
    /// carry its uplink's MAC; the flannel node's is its flannel.1's.
    fn vtep_mac(&self, node: &Node) -> Result<[u8; 6]> {
        if self.is_flannel_node(node.index - 1) {
            Ok(flannel::vtep_mac(node.index))
        } else {
            flannel::iface_mac(&node.ns, &node.uplink)
        }
    }

    /// Puts flannel.1 on the flannel node, with every other node as a peer; returns the node.
    pub fn configure_flannel_node<'a>(&self, lab: &'a Lab) -> Result<Option<&'a Node>> {
        let Some(i) = (0..lab.nodes().len()).find(|&i| self.is_flannel_node(i)) else {
            return Ok(None);
        };
        let node = lab.node(i);
        let peers = lab
            .nodes()
            .iter()
            .filter(|n| n.index != node.index)
            .map(|n| Ok(Peer::of(n, self.vtep_mac(n)?)))
            .collect::<Result<Vec<_>>>()?;
        flannel::configure(node, flannel::vtep_mac(node.index), &peers)?;
        Ok(Some(node))
    }

    /// Writes the Services, their EndpointSlices and the Nodes as `kubectl get -o yaml` would
    /// print them; returns the directory.
    pub fn write_manifests(&self, lab: &Lab) -> Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("{}manifests", lab.prefix()));
        std::fs::create_dir_all(&dir)?;
        let client = lab.pod(0, 0).ip;
        let endpoints: Vec<Endpoint> = lab
            .pods()
            .filter(|p| p.ip != client)
            .map(|p| Endpoint {
                ip: p.ip,
                node: format!("node{}", p.node_index),
            })
            .collect();
        let svc = |name: &str, ip, port, target_port, protocol: &str, node_port| ServiceManifest {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: ip,
            port,
            target_port,
            protocol: protocol.into(),
            node_port,
            endpoints: endpoints.clone(),
        };
        write(
            &dir,
            "web.yaml",
            &svc("web", WEB_VIP, 80, TCP_PORT, "TCP", Some(NODE_PORT)).to_yaml(),
        )?;
        write(
            &dir,
            "dns.yaml",
            &svc("dns", DNS_VIP, 53, UDP_PORT, "UDP", None).to_yaml(),
        )?;
        if self.overlay != OverlayArg::None {
            let nodes = lab
                .nodes()
                .iter()
                .map(|n| {
                    Ok(flannel_node_yaml(
                        &n.name,
                        n.underlay_ip,
                        n.pod_cidr,
                        self.vtep_mac(n)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            write(&dir, "nodes.yaml", &nodes.join("---\n"))?;
        }
        Ok(dir)
    }

    /// `dataplane run` arguments beyond the ones every node gets (name, uplink, pod devices,
    /// pin dir): the manifests, the overlay, then the user's `--run-arg`s.
    pub fn run_args(&self, manifests: &Path, user: &[String]) -> Vec<String> {
        let mut extra = vec!["--manifests".to_string(), manifests.display().to_string()];
        if self.overlay != OverlayArg::None {
            extra.extend(["--overlay".to_string(), self.overlay.flag().to_string()]);
        }
        extra.extend(user.iter().cloned());
        extra
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    Ok(std::fs::write(dir.join(name), text)?)
}

/// Servers the steps talk to: TCP and UDP echo on every pod and node.
pub fn start_servers(lab: &Lab) -> Result<Vec<Server>> {
    let mut hosts: Vec<Host> = lab.pods().map(|p| p.host()).collect();
    hosts.extend(lab.nodes().iter().map(|n| n.host()));
    let mut servers = Vec::new();
    for host in hosts {
        servers.push(host.tcp_echo_server(TCP_PORT)?);
        servers.push(host.udp_echo_server(UDP_PORT)?);
    }
    Ok(servers)
}

pub fn print_topology(lab: &Lab, plan: &Plan) {
    for (i, node) in lab.nodes().iter().enumerate() {
        let role = if plan.is_flannel_node(i) {
            "kernel flannel.1, no dataplane"
        } else {
            "dataplane"
        };
        println!(
            "   {:<8} eth0 {:<14} pods {}/{}  ns {}  ({role})",
            node.name, node.underlay_ip, node.pod_cidr.0, node.pod_cidr.1, node.ns
        );
        for pod in &node.pods {
            println!(
                "      {:<12} {:<14} via {:<8} ns {}",
                pod.name, pod.ip, pod.host_iface, pod.ns
            );
        }
    }
    if let Some(ext) = lab.external() {
        println!("   {:<8} eth0 {:<14} ns {}", ext.name, ext.ip, ext.ns);
    }
}
