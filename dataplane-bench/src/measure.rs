//! One measurement of each kind: packets through a mode's node (live frames), the dataplane's
//! XDP program alone (classic test run), TCP connections from a pod to a ClusterIP.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dataplane_common::{Hook, Reason};
use dataplane_lab::netns::in_netns;
use dataplane_lab::packet::{self, Network, L4};
use serde::Serialize;

use crate::injector::{Ctl, Ingress, Injector, Templates};
use crate::modes::{Mode, ModeLab};
use crate::netutil::{self, UdpStats};
use crate::scenario::{self, Traffic, EST_FLOWS};

/// Which implementation a sample measured: a mode, or the dataplane's XDP program alone.
pub fn row_key(mode: Mode, program_only: bool) -> String {
    if program_only {
        "ebpf-xdp-prog".to_string()
    } else {
        mode.key().to_string()
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PacketSample {
    pub row: String,
    pub services: usize,
    pub traffic: Traffic,
    pub rep: usize,
    /// Frames in the timed run.
    pub frames: u32,
    /// Kernel-measured cost per frame (BPF_PROG_TEST_RUN duration), ns.
    pub ns_per_packet: f64,
    /// Wall time of the test-run syscall per frame, ns (includes syscall and setup).
    pub wall_ns_per_packet: f64,
    /// Frames sent in this sample including the priming of established flows.
    pub sent: u64,
    /// Translated packets that arrived at the backends (Udp NoPorts, checksum verified).
    pub delivered: u64,
    pub per_backend: Vec<u64>,
    /// Packets that reached a backend still addressed to the service port.
    pub untranslated: u64,
    pub csum_errors: u64,
    /// New connections the dataplane refused because no masquerade port was free.
    pub snat_exhausted: u64,
    /// Problems found by the checks (empty = the sample is valid).
    pub problems: Vec<String>,
}

impl PacketSample {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn sum(v: &[UdpStats]) -> UdpStats {
    v.iter().fold(UdpStats::default(), |a, b| UdpStats {
        no_ports: a.no_ports + b.no_ports,
        csum_errors: a.csum_errors + b.csum_errors,
        in_datagrams: a.in_datagrams + b.in_datagrams,
        rcvbuf_errors: a.rcvbuf_errors + b.rcvbuf_errors,
    })
}

/// Runs the injector in the node's namespace, pinned to `cpu`.
fn live(
    ml: &ModeLab,
    inj: &Arc<Injector>,
    ifindex: u32,
    first: Vec<u8>,
    repeat: u32,
    cpu: usize,
) -> Result<crate::injector::RunResult> {
    let inj = inj.clone();
    in_netns(&ml.node1.ns, move || -> Result<_> {
        netutil::pin_to_cpu(cpu)?;
        inj.run_live(Ingress { ifindex }, &first, repeat, 64)
    })?
}

fn hook_of(ml: &ModeLab) -> Option<Hook> {
    match ml.mode {
        Mode::EbpfTc => Some(Hook::TcPodIngress),
        Mode::EbpfXdp => Some(Hook::XdpUplink),
        _ => None,
    }
}

/// New NodePort flows are sent in chunks of this many, with connection tracking emptied in
/// between: the dataplane's masquerade port range is finite (its first default, 61000-65535,
/// held 4,536 flows per backend address:port and refused some well before that), and the
/// per-packet cost is measured on a table of a realistic size, not on one filling up.
pub const NODEPORT_CHUNK: u32 = 10_000;

/// Splits `repeat` new-flow frames into runs that each start from empty connection tracking.
fn chunks(traffic: Traffic, repeat: u32) -> Vec<(u32, u32)> {
    let size = if traffic == Traffic::NodePortNew {
        NODEPORT_CHUNK
    } else {
        repeat.max(1)
    };
    let mut v = Vec::new();
    let mut done = 0;
    while done < repeat {
        let n = size.min(repeat - done);
        v.push((done, n));
        done += n;
    }
    v
}

/// Kernel time and wall time of a sample's timed runs, summed.
#[derive(Default)]
struct Timing {
    kernel_ns: f64,
    wall_ns: f64,
}

/// `repeat` frames of `traffic` through `ml`'s node1 (live frames), with delivery checks.
#[allow(clippy::too_many_arguments)]
pub fn live_run(
    ml: &ModeLab,
    pass: &Arc<Injector>,
    templates: &Templates,
    n: usize,
    traffic: Traffic,
    repeat: u32,
    rep: usize,
    cpu: usize,
) -> Result<PacketSample> {
    let floor = ml.mode == Mode::NoNat;
    let inj = match ml.mode {
        Mode::EbpfXdp => ml.tail.clone().expect("xdp injector"),
        _ => pass.clone(),
    };
    let off = scenario::set_offset(traffic, floor);
    let first = templates.get(off);
    let ifindex = if traffic.is_nodeport() {
        ml.ifindex_uplink
    } else {
        ml.ifindex_pod
    };
    let mut problems = Vec::new();
    ml.flush_conntrack()?;
    let stats0 = ml.stats()?;
    let c0 = ml.backend_counts()?;
    let mut sent = 0u64;
    let mut timing = Timing::default();
    if traffic.is_new() {
        // No flush between chunks: the table fills up as on a busy node (LRU eviction,
        // masquerade ports taken) and new flows are measured at that steady state.
        for (start, count) in chunks(traffic, repeat) {
            templates.set_ctl(Ctl {
                counter: 0,
                modulus: count as u64,
                offset: (off + start) as u64,
            })?;
            let res = live(ml, &inj, ifindex, first.clone(), count, cpu)?;
            timing.kernel_ns += res.ns_per_frame * count as f64;
            timing.wall_ns += res.wall_ns as f64;
            let injected = templates.counter()?;
            if injected != count as u64 {
                problems.push(format!("injector ran {injected} times for {count} frames"));
            }
            sent += count as u64;
        }
    } else {
        templates.set_ctl(Ctl {
            counter: 0,
            modulus: EST_FLOWS as u64,
            offset: off as u64,
        })?;
        live(ml, &inj, ifindex, first.clone(), EST_FLOWS, cpu)?;
        templates.set_ctl(Ctl {
            counter: 0,
            modulus: EST_FLOWS as u64,
            offset: off as u64,
        })?;
        let res = live(ml, &inj, ifindex, first, repeat, cpu)?;
        timing.kernel_ns += res.ns_per_frame * repeat as f64;
        timing.wall_ns += res.wall_ns as f64;
        let injected = templates.counter()?;
        if injected != repeat as u64 {
            problems.push(format!("injector ran {injected} times for {repeat} frames"));
        }
        sent = EST_FLOWS as u64 + repeat as u64;
    }
    // Backends may still be processing the last batch (ksoftirqd).
    let deadline = Instant::now() + Duration::from_millis(500);
    let deltas: Vec<UdpStats> = loop {
        let c1 = ml.backend_counts()?;
        let d: Vec<UdpStats> = c1.iter().zip(&c0).map(|(a, b)| *a - *b).collect();
        if sum(&d).no_ports >= sent || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let total = sum(&deltas);
    let mut snat_exhausted = 0;
    if let (Some(s0), Some(hook)) = (stats0, hook_of(ml)) {
        let s1 = ml.stats()?.expect("stats");
        let d = |r: Reason| s1.packets(hook, r) - s0.packets(hook, r);
        snat_exhausted = d(Reason::DropSnatPortsExhausted);
        let (want_new, want_fwd) = if traffic.is_new() {
            (repeat as u64, 0)
        } else {
            (EST_FLOWS as u64, repeat as u64)
        };
        let (got_new, got_fwd) = (d(Reason::LbNewConnection), d(Reason::NatForward));
        if got_new + snat_exhausted != want_new || got_fwd != want_fwd {
            problems.push(format!(
                "{} counted {got_new} new connections ({snat_exhausted} refused: masquerade ports exhausted) and {got_fwd} translated packets, expected {want_new} and {want_fwd}",
                hook.name()
            ));
        }
    }
    check_delivery(&mut problems, sent, &deltas, &total);
    Ok(PacketSample {
        row: row_key(ml.mode, false),
        services: n,
        traffic,
        rep,
        frames: repeat,
        ns_per_packet: timing.kernel_ns / repeat as f64,
        wall_ns_per_packet: timing.wall_ns / repeat as f64,
        sent,
        delivered: total.no_ports,
        per_backend: deltas.iter().map(|d| d.no_ports).collect(),
        untranslated: total.untranslated(),
        csum_errors: total.csum_errors,
        snat_exhausted,
        problems,
    })
}

/// A sample is valid when at least 99.5% of what was sent arrived translated (the rest may be
/// the dataplane's masquerade-port refusals, counted separately), nothing arrived
/// untranslated or corrupted, and every backend got a fair share.
pub(crate) fn check_delivery(
    problems: &mut Vec<String>,
    sent: u64,
    deltas: &[UdpStats],
    total: &UdpStats,
) {
    if total.no_ports * 1000 < sent * 995 {
        problems.push(format!(
            "only {} of {sent} packets reached a backend translated",
            total.no_ports
        ));
    }
    if total.untranslated() > 0 {
        problems.push(format!(
            "{} packets reached a backend on the untranslated service port",
            total.untranslated()
        ));
    }
    if total.csum_errors > 0 {
        problems.push(format!(
            "{} packets arrived with bad checksums",
            total.csum_errors
        ));
    }
    if sent >= 2000 {
        let fair = sent / deltas.len() as u64;
        if let Some((i, d)) = deltas
            .iter()
            .enumerate()
            .find(|(_, d)| d.no_ports * 3 < fair)
        {
            problems.push(format!(
                "backend {i} got {} of {sent} packets (uneven spread)",
                d.no_ports
            ));
        }
    }
}

/// The dataplane's xdp_uplink alone (classic BPF_PROG_TEST_RUN, `repeat` runs on one buffer
/// restored by the injector): the program's own cost. Checks verdict, counters and the last
/// output frame (DNAT only: masquerading is the egress hook's job).
pub fn direct_run(
    ml: &ModeLab,
    templates: &Templates,
    n: usize,
    traffic: Traffic,
    repeat: u32,
    rep: usize,
    cpu: usize,
) -> Result<PacketSample> {
    let inj = ml.tail.clone().expect("xdp injector");
    let off = scenario::set_offset(traffic, false);
    let first = templates.get(off);
    let mut problems = Vec::new();
    ml.flush_conntrack()?;
    let s0 = ml.stats()?.expect("stats");
    let run = |first: Vec<u8>, repeat: u32| {
        let inj = inj.clone();
        in_netns(&ml.node1.ns, move || -> Result<_> {
            netutil::pin_to_cpu(cpu)?;
            inj.run_direct(&first, repeat)
        })
    };
    let mut timing = Timing::default();
    let mut last = (Vec::new(), Vec::new());
    let mut check_out = |res: &crate::injector::RunResult,
                         out: Vec<u8>,
                         last_in: Vec<u8>,
                         problems: &mut Vec<String>| {
        if res.retval != 2 {
            problems.push(format!(
                "xdp_uplink returned {} (expected XDP_PASS)",
                res.retval
            ));
        }
        last = (last_in, out);
    };
    let sent;
    if traffic.is_new() {
        // No flush between chunks: the table fills up as on a busy node (LRU eviction,
        // masquerade ports taken) and new flows are measured at that steady state.
        for (start, count) in chunks(traffic, repeat) {
            templates.set_ctl(Ctl {
                counter: 0,
                modulus: count as u64,
                offset: (off + start) as u64,
            })?;
            let (res, out) = run(first.clone(), count)??;
            timing.kernel_ns += res.ns_per_frame * count as f64;
            timing.wall_ns += res.wall_ns as f64;
            check_out(
                &res,
                out,
                templates.get(off + start + count - 1),
                &mut problems,
            );
        }
        sent = repeat as u64;
    } else {
        templates.set_ctl(Ctl {
            counter: 0,
            modulus: EST_FLOWS as u64,
            offset: off as u64,
        })?;
        run(first.clone(), EST_FLOWS)??;
        templates.set_ctl(Ctl {
            counter: 0,
            modulus: EST_FLOWS as u64,
            offset: off as u64,
        })?;
        let (res, out) = run(first, repeat)??;
        timing.kernel_ns += res.ns_per_frame * repeat as f64;
        timing.wall_ns += res.wall_ns as f64;
        check_out(
            &res,
            out,
            templates.get(off + (repeat - 1) % EST_FLOWS),
            &mut problems,
        );
        sent = EST_FLOWS as u64 + repeat as u64;
    }
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!(
            "direct {traffic:?}: in {:?}\n out {:?}",
            packet::parse(&last.0),
            packet::parse(&last.1)
        );
    }
    if let Err(e) = check_translated(&last.0, &last.1) {
        problems.push(format!("output frame: {e:#}"));
    }
    let s1 = ml.stats()?.expect("stats");
    let d = |r: Reason| s1.packets(Hook::XdpUplink, r) - s0.packets(Hook::XdpUplink, r);
    let snat_exhausted = d(Reason::DropSnatPortsExhausted);
    let (want_new, want_fwd) = if traffic.is_new() {
        (repeat as u64, 0)
    } else {
        (EST_FLOWS as u64, repeat as u64)
    };
    if d(Reason::LbNewConnection) + snat_exhausted != want_new || d(Reason::NatForward) != want_fwd
    {
        problems.push(format!(
            "xdp_uplink counted {} new connections ({snat_exhausted} refused: masquerade ports exhausted) and {} translated packets, expected {want_new} and {want_fwd}",
            d(Reason::LbNewConnection),
            d(Reason::NatForward)
        ));
    }
    if snat_exhausted * 200 > sent {
        problems.push(format!(
            "{snat_exhausted} new connections refused: masquerade ports exhausted"
        ));
    }
    Ok(PacketSample {
        row: row_key(Mode::EbpfXdp, true),
        services: n,
        traffic,
        rep,
        frames: repeat,
        ns_per_packet: timing.kernel_ns / repeat as f64,
        wall_ns_per_packet: timing.wall_ns / repeat as f64,
        sent,
        delivered: sent - snat_exhausted,
        per_backend: Vec::new(),
        untranslated: 0,
        csum_errors: 0,
        snat_exhausted,
        problems,
    })
}

/// The output frame of a translated `input`: addressed to a real backend's target port,
/// valid checksums, client address kept (ClusterIP from a pod) or masqueraded (NodePort).
fn check_translated(input: &[u8], output: &[u8]) -> Result<()> {
    let pin = packet::parse(input).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let pout = packet::parse(output).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (Network::Ipv4(i), Network::Ipv4(o)) = (&pin.network, &pout.network) else {
        bail!("not IPv4")
    };
    let (L4::Udp(iu), L4::Udp(ou)) = (&i.l4, &o.l4) else {
        bail!("not UDP")
    };
    if !o.checksum_ok || !ou.checksum_ok {
        bail!(
            "bad checksum (ip ok {}, udp ok {})",
            o.checksum_ok,
            ou.checksum_ok
        );
    }
    if !scenario::backends().contains(&o.dst) || ou.dport != scenario::TARGET_PORT {
        bail!(
            "sent to {}:{}, not to a backend:{}",
            o.dst,
            ou.dport,
            scenario::TARGET_PORT
        );
    }
    // Ingress only translates the destination; masquerading (NodePort) happens at egress.
    if o.src != i.src || ou.sport != iu.sport {
        bail!(
            "client address changed: {}:{} -> {}:{}",
            i.src,
            iu.sport,
            o.src,
            ou.sport
        );
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct TcpSample {
    pub row: String,
    pub services: usize,
    pub rep: usize,
    pub connections: u64,
    pub errors: u64,
    pub seconds: f64,
    pub connections_per_sec: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub per_backend: Vec<u64>,
    pub problems: Vec<String>,
}

/// (c): sequential connect + one request/response + abortive close from node1's pod0 to the
/// TCP ClusterIP (to the backends directly for the no-NAT floor), for `duration`.
pub fn tcp_run(ml: &ModeLab, n: usize, rep: usize, duration: Duration) -> Result<TcpSample> {
    let floor = ml.mode == Mode::NoNat;
    let row = if ml.mode == Mode::EbpfXdp {
        "ebpf (xdp+tc, as deployed)".to_string()
    } else {
        ml.mode.key().to_string()
    };
    let ns = ml.node1.pods[0].ns.clone();
    let r = in_netns(&ns, move || -> Result<(Vec<f64>, u64, Vec<u64>, f64)> {
        let backends = scenario::backends();
        let mut lat = Vec::new();
        let mut errors = 0u64;
        let mut per = vec![0u64; backends.len()];
        // One warm-up connection (not counted): first-packet effects of a fresh lab.
        let warm = if floor {
            SocketAddrV4::new(backends[0], scenario::TARGET_PORT)
        } else {
            SocketAddrV4::new(scenario::TCP_VIP, scenario::SERVICE_PORT)
        };
        let _ = one_connection(warm);
        let start = Instant::now();
        let mut i = 0usize;
        while start.elapsed() < duration {
            let dst = if floor {
                SocketAddrV4::new(backends[i % backends.len()], scenario::TARGET_PORT)
            } else {
                SocketAddrV4::new(scenario::TCP_VIP, scenario::SERVICE_PORT)
            };
            i += 1;
            let t0 = Instant::now();
            match one_connection(dst) {
                Ok(b) => {
                    lat.push(t0.elapsed().as_secs_f64() * 1e6);
                    if let Some(c) = per.get_mut(b) {
                        *c += 1;
                    }
                }
                Err(_) => errors += 1,
            }
        }
        Ok((lat, errors, per, start.elapsed().as_secs_f64()))
    })??;
    let (mut lat, errors, per, secs) = r;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        if lat.is_empty() {
            None
        } else {
            Some(lat[((lat.len() - 1) as f64 * p).round() as usize])
        }
    };
    let mut problems = Vec::new();
    if errors > 0 {
        problems.push(format!("{errors} connections failed"));
    }
    if lat.is_empty() {
        problems.push("no connection succeeded".into());
    } else if lat.len() >= 100 && per.iter().any(|&c| c == 0) {
        problems.push(format!("some backends got no connection: {per:?}"));
    }
    Ok(TcpSample {
        row,
        services: n,
        rep,
        connections: lat.len() as u64,
        errors,
        seconds: secs,
        connections_per_sec: lat.len() as f64 / secs,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        per_backend: per,
        problems,
    })
}

/// One connection; returns the index of the backend that answered.
fn one_connection(dst: SocketAddrV4) -> Result<usize> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(1))
        .context("connect")?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"hello\n")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    abort(&s);
    let idx = line
        .trim()
        .strip_prefix("backend-")
        .and_then(|x| x.parse().ok())
        .context("bad reply")?;
    Ok(idx)
}

/// SO_LINGER 0: close with RST, no TIME_WAIT (the client would run out of ports otherwise).
fn abort(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and option struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

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
    let _enabled = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let before = run_stats(ml)?;
    let s = live_run(ml, pass, templates, n, traffic, frames, 0, cpu)?;
    let after = run_stats(ml)?;
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
    })
}

/// The injector alone (classic test run of the pass injector): what every live run adds.
pub fn injector_cost(pass: &Arc<Injector>, templates: &Templates, cpu: usize) -> Result<f64> {
    let off = scenario::set_offset(Traffic::ClusterNew, false);
    templates.set_ctl(Ctl {
        counter: 0,
        modulus: scenario::NEW_FLOWS as u64,
        offset: off as u64,
    })?;
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
    templates.set_ctl(Ctl {
        counter: 0,
        modulus: scenario::NEW_FLOWS as u64,
        offset: off as u64,
    })?;
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
