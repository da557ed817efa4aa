//! Developer commands: `cargo xtask <command>`. See README.md.

mod ebpf;
mod lab;
mod oci;
mod prereq;
mod release;
mod srchash;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Provision the eBPF toolchain if needed (rust-src, bpf-linker) and build the eBPF object.
    BuildEbpf,
    /// Build the eBPF object and the `dataplane` binary.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build the release artifacts in target/release-artifacts: the static (musl) `dataplane`
    /// binary and an OCI image layout of it, without a container engine.
    Release,
    /// Build everything (the release artifacts too, which tests/release.rs checks) and run
    /// every test (needs root: tests load programs into the kernel).
    Test {
        /// Extra arguments passed to `cargo test` (after `--` for the test binaries, as usual).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build everything and run the product on the built-in lab (a cluster in network namespaces).
    Lab(lab::LabArgs),
    /// Benchmark against kube-proxy's iptables and nftables modes in lab namespaces; writes
    /// BENCHMARKS.md and bench/ (needs root). `--quick`: the CI variant (under 3 minutes).
    Bench {
        #[arg(long)]
        quick: bool,
        /// Further arguments for dataplane-bench; see `cargo xtask bench -- --help`.
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf => ebpf::build_ebpf().map(|_| ()),
        Command::Build { release } => {
            ebpf::build_ebpf()?;
            ebpf::cargo_build_user(release).map(|_| ())
        }
        Command::Test { args } => {
            ebpf::require_root("the tests load eBPF programs and create network namespaces")?;
            prereq::ensure(true)?;
            let artifacts = release::release()?;
            let mut cmd = std::process::Command::new("cargo");
            cmd.current_dir(ebpf::workspace_root())
                .args(["test", "--workspace", "--exclude", "dataplane-ebpf"])
                .args(&args)
                .env("DATAPLANE_RELEASE_DIR", artifacts);
            ebpf::run(&mut cmd)
        }
        Command::Release => release::release().map(drop),
        Command::Lab(args) => {
            ebpf::require_root("the lab creates network namespaces and loads eBPF programs")?;
            prereq::ensure(true)?;
            ebpf::build_ebpf()?;
            let bin = ebpf::cargo_build_user(false)?;
            lab::run(&bin, &args)
        }
        Command::Bench { quick, bench_args } => {
            ebpf::require_root("the benchmark creates network namespaces and loads eBPF programs")?;
            prereq::ensure(true)?;
            ebpf::build_ebpf()?;
            let bin = ebpf::cargo_build_user(true)?;
            bench(&bin, quick, &bench_args)
        }
    }
}

/// Runs the dataplane-bench crate (the xtask does not depend on it: it stays light) in release
/// mode, with the report written at the workspace root and the raw data in bench/.
fn bench(dataplane_bin: &std::path::Path, quick: bool, extra: &[String]) -> Result<()> {
    let ws = ebpf::workspace_root();
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(&ws)
        .args(["run", "--release", "--quiet", "-p", "dataplane-bench", "--"])
        .arg("--out-dir")
        .arg(ws.join("bench"))
        .arg("--markdown")
        .arg(ws.join("BENCHMARKS.md"))
        .env("DATAPLANE_BIN", dataplane_bin);
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(extra);
    lab::run_foreground(&mut cmd, |status| {
        format!("the benchmark failed ({status}); see BENCHMARKS.md for the failed checks")
    })
}
