//! Packet fixtures run through the real programs with BPF_PROG_TEST_RUN, in the spirit of
//! Katran's test fixtures: input frame + preset maps -> expected verdict, output frame and the
//! exact counter that moved.
//!
//! One object is loaded per test binary and shared behind a mutex (the counters are global, so
//! fixtures run one at a time). Its maps are unpinned right after loading: they live as long as
//! the process and nothing is left on bpffs, even if the test is killed.

pub mod overlay;
pub mod services;

use std::{
    fs,
    sync::{LazyLock, Mutex, MutexGuard},
};

use aya::{
    maps::PerCpuArray,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use dataplane::{loader, stats, stats::Stats};
use dataplane_common::{map_names, Hook, Reason, StatsValue};

/// What a program did with the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// XDP_TX: sent back out of the receiving interface.
    Tx,
    /// TC_ACT_REDIRECT / XDP_REDIRECT.
    Redirect,
}

/// What the output frame must be.
pub enum Output {
    /// Byte-for-byte the input.
    Unchanged,
    /// Byte-for-byte this frame.
    Exactly(Vec<u8>),
    /// Not checked (e.g. dropped frames).
    Ignored,
}

pub struct Fixture {
    pub name: &'static str,
    pub hook: Hook,
    pub input: Vec<u8>,
    pub verdict: Verdict,
    pub reason: Reason,
    pub output: Output,
}

/// The node address masqueraded connections leave with, in fixtures.
pub const MASQ_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 11);

pub struct Harness {
    pub datapath: loader::Datapath,
}

static HARNESS: LazyLock<Mutex<Harness>> = LazyLock::new(|| {
    super::require_root();
    let pin_dir =
        std::path::PathBuf::from(format!("/sys/fs/bpf/dpl-{}-fixtures", std::process::id()));
    let datapath = loader::load(&pin_dir).unwrap_or_else(|e| panic!("loading the programs: {e:#}"));
    let cfg = dataplane_common::ct::Config::with_masq_addr(u32::from(MASQ_ADDR).to_be());
    dataplane::maps::write_config(&datapath.ebpf, &cfg).expect("writing CONFIG_V2");
    // The process holds the maps; the pins would only be leftovers.
    fs::remove_dir_all(&pin_dir).expect("unpinning fixture maps");
    Mutex::new(Harness { datapath })
});

/// The shared harness; a fixture that panicked does not poison the others.
pub fn harness() -> MutexGuard<'static, Harness> {
    HARNESS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The program of a packet hook (socket hooks see calls, not frames).
pub fn program_name(hook: Hook) -> &'static str {
    assert!(
        dataplane_common::programs::Target::CgroupRoot != hook.target(),
        "{} sees socket calls, not packets: no packet fixtures",
        hook.name()
    );
    hook.program()
}

/// The result of one test run.
pub struct Outcome {
    pub verdict: Verdict,
    pub output: Vec<u8>,
    pub stats_delta: Vec<(Hook, Reason, u64, u64)>,
}

impl Harness {
    pub fn stats(&self) -> Stats {
        let map = self
            .datapath
            .ebpf
            .map(map_names::STATS)
            .expect("STATS_V2 map");
        let array: PerCpuArray<_, StatsValue> = PerCpuArray::try_from(map).expect("STATS_V2 type");
        stats::read(&array).expect("reading STATS_V2")
    }

    /// Runs `input` through the program of `hook` once.
    pub fn run(&mut self, hook: Hook, input: &[u8]) -> Outcome {
        self.run_ctx(hook, input, None)
    }

