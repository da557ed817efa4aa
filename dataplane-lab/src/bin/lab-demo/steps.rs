//! The traffic part of the tour: pods, nodes and the external client talking to each other
//! directly, through the overlay (the dataplane's and the kernel's flannel.1), and through the
//! Services.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dataplane_lab::flannel;
use dataplane_lab::lab::Host;
use dataplane_lab::netns;
use dataplane_lab::traffic::Reply;

use crate::agent::Agent;
use crate::cluster::{OverlayArg, DNS_VIP, NODE_PORT, TCP_PORT, UDP_PORT, WEB_VIP};
use crate::Demo;

pub const TIMEOUT: Duration = Duration::from_secs(3);

impl Demo {
    /// Ping, TCP echo and UDP echo from `client` to `server`.
    pub fn traffic(&mut self, client: &Host, server: &Host) {
        println!(
            "   {} ({}) -> {} ({})",
            client.name, client.ip, server.name, server.ip
        );
        let ping = client.ping(server.ip, 3).map(|_| "3/3 replies".to_string());
        self.check(&format!("ping {}", server.ip), ping);
        let dst = SocketAddrV4::new(server.ip, TCP_PORT);
        let tcp = client
            .tcp_request(dst, "hello over tcp", TIMEOUT)
            .and_then(|r| expect_reply(r, server, client.ip));
        self.check(&format!("tcp echo {dst}"), tcp);
        let dst = SocketAddrV4::new(server.ip, UDP_PORT);
        let udp = client
            .udp_request(dst, "hello over udp", TIMEOUT)
            .and_then(|r| expect_reply(r, server, client.ip));
        self.check(&format!("udp echo {dst}"), udp);
    }

    fn external(&self) -> Result<Host> {
        Ok(self
            .lab
            .external()
            .context("the lab has no external client")?
            .clone())
    }
}

/// The reply must come from `server` and show the client's own address (nothing NATs this).
fn expect_reply(r: Reply, server: &Host, client_ip: Ipv4Addr) -> Result<String> {
    if r.server != server.name {
        bail!("answered by {} instead of {}", r.server, server.name);
    }
    if *r.peer.ip() != client_ip {
        bail!("server saw the client as {} instead of {client_ip}", r.peer);
    }
    Ok(format!("reply from {} (saw client {})", r.server, r.peer))
}

pub fn start_dataplane(demo: &mut Demo) -> Result<()> {
    if let Some(node) = demo.plan.configure_flannel_node(&demo.lab)? {
        let details = netns::ip(&node.ns, &["-d", "link", "show", "dev", flannel::DEVICE])?;
        let vxlan = details
            .lines()
            .find(|l| l.trim_start().starts_with("vxlan"))
            .unwrap_or("")
            .trim();
        let vxlan: String = vxlan
            .split_whitespace()
            .take(10)
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "   ok    {:<44} {vxlan}",
            format!(
                "{}: kernel {} (flannel's config)",
                node.name,
                flannel::DEVICE
            )
        );
        demo.flannel_node = Some(node.index - 1);
    }
    let manifests = demo.plan.write_manifests(&demo.lab)?;
    let files: Vec<String> = std::fs::read_dir(&manifests)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    println!(
        "   services and nodes from {} ({})",
        manifests.display(),
        files.join(", ")
    );
    demo.manifests = Some(manifests.clone());
    for i in demo.plan.agent_nodes(&demo.lab) {
        let extra = demo.plan.run_args(&manifests, &demo.user_run_args);
        let agent = Agent::start(&demo.lab, i, &demo.bin, &extra)?;
        println!(
            "   ok    {:<44} pid {}, maps pinned in {}",
            format!(
                "{}: dataplane run --overlay {}",
                agent.node,
                demo.plan.overlay.flag()
            ),
            agent.pid().unwrap_or(0),
            agent.pin_dir.display()
        );
        demo.agents.push(agent);
    }
    // The agents read the manifests at start; their routes to remote pod CIDRs follow.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

pub fn pod_to_pod_same_node(demo: &mut Demo) -> Result<()> {
    let (a, b) = (demo.lab.pod(0, 0).host(), demo.lab.pod(0, 1).host());
    demo.traffic(&a, &b);
    Ok(())
}

/// Across the dataplane's own tunnel (or host-gw routes without an overlay).
pub fn pod_to_pod_cross_node(demo: &mut Demo) -> Result<()> {
    let (a, b) = (demo.lab.pod(0, 0).host(), demo.lab.pod(1, 1).host());
    let before = demo.overlay_counters(0)?;
    demo.traffic(&a, &b);
    demo.traffic(&b, &a);
    if demo.plan.overlay != OverlayArg::None {
        let check = rose(ENCAP_DECAP, before, demo.overlay_counters(0)?);
        let what = format!(
            "{} tunnelled it ({})",
            demo.agents[0].node,
            demo.plan.overlay.flag()
        );
        demo.check(&what, check);
    }
    Ok(())
}

