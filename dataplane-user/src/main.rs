//! `dataplane`: the node agent CLI.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use dataplane::{agent, k8s, loader, pin, services, stats};

#[derive(Parser)]
#[command(
    name = "dataplane",
    version,
    about = "eBPF service load balancing and overlay for Kubernetes nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of `run`'s arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Load and attach the datapath, pin its maps, and run until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
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
    /// Show packets as the datapath counts them: drops (or, with --all, every verdict), with
    /// hook, reason, device and the tuple before and after translation, until Ctrl-C.
    Monitor {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Every verdict of the packet hooks, not only drops (rate-limited per CPU).
        #[arg(long)]
        all: bool,
        /// Only drops (the default; kept for `cilium monitor -t drop` habits).
        #[arg(long, conflicts_with = "all")]
        drops: bool,
        /// Only packets from or to this address (before or after translation).
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// Only packets to this Service: NAMESPACE/NAME (any of its ports), NAMESPACE/NAME:PORT
        /// (a named port), or a frontend ADDR:PORT. Names come from the agent
        /// (SERVICE_NAMES_V1).
        #[arg(long, value_parser = parse_service_filter)]
        service: Option<ServiceFilter>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: MonitorFormat,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Remove the maps this build pins under the pin dir.
    Cleanup {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/dataplane";

/// `dataplane monitor --service`: a frontend address or a Service's name.
#[derive(Clone, Debug)]
enum ServiceFilter {
    Frontend(std::net::SocketAddrV4),
    Name(String),
}

fn parse_service_filter(text: &str) -> Result<ServiceFilter, String> {
    if let Ok(addr) = text.parse() {
        return Ok(ServiceFilter::Frontend(addr));
    }
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ServiceFilter::Name(text.to_string()))
        }
        _ => Err("expected NAMESPACE/NAME[:PORT] or ADDR:PORT".into()),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MonitorFormat {
    Text,
    Json,
}

static MONITOR_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn stop_monitor(_: libc::c_int) {
    MONITOR_STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn monitor(pin_dir: &std::path::Path, opts: &dataplane::monitor::Options) -> Result<()> {
    // SAFETY: async-signal-safe handlers that only store to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            stop_monitor as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            stop_monitor as *const () as libc::sighandler_t,
        );
    }
    let mut out = std::io::stdout().lock();
    let s = dataplane::monitor::run(pin_dir, opts, &MONITOR_STOP, &mut out)?;
    eprintln!(
        "{} events shown, {} lost to the rate limit or a full ring",
        s.printed, s.lost
    );
    Ok(())
}

