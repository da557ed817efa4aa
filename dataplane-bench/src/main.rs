//! `dataplane-bench`: this dataplane against kube-proxy's iptables (legacy and nft backends)
//! and nftables modes, interleaved in one run, on the same packets. Run by
//! `cargo xtask bench [--quick]`, which builds the eBPF object first. See BENCHMARKS.md (which
//! this program writes) for the method.

mod injector;
mod measure;
mod modes;
mod netutil;
mod overlay;
mod rawbpf;
mod report;
mod rules;
mod scenario;
mod source;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use injector::{Injector, Templates};
use measure::PacketSample;
use modes::{Mode, ModeLab};
use report::{LoadSample, Results};
use scenario::Traffic;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "dataplane-bench",
    about = "Benchmark this dataplane against kube-proxy's iptables and nftables modes"
)]
pub struct Args {
    /// CI variant: N in {1, 1000}, 3 repetitions, shorter runs (under 3 minutes); still checks
    /// delivery and fails on any mode that delivered nothing or untranslated packets.
    #[arg(long)]
    quick: bool,
    /// Service counts to sweep (default 1,100,1000,10000; --quick: 1,1000).
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<usize>>,
    /// Interleaved repetitions per measurement (default 9; --quick: 3).
    #[arg(long)]
    reps: Option<usize>,
    /// Modes to run (default all): no-nat, iptables-legacy, iptables-nft, nftables, ebpf-tc, ebpf-xdp.
    #[arg(long, value_delimiter = ',')]
    modes: Option<Vec<String>>,
    /// Target duration of one timed packet run, in milliseconds (frames = this / cost, within
    /// [300, 100000]).
    #[arg(long)]
    budget_ms: Option<u64>,
    /// Skip the TCP connection test (c).
    #[arg(long)]
    no_tcp: bool,
    /// CPU the packet runs are pinned to.
    #[arg(long, default_value_t = 1)]
    cpu: usize,
    /// Where results.json and the plot go.
    #[arg(long, default_value = "bench")]
    out_dir: PathBuf,
    /// The report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Run only one part: `overlay` (section (f): pod → pod through the tunnels, packets and
    /// bulk TCP; the report then has only that section measured), `sync` (section (e): full
    /// loads and one change, printed, report untouched) or `plan` (the dataplane's sync into
    /// the in-memory maps, printed: for profiling the planner).
    #[arg(long)]
    only: Option<String>,
    /// Seconds of each iperf3 run in (f) (default 3; --quick: 2).
    #[arg(long)]
    iperf_secs: Option<u32>,
    /// Measure nothing: regenerate the report and plot from this results.json.
    #[arg(long)]
    report_only: Option<PathBuf>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: tearing the labs down");
    }
    Ok(())
}

/// Frames per timed run: enough for `budget` at the estimated cost, at least 300 and at most
/// 100,000 (the size of a new-flow set).
fn frames_for(budget: Duration, est_ns: f64) -> u32 {
    let f = budget.as_nanos() as f64 / est_ns.max(1.0);
    (f as u32).clamp(300, scenario::NEW_FLOWS)
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    // SAFETY: installing async-signal-safe handlers that only store to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let code = match run(&args) {
        Ok(true) => 0,
        Ok(false) => {
            eprintln!("bench: some checks failed (see the report)");
            1
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            2
        }
    };
    // Labs were dropped inside run(): nothing is left in any namespace.
    std::process::exit(code);
}

