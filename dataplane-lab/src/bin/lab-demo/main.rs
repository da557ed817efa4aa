//! `lab-demo`: the built-in lab tour that `cargo xtask lab` runs.
//!
//! Builds a cluster in network namespaces (2 pods per node and an external client on the
//! underlay), starts `dataplane run` on the nodes with their own pin directories, sends real
//! traffic through it and prints what happened: pods across the overlay (the dataplane's VXLAN
//! or IPIP, and with VXLAN a third node on the kernel's flannel.1), Services (ClusterIP,
//! NodePort, node -> ClusterIP), an agent restart under live connections, the maps as
//! `dataplane services` and `bpftool` show them, and the counters. With `--hold` the lab stays
//! up until Ctrl-C (SIGINT) or SIGTERM.
//!
//! Exit status: 0 if every step passed, 1 otherwise (the lab is torn down either way).
//!
//! # Adding a step
//! Add a [`Step`] to [`STEPS`]: a title, a function `fn(&mut Demo) -> Result<()>` that prints
//! what it does (see [`Demo::check`]) and fails if the product misbehaves, and the plans it
//! applies to. The lab and the agents' arguments come from [`cluster::Plan`].

mod agent;
mod cluster;
mod maps;
mod restart;
mod steps;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use dataplane_lab::lab::Lab;
use dataplane_lab::netns;
use dataplane_lab::traffic::Server;

use agent::Agent;
use cluster::{CniArg, OverlayArg, Plan};

/// One part of the tour.
struct Step {
    title: &'static str,
    run: fn(&mut Demo) -> Result<()>,
    /// Later steps make no sense if this one fails: stop the tour.
    required: bool,
    /// Whether the step belongs to this plan's tour.
    applies: fn(&Plan) -> bool,
}

const ALWAYS: fn(&Plan) -> bool = |_| true;

/// The tour, in order.
const STEPS: &[Step] = &[
    Step {
        title: "start the nodes (`dataplane run`; with VXLAN node3 keeps the kernel's flannel.1)",
        run: steps::start_dataplane,
        required: true,
        applies: ALWAYS,
    },
    Step {
        title: "pod -> pod on the same node",
        run: steps::pod_to_pod_same_node,
        required: false,
        applies: ALWAYS,
    },
    Step {
        title: "pod <-> pod across nodes (the dataplane's tunnel)",
        run: steps::pod_to_pod_cross_node,
        required: false,
        applies: ALWAYS,
    },
    Step {
        title: "dataplane VXLAN <-> kernel flannel.1 (wire interop)",
        run: steps::flannel_interop,
        required: false,
        applies: |p| p.overlay == OverlayArg::Vxlan,
    },
    Step {
        title: "external client -> node",
        run: steps::external_to_node,
        required: false,
        applies: ALWAYS,
    },
    Step {
        title: "pod -> ClusterIP services (backends on every node)",
        run: steps::pod_to_clusterip,
        required: false,
        applies: ALWAYS,
    },
    Step {
        title: "external client -> NodePort (masqueraded to backends on every node)",
        run: steps::external_to_nodeport,
        required: false,
        applies: ALWAYS,
    },
    Step {
        title: "node -> ClusterIP (socket-level balancing)",
        run: steps::node_to_clusterip,
        required: false,
        applies: ALWAYS,
    },
    Step {
        title: "agent restart under live connections (SIGTERM, start again)",
        run: restart::restart_under_load,
        required: false,
        applies: ALWAYS,
    },
    Step {
        title: "services as the maps hold them (`dataplane services`)",
        run: maps::services,
        required: false,
        applies: ALWAYS,
    },
    Step {
        title: "the pinned maps with bpftool",
        run: maps::bpftool,
        required: false,
        applies: ALWAYS,
    },
    Step {
        title: "packets as they pass, named by their Service (`dataplane monitor`)",
        run: maps::monitor,
        required: false,
        applies: ALWAYS,
    },
    Step {
        title: "counters (`dataplane stats`)",
        run: maps::stats,
        required: false,
        applies: ALWAYS,
    },
];

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
    /// Pod traffic between nodes; default: the CNI's own (flannel: vxlan, calico: ipip).
    #[arg(long, value_enum)]
    overlay: Option<OverlayArg>,
    /// An extra argument for every `dataplane run` (repeat for several), e.g.
    /// `--run-arg=--xdp-mode --run-arg=generic`.
    #[arg(long = "run-arg", allow_hyphen_values = true)]
    run_args: Vec<String>,
}

