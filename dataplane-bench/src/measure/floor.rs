//! What the BPF run-time statistics cost by themselves. With BPF_ENABLE_STATS on, the kernel
//! reads the clock before and after every program run and adds the difference to the
//! program's run time, so every program's ns per run includes those clock reads and the call.
//! On a VM the clock is paravirtual and the floor is tens of ns: the size of the smallest
//! budgets. It is measured, not assumed: an empty tc program (it returns TCX_NEXT, so the
//! chain goes on to the dataplane's own program) attached first on the device the pass
//! injects at, for the same packets, in the same pass.

use std::os::fd::AsRawFd;

use anyhow::Result;

use crate::rawbpf;

/// tcx's "go on to the next program" return code.
const TCX_NEXT: i32 = -1;

/// The empty program, attached; detached when dropped.
pub struct StatsFloor(rawbpf::TcxFirst);

impl StatsFloor {
    /// Loads the empty program and attaches it first on tc ingress of `ifindex` in `ns`.
    pub fn attach(ns: &str, ifindex: u32) -> Result<StatsFloor> {
        let insns = [rawbpf::mov64_imm(rawbpf::R0, TCX_NEXT), rawbpf::exit()];
        let prog = rawbpf::TcxFirst::attach(ns, ifindex, &insns, "bench_floor")?;
        Ok(StatsFloor(prog))
    }

    /// (run_time_ns, run_cnt) so far.
    pub fn run_stats(&self) -> Result<(u64, u64)> {
        rawbpf::prog_run_stats(self.0.prog.as_raw_fd())
    }

    /// ns per run between two readings, if it ran for at least half of `packets` (NodePort
    /// packets XDP finishes never reach tc).
    pub fn ns_per_run(before: (u64, u64), after: (u64, u64), packets: u64) -> Option<f64> {
        let runs = after.1.saturating_sub(before.1);
        (runs > 0 && runs * 2 >= packets).then(|| (after.0 - before.0) as f64 / runs as f64)
    }
}