fn run(args: &Args) -> Result<bool> {
    if let Some(path) = &args.report_only {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let results: Results =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        return report::write_markdown(&args.markdown, &args.out_dir, &results);
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark creates network namespaces and loads eBPF programs: run it as root");
    }
    let started = Instant::now();
    let sweep = args.services.clone().unwrap_or(if args.quick {
        vec![1, 1000]
    } else {
        vec![1, 100, 1000, 10000]
    });
    let reps = args.reps.unwrap_or(if args.quick { 3 } else { 9 });
    let budget = Duration::from_millis(args.budget_ms.unwrap_or(if args.quick { 60 } else { 250 }));
    let tcp_time = Duration::from_millis(if args.quick { 150 } else { 400 });
    let modes: Vec<Mode> = match &args.modes {
        Some(v) => v
            .iter()
            .map(|k| Mode::from_key(k).with_context(|| format!("unknown mode {k}")))
            .collect::<Result<_>>()?,
        None => Mode::ALL.to_vec(),
    };
    let overlay = report::overlay_status();
    let only_overlay = match args.only.as_deref() {
        None => false,
        Some("overlay") => true,
        Some("sync") => return sync_only(args, &modes, &sweep, started),
        Some("plan") => return plan_only(&sweep),
        Some(o) => bail!("--only {o}: the parts that run alone are `overlay` and `sync`"),
    };
    injector::check_live_frames()?;
    if only_overlay {
        let mut templates = Templates::new(scenario::TEMPLATE_CAPACITY)?;
        scenario::build_templates(1, |i, f| templates.set(i, f));
        let pass = Arc::new(Injector::load(&templates, None, "bench_inj_pass")?);
        let mut results = Results::new(args.quick, reps, &[], budget, overlay);
        tunnel_phase(args, &pass, &templates, reps, budget, &mut results)?;
        results.elapsed_secs = started.elapsed().as_secs_f64();
        // The other sections keep the last full run's samples (results.json), so the report
        // stays whole.
        let prev = args.out_dir.join("results.json");
        if let Some(mut old) = std::fs::read_to_string(&prev)
            .ok()
            .and_then(|t| serde_json::from_str::<Results>(&t).ok())
        {
            old.tunnel = results.tunnel;
            old.tunnel_tcp = results.tunnel_tcp;
            old.tunnel_status = results.tunnel_status;
            old.tunnel_profile = results.tunnel_profile;
            old.tunnel_profile_ipip = results.tunnel_profile_ipip;
            old.tunnel_profile_hostgw = results.tunnel_profile_hostgw;
            old.loadavg.append(&mut results.loadavg);
            results = old;
        }
        results.loadavg.push(report::loadavg());
        report::write_json(&args.out_dir, &results)?;
        return report::write_markdown(&args.markdown, &args.out_dir, &results);
    }

    let mut templates = Templates::new(scenario::TEMPLATE_CAPACITY)?;
    let pass = Arc::new(Injector::load(&templates, None, "bench_inj_pass")?);
    eprintln!("bench: building {} labs", modes.len());
    let mut labs = Vec::new();
    for m in &modes {
        check_interrupted()?;
        labs.push(ModeLab::build(*m, &templates)?);
    }
    eprintln!("bench: labs ready after {:.0?}", started.elapsed());

    let mut results = Results::new(args.quick, reps, &sweep, budget, overlay);
    for &n in &sweep {
        check_interrupted()?;
        let svcs = scenario::services(n);
        scenario::build_templates(n, |i, f| templates.set(i, f));
        eprintln!("bench: N={n}: loading rules ({:.0?})", started.elapsed());
        load_phase(&mut labs, &svcs, n, &mut results, args.quick)?;

        let run = |traffic, frames, rep| measure::Run {
            services: n,
            traffic,
            frames,
            rep,
            cpu: args.cpu,
        };
        // Calibration: one short run per (mode, traffic), not recorded; sets the frame counts.
        let mut est: HashMap<(String, Traffic), f64> = HashMap::new();
        for ml in &labs {
            for t in Traffic::ALL {
                check_interrupted()?;
                let s = measure::live_run(ml, &pass, &templates, run(t, 1000, 0))?;
                est.insert((s.row.clone(), t), s.ns_per_packet);
                if ml.mode == Mode::EbpfXdp {
                    let s = measure::direct_run(ml, &templates, run(t, 10_000, 0))?;
                    est.insert((s.row.clone(), t), s.ns_per_packet);
                }
            }
        }
        results.injector.push(report::InjectorCost {
            services: n,
            ns_per_frame: measure::injector_cost(&pass, &templates, args.cpu)?,
        });
        if results.snat_probe.is_none() {
            if let Some(ml) = labs.iter().find(|l| l.mode == Mode::EbpfXdp) {
                results.snat_probe = Some(measure::snat_capacity(ml, &templates, args.cpu)?);
            }
        }
        eprintln!("bench: N={n}: packets ({:.0?})", started.elapsed());
        for rep in 0..reps {
            let order: Vec<usize> = (0..labs.len()).map(|i| (i + rep) % labs.len()).collect();
            for &li in &order {
                let ml = &labs[li];
                for t in Traffic::ALL {
                    check_interrupted()?;
                    let frames = frames_for(budget, est[&(ml.mode.key().to_string(), t)]);
                    let s = measure::live_run(ml, &pass, &templates, run(t, frames, rep))?;
                    note(&s);
                    results.packets.push(s);
                    if t.is_nodeport() && Some(&n) == sweep.iter().max() {
                        let s = measure::node1_run(ml, &pass, &templates, run(t, frames, rep))?;
                        note(&s);
                        results.packets.push(s);
                    }
                    if ml.mode == Mode::EbpfXdp {
                        // The program alone is ~100 ns: always 100,000 runs.
                        let s =
                            measure::direct_run(ml, &templates, run(t, scenario::NEW_FLOWS, rep))?;
                        note(&s);
                        results.packets.push(s);
                    }
                }
            }
        }
        if !args.no_tcp {
            eprintln!("bench: N={n}: TCP connections ({:.0?})", started.elapsed());
            let tcp_reps = reps.min(if args.quick { 3 } else { 5 });
            for rep in 0..tcp_reps {
                let count = labs.len();
                for li in (0..count).map(|i| (i + rep) % count) {
                    check_interrupted()?;
                    let ml = &mut labs[li];
                    ml.flush_conntrack()?;
                    ml.attach_product()?;
                    let s = measure::tcp_run(ml, n, rep, tcp_time);
                    ml.detach_product()?;
                    let s = s?;
                    if !s.problems.is_empty() {
                        eprintln!("bench: TCP {} N={n}: {}", s.row, s.problems.join("; "));
                    }
                    results.tcp.push(s);
                }
            }
        }
        if Some(&n) == sweep.iter().max() {
            // Untimed profiling pass: time inside the dataplane's programs (run-time stats on).
            for ml in labs.iter().filter(|l| l.mode.is_ebpf()) {
                for t in Traffic::ALL {
                    check_interrupted()?;
                    let frames = frames_for(budget, est[&(ml.mode.key().to_string(), t)]);
                    results.profiles.push(measure::profile(
                        ml, &pass, &templates, n, t, frames, args.cpu,
                    )?);
                }
            }
        }
        results.elapsed_secs = started.elapsed().as_secs_f64();
        report::write_json(&args.out_dir, &results)?;
    }
    eprintln!(
        "bench: service measurements done after {:.0?}; tearing down their labs",
        started.elapsed()
    );
    drop(labs);
    check_interrupted()?;
    tunnel_phase(args, &pass, &templates, reps, budget, &mut results)?;
    eprintln!("bench: measurements done after {:.0?}", started.elapsed());
    results.elapsed_secs = started.elapsed().as_secs_f64();
    results.loadavg.push(report::loadavg());
    report::write_json(&args.out_dir, &results)?;
    let ok = report::write_markdown(&args.markdown, &args.out_dir, &results)?;
    eprintln!(
        "bench: wrote {}, {}/results.json ({:.0?} in all)",
        args.markdown.display(),
        args.out_dir.display(),
        started.elapsed()
    );
    Ok(ok)
}

