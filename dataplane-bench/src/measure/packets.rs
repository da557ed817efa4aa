//! (a)/(b): packets through a mode's node (live frames from the injector) and the dataplane's
//! XDP program alone (classic test run), with the checks that make a sample valid.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use dataplane_common::{Hook, Reason};
use dataplane_lab::netns::in_netns;
use dataplane_lab::packet::{self, Network, L4};
use serde::Serialize;

use crate::injector::{Ingress, Injector, Templates};
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
    /// The sample of `run` in `row` with its timing; nothing sent or delivered yet.
    fn timed(row: String, run: Run, timing: &Timing) -> PacketSample {
        PacketSample {
            row,
            services: run.services,
            traffic: run.traffic,
            rep: run.rep,
            frames: run.frames,
            ns_per_packet: timing.kernel_ns / run.frames as f64,
            wall_ns_per_packet: timing.wall_ns / run.frames as f64,
            sent: 0,
            delivered: 0,
            per_backend: Vec::new(),
            untranslated: 0,
            csum_errors: 0,
            snat_exhausted: 0,
            problems: Vec::new(),
        }
    }

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

impl Timing {
    /// Adds a timed run of `frames` frames.
    fn add(&mut self, res: &crate::injector::RunResult, frames: u32) {
        self.kernel_ns += res.ns_per_frame * frames as f64;
        self.wall_ns += res.wall_ns as f64;
    }
}

/// What one packet sample measures: `frames` frames of `traffic` at N = `services`, as
/// repetition `rep`, on CPU `cpu`.
#[derive(Clone, Copy)]
pub struct Run {
    pub services: usize,
    pub traffic: Traffic,
    pub frames: u32,
    pub rep: usize,
    pub cpu: usize,
}

impl Run {
    /// (traffic, frames, cpu): what the runs' bodies use (the rest goes to the sample).
    fn parts(self) -> (Traffic, u32, usize) {
        (self.traffic, self.frames, self.cpu)
    }
}

/// What the timed runs of one sample did: frames sent (priming included), their timing, the
/// injector's own problems, and the dataplane's counters before.
pub(super) struct Injected {
    pub(super) sent: u64,
    timing: Timing,
    pub(super) problems: Vec<String>,
    stats0: Option<dataplane::stats::Stats>,
}

impl Injected {
    /// The sample of this injection (deliveries and checks to be filled in).
    pub(super) fn sample(self, row: String, run: Run) -> PacketSample {
        PacketSample {
            sent: self.sent,
            problems: self.problems,
            ..PacketSample::timed(row, run, &self.timing)
        }
    }
}

/// Injects `run`'s frames at node1 (live frames): connection tracking emptied first; new
/// flows in chunks that fill the table, established ones primed by one untimed run.
pub(super) fn inject(
    ml: &ModeLab,
    pass: &Arc<Injector>,
    templates: &Templates,
    run: Run,
) -> Result<Injected> {
    let (traffic, repeat, cpu) = run.parts();
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
    let mut sent = 0u64;
    let mut timing = Timing::default();
    if traffic.is_new() {
        // No flush between chunks: the table fills up as on a busy node (LRU eviction,
        // masquerade ports taken) and new flows are measured at that steady state.
        for (start, count) in chunks(traffic, repeat) {
            templates.walk(off + start, count)?;
            let res = live(ml, &inj, ifindex, first.clone(), count, cpu)?;
            timing.add(&res, count);
            let injected = templates.counter()?;
            if injected != count as u64 {
                problems.push(format!("injector ran {injected} times for {count} frames"));
            }
            sent += count as u64;
        }
    } else {
        templates.walk(off, EST_FLOWS)?;
        live(ml, &inj, ifindex, first.clone(), EST_FLOWS, cpu)?;
        templates.walk(off, EST_FLOWS)?;
        let res = live(ml, &inj, ifindex, first, repeat, cpu)?;
        timing.add(&res, repeat);
        let injected = templates.counter()?;
        if injected != repeat as u64 {
            problems.push(format!("injector ran {injected} times for {repeat} frames"));
        }
        sent = EST_FLOWS as u64 + repeat as u64;
    }
    Ok(Injected {
        sent,
        timing,
        problems,
        stats0,
    })
}