const ENCAP_DECAP: (&str, &str) = ("overlay-encap", "overlay-decap");

/// Both counters rose by a few packets: the traffic took the path they count.
fn rose(names: (&str, &str), before: (u64, u64), after: (u64, u64)) -> Result<String> {
    let (d0, d1) = (after.0 - before.0, after.1 - before.1);
    let text = format!("{} +{d0}, {} +{d1} packets", names.0, names.1);
    if d0 < 5 || d1 < 5 {
        bail!("{text}: the traffic did not take this path");
    }
    Ok(text)
}

/// The dataplane's VXLAN against the kernel's flannel.1, both ways.
pub fn flannel_interop(demo: &mut Demo) -> Result<()> {
    let f = demo.flannel_node.context("no flannel.1 node")?;
    let node = demo.lab.node(f).clone();
    let before = dev_packets(&node.ns, flannel::DEVICE)?;
    let ours = demo.overlay_counters(0)?;
    let (a, b) = (demo.lab.pod(0, 0).host(), demo.lab.pod(f, 0).host());
    demo.traffic(&a, &b);
    demo.traffic(&b, &a);
    let c = demo.lab.pod(1, 1).host();
    demo.traffic(&b, &c);
    let check = rose(
        ("rx", "tx"),
        before,
        dev_packets(&node.ns, flannel::DEVICE)?,
    );
    let what = format!("{}: {} counters", node.name, flannel::DEVICE);
    demo.check(&what, check);
    let check = rose(ENCAP_DECAP, ours, demo.overlay_counters(0)?);
    let what = format!("{}: dataplane counters", demo.agents[0].node);
    demo.check(&what, check);
    Ok(())
}

pub fn external_to_node(demo: &mut Demo) -> Result<()> {
    let ext = demo.external()?;
    for node in demo.plan.agent_nodes(&demo.lab) {
        let host = demo.lab.node(node).host();
        demo.traffic(&ext, &host);
    }
    Ok(())
}

/// `n` requests to a service; which backends answered, and what they saw as the client.
pub fn spread(client: &Host, dst: SocketAddrV4, udp: bool, n: usize) -> Result<String> {
    let mut counts = BTreeMap::new();
    let mut peers = BTreeSet::new();
    for i in 0..n {
        let line = format!("request {i}");
        let reply = if udp {
            client.udp_request(dst, &line, TIMEOUT)?
        } else {
            client.tcp_request(dst, &line, TIMEOUT)?
        };
        *counts.entry(reply.server).or_insert(0) += 1;
        peers.insert(*reply.peer.ip());
    }
    let spread: Vec<String> = counts.iter().map(|(s, c)| format!("{s} {c}")).collect();
    let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    Ok(format!(
        "{} (backends saw {})",
        spread.join(", "),
        peers.join(", ")
    ))
}

pub fn pod_to_clusterip(demo: &mut Demo) -> Result<()> {
    let client = demo.lab.pod(0, 0).host();
    let web = SocketAddrV4::new(WEB_VIP, 80);
    demo.check(
        &format!("{} -> tcp {web} x40", client.name),
        spread(&client, web, false, 40),
    );
    let dns = SocketAddrV4::new(DNS_VIP, 53);
    demo.check(
        &format!("{} -> udp {dns} x20", client.name),
        spread(&client, dns, true, 20),
    );
    Ok(())
}

pub fn external_to_nodeport(demo: &mut Demo) -> Result<()> {
    let ext = demo.external()?;
    for node in demo.plan.agent_nodes(&demo.lab) {
        let dst = SocketAddrV4::new(demo.lab.node(node).underlay_ip, NODE_PORT);
        demo.check(
            &format!("{} -> tcp {dst} x20", ext.name),
            spread(&ext, dst, false, 20),
        );
    }
    Ok(())
}

pub fn node_to_clusterip(demo: &mut Demo) -> Result<()> {
    let node = demo.lab.node(0).host();
    let web = SocketAddrV4::new(WEB_VIP, 80);
    demo.check(
        &format!("{} -> tcp {web} x20", node.name),
        spread(&node, web, false, 20),
    );
    Ok(())
}

/// rx and tx packets of `dev` in namespace `ns` (from its /proc/net/dev).
fn dev_packets(ns: &str, dev: &str) -> Result<(u64, u64)> {
    let text = netns::run_in(ns, &["cat", "/proc/net/dev"])?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{dev}:")))
        .with_context(|| format!("no {dev} in {ns}'s /proc/net/dev"))?;
    let fields: Vec<u64> = line
        .split(':')
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // receive: bytes packets errs drop fifo frame compressed multicast, then transmit.
    match (fields.get(1), fields.get(9)) {
        (Some(rx), Some(tx)) => Ok((*rx, *tx)),
        _ => bail!("cannot read {line:?}"),
    }
}