/// (f): pod → pod over VXLAN, ours against the kernel's, host-gw as the floor. Needs
/// `dataplane run` (DATAPLANE_BIN, set by the xtask) with --overlay.
fn tunnel_phase(
    args: &Args,
    pass: &Arc<Injector>,
    templates: &Templates,
    reps: usize,
    budget: Duration,
    results: &mut Results,
) -> Result<()> {
    let bin = std::env::var("DATAPLANE_BIN").ok();
    if !results.overlay.starts_with("present") {
        results.tunnel_status = format!("skipped: overlay support {}", results.overlay);
        return Ok(());
    }
    eprintln!("bench: (f) tunnel labs");
    let mut labs = Vec::new();
    for m in overlay::TunnelMode::ALL {
        check_interrupted()?;
        match overlay::TunnelLab::build(m, bin.as_deref()) {
            Ok(l) => labs.push(l),
            Err(e) => {
                results.tunnel_status = format!("skipped: setting up {} failed: {e:#}", m.key());
                eprintln!("bench: {}", results.tunnel_status);
                return Ok(());
            }
        }
    }
    // The other labs are gone: rebuild the templates' pod → pod set is unchanged (it does not
    // depend on N), calibrate, then interleaved repetitions.
    let mut est = Vec::new();
    for l in &labs {
        est.push(overlay::run(l, pass, templates, 1000, 0, args.cpu)?.ns_per_packet);
    }
    for rep in 0..reps {
        for k in 0..labs.len() {
            let i = (k + rep) % labs.len();
            check_interrupted()?;
            let s = overlay::run(
                &labs[i],
                pass,
                templates,
                frames_for(budget, est[i]),
                rep,
                args.cpu,
            )?;
            if !s.problems.is_empty() {
                eprintln!("bench: (f) {}: {}", s.row, s.problems.join("; "));
            }
            results.tunnel.push(s);
        }
    }
    // Bulk TCP, interleaved the same way (BPF run-time statistics stay off: they would add
    // their own ~100 ns to every program run).
    let secs = args.iperf_secs.unwrap_or(if args.quick { 2 } else { 3 });
    let tcp_reps = reps.min(if args.quick { 3 } else { 5 });
    eprintln!("bench: (f) bulk TCP, {tcp_reps} x {secs} s per tunnel");
    for rep in 0..tcp_reps {
        for k in 0..labs.len() {
            let i = (k + rep) % labs.len();
            check_interrupted()?;
            let s = overlay::throughput(&labs[i], secs, rep)?;
            eprintln!("bench: (f) {} {:.2} Gbit/s", s.row, s.gbit_per_s);
            results.tunnel_tcp.push(s);
        }
    }
    for (i, l) in labs.iter().enumerate().filter(|(_, l)| l.mode.is_ebpf()) {
        let p = overlay::profile(l, pass, templates, frames_for(budget, est[i]), args.cpu)?;
        match l.mode {
            overlay::TunnelMode::EbpfVxlan => results.tunnel_profile = Some(p),
            overlay::TunnelMode::EbpfIpip => results.tunnel_profile_ipip = Some(p),
            _ => results.tunnel_profile_hostgw = Some(p),
        }
    }
    results.tunnel_status = "measured".into();
    Ok(())
}

