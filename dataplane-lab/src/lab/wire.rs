//! Wiring a planned lab: namespaces, the underlay switch, nodes, the CNI's pod links and routes
//! (the `ip` steps of [`Lab::build`]).

use std::net::Ipv4Addr;

use anyhow::Result;

use super::{
    Cni, Lab, Node, Pod, CALICO_MAC, UNDERLAY_GATEWAY, UNDERLAY_GATEWAY_MAC, UNDERLAY_MTU,
    UNDERLAY_PREFIX_LEN,
};
use crate::netns::{self, ip, GlobalLock};

impl Lab {
    /// Creates all namespaces while holding the machine-wide lab lock, after removing stale
    /// leftovers and making sure bpffs is mounted.
    pub(super) fn create_namespaces(&mut self) -> Result<()> {
        let _lock = GlobalLock::acquire()?;
        netns::remove_stale();
        netns::ensure_bpffs()?;
        let mut names = vec![self.switch_ns.clone()];
        names.extend(self.external.iter().map(|h| h.ns.clone()));
        for node in &self.nodes {
            names.push(node.ns.clone());
            names.extend(node.pods.iter().map(|p| p.ns.clone()));
        }
        for ns in names {
            netns::add_ns(&ns)?;
            self.created.push(ns);
        }
        Ok(())
    }

    /// Switch bridge, node uplinks and the external client.
    pub(super) fn wire_underlay(&self) -> Result<()> {
        let sw = &self.switch_ns;
        ip(sw, &["link", "set", "dev", "lo", "up"])?;
        ip(sw, &["link", "add", "br0", "type", "bridge"])?;
        ip(sw, &["link", "set", "dev", "br0", "up"])?;
        for node in &self.nodes {
            self.wire_node(node)?;
        }
        if let Some(ext) = &self.external {
            self.attach_to_switch(&ext.ns, "ext", ext.ip)?;
        }
        Ok(())
    }