    /// Like [`Harness::run`], with a context (`struct __sk_buff` for tc: its ifindex decides
    /// the device the packet is on, which FIB lookups start from).
    pub fn run_ctx(&mut self, hook: Hook, input: &[u8], ctx: Option<&[u8]>) -> Outcome {
        let before = self.stats();
        let mut out = vec![0u8; input.len() + 512];
        let name = program_name(hook);
        let prog = self
            .datapath
            .ebpf
            .program_mut(name)
            .expect("program in object");
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: ctx,
            ..Default::default()
        };
        let (ret, size) = if hook == Hook::XdpUplink {
            let p: &mut Xdp = prog.try_into().unwrap();
            let r = p.test_run(opts).unwrap_or_else(|e| {
                panic!(
                    "test_run {name} with {} bytes: {:?}",
                    input.len(),
                    std::error::Error::source(&e)
                )
            });
            (r.return_value, r.data_size_out)
        } else {
            let p: &mut SchedClassifier = prog.try_into().unwrap();
            let r = p.test_run(opts).unwrap_or_else(|e| {
                panic!(
                    "test_run {name} with {} bytes: {:?}",
                    input.len(),
                    std::error::Error::source(&e)
                )
            });
            (r.return_value, r.data_size_out)
        };
        out.truncate(size as usize);
        let verdict = decode_verdict(hook, ret);
        Outcome {
            verdict,
            output: out,
            stats_delta: delta(&before, &self.stats()),
        }
    }

    /// Makes the service maps hold exactly `services` (through the typed API, like the agent).
    pub fn sync_services(&mut self, services: &[dataplane::model::ServicePort]) {
        let local = dataplane::services::LocalContext {
            node_name: "node1".into(),
            ..Default::default()
        };
        let mut table = dataplane::services::ServiceTable::from_ebpf(&self.datapath.ebpf, local)
            .expect("opening the service maps");
        table.sync(services).expect("syncing services");
        dataplane::services::SourceRanges::open(&self.datapath.ebpf)
            .and_then(|mut ranges| ranges.sync(services, &table))
            .expect("syncing source ranges");
    }

    /// Runs a fixture and asserts verdict, output and that exactly its counter moved by one.
    pub fn check(&mut self, f: &Fixture) {
        let o = self.run(f.hook, &f.input);
        assert_eq!(
            o.verdict,
            f.verdict,
            "{} on {}: verdict",
            f.name,
            f.hook.name()
        );
        let want = vec![(f.hook, f.reason, 1, f.input.len() as u64)];
        assert_eq!(
            o.stats_delta,
            want,
            "{} on {}: counters",
            f.name,
            f.hook.name()
        );
        match &f.output {
            Output::Unchanged => assert_frames_eq(f.name, &o.output, &f.input),
            Output::Exactly(bytes) => assert_frames_eq(f.name, &o.output, bytes),
            Output::Ignored => {}
        }
    }
}

fn decode_verdict(hook: Hook, ret: u32) -> Verdict {
    if hook == Hook::XdpUplink {
        match ret {
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            3 => Verdict::Tx,
            4 => Verdict::Redirect,
            other => panic!("unexpected XDP action {other}"),
        }
    } else {
        match ret as i32 {
            0 | -1 => Verdict::Pass,
            2 => Verdict::Drop,
            7 => Verdict::Redirect,
            other => panic!("unexpected tc action {other}"),
        }
    }
}

fn delta(before: &Stats, after: &Stats) -> Vec<(Hook, Reason, u64, u64)> {
    let mut out = Vec::new();
    for row in &after.rows {
        let old = before
            .rows
            .iter()
            .find(|r| r.hook == row.hook && r.reason == row.reason);
        let (p, b) = old.map_or((0, 0), |o| (o.packets, o.bytes));
        if row.packets != p {
            out.push((row.hook, row.reason, row.packets - p, row.bytes - b));
        }
    }
    out
}

pub fn assert_frames_eq(name: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let parsed_got = dataplane_lab::packet::parse(got);
        let parsed_want = dataplane_lab::packet::parse(want);
        panic!(
            "{name}: output frame differs\n got: {got:02x?}\nwant: {want:02x?}\n got parsed: {parsed_got:?}\nwant parsed: {parsed_want:?}"
        );
    }
}
