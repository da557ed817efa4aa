//! What an operator inspects: the service maps as `dataplane services` decodes them and as
//! `bpftool` shows the pinned maps, the counters, and the commands to look around further.

use anyhow::{bail, Context, Result};
use dataplane_lab::netns;

use crate::agent::Agent;
use crate::cluster::{OverlayArg, TCP_PORT, UDP_PORT};
use crate::Demo;

/// Lines of a long command output shown in the log.
const SHOWN: usize = 14;

impl Demo {
    /// Runs the agent binary with `args` (`services`, `stats`, ...).
    fn dataplane(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec![self.bin.to_str().context("binary path")?];
        argv.extend_from_slice(args);
        netns::run(&argv)
    }

    /// `dataplane stats` of agent `k`: packets counted overlay-encap and overlay-decap.
    pub fn overlay_counters(&self, k: usize) -> Result<(u64, u64)> {
        let agent = self.agents.get(k).context("no agent")?;
        let text = self.dataplane(&["stats", "--pin-dir", &agent.pin()])?;
        let sum = |reason: &str| -> u64 {
            text.lines()
                .filter(|l| l.split_whitespace().nth(1) == Some(reason))
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
                .sum()
        };
        Ok((sum("overlay-encap"), sum("overlay-decap")))
    }
}

/// Prints the output of `argv` (the first [`SHOWN`] lines), after the command itself.
fn show(argv: &[&str]) -> Result<String> {
    println!("   $ {}", argv.join(" "));
    let out = netns::run(argv)?;
    let lines: Vec<&str> = out.lines().collect();
    for line in lines.iter().take(SHOWN) {
        println!("      {line}");
    }
    if lines.len() > SHOWN {
        println!("      ... ({} more lines)", lines.len() - SHOWN);
    }
    Ok(out)
}

pub fn services(demo: &mut Demo) -> Result<()> {
    let agent = demo.agents.first().context("no agent")?;
    let bin = demo.bin.display().to_string();
    let out = show(&[&bin, "services", "--pin-dir", &agent.pin()])?;
    for frontend in ["10.96.0.10:80", "10.96.0.53:53", ":30080"] {
        if !out.contains(frontend) {
            bail!("`dataplane services` does not show {frontend}");
        }
    }
    Ok(())
}

/// The pinned maps with bpftool: the list, and the service map's entries.
pub fn bpftool(demo: &mut Demo) -> Result<()> {
    let agent = demo.agents.first().context("no agent")?;
    let services = format!("{}/SERVICES_V2", agent.pin());
    let shown = show(&["bpftool", "map", "show", "pinned", &services])?;
    if !shown.contains("SERVICES_V2") {
        bail!("bpftool does not name the map: {shown}");
    }
    let dump = show(&["bpftool", "map", "dump", "pinned", &services])?;
    let entries = dump.lines().filter(|l| l.contains("key")).count();
    if entries == 0 {
        bail!("SERVICES_V2 is empty");
    }
    println!("   ({entries} entries; every map of the node:)");
    let names: Vec<String> = std::fs::read_dir(&agent.pin_dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    for chunk in names.chunks(6) {
        println!("      {}", chunk.join("  "));
    }
    // bpftool before 7.3 does not list tcx attachments in `net show`; the pinned links say
    // what is attached where.
    let links = agent.pin_dir.join("links");
    println!(
        "   pinned links in {} (bpftool link show pinned ...):",
        links.display()
    );
    let mut names: Vec<_> = std::fs::read_dir(&links)?.filter_map(|e| e.ok()).collect();
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        let path = entry.path();
        let shown = netns::run(&["bpftool", "link", "show", "pinned", &path.to_string_lossy()])?;
        let first = shown.lines().next().unwrap_or("").trim().to_string();
        println!("      {:<36} {first}", entry.file_name().to_string_lossy());
    }
    Ok(())
}

