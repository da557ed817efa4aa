//! Per-program run time from the kernel's BPF run-time statistics, the injector's own cost and
//! the masquerade capacity probe.

use std::sync::Arc;

use anyhow::{Context, Result};
use dataplane_common::{Hook, Reason};
use dataplane_lab::netns::in_netns;
use serde::Serialize;

use crate::injector::{Injector, Templates};
use crate::modes::ModeLab;
use crate::netutil;
use crate::scenario::{self, Traffic};

use super::packets::live_run;
use super::StatsFloor;

/// Time spent inside each of the dataplane's programs per packet, from the kernel's run-time
/// statistics (BPF_ENABLE_STATS, on only during this untimed profiling pass: it adds its own
/// overhead to every run).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ProgramProfile {
    pub program: String,
    /// Average nanoseconds per run of the program.
    pub ns_per_run: f64,
    /// Runs per packet sent (1 = every packet went through it once).
    pub runs_per_packet: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Profile {
    pub row: String,
    pub services: usize,
    pub traffic: Traffic,
    /// Cost per packet of this (stats-enabled) run, ns.
    pub total_ns_per_packet: f64,
    pub programs: Vec<ProgramProfile>,
    /// ns per run of an empty tc program on the injection device in the same pass: what the
    /// statistics themselves add to each program run ([`StatsFloor`]). None where it did not
    /// run for the packets (XDP finished them) or in runs from before it was measured.
    #[serde(default)]
    pub stats_floor_ns: Option<f64>,
}

impl Profile {
    /// ns per packet inside the dataplane's programs: each program's ns per run times its
    /// runs per packet, summed.
    pub fn inside_ns(&self) -> f64 {
        self.programs
            .iter()
            .map(|q| q.ns_per_run * q.runs_per_packet)
            .sum()
    }

    /// One `program ns<times>runs` term per program, for the report's breakdowns.
    pub fn terms(&self, times: &str) -> Vec<String> {
        self.programs
            .iter()
            .map(|q| {
                format!(
                    "{} {:.0}{times}{:.2}",
                    q.program, q.ns_per_run, q.runs_per_packet
                )
            })
            .collect()
    }
}

pub const PROGRAMS: [&str; 5] = [
    "xdp_uplink",
    "tc_uplink_ingress",
    "tc_uplink_egress",
    "tc_pod_ingress",
    "tc_pod_egress",
];

/// Run statistics of the dataplane's programs, and last of the injector that tail-calls
/// xdp_uplink (a tail-called program's time is counted on the program that called it).
fn run_stats(ml: &ModeLab) -> Result<Vec<(u64, u64)>> {
    let dp = ml.datapath.as_ref().expect("datapath");
    let mut v: Vec<(u64, u64)> = PROGRAMS
        .iter()
        .map(|p| {
            let info = dp.ebpf.program(p).context("program")?.info()?;
            Ok((info.run_time().as_nanos() as u64, info.run_count()))
        })
        .collect::<Result<_>>()?;
    v.push(match &ml.tail {
        Some(inj) => crate::rawbpf::prog_run_stats(inj.raw_fd())?,
        None => (0, 0),
    });
    Ok(v)
}

#[allow(clippy::too_many_arguments)]
pub fn profile(
    ml: &ModeLab,
    pass: &Arc<Injector>,
    templates: &Templates,
    n: usize,
    traffic: Traffic,
    frames: u32,
    cpu: usize,
) -> Result<Profile> {
    let ifindex = if traffic.is_nodeport() {
        ml.ifindex_uplink
    } else {
        ml.ifindex_pod
    };
    let floor = StatsFloor::attach(&ml.node1.ns, ifindex)?;
    let _enabled = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let floor0 = floor.run_stats()?;
    let before = run_stats(ml)?;
    let run = super::packets::Run {
        services: n,
        traffic,
        frames,
        rep: 0,
        cpu,
    };
    let s = live_run(ml, pass, templates, run)?;
    let after = run_stats(ml)?;
    let stats_floor_ns = StatsFloor::ns_per_run(floor0, floor.run_stats()?, s.sent);
    let injector_ns = injector_cost(pass, templates, cpu)?;
    let names = PROGRAMS
        .iter()
        .map(|p| p.to_string())
        .chain(std::iter::once(
            "xdp_uplink (tail-called by the injector; injector's own cost subtracted)".to_string(),
        ));
    let programs = names
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| a.1 > b.1)
        .map(|(p, (b, a))| {
            let mut per_run = (a.0 - b.0) as f64 / (a.1 - b.1) as f64;
            if p.starts_with("xdp_uplink (tail") {
                per_run = (per_run - injector_ns).max(0.0);
            }
            ProgramProfile {
                program: p,
                ns_per_run: per_run,
                runs_per_packet: (a.1 - b.1) as f64 / s.sent as f64,
            }
        })
        .collect();
    Ok(Profile {
        row: s.row,
        services: n,
        traffic,
        total_ns_per_packet: s.ns_per_packet,
        programs,
        stats_floor_ns,
    })
}

/// The injector alone (classic test run of the pass injector): what every live run adds.
pub fn injector_cost(pass: &Arc<Injector>, templates: &Templates, cpu: usize) -> Result<f64> {
    let off = scenario::set_offset(Traffic::ClusterNew, false);
    templates.walk(off, scenario::NEW_FLOWS)?;
    let first = templates.get(off);
    let inj = pass.clone();
    let (res, _) = std::thread::spawn(move || -> Result<_> {
        netutil::pin_to_cpu(cpu)?;
        inj.run_direct(&first, scenario::NEW_FLOWS)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("injector thread panicked"))??;
    Ok(res.ns_per_frame)
}

/// How many of 100,000 new NodePort flows (10 backends, one masquerade address) the
/// dataplane can masquerade at once (CONFIG_V2's default source-port range).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SnatProbe {
    pub flows: u64,
    pub accepted: u64,
    pub refused_ports_exhausted: u64,
}

pub fn snat_capacity(ml: &ModeLab, templates: &Templates, cpu: usize) -> Result<SnatProbe> {
    let inj = ml.tail.clone().expect("xdp injector");
    let off = scenario::set_offset(Traffic::NodePortNew, false);
    ml.flush_conntrack()?;
    let s0 = ml.stats()?.expect("stats");
    templates.walk(off, scenario::NEW_FLOWS)?;
    let first = templates.get(off);
    in_netns(&ml.node1.ns, move || -> Result<_> {
        netutil::pin_to_cpu(cpu)?;
        inj.run_direct(&first, scenario::NEW_FLOWS)
    })??;
    let s1 = ml.stats()?.expect("stats");
    let d = |r: Reason| s1.packets(Hook::XdpUplink, r) - s0.packets(Hook::XdpUplink, r);
    ml.flush_conntrack()?;
    Ok(SnatProbe {
        flows: scenario::NEW_FLOWS as u64,
        accepted: d(Reason::LbNewConnection),
        refused_ports_exhausted: d(Reason::DropSnatPortsExhausted),
    })
}
