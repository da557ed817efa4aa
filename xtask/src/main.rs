//! Developer commands: `cargo xtask <command>`. See README.md.

mod ebpf;
mod lab;
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
    /// Build everything and run every test (needs root: tests load programs into the kernel).
    Test {
        /// Extra arguments passed to `cargo test` (after `--` for the test binaries, as usual).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build everything and run the product on the built-in lab (a cluster in network namespaces).
    Lab(lab::LabArgs),
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
            ebpf::build_ebpf()?;
            ebpf::cargo(&["test", "--workspace", "--exclude", "dataplane-ebpf"], &args)
        }
        Command::Lab(args) => {
            ebpf::require_root("the lab creates network namespaces and loads eBPF programs")?;
            ebpf::build_ebpf()?;
            let bin = ebpf::cargo_build_user(false)?;
            lab::run(&bin, &args)
        }
    }
}