/// `dataplane monitor` in node1's namespace while a pod talks to `web`: its events name the
/// Service (SERVICE_NAMES_V1) and show the translation.
pub fn monitor(demo: &mut Demo) -> Result<()> {
    let agent = demo.agents.first().context("no agent")?;
    let node = demo.lab.node(agent.index);
    let (bin, pin) = (demo.bin.display().to_string(), agent.pin());
    let argv = [
        bin.as_str(),
        "monitor",
        "--pin-dir",
        &pin,
        "--all",
        "--service",
        "default/web",
        "--count",
        "6",
        "--duration",
        "3",
    ];
    println!("   $ nsenter --net=... {}", argv.join(" "));
    let mut monitor = demo.lab.spawn_in(&node.ns, &argv)?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let client = demo.lab.pod(0, 0).host();
    let web = std::net::SocketAddrV4::new(crate::cluster::WEB_VIP, 80);
    client.tcp_request(web, "seen by the monitor", crate::steps::TIMEOUT)?;
    monitor.wait_timeout(std::time::Duration::from_secs(5))?;
    let out = monitor.stdout();
    for line in out.lines() {
        println!("      {line}");
    }
    let named = out
        .lines()
        .filter(|l| l.contains("service default/web"))
        .count();
    if named == 0 || !out.contains("=>") {
        bail!(
            "no translated, named event for default/web: {}",
            monitor.stderr()
        );
    }
    Ok(())
}

pub fn stats(demo: &mut Demo) -> Result<()> {
    let mut failed = Vec::new();
    for agent in &demo.agents {
        println!("   {}:", agent.node);
        let bin = demo.bin.display().to_string();
        let out = match show(&[&bin, "stats", "--pin-dir", &agent.pin()]) {
            Ok(out) => out,
            Err(e) => {
                failed.push(format!("{}: {e:#}", agent.node));
                continue;
            }
        };
        let mut wanted = vec!["pass-icmp", "pass-tcp", "pass-udp"];
        if demo.plan.overlay != OverlayArg::None {
            wanted.extend(["overlay-encap", "overlay-decap"]);
        }
        let missing: Vec<&str> = wanted.into_iter().filter(|w| !out.contains(w)).collect();
        if !missing.is_empty() {
            failed.push(format!("{}: no {} counters", agent.node, missing.join("/")));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

/// What an operator can type while the lab is up.
pub fn print_commands(demo: &Demo) {
    let lab = &demo.lab;
    println!("\n== look around (as root, in another terminal)");
    for agent in &demo.agents {
        print_agent_commands(demo, agent);
    }
    if let Some(f) = demo.flannel_node {
        let node = lab.node(f);
        let enter = format!("nsenter --net={}", netns::ns_path(&node.ns).display());
        println!("   {} (kernel flannel.1):", node.name);
        println!("      {enter} ip -d link show flannel.1");
        println!("      {enter} bridge fdb show dev flannel.1");
        println!("      {enter} ip route");
    }
    let (p, q) = (lab.pod(0, 0), lab.pod(1, 0));
    let enter = format!("nsenter --net={}", netns::ns_path(&p.ns).display());
    println!("   from pod {} ({}):", p.name, p.ip);
    println!("      {enter} ping -c 3 {}", q.ip);
    println!("      # TCP and UDP echo servers run on every pod and node (nc: netcat-openbsd)");
    println!("      echo hello | {enter} nc -q1 {} {TCP_PORT}", q.ip);
    println!("      echo hello | {enter} nc -u -w1 {} {UDP_PORT}", q.ip);
    println!("      echo hello | {enter} nc -q1 10.96.0.10 80");
    if let Some(ext) = lab.external() {
        let enter = format!("nsenter --net={}", netns::ns_path(&ext.ns).display());
        println!("   from the external client ({}):", ext.ip);
        println!(
            "      echo hello | {enter} nc -q1 {} 30080",
            lab.node(0).underlay_ip
        );
    }
    println!("   all namespaces: ip netns list | grep {}", lab.prefix());
}

fn print_agent_commands(demo: &Demo, agent: &Agent) {
    let node = demo.lab.node(agent.index);
    let (bin, pin) = (demo.bin.display(), agent.pin());
    let enter = format!("nsenter --net={}", netns::ns_path(&node.ns).display());
    println!("   {}:", agent.node);
    println!("      {enter} bpftool net show");
    println!(
        "      {enter} tcpdump -ni {} udp port 8472 or ip proto 4",
        node.uplink
    );
    println!("      bpftool map dump pinned {pin}/SERVICES_V2");
    println!("      {bin} services --pin-dir {pin}");
    println!("      {bin} stats --pin-dir {pin}");
    println!("      {enter} {bin} monitor --pin-dir {pin} --all");
}