#[derive(clap::Args)]
struct RunArgs {
    /// This node's name (as in the Kubernetes Node object).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The underlay interface: XDP and tc ingress/egress are attached here.
    #[arg(
        long,
        required_unless_present = "uplink_address",
        conflicts_with = "uplink_address"
    )]
    uplink: Option<String>,
    /// The uplink is the interface holding this address (the node's InternalIP, e.g.
    /// `$(HOST_IP)` from the downward API's status.hostIP), instead of naming it.
    #[arg(long, value_name = "IP")]
    uplink_address: Option<std::net::Ipv4Addr>,
    /// Host-side pod devices (veths) to attach tc ingress/egress to.
    #[arg(long, num_args = 1..)]
    pod_ifaces: Vec<String>,
    /// Attach to host-side pod devices whose names start with this prefix as they appear, and
    /// detach when they go (repeatable: `--pod-iface-prefix veth --pod-iface-prefix cali`).
    #[arg(long, value_name = "PREFIX")]
    pod_iface_prefix: Vec<String>,
    /// Directory under a bpf filesystem where maps are pinned.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// XDP attach mode on the uplink.
    #[arg(long, value_enum, default_value_t = loader::XdpAttachMode::Auto)]
    xdp_mode: loader::XdpAttachMode,
    /// Source address for masqueraded connections (default: the uplink's first IPv4 address).
    #[arg(long)]
    masquerade_ip: Option<std::net::Ipv4Addr>,
    /// Idle timeout of established TCP connections, seconds (kube-proxy's
    /// --conntrack-tcp-timeout-established; default 86400, or what the pinned config holds).
    #[arg(long, value_name = "SECS")]
    conntrack_tcp_timeout_established: Option<u32>,
    /// Idle timeout of a TCP connection one side has closed (FIN), seconds (kube-proxy's
    /// --conntrack-tcp-timeout-close-wait; default 3600).
    #[arg(long, value_name = "SECS")]
    conntrack_tcp_timeout_close_wait: Option<u32>,
    /// Linger of a TCP connection after both FINs or an RST, seconds (default 10).
    #[arg(long, value_name = "SECS")]
    conntrack_tcp_timeout_closed: Option<u32>,
    /// Idle timeout of UDP flows, seconds (default 120, the kernel's udp_timeout_stream).
    #[arg(long, value_name = "SECS")]
    conntrack_udp_timeout: Option<u32>,
    /// First pause of the conntrack GC, seconds; it then adapts to the table's fill (2 s to 5 min).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    conntrack_gc_interval: u64,
    /// Socket-level balancing of the node's own traffic to services (cgroup v2 connect4,
    /// sendmsg4, recvmsg4, getpeername4), as Cilium does.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    socket_lb: bool,
    /// cgroup v2 directory the socket hooks attach to (default: the cgroup2 mount's root).
    #[arg(long)]
    cgroup_path: Option<PathBuf>,
    /// Read Services, EndpointSlices and Nodes from this YAML/JSON file or directory (as
    /// `kubectl get -o yaml` prints them), re-read when it changes.
    #[arg(long, value_name = "PATH")]
    manifests: Option<PathBuf>,
    /// Watch the Kubernetes API server named in this kubeconfig.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Watch the Kubernetes API server (in-cluster service account, or $KUBECONFIG).
    #[arg(long)]
    kubernetes: bool,
    /// Which of the node's addresses NodePorts answer on, as kube-proxy's flag: a comma-separated
    /// list of CIDRs ("192.168.0.0/16,10.0.0.0/8"), or "primary" (the Node object's InternalIP);
    /// default every address. Followed at runtime: addresses added later get NodePorts.
    #[arg(long, value_name = "CIDRS|primary", value_parser = parse_nodeport_addresses, default_value = "")]
    nodeport_addresses: k8s::NodePortAddresses,
    /// kube-proxy's node health server (/healthz, /livez) on this address; empty disables it.
    #[arg(long, value_name = "ADDR", default_value = dataplane::health::DEFAULT_HEALTHZ_ADDR)]
    healthz_bind_address: String,
    /// Apply loadBalancerSourceRanges to the Service's NodePorts too, not only to its
    /// load-balancer IPs (kube-proxy restricts the IPs only; Cilium offers this as
    /// bpf-lb-source-range-all-types).
    #[arg(long)]
    lb_source_ranges_node_ports: bool,
    /// Serve /metrics (OpenMetrics text), /healthz, /livez and /readyz on this address
    /// (kube-proxy's flag and default); `--metrics-addr` is the older name of the same flag.
    #[arg(
        long,
        value_name = "ADDR",
        alias = "metrics-addr",
        default_value = dataplane::metrics::DEFAULT_METRICS_ADDR
    )]
    metrics_bind_address: std::net::SocketAddr,
    /// Serve no metrics at all.
    #[arg(long)]
    no_metrics: bool,
    /// Carry traffic to other nodes' pod CIDRs in tunnels: vxlan (wire-compatible with
    /// flannel.1), ipip (with calico's tunl0), or none (the underlay routes pod CIDRs).
    #[arg(long, value_enum, default_value_t = dataplane::overlay::OverlayMode::None)]
    overlay: dataplane::overlay::OverlayMode,
    /// VXLAN network identifier (flannel's default).
    #[arg(long, default_value_t = dataplane_common::overlay::DEFAULT_VXLAN_VNI)]
    vxlan_vni: u32,
    /// VXLAN UDP port (flannel's and Linux's default 8472; IANA's is 4789).
    #[arg(long, default_value_t = dataplane_common::overlay::DEFAULT_VXLAN_PORT)]
    vxlan_port: u16,
    /// Outer UDP checksum on VXLAN packets, as the kernel's vxlan device sends by default
    /// (false: always 0, which RFC 7348 allows).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    vxlan_udp_csum: bool,
    /// The cluster's service CIDRs (kube-apiserver's --service-cluster-ip-range, IPv4 parts;
    /// comma-separated or repeated): a Node whose pod CIDR overlaps one is skipped.
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    service_cluster_ip_range: Vec<dataplane::overlay::Cidr>,
    /// Outer source address of tunnel packets, and the only address tunnel packets are accepted
    /// on (default: the uplink's first IPv4 address).
    #[arg(long)]
    tunnel_ip: Option<std::net::Ipv4Addr>,
}

fn parse_optional_addr(text: &str) -> Result<Option<std::net::SocketAddr>, String> {
    match text.trim() {
        "" => Ok(None),
        addr => addr.parse().map(Some).map_err(|e| format!("{addr:?}: {e}")),
    }
}