/// The dataplane's own counters for the injection (nothing for the other modes): every frame
/// balanced, translated, refused or deferred, and NodePort at XDP on the fast path. Returns
/// the refusals for want of masquerade ports.
pub(super) fn check_hooks(ml: &ModeLab, run: Run, inj: &mut Injected) -> Result<u64> {
    let (traffic, repeat, _) = run.parts();
    let (Some(s0), Some(hook)) = (inj.stats0.as_ref(), hook_of(ml)) else {
        return Ok(0);
    };
    let s1 = ml.stats()?.expect("stats");
    let d = |r: Reason| s1.packets(hook, r) - s0.packets(hook, r);
    let (want_new, want_fwd) = if traffic.is_new() {
        (repeat as u64, 0)
    } else {
        (EST_FLOWS as u64, repeat as u64)
    };
    let got = HookCounts::read(&d);
    if let Some(p) = got.mismatch(hook, want_new, want_fwd) {
        inj.problems.push(p);
    }
    // NodePort to a remote backend at XDP: the fast path, or the sample measures something
    // else.
    if ml.mode == Mode::EbpfXdp && traffic.is_nodeport() && got.xdp_tx < got.new + got.forwarded {
        inj.problems.push(format!(
            "xdp_uplink sent {} of {} translated packets with XDP_TX",
            got.xdp_tx,
            got.new + got.forwarded
        ));
    }
    Ok(got.exhausted)
}

