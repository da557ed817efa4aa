//! A lab with `dataplane run` on every node and the service maps filled through the typed
//! `ServiceTable` API, the way the control plane fills them.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::Result;
use dataplane::{
    model::{
        Backend, Frontend, FrontendKind, Protocol, ServicePort, ServicePortName, TrafficPolicy,
    },
    services::{LocalContext, ServiceTable},
    stats::Stats,
};
use dataplane_lab::{
    lab::{Cni, LabSpec, Pod},
    traffic::Server,
};

use crate::support::node::{CheckedLab, DataplaneNode};

/// Nodes are declared before the lab so they stop before it is torn down.
pub struct Cluster {
    pub nodes: Vec<DataplaneNode>,
    pub lab: CheckedLab,
}

impl Cluster {
    pub fn start(spec: &LabSpec) -> Result<Cluster> {
        Self::start_with(spec, &[])
    }

    /// Like [`Cluster::start`], with extra `dataplane run` arguments on every node.
    pub fn start_with(spec: &LabSpec, extra_args: &[&str]) -> Result<Cluster> {
        crate::support::require_root();
        let lab = CheckedLab::build(spec)?;
        let mut nodes = Vec::new();
        for i in 0..lab.nodes().len() {
            nodes.push(DataplaneNode::start(&lab, i, extra_args)?);
        }
        Ok(Cluster { nodes, lab })
    }

    /// Makes every node's maps hold exactly `services` (each node sees the whole cluster, with
    /// its own notion of which backends are local).
    pub fn sync(&self, services: &[ServicePort]) -> Result<()> {
        for node in &self.nodes {
            let local = LocalContext {
                node_name: node.node_name().to_string(),
                ..Default::default()
            };
            let mut table = ServiceTable::open_pinned(node.pin_dir(), local)?;
            table.sync(services)?;
        }
        Ok(())
    }

    /// Like [`Cluster::sync`], with a service list per node (NodePort frontends are the node's
    /// own addresses, as kube-proxy's nodeport-addresses).
    pub fn sync_each(&self, services: impl Fn(usize) -> Vec<ServicePort>) -> Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            let local = LocalContext {
                node_name: node.node_name().to_string(),
                ..Default::default()
            };
            let mut table = ServiceTable::open_pinned(node.pin_dir(), local)?;
            table.sync(&services(i))?;
        }
        Ok(())
    }

    /// A UDP echo server on `pod`:5353 behind the ClusterIP service "dns" at `vip`; the
    /// server stops when the returned handle is dropped.
    pub fn serve_dns(&self, pod: &Pod, vip: SocketAddrV4) -> Server {
        let server = pod.host().udp_echo_server(5353).unwrap();
        self.sync(&[cluster_ip(
            "dns",
            vip,
            Protocol::Udp,
            vec![backend(pod, 5353)],
        )])
        .unwrap();
        server
    }

    pub fn stats(&self, node: usize) -> Stats {
        self.nodes[node].stats().expect("reading stats")
    }
}

pub fn port_name(name: &str) -> ServicePortName {
    ServicePortName {
        namespace: "default".into(),
        name: name.into(),
        port: String::new(),
    }
}

/// `pod` as a ready backend on `port`.
pub fn backend(pod: &Pod, port: u16) -> Backend {
    backend_at(pod.ip, port, &format!("node{}", pod.node_index))
}

/// A ready, serving backend at `ip:port` on node `node`.
pub fn backend_at(ip: Ipv4Addr, port: u16, node: &str) -> Backend {
    Backend {
        ip,
        port,
        node_name: Some(node.into()),
        ready: true,
        serving: true,
        terminating: false,
        hints: Default::default(),
    }
}

/// `pods` as backends on `port`.
pub fn backends(pods: &[&Pod], port: u16) -> Vec<Backend> {
    pods.iter().map(|p| backend(p, port)).collect()
}

/// Echo servers on `port` in every pod of `pods`, one per protocol of `protos`; they stop when
/// dropped (keep them declared after the cluster, so they stop before it).
pub fn echo_servers(pods: &[&Pod], protos: &[Protocol], port: u16) -> Vec<Server> {
    let mut servers = Vec::new();
    for pod in pods {
        for proto in protos {
            let host = pod.host();
            servers.push(
                match proto {
                    Protocol::Tcp => host.tcp_echo_server(port),
                    Protocol::Udp => host.udp_echo_server(port),
                }
                .unwrap(),
            );
        }
    }
    servers
}

/// A ClusterIP service port `vip:port/proto` -> `backends`.
pub fn cluster_ip(
    name: &str,
    vip: SocketAddrV4,
    protocol: Protocol,
    backends: Vec<Backend>,
) -> ServicePort {
    ServicePort {
        name: port_name(name),
        frontends: vec![Frontend {
            ip: *vip.ip(),
            port: vip.port(),
            protocol,
            kind: FrontendKind::ClusterIp,
        }],
        backends,
        external_policy: TrafficPolicy::Cluster,
        internal_policy: TrafficPolicy::Cluster,
        affinity_timeout_secs: None,
        health_check_node_port: None,
        source_ranges: Vec::new(),
    }
}

/// Adds a NodePort frontend on each of `node_ips`.
pub fn with_node_port(mut svc: ServicePort, node_ips: &[Ipv4Addr], node_port: u16) -> ServicePort {
    let protocol = svc.frontends[0].protocol;
    for ip in node_ips {
        svc.frontends.push(Frontend {
            ip: *ip,
            port: node_port,
            protocol,
            kind: FrontendKind::NodePort,
        });
    }
    svc
}

/// Two nodes with two pods each.
pub fn two_nodes(cni: Cni) -> LabSpec {
    LabSpec {
        nodes: 2,
        pods_per_node: 2,
        cni,
        ..Default::default()
    }
}

/// node1-pod0 is the client; the other three pods serve.
pub fn servers(c: &Cluster) -> Vec<&Pod> {
    vec![c.lab.pod(0, 1), c.lab.pod(1, 0), c.lab.pod(1, 1)]
}

/// The scenario most tests here start from: a two-node cluster whose three server pods echo
/// `protos` on `port`. Derefs to the cluster; the servers stop before it is torn down.
pub struct Echo {
    _servers: Vec<Server>,
    pub cluster: Cluster,
    /// The server pods as backends on `port`.
    pub backends: Vec<Backend>,
}

impl std::ops::Deref for Echo {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

pub fn echo(cni: Cni, protos: &[Protocol], port: u16) -> Echo {
    let cluster = Cluster::start(&two_nodes(cni)).unwrap();
    let pods = servers(&cluster);
    let (_servers, backends) = (echo_servers(&pods, protos, port), backends(&pods, port));
    Echo {
        _servers,
        cluster,
        backends,
    }
}

/// The I/O error kind behind `err`, if any.
pub fn io_kind(err: &anyhow::Error) -> Option<ErrorKind> {
    err.chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(|e| e.kind())
}