fn note(s: &PacketSample) {
    if !s.ok() {
        eprintln!(
            "bench: {} N={} {}: {}",
            s.row,
            s.services,
            s.traffic.key(),
            s.problems.join("; ")
        );
    }
}

/// node1's service table over the in-memory model of the maps: the dataplane's planning
/// without a single bpf() call.
fn mem_table() -> Result<dataplane::services::ServiceTable<dataplane::services::MemMaps>> {
    dataplane::services::ServiceTable::with_store(
        dataplane::services::MemMaps::default(),
        dataplane::services::LocalContext {
            node_name: "node1".into(),
            ..Default::default()
        },
    )
}

/// `--only plan`: the dataplane's full sync into the in-memory maps (planning, no bpf() call),
/// 5 times per N: what to run under `perf record` to profile the planner.
fn plan_only(sweep: &[usize]) -> Result<bool> {
    for &n in sweep {
        let models: Vec<_> = scenario::services(n)
            .iter()
            .map(scenario::to_model)
            .collect();
        for rep in 0..5 {
            let mut table = mem_table()?;
            let t0 = Instant::now();
            let r = table.sync(&models)?;
            println!(
                "plan N={n} rep {rep}: {:.1} ms, {} entries",
                t0.elapsed().as_secs_f64() * 1e3,
                r.written()
            );
        }
    }
    Ok(true)
}

