//! `cargo xtask release`: the release artifacts in `target/release-artifacts/`:
//! - `dataplane-<version>-x86_64-linux-musl`: the agent as one static (musl) executable, the
//!   eBPF object embedded as in every build, with its `.sha256`;
//! - `oci/`: an OCI image layout (`skopeo copy oci:target/release-artifacts/oci:<version> ...`
//!   pushes it) built without a container engine or a base image: one layer with the static
//!   binary at /usr/local/bin/dataplane, one with the `ip` tool (iproute2, which the agent runs
//!   for links, routes and neighbours) and its shared libraries, copied from this machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::ebpf::{self, output, run, target_dir, which, workspace_root};
use crate::oci;

pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// Builds everything; returns the artifacts directory.
pub fn release() -> Result<PathBuf> {
    ensure_musl_target()?;
    ebpf::build_ebpf()?;
    let bin = build_static()?;
    let interp = elf_interpreter(&std::fs::read(&bin)?)?;
    if let Some(interp) = interp {
        bail!("{} is not static: it asks for {interp}", bin.display());
    }
    let version = crate_version()?;
    let out = target_dir().join("release-artifacts");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    let name = format!("dataplane-{version}-x86_64-linux-musl");
    let shipped = out.join(&name);
    std::fs::copy(&bin, &shipped)?;
    let digest = oci::sha256_file(&shipped)?;
    let hex = digest.trim_start_matches("sha256:");
    std::fs::write(
        out.join(format!("{name}.sha256")),
        format!("{hex}  {name}\n"),
    )?;

    let image = oci::Image {
        version: version.clone(),
        binary: shipped.clone(),
        ip_tool: find_ip()?,
    };
    let manifest = image.write_layout(&out.join("oci"))?;
    println!("release {version}:");
    println!(
        "   {}  static, {} bytes, {digest}",
        shipped.display(),
        std::fs::metadata(&shipped)?.len()
    );
    println!(
        "   {}  OCI image layout, tag {version}, manifest {manifest}",
        out.join("oci").display()
    );
    Ok(out)
}

/// `rustup target add` the musl target unless its standard library is installed.
fn ensure_musl_target() -> Result<()> {
    // In the workspace, so that rustup picks the toolchain the build uses.
    let rustup = |args: &[&str]| {
        let mut cmd = Command::new("rustup");
        cmd.current_dir(workspace_root()).args(args);
        cmd
    };
    let installed = output(&mut rustup(&["target", "list", "--installed"]))
        .context("rustup is needed for the musl target")?;
    if !installed.lines().any(|l| l.trim() == MUSL) {
        eprintln!("xtask: rustup target add {MUSL}");
        run(&mut rustup(&["target", "add", MUSL]))?;
    }
    Ok(())
}

/// `cargo build --release --target x86_64-unknown-linux-musl` of the agent. ring (rustls)
/// compiles C: musl-gcc when installed (Debian's musl-tools), else the system gcc, whose
/// freestanding object code links into a musl binary as well.
fn build_static() -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args([
        "build",
        "--release",
        "--target",
        MUSL,
        "--package",
        "dataplane-user",
        "--bin",
        "dataplane",
    ]);
    let cc_var = format!("CC_{}", MUSL.replace('-', "_"));
    if std::env::var_os(&cc_var).is_none() {
        cmd.env(&cc_var, if which("musl-gcc") { "musl-gcc" } else { "gcc" });
    }
    run(&mut cmd)?;
    Ok(target_dir().join(MUSL).join("release").join("dataplane"))
}

/// The program interpreter (PT_INTERP) an x86-64 ELF executable asks for, if any.
pub fn elf_interpreter(elf: &[u8]) -> Result<Option<String>> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a little-endian 64-bit ELF file");
    }
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[at..at + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if ph + 0x38 > elf.len() {
            bail!("truncated program header table");
        }
        if u32::from_le_bytes([elf[ph], elf[ph + 1], elf[ph + 2], elf[ph + 3]]) == PT_INTERP {
            let (off, size) = (u64_at(ph + 8), u64_at(ph + 0x20));
            let text = elf
                .get(off..off + size)
                .context("PT_INTERP out of the file")?;
            return Ok(Some(
                String::from_utf8_lossy(text).trim_end_matches('\0').into(),
            ));
        }
    }
    Ok(None)
}

/// The agent's version, from dataplane-user/Cargo.toml (the image tag the DaemonSet pins).
fn crate_version() -> Result<String> {
    let path = workspace_root().join("dataplane-user/Cargo.toml");
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .find_map(|l| {
            let v = l.strip_prefix("version")?.trim_start().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .with_context(|| format!("no version in {}", path.display()))
}

fn find_ip() -> Result<PathBuf> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
        .context("iproute2's `ip` is not installed (apt-get install iproute2)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_interpreter() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = elf_interpreter(&me)
            .unwrap()
            .expect("test binaries are dynamic");
        assert!(interp.contains("ld-linux"), "{interp}");
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        let version = crate_version().unwrap();
        assert!(version.split('.').count() == 3, "{version}");
    }
}