/// What the steps work with.
pub struct Demo {
    lab: Lab,
    bin: PathBuf,
    plan: Plan,
    user_run_args: Vec<String>,
    agents: Vec<Agent>,
    /// The node on the kernel's flannel.1, once configured.
    flannel_node: Option<usize>,
    _servers: Vec<Server>,
    /// Checks that failed inside the current step.
    failed_checks: usize,
    /// Where the manifests are (removed at the end).
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
    let started = Instant::now();
    let bin = std::fs::canonicalize(&args.dataplane)
        .with_context(|| format!("dataplane binary {}", args.dataplane.display()))?;
    let plan = Plan {
        cni: args.cni,
        overlay: args.overlay.unwrap_or(OverlayArg::default_for(args.cni)),
    };
    let spec = plan.lab_spec();
    println!(
        "== building the lab: {} nodes x {} pods ({:?} wiring, overlay {}, pod MTU {}), \
         external client",
        spec.nodes,
        spec.pods_per_node,
        spec.cni,
        plan.overlay.flag(),
        spec.pod_mtu
    );
    let lab = Lab::build(&spec).context("building the lab")?;
    let prefix = lab.prefix().to_string();
    cluster::print_topology(&lab, &plan);
    let servers = cluster::start_servers(&lab).context("starting the echo servers")?;
    let mut demo = Demo {
        lab,
        bin,
        plan,
        user_run_args: args.run_args,
        agents: Vec::new(),
        flannel_node: None,
        _servers: servers,
        failed_checks: 0,
        manifests: None,
    };

    let mut failed_steps = tour(&mut demo);
    if !demo.agents.is_empty() {
        maps::print_commands(&demo);
    }
    if args.hold && !interrupted() {
        println!("\n== the lab is up; press Ctrl-C to tear it down");
        while !interrupted() {
            std::thread::sleep(Duration::from_millis(100));
        }
        println!();
    }
    failed_steps.extend(teardown(demo, &prefix));

    let secs = started.elapsed().as_secs_f64();
    if failed_steps.is_empty() {
        println!("\nall steps passed ({secs:.0} s)");
        Ok(true)
    } else {
        println!("\nFAILED ({secs:.0} s): {}", failed_steps.join(", "));
        Ok(false)
    }
}

/// Runs the steps of the plan; returns the titles of those that failed.
fn tour(demo: &mut Demo) -> Vec<String> {
    let steps: Vec<&Step> = STEPS.iter().filter(|s| (s.applies)(&demo.plan)).collect();
    let mut failed_steps = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        if interrupted() {
            println!("\ninterrupted: skipping the remaining steps");
            failed_steps.push("interrupted".to_string());
            break;
        }
        println!("\n== step {}/{}: {}", n + 1, steps.len(), step.title);
        demo.failed_checks = 0;
        let failure = match (step.run)(demo) {
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
    failed_steps
}

/// Stops the agents (their pinned links keep the datapath up, as for an upgrade), takes the
/// datapath down with `dataplane cleanup`, removes the lab; returns what failed.
fn teardown(demo: Demo, prefix: &str) -> Vec<String> {
    println!("\n== teardown");
    let mut failed = Vec::new();
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
    for agent in agents {
        let what = format!("{}: stop dataplane, then cleanup", agent.node);
        match agent.stop_and_clean(&lab, &bin) {
            Ok(detail) => println!("   ok    {what:<44} {detail}"),
            Err(e) => {
                println!("   FAIL  {what}: {e:#}");
                failed.push("stop dataplane".to_string());
            }
        }
    }
    drop(lab);
    let left: Vec<String> = netns::list_ns()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    if left.is_empty() {
        println!(
            "   ok    {:<44} no namespace with prefix {prefix} left",
            "lab removed"
        );
    } else {
        println!("   FAIL  lab teardown left namespaces: {left:?}");
        failed.push("teardown".to_string());
    }
    failed
}