/// `--only sync`: section (e) alone (full loads and one change, per mode and N), printed as
/// one line per sample; the report and results.json are left as they are.
fn sync_only(args: &Args, modes: &[Mode], sweep: &[usize], started: Instant) -> Result<bool> {
    let templates = Templates::new(scenario::TEMPLATE_CAPACITY)?;
    let mut labs = Vec::new();
    for m in modes {
        check_interrupted()?;
        labs.push(ModeLab::build(*m, &templates)?);
    }
    let mut results = Results::new(
        args.quick,
        1,
        sweep,
        Duration::ZERO,
        report::overlay_status(),
    );
    for &n in sweep {
        let svcs = scenario::services(n);
        load_phase(&mut labs, &svcs, n, &mut results, args.quick)?;
    }
    for s in &results.loads {
        println!(
            "sync {:<16} N={:<6} {:<10} rep {} {:>10.3} ms  entries {:?}",
            s.row,
            s.services,
            s.kind,
            s.rep,
            s.secs * 1e3,
            s.map_entries
        );
    }
    eprintln!("bench: sync section done after {:.0?}", started.elapsed());
    Ok(true)
}

/// (e): the whole rule set from empty, then one changed service applied and reverted.
fn load_phase(
    labs: &mut [ModeLab],
    svcs: &[rules::Svc],
    n: usize,
    results: &mut Results,
    quick: bool,
) -> Result<()> {
    let (before, after) = scenario::changed(svcs);
    let svcs_after: Vec<rules::Svc> = svcs
        .iter()
        .map(|s| {
            if *s == before {
                after.clone()
            } else {
                s.clone()
            }
        })
        .collect();
    // Repeat the (cheap) small loads; at 10,000 services one load per implementation is
    // already minutes of iptables/nft time.
    let full_reps = if n >= 10_000 || quick { 1 } else { 3 };
    // The dataplane's sync against the in-memory model of the maps: the planning part of
    // ServiceTable::sync, without a single bpf() call (where its time goes).
    {
        let models: Vec<_> = svcs.iter().map(scenario::to_model).collect();
        let mut table = mem_table()?;
        let t0 = Instant::now();
        let rep = table.sync(&models)?;
        results.loads.push(LoadSample {
            row: "ebpf-plan-only".into(),
            services: n,
            kind: "full".into(),
            rep: 0,
            secs: t0.elapsed().as_secs_f64(),
            map_entries: Some(rep.written() + rep.deleted()),
        });
    }
    for ml in labs.iter_mut() {
        // One timed write of this mode at this N.
        let row = ml.mode.key();
        let mut sample = |kind: &str, rep, t: Duration, map_entries| {
            results.loads.push(LoadSample {
                row: row.into(),
                services: n,
                kind: kind.into(),
                rep,
                secs: t.as_secs_f64(),
                map_entries,
            })
        };
        ml.flush_conntrack()?;
        // The sync target compares these two at 10,000 services: give them 3 samples there too.
        let reps_here = if n >= 10_000
            && !quick
            && matches!(ml.mode, Mode::IptablesLegacy | Mode::EbpfTc | Mode::EbpfXdp)
        {
            3
        } else {
            full_reps
        };
        for rep in 0..reps_here {
            check_interrupted()?;
            if let Some((t, e)) = ml.load_full(svcs)? {
                sample("full", rep, t, e);
            }
        }
        for rep in 0..2 {
            check_interrupted()?;
            let r = if rep % 2 == 0 {
                ml.apply_change(&svcs_after, &before, &after)?
            } else {
                ml.apply_change(svcs, &after, &before)?
            };
            if let Some((t, e)) = r {
                sample("one_change", rep, t, e);
            }
        }
        // One changed endpoint through the agent's own apply: the delta path (9 samples, the
        // target's median and spread, with the source's translation of each change before
        // it), and the full diff every change paid before (3).
        for (kind, reps, full) in [("agent_change", 9, false), ("agent_full_diff", 3, true)] {
            let samples = ml.agent_changes(svcs, (&before, &after), reps, full)?;
            for (rep, (t, e, source)) in samples.into_iter().enumerate() {
                sample(kind, rep, t, Some(e));
                if !full {
                    sample("source_change", rep, source, None);
                }
            }
        }
        for rep in 0..2 {
            let r = if rep % 2 == 0 {
                ml.upsert_one(&after)?
            } else {
                ml.upsert_one(&before)?
            };
            if let Some((t, e)) = r {
                sample("upsert", rep, t, e);
            }
        }
    }
    Ok(())
}