/// `frames` frames of `traffic` through `ml`'s node1 (live frames), with delivery checks.
pub fn live_run(
    ml: &ModeLab,
    pass: &Arc<Injector>,
    templates: &Templates,
    run: Run,
) -> Result<PacketSample> {
    let c0 = ml.backend_counts()?;
    let mut inj = inject(ml, pass, templates, run)?;
    let sent = inj.sent;
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
    let snat_exhausted = check_hooks(ml, run, &mut inj)?;
    check_delivery(&mut inj.problems, sent, &deltas, &total);
    Ok(PacketSample {
        delivered: total.no_ports,
        per_backend: deltas.iter().map(|d| d.no_ports).collect(),
        untranslated: total.untranslated(),
        csum_errors: total.csum_errors,
        snat_exhausted,
        ..inj.sample(row_key(ml.mode, false), run)
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

/// The dataplane's xdp_uplink alone (classic BPF_PROG_TEST_RUN, `frames` runs on one buffer
/// restored by the injector): the program's own cost. Checks verdict, counters and the last
/// output frame (DNAT only: masquerading is the egress hook's job).
pub fn direct_run(ml: &ModeLab, templates: &Templates, run: Run) -> Result<PacketSample> {
    let (traffic, repeat, cpu) = run.parts();
    let inj = ml.tail.clone().expect("xdp injector");
    let off = scenario::set_offset(traffic, false);
    let first = templates.get(off);
    let mut problems = Vec::new();
    ml.flush_conntrack()?;
    let s0 = ml.stats()?.expect("stats");
    let inject = |first: Vec<u8>, repeat: u32| {
        let inj = inj.clone();
        in_netns(&ml.node1.ns, move || -> Result<_> {
            netutil::pin_to_cpu(cpu)?;
            inj.run_direct(&first, repeat)
        })
    };
    let mut timing = Timing::default();
    let mut last = (Vec::new(), Vec::new(), XDP_PASS);
    let mut check_out = |res: &crate::injector::RunResult,
                         out: Vec<u8>,
                         last_in: Vec<u8>,
                         problems: &mut Vec<String>| {
        // XDP_TX: the fast path finished the packet (masquerade included).
        if res.retval != XDP_PASS && res.retval != XDP_TX {
            problems.push(format!(
                "xdp_uplink returned {} (expected XDP_PASS or XDP_TX)",
                res.retval
            ));
        }
        last = (last_in, out, res.retval);
    };
    let sent = if traffic.is_new() {
        // No flush between chunks: the table fills up as on a busy node (LRU eviction,
        // masquerade ports taken) and new flows are measured at that steady state.
        for (start, count) in chunks(traffic, repeat) {
            templates.walk(off + start, count)?;
            let (res, out) = inject(first.clone(), count)??;
            timing.add(&res, count);
            check_out(
                &res,
                out,
                templates.get(off + start + count - 1),
                &mut problems,
            );
        }
        repeat as u64
    } else {
        templates.walk(off, EST_FLOWS)?;
        inject(first.clone(), EST_FLOWS)??;
        templates.walk(off, EST_FLOWS)?;
        let (res, out) = inject(first, repeat)??;
        timing.add(&res, repeat);
        check_out(
            &res,
            out,
            templates.get(off + (repeat - 1) % EST_FLOWS),
            &mut problems,
        );
        EST_FLOWS as u64 + repeat as u64
    };
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!(
            "direct {traffic:?}: in {:?}\n out {:?}",
            packet::parse(&last.0),
            packet::parse(&last.1)
        );
    }
    // The classic test run reuses one buffer for every repetition: once a frame of the run
    // was deferred (its metadata word reserved), every later output starts with that word
    // too. A deferred last frame comes back whole: nothing to check but that a deferral was
    // counted (below).
    let (marked, out) = strip_defer_marks(&last.1);
    let deferred_out = marked && out == last.0.as_slice();
    if !deferred_out {
        let masq = (last.2 == XDP_TX).then_some(ml.node1.underlay_ip);
        if let Err(e) = check_translated(&last.0, out, masq) {
            problems.push(format!("output frame: {e:#}"));
        }
    }
    let s1 = ml.stats()?.expect("stats");
    let d = |r: Reason| s1.packets(Hook::XdpUplink, r) - s0.packets(Hook::XdpUplink, r);
    let got = HookCounts::read(&d);
    let snat_exhausted = got.exhausted;
    let (want_new, want_fwd) = if traffic.is_new() {
        (repeat as u64, 0)
    } else {
        (EST_FLOWS as u64, repeat as u64)
    };
    if let Some(p) = got.mismatch(Hook::XdpUplink, want_new, want_fwd) {
        problems.push(p);
    }
    if marked && got.deferred == 0 {
        problems.push("an output frame came back marked deferred, but none was counted".into());
    }
    if snat_exhausted * 200 > sent {
        problems.push(format!(
            "{snat_exhausted} new connections refused: masquerade ports exhausted"
        ));
    }
    // Nothing reaches a backend here: the output frame is checked instead.
    Ok(PacketSample {
        sent,
        delivered: sent - snat_exhausted,
        snat_exhausted,
        problems,
        ..PacketSample::timed(row_key(Mode::EbpfXdp, true), run, &timing)
    })
}

/// What a dataplane hook counted for a sample's frames.
struct HookCounts {
    new: u64,
    forwarded: u64,
    /// Refused: no masquerade port free.
    exhausted: u64,
    /// Left to tc ingress by XDP: a complete checksum that equals its pseudo-header seed looks
    /// like a partial one (1 frame in 65,536 by chance; `XdpPacket::partial_csum`).
    deferred: u64,
    /// Finished by the XDP fast path and sent with XDP_TX.
    xdp_tx: u64,
}

impl HookCounts {
    fn read(d: &impl Fn(Reason) -> u64) -> Self {
        HookCounts {
            new: d(Reason::LbNewConnection),
            forwarded: d(Reason::NatForward),
            exhausted: d(Reason::DropSnatPortsExhausted),
            deferred: d(Reason::PassPartialChecksum),
            xdp_tx: d(Reason::XdpForward),
        }
    }

    /// A problem when the counts do not add up to what was sent: every frame balanced,
    /// refused, translated or deferred, and no more connections than were sent. Established
    /// flows repeat one frame each, so a flow whose frame collides is deferred on every
    /// packet: more than 1% deferred is not chance.
    fn mismatch(&self, hook: Hook, want_new: u64, want_fwd: u64) -> Option<String> {
        let sent = want_new + want_fwd;
        let counted = self.new + self.exhausted + self.forwarded + self.deferred;
        let new = self.new + self.exhausted;
        let bad = counted != sent
            || new > want_new
            || new + self.deferred < want_new
            || self.deferred * 100 > sent;
        bad.then(|| {
            format!(
                "{} counted {} new connections ({} refused: masquerade ports exhausted), {} translated packets and {} deferred to tc, expected {want_new} and {want_fwd}",
                hook.name(),
                self.new,
                self.exhausted,
                self.forwarded,
                self.deferred
            )
        })
    }
}

/// The frame behind the metadata words of deferrals (a test run's output starts at
/// `data_meta`), and whether there was one.
fn strip_defer_marks(mut out: &[u8]) -> (bool, &[u8]) {
    let mark = dataplane_common::programs::XDP_DEFER_MAGIC.to_ne_bytes();
    let mut marked = false;
    while let Some(rest) = out.strip_prefix(&mark[..]) {
        (marked, out) = (true, rest);
    }
    (marked, out)
}

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// The output frame of a translated `input`: addressed to a real backend's target port,
/// valid checksums, client address kept (the ingress translation alone) or masqueraded to
/// `masq` (the fast path's XDP_TX).
fn check_translated(input: &[u8], output: &[u8], masq: Option<Ipv4Addr>) -> Result<()> {
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
    if let Some(m) = masq {
        if o.src != m {
            bail!("forwarded from {}, not masqueraded to {m}", o.src);
        }
        return Ok(());
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
