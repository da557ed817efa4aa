//! `lab-demo`: the built-in lab tour that `cargo xtask lab` runs.
//!
//! Builds a 2-node cluster in network namespaces (2 pods per node and an external client on the
//! underlay), starts `dataplane run` on every node with its own pin directory, sends real
//! traffic through it and prints what happened, the counters, and the commands an operator can
//! type to look around. With `--hold` the lab stays up until Ctrl-C (SIGINT) or SIGTERM.
//!
//! Exit status: 0 if every step passed, 1 otherwise (the lab is torn down either way).
//!
//! # Adding a step
//! Features add their part of the tour to [`STEPS`]: a [`Step`] with a title and a function
//! `fn(&mut Demo) -> Result<()>` that prints what it does (see [`Demo::check`]) and fails if the
//! product misbehaves. A feature that needs the lab or the agent set up differently extends
//! [`lab_spec`] (e.g. no host-gw routes for an overlay) or [`run_args`] (e.g. `--manifests`,
//! `--overlay vxlan`); servers a step talks to are started in [`start_servers`].

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use dataplane_lab::lab::{Child, Cni, Host, Lab, LabSpec};
use dataplane_lab::manifests::{Endpoint, ServiceManifest};
use dataplane_lab::netns;
use dataplane_lab::traffic::Server;

/// The tour, in order. Add feature steps here (e.g. a ClusterIP service from manifest files,
/// NodePort from the external client, VXLAN between nodes).
const STEPS: &[Step] = &[
    Step {
        title: "start `dataplane run` on every node",
        run: step_start_dataplane,
        required: true,
    },
    Step {
        title: "pod -> pod on the same node",
        run: step_pod_to_pod_same_node,
        required: false,
    },
    Step {
        title: "pod -> pod across nodes",
        run: step_pod_to_pod_cross_node,
        required: false,
    },
    Step {
        title: "external client -> node",
        run: step_external_to_node,
        required: false,
    },
    Step {
        title: "pod -> ClusterIP services (from manifest files)",
        run: step_pod_to_clusterip,
        required: false,
    },
    Step {
        title: "external client -> NodePort (masqueraded to backends on both nodes)",
        run: step_external_to_nodeport,
        required: false,
    },
    Step {
        title: "node -> ClusterIP (socket-level balancing)",
        run: step_node_to_clusterip,
        required: false,
    },
    Step {
        title: "services as the maps hold them (`dataplane services`)",
        run: step_services,
        required: false,
    },
    Step {
        title: "counters (`dataplane stats`)",
        run: step_stats,
        required: false,
    },
];

/// Echo servers every pod and node runs for the tour (and for an operator while `--hold`).
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 8081;

const TIMEOUT: Duration = Duration::from_secs(3);
/// How long `dataplane run` may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "lab-demo",
    about = "Runs the dataplane on a cluster built from network namespaces and tours its traffic"
)]
struct Args {
    /// The `dataplane` binary to run on the nodes (`cargo xtask lab` passes the one it built).
    #[arg(long)]
    dataplane: PathBuf,
    /// After the tour, keep the lab up for inspection until Ctrl-C (SIGINT) or SIGTERM.
    #[arg(long)]
    hold: bool,
    /// How pods are wired to their node.
    #[arg(long, value_enum, default_value_t = CniArg::Flannel)]
    cni: CniArg,
    /// An extra argument for every `dataplane run` (repeat for several), e.g.
    /// `--run-arg=--xdp-mode --run-arg=generic`.
    #[arg(long = "run-arg", allow_hyphen_values = true)]
    run_args: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum CniArg {
    /// Bridge cni0 with a /24 per node.
    Flannel,
    /// Routed /32 veths with proxy ARP.
    Calico,
}

/// The lab to build.
fn lab_spec(args: &Args) -> LabSpec {
    LabSpec {
        nodes: 2,
        pods_per_node: 2,
        cni: match args.cni {
            CniArg::Flannel => Cni::Flannel,
            CniArg::Calico => Cni::Calico,
        },
        ..Default::default()
    }
}

/// `dataplane run` arguments of a node beyond the ones every node gets (name, uplink, pod
/// devices, pin dir): the services come from the lab's manifest directory.
fn run_args(args: &Args, manifests: &Path) -> Vec<String> {
    let mut extra = vec!["--manifests".to_string(), manifests.display().to_string()];
    extra.extend(args.run_args.iter().cloned());
    extra
}

/// The demo's services: `web` (ClusterIP 10.96.0.10:80/TCP, NodePort 30080) and `dns`
/// (10.96.0.53:53/UDP), backed by every pod but node1-pod0, which plays the client.
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const NODE_PORT: u16 = 30080;

/// Writes the services as `kubectl get -o yaml` would print them; returns the directory.
fn write_manifests(lab: &Lab) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{}manifests", lab.prefix()));
    std::fs::create_dir_all(&dir)?;
    let endpoints: Vec<Endpoint> = lab
        .pods()
        .filter(|p| !(p.node_index == 1 && p.ip == lab.pod(0, 0).ip))
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
    std::fs::write(
        dir.join("web.yaml"),
        svc("web", WEB_VIP, 80, TCP_PORT, "TCP", Some(NODE_PORT)).to_yaml(),
    )?;
    std::fs::write(
        dir.join("dns.yaml"),
        svc("dns", DNS_VIP, 53, UDP_PORT, "UDP", None).to_yaml(),
    )?;
    Ok(dir)
}