fn parse_nodeport_addresses(text: &str) -> Result<k8s::NodePortAddresses, String> {
    k8s::NodePortAddresses::parse(text)
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Monitor {
            pin_dir,
            all,
            drops: _,
            ip,
            service,
            output,
            count,
            duration,
        } => {
            let (frontend, service) = match service {
                Some(ServiceFilter::Frontend(addr)) => (Some(addr), None),
                Some(ServiceFilter::Name(name)) => (None, Some(name)),
                None => (None, None),
            };
            let opts = dataplane::monitor::Options {
                all,
                ip,
                frontend,
                service,
                json: matches!(output, MonitorFormat::Json),
                count,
                duration: duration.map(std::time::Duration::from_secs),
            };
            monitor(&pin_dir, &opts)
        }
        Command::Stats { pin_dir } => {
            print!("{}", stats::render(&stats::read_pinned(&pin_dir)?));
            Ok(())
        }
        Command::Services { pin_dir } => {
            print!(
                "{}",
                services::render_services(&services::list_services(&pin_dir)?)
            );
            Ok(())
        }
        Command::Conntrack { pin_dir } => {
            print!(
                "{}",
                services::render_conntrack(&services::list_conntrack(&pin_dir)?)
            );
            Ok(())
        }
        Command::Cleanup { pin_dir } => {
            match dataplane::overlay::remove_kernel_state(&pin_dir) {
                Ok(0) => {}
                Ok(n) => println!("removed the overlay's kernel routes ({n} changes)"),
                Err(e) => log::warn!("overlay routes left in place: {e:#}"),
            }
            for path in pin::cleanup(&pin_dir)? {
                println!("removed {}", path.display());
            }
            Ok(())
        }
    }
}

fn run(mut args: RunArgs) -> Result<()> {
    let uplink = match (args.uplink.take(), args.uplink_address) {
        (Some(name), _) => name,
        (None, Some(addr)) => dataplane::host::netdev::with_ipv4(addr)
            .map_err(|e| anyhow::anyhow!("--uplink-address {addr}: {e:#}"))?,
        (None, None) => anyhow::bail!("give --uplink or --uplink-address"),
    };
    log::info!("uplink {uplink}");
    let cgroup = match (args.socket_lb, args.cgroup_path.clone()) {
        (false, _) => None,
        (true, Some(dir)) => Some(dir),
        (true, None) => Some(dataplane::host::cgroup::root()?),
    };
    let source = match (args.manifests, args.kubeconfig, args.kubernetes) {
        (Some(path), None, false) => Some(k8s::Source::Manifests(path)),
        (None, Some(path), _) => Some(k8s::Source::Kubernetes {
            kubeconfig: Some(path),
        }),
        (None, None, true) => Some(k8s::Source::Kubernetes { kubeconfig: None }),
        (None, None, false) => None,
        (Some(_), Some(_), _) | (Some(_), None, true) => {
            anyhow::bail!("--manifests and --kubeconfig/--kubernetes are alternatives: give one")
        }
    };
    let overlay = {
        use dataplane::overlay::{OverlayMode, OverlaySettings};
        let tunnel_ip = match (args.tunnel_ip, args.overlay) {
            (Some(ip), _) => ip,
            (None, OverlayMode::None) => std::net::Ipv4Addr::UNSPECIFIED,
            (None, _) => dataplane::host::netdev::first_ipv4(&uplink)?,
        };
        OverlaySettings {
            vni: args.vxlan_vni,
            vxlan_port: args.vxlan_port,
            udp_checksum: args.vxlan_udp_csum,
            ..OverlaySettings::new(args.overlay, &uplink, tunnel_ip)
        }
    };
    agent::run(agent::AgentConfig {
        node_name: args.node_name,
        pin_dir: args.pin_dir,
        attach: loader::AttachConfig {
            uplink,
            pod_ifaces: args.pod_ifaces,
            pod_iface_prefixes: args.pod_iface_prefix,
            xdp_mode: args.xdp_mode,
            cgroup,
        },
        masquerade_ip: args.masquerade_ip,
        timeouts: agent::TimeoutOverrides {
            tcp_established: args.conntrack_tcp_timeout_established,
            tcp_close_wait: args.conntrack_tcp_timeout_close_wait,
            tcp_closed: args.conntrack_tcp_timeout_closed,
            udp: args.conntrack_udp_timeout,
        },
        gc_interval: std::time::Duration::from_secs(args.conntrack_gc_interval.max(1)),
        source,
        metrics_addr: (!args.no_metrics).then_some(args.metrics_bind_address),
        nodeport_addresses: args.nodeport_addresses,
        healthz_addr: parse_optional_addr(&args.healthz_bind_address)
            .map_err(|e| anyhow::anyhow!("--healthz-bind-address {e}"))?,
        source_ranges_on_node_ports: args.lb_source_ranges_node_ports,
        overlay,
        service_cidrs: args.service_cluster_ip_range,
    })
}
