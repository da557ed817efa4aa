//! Results: raw samples (bench/results.json), BENCHMARKS.md and the SVG plot, all generated.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::measure::{PacketSample, Profile, SnatProbe, TcpSample};

mod agg;
mod budgets;
mod markdown;
mod node1;
mod plot;
mod sections;
mod targets;
mod tunnel;

pub use markdown::write_markdown;

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LoadSample {
    pub row: String,
    pub services: usize,
    /// "full" (whole rule set from empty), "one_change" (one service's endpoints changed,
    /// applied the way each implementation's control plane applies it), "upsert" (dataplane:
    /// the one service alone).
    pub kind: String,
    pub rep: usize,
    pub secs: f64,
    /// The dataplane: service and backend map entries written and deleted.
    pub map_entries: Option<usize>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct InjectorCost {
    pub services: usize,
    pub ns_per_frame: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Results {
    pub generated_unix: u64,
    pub quick: bool,
    pub reps: usize,
    pub services: Vec<usize>,
    pub budget_ms: u64,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub tools: Vec<String>,
    pub overlay: String,
    pub elapsed_secs: f64,
    pub packets: Vec<PacketSample>,
    pub tcp: Vec<TcpSample>,
    pub loads: Vec<LoadSample>,
    pub profiles: Vec<Profile>,
    pub injector: Vec<InjectorCost>,
    pub snat_probe: Option<SnatProbe>,
    /// CONFIG_V2's default masquerade port range of the build measured.
    #[serde(default = "default_snat_range")]
    pub snat_range: (u16, u16),
    /// /proc/loadavg when the run started and ended (other builds on the machine).
    #[serde(default)]
    pub loadavg: Vec<String>,
    /// kernel.bpf_stats_enabled at the start (1 would add ~100 ns to every BPF program run).
    #[serde(default)]
    pub bpf_stats_enabled: String,
    #[serde(default)]
    pub tunnel: Vec<crate::overlay::TunnelSample>,
    #[serde(default)]
    pub tunnel_status: String,
    #[serde(default)]
    pub tunnel_profile: Option<Profile>,
    #[serde(default)]
    pub tunnel_profile_ipip: Option<Profile>,
    #[serde(default)]
    pub tunnel_profile_hostgw: Option<Profile>,
    #[serde(default)]
    pub tunnel_tcp: Vec<crate::overlay::ThroughputSample>,
}

impl Results {
    pub fn new(
        quick: bool,
        reps: usize,
        services: &[usize],
        budget: Duration,
        overlay: String,
    ) -> Results {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_default();
        Results {
            generated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            quick,
            reps,
            services: services.to_vec(),
            budget_ms: budget.as_millis() as u64,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model,
            tools: tool_versions(),
            overlay,
            elapsed_secs: 0.0,
            packets: Vec::new(),
            tcp: Vec::new(),
            loads: Vec::new(),
            profiles: Vec::new(),
            injector: Vec::new(),
            snat_probe: None,
            snat_range: default_snat_range(),
            loadavg: vec![loadavg()],
            bpf_stats_enabled: std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
                .unwrap_or_default()
                .trim()
                .to_string(),
            tunnel: Vec::new(),
            tunnel_status: "not run".into(),
            tunnel_profile: None,
            tunnel_profile_ipip: None,
            tunnel_profile_hostgw: None,
            tunnel_tcp: Vec::new(),
        }
    }
}

fn default_snat_range() -> (u16, u16) {
    let c = dataplane_common::ct::Config::with_masq_addr(0);
    (c.snat_port_min, c.snat_port_max)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn tool_versions() -> Vec<String> {
    let mut v = Vec::new();
    for argv in [
        &["iptables-legacy", "--version"][..],
        &["iptables-nft", "--version"],
        &["nft", "--version"],
    ] {
        if let Ok(o) = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .output()
        {
            v.push(String::from_utf8_lossy(&o.stdout).trim().to_string());
        }
    }
    v
}

/// Whether `dataplane run` (the binary the xtask built, in DATAPLANE_BIN) has an overlay
/// option; (f) needs one.
pub fn overlay_status() -> String {
    let bin = std::env::var("DATAPLANE_BIN").unwrap_or_default();
    if bin.is_empty() {
        return "not checked (DATAPLANE_BIN not set)".into();
    }
    match std::process::Command::new(&bin)
        .args(["run", "--help"])
        .output()
    {
        Ok(o) => {
            let help = String::from_utf8_lossy(&o.stdout);
            if help.contains("--overlay") {
                "present: `dataplane run --help` lists --overlay".into()
            } else {
                "absent: `dataplane run --help` has no --overlay option".into()
            }
        }
        Err(e) => format!("not checked ({bin}: {e})"),
    }
}

pub fn write_json(dir: &Path, r: &Results) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(r)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