/// Servers the steps talk to: TCP and UDP echo on every pod and node.
fn start_servers(lab: &Lab) -> Result<Vec<Server>> {
    let mut hosts: Vec<Host> = lab.pods().map(|p| p.host()).collect();
    hosts.extend(lab.nodes().iter().map(|n| n.host()));
    let mut servers = Vec::new();
    for host in hosts {
        servers.push(host.tcp_echo_server(TCP_PORT)?);
        servers.push(host.udp_echo_server(UDP_PORT)?);
    }
    Ok(servers)
}

/// One part of the tour.
struct Step {
    title: &'static str,
    run: fn(&mut Demo) -> Result<()>,
    /// Later steps make no sense if this one fails: stop the tour.
    required: bool,
}

/// `dataplane run` on one node.
struct Agent {
    node: String,
    pin_dir: PathBuf,
    child: Child,
}

/// What the steps work with.
struct Demo {
    lab: Lab,
    bin: PathBuf,
    args: Args,
    agents: Vec<Agent>,
    _servers: Vec<Server>,
    /// Checks that failed inside the current step.
    failed_checks: usize,
    /// Where the services' manifests are (removed at the end).
    manifests: Option<PathBuf>,
}

impl Demo {
    /// Prints `what` and whether `check` passed (with its detail), and remembers failures so the
    /// step fails after running all its checks.
    fn check(&mut self, what: &str, check: Result<String>) {
        match check {
            Ok(detail) => println!("   ok    {what:<44} {detail}"),
            Err(e) => {
                println!("   FAIL  {what:<44} {e:#}");
                self.failed_checks += 1;
            }
        }
    }

