//! The lab: a small Kubernetes-like cluster built from network namespaces.
//!
//! ```text
//!             <prefix>ul (switch ns, bridge br0)           198.18.0.0/24
//!        ┌──────────────┬──────────────┬──────────────┐
//!   node1 eth0 .11  node2 eth0 .12   ...         ext eth0 .100
//!     cni0 10.244.1.1 (flannel) or cali<j> /32 routes (calico)
//!     veth<j>/cali<j> ── pod n1p<j> eth0 10.244.1.(2+j)
//! ```
//!
//! Everything lives inside namespaces named `dpl-<pid>-<counter>-...`, so labs of parallel
//! threads and processes never collide, and leftovers of killed runs can be recognised (their
//! pid is dead) and removed by the next lab. Nodes get the details of a real node that change
//! datapath behaviour (default route, ip_forward, hairpin, proxy ARP): see
//! docs/lab-realism.md.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Weak};

use anyhow::{bail, Context, Result};

use crate::netns::{self, NAME_ROOT};

mod wire;

/// Background processes started with [`Lab::spawn_in`] (defined with the other process helpers).
pub use crate::netns::Child;

/// Underlay subnet: node i is `.(10+i)`, the external client `.100`.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;

/// Default gateway of nodes and the external client. Deliberately unused: the default route
/// exists (as on real nodes) but traffic to unknown destinations dies inside the lab.
pub const UNDERLAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// The gateway's MAC, a permanent neighbour entry on every underlay host: a real gateway
/// answers ARP, so packets routed to it reach the uplink's tc egress (where the node's own
/// packets to services are translated and rerouted) instead of waiting for an answer that
/// never comes. Nobody has this locally administered address: frames sent to it are flooded
/// on the lab's switch and dropped by every host, so they still die inside the lab.
pub const UNDERLAY_GATEWAY_MAC: &str = "02:00:c6:12:00:01";

/// Underlay address of the external client.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

/// calico's fixed pod gateway, answered by proxy ARP on the host-side veth.
pub const CALICO_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// calico's fixed MAC for every host-side pod veth.
pub const CALICO_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// MTU of the underlay links.
pub const UNDERLAY_MTU: u32 = 1500;

/// Largest node count that keeps node addresses (.11..) below the external client (.100).
const MAX_NODES: usize = 89;

/// Largest pod count per node that fits 10.244.i.2 .. 10.244.i.254.
const MAX_PODS_PER_NODE: usize = 253;

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// How pods are wired to their node, after the two CNIs of the seed documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cni {
    /// Bridge `cni0` (10.244.i.1/24) with hairpin ports `veth<j>`; pods on the /24.
    Flannel,
    /// Routed veths `cali<j>` (MAC ee:ee:ee:ee:ee:ee, proxy ARP); pods on a /32 with gateway
    /// 169.254.1.1 and a /32 route per pod on the node.
    Calico,
}

/// What to build. Use struct update syntax: `LabSpec { cni: Cni::Calico, ..Default::default() }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// Number of nodes (1..=89).
    pub nodes: usize,
    /// Pods per node (0..=253).
    pub pods_per_node: usize,
    /// Pod wiring.
    pub cni: Cni,
    /// MTU of pod interfaces, both ends (and of cni0). Overlay tests lower it like the real CNIs.
    pub pod_mtu: u32,
    /// Add host-gw style routes `10.244.k.0/24 via <node k>` on every node. Off for overlay
    /// tests, which must carry cross-node pod traffic themselves.
    pub underlay_routes: bool,
    /// Create the external client namespace on the underlay.
    pub external_client: bool,
}

impl Default for LabSpec {
    /// 2 nodes with 2 flannel pods each, MTU 1500, host-gw routes and an external client.
    fn default() -> Self {
        LabSpec {
            nodes: 2,
            pods_per_node: 2,
            cni: Cni::Flannel,
            pod_mtu: 1500,
            underlay_routes: true,
            external_client: true,
        }
    }
}

impl LabSpec {
    fn validate(&self) -> Result<()> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            bail!("LabSpec.nodes must be 1..={MAX_NODES}, got {}", self.nodes);
        }
        if self.pods_per_node > MAX_PODS_PER_NODE {
            bail!(
                "LabSpec.pods_per_node must be <= {MAX_PODS_PER_NODE}, got {}",
                self.pods_per_node
            );
        }
        if !(68..=65535).contains(&self.pod_mtu) {
            bail!("LabSpec.pod_mtu {} is not a valid IPv4 MTU", self.pod_mtu);
        }
        Ok(())
    }
}

/// Something you can run commands and traffic in: a node, a pod or the external client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Short name (`node1`, `node1-pod0`, `external`); test servers answer with it.
    pub name: String,
    /// Network namespace name (under /run/netns).
    pub ns: String,
    /// Its main address (underlay address for nodes and the external client, pod IP for pods).
    pub ip: Ipv4Addr,
}

impl Host {
    /// Runs `argv` inside this host's namespace and returns stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        netns::run_in(&self.ns, argv)
    }
}