    /// Connects `ns` to the switch with `eth0` (port `port` on br0), address `addr`/24 and a
    /// default route via the unused underlay gateway.
    pub(super) fn attach_to_switch(&self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
        let sw = &self.switch_ns;
        ip(
            sw,
            &[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        ip(sw, &["link", "set", "dev", port, "master", "br0", "up"])?;
        ip(ns, &["link", "set", "dev", "lo", "up"])?;
        let mtu = UNDERLAY_MTU.to_string();
        ip(ns, &["link", "set", "dev", "eth0", "mtu", &mtu, "up"])?;
        ip(
            ns,
            &[
                "addr",
                "add",
                &format!("{addr}/{UNDERLAY_PREFIX_LEN}"),
                "dev",
                "eth0",
            ],
        )?;
        let gw = UNDERLAY_GATEWAY.to_string();
        ip(
            ns,
            &[
                "neigh",
                "replace",
                &gw,
                "lladdr",
                UNDERLAY_GATEWAY_MAC,
                "nud",
                "permanent",
                "dev",
                "eth0",
            ],
        )?;
        ip(ns, &["route", "add", "default", "via", &gw, "dev", "eth0"])?;
        Ok(())
    }

    /// A node: forwarding and rp_filter set before any interface exists (so `default` applies
    /// to all of them), then the uplink and the CNI's host side.
    pub(super) fn wire_node(&self, node: &Node) -> Result<()> {
        netns::set_sysctls(
            &node.ns,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ],
        )?;
        self.attach_to_switch(&node.ns, &node.name, node.underlay_ip)?;
        netns::set_sysctls(&node.ns, &[("net.ipv4.conf.eth0.rp_filter", "0")])?;
        match self.spec.cni {
            Cni::Flannel => self.add_cni_bridge(node),
            Cni::Calico => self.add_calico_blackhole(node),
        }
    }

    /// flannel's `cni0` bridge holding the pod gateway address.
    pub(super) fn add_cni_bridge(&self, node: &Node) -> Result<()> {
        let mtu = self.spec.pod_mtu.to_string();
        ip(&node.ns, &["link", "add", "cni0", "type", "bridge"])?;
        ip(&node.ns, &["link", "set", "dev", "cni0", "mtu", &mtu, "up"])?;
        let (_, len) = node.pod_cidr;
        ip(
            &node.ns,
            &[
                "addr",
                "add",
                &format!("{}/{len}", node.gateway),
                "dev",
                "cni0",
            ],
        )?;
        Ok(())
    }

    /// calico installs a blackhole route for its local block (the seed's `blackhole ... proto
    /// bird`), so unassigned local pod IPs are dropped instead of leaking to the default route.
    pub(super) fn add_calico_blackhole(&self, node: &Node) -> Result<()> {
        let (net, len) = node.pod_cidr;
        ip(
            &node.ns,
            &["route", "add", "blackhole", &format!("{net}/{len}")],
        )?;
        Ok(())
    }

    pub(super) fn wire_pods(&self) -> Result<()> {
        for node in &self.nodes {
            for pod in &node.pods {
                self.wire_pod(node, pod)?;
            }
        }
        Ok(())
    }

    /// A pod's veth pair, created in the node namespace with its `eth0` end put straight into
    /// the pod namespace (never via the root namespace).
    pub(super) fn wire_pod(&self, node: &Node, pod: &Pod) -> Result<()> {
        let veth = pod.host_iface.as_str();
        ip(
            &node.ns,
            &[
                "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.ns,
            ],
        )?;
        match self.spec.cni {
            Cni::Flannel => self.wire_flannel_host_side(node, veth)?,
            Cni::Calico => self.wire_calico_host_side(node, pod)?,
        }
        self.wire_pod_side(node, pod)
    }

    /// Bridge port with hairpin on, as flannel's `hairpinMode: true` does.
    pub(super) fn wire_flannel_host_side(&self, node: &Node, veth: &str) -> Result<()> {
        let mtu = self.spec.pod_mtu.to_string();
        ip(
            &node.ns,
            &[
                "link", "set", "dev", veth, "master", "cni0", "mtu", &mtu, "up",
            ],
        )?;
        netns::run_in(
            &node.ns,
            &["bridge", "link", "set", "dev", veth, "hairpin", "on"],
        )?;
        Ok(())
    }

    /// Routed veth: calico's fixed MAC, proxy ARP for 169.254.1.1 and a /32 route to the pod.
    pub(super) fn wire_calico_host_side(&self, node: &Node, pod: &Pod) -> Result<()> {
        let veth = pod.host_iface.as_str();
        let mtu = self.spec.pod_mtu.to_string();
        ip(
            &node.ns,
            &[
                "link", "set", "dev", veth, "address", CALICO_MAC, "mtu", &mtu, "up",
            ],
        )?;
        // Calico answers ARP for 169.254.1.1 by proxy ARP, and sets proxy_delay 0: with the
        // kernel's default (up to 0.8 s) a new pod's first packet waits for the answer.
        let arp = format!("net.ipv4.conf.{veth}.proxy_arp");
        let delay = format!("net.ipv4.neigh.{veth}.proxy_delay");
        netns::set_sysctls(&node.ns, &[(arp.as_str(), "1"), (delay.as_str(), "0")])?;
        let dst = format!("{}/32", pod.ip);
        ip(
            &node.ns,
            &["route", "add", &dst, "dev", veth, "scope", "link"],
        )?;
        Ok(())
    }

    /// Pod side: address and default route via the node's gateway.
    pub(super) fn wire_pod_side(&self, node: &Node, pod: &Pod) -> Result<()> {
        let ns = pod.ns.as_str();
        let mtu = self.spec.pod_mtu.to_string();
        let gw = node.gateway.to_string();
        ip(ns, &["link", "set", "dev", "lo", "up"])?;
        ip(ns, &["link", "set", "dev", "eth0", "mtu", &mtu, "up"])?;
        match self.spec.cni {
            Cni::Flannel => {
                let (_, len) = node.pod_cidr;
                ip(
                    ns,
                    &["addr", "add", &format!("{}/{len}", pod.ip), "dev", "eth0"],
                )?;
                ip(ns, &["route", "add", "default", "via", &gw])?;
            }
            Cni::Calico => {
                ip(
                    ns,
                    &["addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"],
                )?;
                ip(ns, &["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
                ip(ns, &["route", "add", "default", "via", &gw, "dev", "eth0"])?;
            }
        }
        Ok(())
    }

    /// host-gw style routes to every other node's pod CIDR, if the spec asks for them.
    pub(super) fn add_pod_routes(&self) -> Result<()> {
        if !self.spec.underlay_routes {
            return Ok(());
        }
        for node in &self.nodes {
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                let (net, len) = other.pod_cidr;
                let via = other.underlay_ip.to_string();
                ip(
                    &node.ns,
                    &[
                        "route",
                        "add",
                        &format!("{net}/{len}"),
                        "via",
                        &via,
                        "dev",
                        "eth0",
                    ],
                )?;
            }
        }
        Ok(())
    }
}
