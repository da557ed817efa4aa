//! `cargo xtask lab`: the built-in demo. After the xtask has built the eBPF object and the
//! `dataplane` binary, it runs the `lab-demo` binary of the dataplane-lab crate, which builds a
//! cluster in network namespaces, runs `dataplane run` on every node and tours the traffic.
//!
//! The xtask itself stays light (it is the first thing compiled on a fresh machine): it does not
//! depend on dataplane-lab, it only runs it through cargo.
use std::path::Path;
use std::process::{Command, ExitStatus};

use anyhow::{bail, Context, Result};

use crate::ebpf::workspace_root;

#[derive(clap::Args)]
pub struct LabArgs {
    /// Keep the lab up after the tour, for inspection, until Ctrl-C (SIGINT) or SIGTERM.
    #[arg(long)]
    hold: bool,
    /// Further arguments for the demo; see `cargo xtask lab -- --help`.
    #[arg(last = true)]
    demo_args: Vec<String>,
}

pub fn run(bin: &Path, args: &LabArgs) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "-p",
            "dataplane-lab",
            "--bin",
            "lab-demo",
            "--",
        ])
        .arg("--dataplane")
        .arg(bin);
    if args.hold {
        cmd.arg("--hold");
    }
    cmd.args(&args.demo_args);
    run_foreground(&mut cmd, |status| format!("the lab demo failed ({status})"))
}

/// Runs `cmd` to its end. Ctrl-C reaches the whole foreground process group: the child (the
/// demo, the benchmark) tears its labs down on SIGINT and exits; this process waits for that
/// instead of dying first and returning the prompt while the teardown is still printing.
/// (Ignored only now, after the spawn: an ignored disposition would be inherited by cargo and
/// the child.) `failed` words a failed exit.
pub fn run_foreground(cmd: &mut Command, failed: impl FnOnce(ExitStatus) -> String) -> Result<()> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let previous = unsafe { signal(SIGINT, SIG_IGN) };
    let status = child.wait();
    unsafe { signal(SIGINT, previous) };
    let status = status.with_context(|| format!("waiting for {shown}"))?;
    if !status.success() {
        bail!("{}", failed(status));
    }
    Ok(())
}

const SIGINT: i32 = 2;
const SIG_IGN: usize = 1;

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}