/// A node: a namespace with an underlay uplink, forwarding on, and its pods behind it.
#[derive(Clone, Debug)]
pub struct Node {
    /// `node<index>`.
    pub name: String,
    /// Network namespace name.
    pub ns: String,
    /// 1-based node number, as used in addresses (198.18.0.(10+i), 10.244.i.0/24).
    pub index: usize,
    /// Address on the underlay (`eth0`).
    pub underlay_ip: Ipv4Addr,
    /// Underlay interface name inside the node namespace (`eth0`).
    pub uplink: String,
    /// This node's pod CIDR, 10.244.i.0/24.
    pub pod_cidr: (Ipv4Addr, u8),
    /// Pods' default gateway: cni0's address for flannel, 169.254.1.1 for calico.
    pub gateway: Ipv4Addr,
    /// The node's pods, in order.
    pub pods: Vec<Pod>,
}

impl Node {
    /// Host-side veth names of the pods (`veth<j>` or `cali<j>`), where a dataplane attaches.
    pub fn pod_ifaces(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.host_iface.clone()).collect()
    }

    /// The node as a [`Host`] (its underlay address).
    pub fn host(&self) -> Host {
        Host {
            name: self.name.clone(),
            ns: self.ns.clone(),
            ip: self.underlay_ip,
        }
    }
}

/// A pod: a namespace with `eth0` connected to its node by a veth pair.
#[derive(Clone, Debug)]
pub struct Pod {
    /// `node<i>-pod<j>`.
    pub name: String,
    /// Network namespace name.
    pub ns: String,
    /// Pod IP, 10.244.i.(2+j).
    pub ip: Ipv4Addr,
    /// Host-side veth in the node namespace (`veth<j>` or `cali<j>`).
    pub host_iface: String,
    /// 1-based index of the node it runs on.
    pub node_index: usize,
}

impl Pod {
    /// The pod as a [`Host`].
    pub fn host(&self) -> Host {
        Host {
            name: self.name.clone(),
            ns: self.ns.clone(),
            ip: self.ip,
        }
    }
}

/// A built lab. Dropping it (also while unwinding from a panic) kills the processes it
/// started and everything still running in its namespaces, deletes the namespaces and removes
/// its bpffs pin directory.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    spec: LabSpec,
    switch_ns: String,
    nodes: Vec<Node>,
    external: Option<Host>,
    /// Namespaces created so far, in creation order (a failed build cleans up exactly these).
    created: Vec<String>,
    pin_base: PathBuf,
    children: Mutex<Vec<Weak<Mutex<std::process::Child>>>>,
}

impl Lab {
    /// Builds the lab described by `spec`. On error, whatever was already created is removed.
    ///
    /// Before building, leftovers of dead lab processes are removed and bpffs is mounted on
    /// /sys/fs/bpf if needed.
    pub fn build(spec: &LabSpec) -> Result<Lab> {
        spec.validate()?;
        let mut lab = Lab::plan(spec, new_prefix());
        log::info!("building lab {} ({spec:?})", lab.prefix);
        lab.create_namespaces()?;
        lab.wire_underlay()?;
        lab.wire_pods()?;
        lab.add_pod_routes()?;
        Ok(lab)
    }

    /// Computes names and addresses; creates nothing.
    fn plan(spec: &LabSpec, prefix: String) -> Lab {
        let nodes = (1..=spec.nodes)
            .map(|i| plan_node(spec, &prefix, i))
            .collect();
        let external = spec.external_client.then(|| Host {
            name: "external".to_string(),
            ns: format!("{prefix}ext"),
            ip: EXTERNAL_IP,
        });
        Lab {
            switch_ns: format!("{prefix}ul"),
            pin_base: Path::new(netns::BPFFS_DIR).join(prefix.trim_end_matches('-')),
            prefix,
            spec: spec.clone(),
            nodes,
            external,
            created: Vec::new(),
            children: Mutex::new(Vec::new()),
        }
    }

    /// Namespace prefix `dpl-<pid>-<counter>-` shared by all of this lab's namespaces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The spec the lab was built from.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// All nodes; `nodes()[0]` is node1.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node by 0-based index (`node(0)` is node1). Panics if out of range, like indexing.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Pod by 0-based node and pod index. Panics if out of range, like indexing.
    pub fn pod(&self, node: usize, pod: usize) -> &Pod {
        &self.nodes[node].pods[pod]
    }

    /// Every pod of every node, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// The external client on the underlay, if the spec asked for one.
    pub fn external(&self) -> Option<&Host> {
        self.external.as_ref()
    }

    /// The underlay switch namespace (bridge `br0`, one port per node named after it).
    pub fn switch_ns(&self) -> &str {
        &self.switch_ns
    }

    /// Every namespace of the lab, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// Base of this lab's bpffs pin directories (`/sys/fs/bpf/dpl-<pid>-<counter>`); it exists
    /// only once [`Lab::pin_dir`] was called.
    pub fn pin_base(&self) -> &Path {
        &self.pin_base
    }