    /// Ping, TCP echo and UDP echo from `client` to `server`.
    fn traffic(&mut self, client: &Host, server: &Host) {
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
}

/// The reply must come from `server` and show the client's own address (nothing NATs this).
fn expect_reply(
    r: dataplane_lab::traffic::Reply,
    server: &Host,
    client_ip: Ipv4Addr,
) -> Result<String> {
    if r.server != server.name {
        bail!("answered by {} instead of {}", r.server, server.name);
    }
    if *r.peer.ip() != client_ip {
        bail!("server saw the client as {} instead of {client_ip}", r.peer);
    }
    Ok(format!("reply from {} (saw client {})", r.server, r.peer))
}

fn step_start_dataplane(demo: &mut Demo) -> Result<()> {
    let manifests = write_manifests(&demo.lab)?;
    println!(
        "   services from {} (web.yaml, dns.yaml)",
        manifests.display()
    );
    demo.manifests = Some(manifests.clone());
    for i in 0..demo.lab.nodes().len() {
        let extra = run_args(&demo.args, &manifests);
        let agent = start_agent(&demo.lab, i, &demo.bin, &extra)?;
        println!(
            "   ok    {:<44} pid {}, maps pinned in {}",
            format!("{}: dataplane run", agent.node),
            agent.child.pid(),
            agent.pin_dir.display()
        );
        demo.agents.push(agent);
    }
    Ok(())
}

fn step_pod_to_pod_same_node(demo: &mut Demo) -> Result<()> {
    let (a, b) = (demo.lab.pod(0, 0).host(), demo.lab.pod(0, 1).host());
    demo.traffic(&a, &b);
    Ok(())
}

fn step_pod_to_pod_cross_node(demo: &mut Demo) -> Result<()> {
    let (a, b) = (demo.lab.pod(0, 0).host(), demo.lab.pod(1, 1).host());
    demo.traffic(&a, &b);
    Ok(())
}

fn step_external_to_node(demo: &mut Demo) -> Result<()> {
    let ext = demo
        .lab
        .external()
        .context("the lab has no external client")?
        .clone();
    for node in 0..demo.lab.nodes().len() {
        let host = demo.lab.node(node).host();
        demo.traffic(&ext, &host);
    }
    Ok(())
}

/// `n` requests to a service; which backends answered, and what they saw as the client.
fn spread(client: &Host, dst: SocketAddrV4, udp: bool, n: usize) -> Result<String> {
    let mut counts = std::collections::BTreeMap::new();
    let mut peers = std::collections::BTreeSet::new();
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

fn step_pod_to_clusterip(demo: &mut Demo) -> Result<()> {
    let client = demo.lab.pod(0, 0).host();
    // The agents read the manifests at start; give a slow machine a moment.
    std::thread::sleep(Duration::from_millis(500));
    let web = SocketAddrV4::new(WEB_VIP, 80);
    demo.check(
        &format!("{} -> tcp {web} x30", client.name),
        spread(&client, web, false, 30),
    );
    let dns = SocketAddrV4::new(DNS_VIP, 53);
    demo.check(
        &format!("{} -> udp {dns} x15", client.name),
        spread(&client, dns, true, 15),
    );
    Ok(())
}

fn step_external_to_nodeport(demo: &mut Demo) -> Result<()> {
    let ext = demo
        .lab
        .external()
        .context("the lab has no external client")?
        .clone();
    for node in 0..demo.lab.nodes().len() {
        let dst = SocketAddrV4::new(demo.lab.node(node).underlay_ip, NODE_PORT);
        demo.check(
            &format!("{} -> tcp {dst} x12", ext.name),
            spread(&ext, dst, false, 12),
        );
    }
    Ok(())
}

fn step_node_to_clusterip(demo: &mut Demo) -> Result<()> {
    let node = demo.lab.node(0).host();
    let web = SocketAddrV4::new(WEB_VIP, 80);
    demo.check(
        &format!("{} -> tcp {web} x12", node.name),
        spread(&node, web, false, 12),
    );
    Ok(())
}

fn step_services(demo: &mut Demo) -> Result<()> {
    let agent = demo.agents.first().context("no agent")?;
    let pin = agent.pin_dir.to_string_lossy().into_owned();
    println!("   {} services --pin-dir {pin}", demo.bin.display());
    let out = netns::run(&[&demo.bin.to_string_lossy(), "services", "--pin-dir", &pin])?;
    for line in out.lines() {
        println!("      {line}");
    }
    Ok(())
}

fn step_stats(demo: &mut Demo) -> Result<()> {
    let mut failed = Vec::new();
    for agent in &demo.agents {
        println!(
            "   {} ({} stats --pin-dir {}):",
            agent.node,
            demo.bin.display(),
            agent.pin_dir.display()
        );
        let pin = agent.pin_dir.to_string_lossy().into_owned();
        match netns::run(&[&demo.bin.to_string_lossy(), "stats", "--pin-dir", &pin]) {
            Ok(out) => {
                for line in out.lines() {
                    println!("      {line}");
                }
                if !out.contains("pass-icmp")
                    || !out.contains("pass-tcp")
                    || !out.contains("pass-udp")
                {
                    failed.push(format!(
                        "{}: no icmp/tcp/udp counters after the traffic",
                        agent.node
                    ));
                }
            }
            Err(e) => failed.push(format!("{}: {e:#}", agent.node)),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

fn start_agent(lab: &Lab, i: usize, bin: &Path, extra: &[String]) -> Result<Agent> {
    let node = lab.node(i);
    let pin_dir = lab.pin_dir(i)?;
    let (bin_s, pin_s) = (bin.to_string_lossy(), pin_dir.to_string_lossy());
    let ifaces = node.pod_ifaces();
    let mut argv: Vec<&str> = vec![
        &bin_s,
        "run",
        "--node-name",
        &node.name,
        "--uplink",
        &node.uplink,
    ];
    if !ifaces.is_empty() {
        argv.push("--pod-ifaces");
        argv.extend(ifaces.iter().map(String::as_str));
    }
    argv.extend(["--pin-dir", &pin_s]);
    argv.extend(extra.iter().map(String::as_str));
    let mut child = lab.spawn_in(&node.ns, &argv)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if child.stdout().lines().any(|l| l.trim() == "ready") {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{}: `{}` exited ({status}):\n{}",
                node.name,
                argv.join(" "),
                child.stderr()
            );
        }
        if Instant::now() >= deadline || interrupted() {
            bail!(
                "{}: `{}` not ready after {:?}:\n{}",
                node.name,
                argv.join(" "),
                READY_TIMEOUT,
                child.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Agent {
        node: node.name.clone(),
        pin_dir,
        child,
    })
}

/// What an operator can type while the lab is up.
fn print_commands(demo: &Demo) {
    let lab = &demo.lab;
    let bin = demo.bin.display();
    println!("\n== look around (as root, in another terminal)");
    for (i, agent) in demo.agents.iter().enumerate() {
        let node = lab.node(i);
        let enter = format!("nsenter --net={}", netns::ns_path(&node.ns).display());
        println!("   {}:", agent.node);
        println!("      {enter} ip -d link show {}", node.uplink);
        println!("      {enter} bpftool net show");
        println!("      {enter} tcpdump -ni {} icmp", node.uplink);
        println!(
            "      bpftool map dump pinned {}/STATS_V1",
            agent.pin_dir.display()
        );
        println!("      {bin} stats --pin-dir {}", agent.pin_dir.display());
    }
    let (p, q) = (lab.pod(0, 0), lab.pod(1, 0));
    let enter = format!("nsenter --net={}", netns::ns_path(&p.ns).display());
    println!("   from pod {} ({}):", p.name, p.ip);
    println!("      {enter} ping -c 3 {}", q.ip);
    println!("      # TCP and UDP echo servers run on every pod and node (nc: netcat-openbsd)");
    println!("      echo hello | {enter} nc -q1 {} {TCP_PORT}", q.ip);
    println!("      echo hello | {enter} nc -u -w1 {} {UDP_PORT}", q.ip);
    if let Some(ext) = lab.external() {
        let enter = format!("nsenter --net={}", netns::ns_path(&ext.ns).display());
        println!("   from the external client ({}):", ext.ip);
        println!("      {enter} ping -c 3 {}", lab.node(0).underlay_ip);
    }
    println!("   all namespaces: ip netns list | grep {}", lab.prefix());
}

/// SIGTERM to every agent (a Ctrl-C in the terminal may already have stopped them: SIGINT
/// reaches the whole process group, and they exit cleanly on it too); each must exit 0 and
/// leave no XDP program on its uplink.
/// Stops every agent (its pinned links keep the datapath up, as for an upgrade), then takes the
/// datapath down with `dataplane cleanup`, the operator's way, and checks nothing is attached.
fn stop_agents(lab: &Lab, bin: &Path, agents: Vec<Agent>) -> bool {
    let mut ok = true;
    for (i, agent) in agents.into_iter().enumerate() {
        let what = format!("{}: stop dataplane, then cleanup", agent.node);
        let (status, log) = stop_child(agent.child);
        let pin = agent.pin_dir.to_string_lossy().into_owned();
        let cleanup = netns::run(&[&bin.to_string_lossy(), "cleanup", "--pin-dir", &pin]);
        let node = lab.node(i);
        let link = netns::ip(&node.ns, &["link", "show", "dev", &node.uplink]);
        match (status, cleanup, link) {
            (Ok(s), Ok(_), Ok(link)) if s.success() && !link.contains("xdp") => {
                println!("   ok    {what:<44} exited 0, programs detached")
            }
            (Ok(s), Ok(_), Ok(link)) if s.success() => {
                ok = false;
                println!("   FAIL  {what}: XDP is still attached after cleanup:\n{link}");
            }
            (Ok(s), cleanup, _) => {
                ok = false;
                println!(
                    "   FAIL  {what}: {s}, cleanup {:?}; its log ends:\n{log}",
                    cleanup.err()
                );
            }
            (Err(e), _, _) => {
                ok = false;
                println!("   FAIL  {what}: {e:#}; its log ends:\n{log}");
            }
        }
    }
    ok
}

/// SIGTERM unless it already exited (Ctrl-C), wait for it; returns its exit status and the end
/// of its log. (Dropping the Child SIGKILLs it if it still runs.)
fn stop_child(mut child: Child) -> (Result<std::process::ExitStatus>, String) {
    let status = match child.try_wait() {
        Ok(Some(s)) => Ok(s),
        Ok(None) => {
            // SAFETY: plain syscall; the pid is our child, not yet reaped (try_wait saw it run).
            unsafe { libc::kill(child.pid() as i32, libc::SIGTERM) };
            match child.wait_timeout(Duration::from_secs(10)) {
                Ok(Some(s)) => Ok(s),
                Ok(None) => Err(anyhow::anyhow!("ignored SIGTERM for 10 s")),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let stderr = child.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    let log = lines[lines.len().saturating_sub(8)..]
        .iter()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    (status, log)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    install_signal_handlers();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lab-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the tour; Ok(false) if a step failed.
fn run(args: Args) -> Result<bool> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and loads eBPF programs: run as root");
    }
    let bin = std::fs::canonicalize(&args.dataplane)
        .with_context(|| format!("dataplane binary {}", args.dataplane.display()))?;
    let spec = lab_spec(&args);
    println!(
        "== building the lab: {} nodes x {} pods ({:?}), external client",
        spec.nodes, spec.pods_per_node, spec.cni
    );
    let lab = Lab::build(&spec).context("building the lab")?;
    let prefix = lab.prefix().to_string();
    print_topology(&lab);
    let servers = start_servers(&lab).context("starting the echo servers")?;
    let mut demo = Demo {
        lab,
        bin,
        args,
        agents: Vec::new(),
        _servers: servers,
        failed_checks: 0,
        manifests: None,
    };

    let mut failed_steps = Vec::new();
    for (n, step) in STEPS.iter().enumerate() {
        if interrupted() {
            println!("\ninterrupted: skipping the remaining steps");
            failed_steps.push("interrupted".to_string());
            break;
        }
        println!("\n== step {}/{}: {}", n + 1, STEPS.len(), step.title);
        demo.failed_checks = 0;
        let result = (step.run)(&mut demo);
        let failure = match result {
            Err(e) => Some(format!("{e:#}")),
            Ok(()) if demo.failed_checks > 0 => {
                Some(format!("{} check(s) failed", demo.failed_checks))
            }
            Ok(()) => None,
        };
        if let Some(why) = failure {
            println!("   FAIL  {}: {why}", step.title);
            failed_steps.push(step.title.to_string());
            if step.required {
                println!("   (required step: stopping the tour)");
                break;
            }
        }
    }

    if !demo.agents.is_empty() {
        print_commands(&demo);
    }
    if demo.args.hold && !interrupted() {
        println!("\n== the lab is up; press Ctrl-C to tear it down");
        while !interrupted() {
            std::thread::sleep(Duration::from_millis(100));
        }
        println!();
    }

    println!("\n== teardown");
    let Demo {
        lab,
        bin,
        agents,
        _servers,
        manifests,
        ..
    } = demo;
    drop(_servers);
    if let Some(dir) = manifests {
        let _ = std::fs::remove_dir_all(dir);
    }
    if !stop_agents(&lab, &bin, agents) {
        failed_steps.push("stop dataplane".to_string());
    }
    drop(lab);
    let left: Vec<String> = netns::list_ns()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if left.is_empty() {
        println!(
            "   ok    {:<44} no namespace with prefix {prefix} left",
            "lab removed"
        );
    } else {
        println!("   FAIL  lab teardown left namespaces: {left:?}");
        failed_steps.push("teardown".to_string());
    }

    if failed_steps.is_empty() {
        println!("\nall {} steps passed", STEPS.len());
        Ok(true)
    } else {
        println!("\nFAILED: {}", failed_steps.join(", "));
        Ok(false)
    }
}

fn print_topology(lab: &Lab) {
    for node in lab.nodes() {
        println!(
            "   {:<8} eth0 {:<14} pods {}/{}  ns {}",
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
