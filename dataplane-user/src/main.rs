//! `dataplane`: the node agent CLI.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dataplane::{loader, pin, services, stats};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(name = "dataplane", version, about = "eBPF service load balancing and overlay for Kubernetes nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the datapath, pin its maps, and run until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Print the per-hook, per-verdict packet counters from the pinned stats map.
    Stats {
        /// Directory the maps are pinned in (as given to `run`).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// List the service frontends and their backends from the pinned maps.
    Services {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// List the connection tracking entries (two per NATed connection) from the pinned maps.
    Conntrack {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Remove the maps this build pins under the pin dir.
    Cleanup {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/dataplane";

#[derive(clap::Args)]
struct RunArgs {
    /// This node's name (as in the Kubernetes Node object).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The underlay interface: XDP and tc ingress/egress are attached here.
    #[arg(long)]
    uplink: String,
    /// Host-side pod devices (veths) to attach tc ingress/egress to.
    #[arg(long, num_args = 1..)]
    pod_ifaces: Vec<String>,
    /// Directory under a bpf filesystem where maps are pinned.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// XDP attach mode on the uplink.
    #[arg(long, value_enum, default_value_t = loader::XdpAttachMode::Auto)]
    xdp_mode: loader::XdpAttachMode,
    /// Source address for masqueraded connections (default: the uplink's first IPv4 address).
    #[arg(long)]
    masquerade_ip: Option<std::net::Ipv4Addr>,
    /// Socket-level balancing of the node's own traffic to services (cgroup v2 connect4,
    /// sendmsg4, recvmsg4, getpeername4), as Cilium does.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    socket_lb: bool,
    /// cgroup v2 directory the socket hooks attach to (default: the cgroup2 mount's root).
    #[arg(long)]
    cgroup_path: Option<PathBuf>,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Stats { pin_dir } => {
            print!("{}", stats::render(&stats::read_pinned(&pin_dir)?));
            Ok(())
        }
        Command::Services { pin_dir } => {
            print!("{}", services::render_services(&services::list_services(&pin_dir)?));
            Ok(())
        }
        Command::Conntrack { pin_dir } => {
            print!("{}", services::render_conntrack(&services::list_conntrack(&pin_dir)?));
            Ok(())
        }
        Command::Cleanup { pin_dir } => {
            for path in pin::cleanup(&pin_dir)? {
                println!("removed {}", path.display());
            }
            Ok(())
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        // Register the handlers before attaching so a signal during startup is not lost.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut datapath = loader::load(&args.pin_dir)?;
        let masq = match args.masquerade_ip {
            Some(ip) => ip,
            None => loader::interface_ipv4(&args.uplink)?,
        };
        let mut cfg = dataplane_common::ct::Config::with_masq_addr(u32::from(masq).to_be());
        let cgroup = match (args.socket_lb, args.cgroup_path.clone()) {
            (false, _) => None,
            (true, Some(dir)) => Some(dir),
            (true, None) => Some(loader::cgroup2_root()?),
        };
        if cgroup.is_some() {
            cfg.netns_cookie = loader::netns_cookie()?;
        }
        loader::write_config(&mut datapath.ebpf, &cfg)?;
        let cfg = loader::AttachConfig {
            uplink: args.uplink.clone(),
            pod_ifaces: args.pod_ifaces.clone(),
            xdp_mode: args.xdp_mode,
            cgroup,
        };
        datapath.attach(&cfg).context("attaching programs")?;
        log::info!(
            "node {}: datapath attached (uplink {}, {} pod interfaces), maps pinned in {}",
            args.node_name, args.uplink, args.pod_ifaces.len(), args.pin_dir.display()
        );
        // Tests and scripts wait for this line on stdout.
        println!("ready");
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: detaching"),
            _ = int.recv() => log::info!("SIGINT: detaching"),
        }
        drop(datapath);
        log::info!("programs detached; maps stay pinned in {}", args.pin_dir.display());
        Ok(())
    })
}