    /// Pin directory of the node with 0-based index `node` (`pin_dir(0)` is `<base>/node1`),
    /// created on first use and removed with the lab.
    pub fn pin_dir(&self, node: usize) -> Result<PathBuf> {
        let Some(n) = self.nodes.get(node) else {
            bail!(
                "pin_dir: no node with 0-based index {node} (lab has {})",
                self.nodes.len()
            );
        };
        let dir = self.pin_base.join(&n.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Starts `argv` in the background inside namespace `ns`. The process is stopped when the
    /// returned [`Child`] is dropped, or when the lab is dropped, whichever comes first.
    pub fn spawn_in(&self, ns: &str, argv: &[&str]) -> Result<Child> {
        let child = Child::spawn(ns, argv)?;
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.retain(|w| w.strong_count() > 0);
        children.push(std::sync::Arc::downgrade(child.shared()));
        Ok(child)
    }

    /// Stops the processes started with [`Lab::spawn_in`] that are still running: SIGTERM to
    /// all first so they shut down in parallel, then wait/SIGKILL each.
    fn stop_children(&self) {
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        let live: Vec<_> = children.iter().filter_map(Weak::upgrade).collect();
        live.iter().for_each(netns::send_term);
        for process in &live {
            if let Err(e) = netns::terminate(process) {
                log::warn!("lab {}: stopping child: {e:#}", self.prefix);
            }
        }
    }

    /// Kills what still runs in each namespace (a namespace with processes would outlive its
    /// name) and deletes it, pods first.
    fn delete_namespaces(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = netns::kill_ns_processes(&ns) {
                log::warn!("lab teardown: {e:#}");
            }
            if let Err(e) = netns::del_ns(&ns) {
                log::warn!("lab teardown: {e:#}");
            }
        }
    }

    fn remove_pin_base(&self) {
        if self.pin_base.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.pin_base) {
                log::warn!("lab teardown: removing {}: {e}", self.pin_base.display());
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        log::info!("tearing down lab {}", self.prefix);
        self.stop_children();
        self.delete_namespaces();
        self.remove_pin_base();
    }
}

/// A fresh `dpl-<pid>-<counter>-` prefix, unique across threads and processes.
fn new_prefix() -> String {
    let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_ROOT}{}-{n}-", std::process::id())
}

fn plan_node(spec: &LabSpec, prefix: &str, i: usize) -> Node {
    let octet = i as u8;
    let gateway = match spec.cni {
        Cni::Flannel => Ipv4Addr::new(10, 244, octet, 1),
        Cni::Calico => CALICO_GATEWAY,
    };
    let pods = (0..spec.pods_per_node)
        .map(|j| plan_pod(spec, prefix, i, j))
        .collect();
    Node {
        name: format!("node{i}"),
        ns: format!("{prefix}node{i}"),
        index: i,
        underlay_ip: Ipv4Addr::new(198, 18, 0, 10 + octet),
        uplink: "eth0".to_string(),
        pod_cidr: (Ipv4Addr::new(10, 244, octet, 0), 24),
        gateway,
        pods,
    }
}

fn plan_pod(spec: &LabSpec, prefix: &str, i: usize, j: usize) -> Pod {
    let host_iface = match spec.cni {
        Cni::Flannel => format!("veth{j}"),
        Cni::Calico => format!("cali{j}"),
    };
    Pod {
        name: format!("node{i}-pod{j}"),
        ns: format!("{prefix}n{i}p{j}"),
        ip: Ipv4Addr::new(10, 244, i as u8, 2 + j as u8),
        host_iface,
        node_index: i,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_and_addresses() {
        let spec = LabSpec {
            cni: Cni::Calico,
            ..Default::default()
        };
        let lab = Lab::plan(&spec, "dpl-4194303-4294967295-".to_string());
        let pod = lab.pod(1, 1);
        assert_eq!(pod.ns, "dpl-4194303-4294967295-n2p1");
        assert!(pod.ns.len() <= 40);
        assert_eq!(pod.ip, Ipv4Addr::new(10, 244, 2, 3));
        assert_eq!(pod.host_iface, "cali1");
        assert_eq!(lab.node(1).underlay_ip, Ipv4Addr::new(198, 18, 0, 12));
        assert_eq!(lab.node(0).gateway, CALICO_GATEWAY);
        assert_eq!(
            lab.pin_base(),
            Path::new("/sys/fs/bpf/dpl-4194303-4294967295")
        );
        // Nothing was created, so dropping the plan must not try to delete anything real.
        assert!(lab.namespaces().is_empty());
    }

    #[test]
    fn lab_name_pid_parses_only_lab_names() {
        assert_eq!(netns::lab_name_pid("dpl-123-0-node1"), Some(123));
        assert_eq!(netns::lab_name_pid("dpl-123-"), None);
        assert_eq!(netns::lab_name_pid("dpl-x-0-node1"), None);
        assert_eq!(netns::lab_name_pid("other"), None);
    }

    #[test]
    fn spec_validation() {
        assert!(LabSpec {
            nodes: 0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(LabSpec {
            nodes: 90,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(LabSpec::default().validate().is_ok());
    }
}
