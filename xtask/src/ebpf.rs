//! Building the eBPF object, provisioning what that needs on a fresh machine.
//!
//! The object is built with the nightly toolchain (`-Z build-std=core` for bpfel-unknown-none)
//! and linked by bpf-linker, which must be linked against the same LLVM as that nightly. Debian
//! ships no LLVM that new, so bpf-linker is built against the nightly's own libLLVM and cached
//! under `~/.cache/dataplane` (keyed by the nightly's commit), so it is built once per machine.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::srchash;

const BPF_LINKER_VERSION: &str = "0.13.0";
const EBPF_TARGET: &str = "bpfel-unknown-none";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(t) if t.is_absolute() => t,
        Some(t) => workspace_root().join(t),
        None => workspace_root().join("target"),
    }
}

pub fn require_root(why: &str) -> Result<()> {
    if unsafe { libc_geteuid() } != 0 {
        bail!("this command must run as root: {why}");
    }
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a command, failing with its full command line if it cannot start or exits non-zero.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn which(cmd: &str) -> bool {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path).any(|d| d.join(cmd).is_file())
}

/// What `rustc +nightly -vV` says about the nightly.
struct Nightly {
    sysroot: PathBuf,
    commit: String,
    llvm_major: String,
}

fn nightly() -> Result<Nightly> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"])).map_err(|e| {
        anyhow!(
            "{e}\nthe eBPF build needs a nightly toolchain: \
             `rustup toolchain install nightly --profile minimal --component rust-src`"
        )
    })?;
    let field = |key: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .ok_or_else(|| anyhow!("`rustc +nightly -vV` printed no `{key}` line"))
    };
    let commit = field("commit-hash:")?;
    let llvm = field("LLVM version:")?;
    let llvm_major = llvm.split('.').next().unwrap_or_default().to_string();
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    Ok(Nightly {
        sysroot,
        commit: commit.chars().take(12).collect(),
        llvm_major,
    })
}

fn ensure_rust_src(n: &Nightly) -> Result<()> {
    let marker = n
        .sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if marker.exists() {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context(
        "rust-src is missing; install it with `rustup component add rust-src --toolchain nightly`",
    )
}

fn cache_dir() -> PathBuf {
    env::var_os("DATAPLANE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".cache/dataplane")
        })
}

/// Returns the directory holding a working bpf-linker for this nightly, building it if needed.
fn ensure_bpf_linker(n: &Nightly) -> Result<PathBuf> {
    let root = cache_dir().join(format!("bpf-linker-{BPF_LINKER_VERSION}-{}", n.commit));
    let bin = root.join("bin/bpf-linker");
    if bin.exists()
        && Command::new(&bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(root.join("bin"));
    }
    let libllvm = find_libllvm(&n.sysroot)?;
    let prefix = root.join("llvm");
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {} (once per \
         nightly, about 2 minutes)",
        n.llvm_major
    );
    // rpath: the linker must find the nightly's libLLVM at run time without LD_LIBRARY_PATH.
    let rpath = format!("-Clink-arg=-Wl,-rpath,{}", n.sysroot.join("lib").display());
    run(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{}", n.llvm_major), "--root"])
        .arg(&root)
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", rpath)
        .env_remove("CARGO_TARGET_DIR"))
    .context(
        "building bpf-linker failed; it needs a C toolchain (build-essential) and the nightly's \
         libLLVM (rustup component rustc for nightly)",
    )?;
    output(Command::new(&bin).arg("--version"))
        .context("the freshly built bpf-linker does not run")?;
    Ok(root.join("bin"))
}

fn find_libllvm(sysroot: &Path) -> Result<PathBuf> {
    for entry in fs::read_dir(sysroot.join("lib"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("libLLVM.so.")
            || (name.starts_with("libLLVM-") && name.ends_with(".so"))
        {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM in {}/lib: the nightly toolchain is incomplete",
        sysroot.display()
    )
}

/// Builds the eBPF object and leaves it, with its source fingerprint, where build.rs embeds it.
pub fn build_ebpf() -> Result<PathBuf> {
    let n = match nightly() {
        Ok(n) => n,
        // A fresh machine with rustup but no nightly: get the one the eBPF build needs.
        Err(e) if which("rustup") => {
            eprintln!("xtask: {e:#}\nxtask: installing a nightly toolchain with rustup");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            nightly()?
        }
        Err(e) => return Err(e),
    };
    ensure_rust_src(&n)?;
    let linker_dir = ensure_bpf_linker(&n)?;
    let ws = workspace_root();
    let build_dir = target_dir().join("ebpf-build");
    let path = format!(
        "{}:{}",
        linker_dir.display(),
        env::var("PATH").unwrap_or_default()
    );
    run(Command::new("cargo")
        .current_dir(&ws)
        .args([
            "+nightly",
            "build",
            "--package",
            "dataplane-ebpf",
            "--release",
        ])
        .args(["--target", EBPF_TARGET, "-Z", "build-std=core"])
        .env("CARGO_TARGET_DIR", &build_dir)
        .env("PATH", path)
        // BTF (for bpftool and CO-RE) needs debug info and the linker's --btf.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Ctarget-cpu=v3",
        )
        .env_remove("RUSTFLAGS"))
    .context("building the eBPF programs")?;
    let built = build_dir.join(EBPF_TARGET).join("release/dataplane-ebpf");
    check_object(&built)?;
    let out_dir = target_dir().join("ebpf");
    fs::create_dir_all(&out_dir)?;
    let object = out_dir.join("dataplane-ebpf.o");
    fs::copy(&built, &object)?;
    let hash = srchash::ebpf_sources_hash(&ws)?;
    fs::write(out_dir.join("dataplane-ebpf.o.srchash"), hash)?;
    eprintln!("xtask: eBPF object {}", object.display());
    Ok(object)
}

/// An object with no BPF ELF header, no programs or no BTF would load badly or not at all.
fn check_object(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    const EM_BPF: u16 = 247;
    if bytes.len() < 64
        || &bytes[..4] != b"\x7fELF"
        || u16::from_le_bytes([bytes[18], bytes[19]]) != EM_BPF
    {
        bail!("{} is not a BPF ELF object", path.display());
    }
    for needle in [&b"xdp\0"[..], b"classifier\0", b".BTF\0", b"STATS_V2"] {
        if !bytes.windows(needle.len()).any(|w| w == needle) {
            bail!(
                "{} lacks {:?}: the build produced an incomplete object",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    Ok(())
}

/// `cargo <args> [-- <extra>]` in the workspace with the stable toolchain.
pub fn cargo(args: &[&str], extra: &[String]) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args(args).args(extra);
    run(&mut cmd)
}

/// Builds the `dataplane` binary; returns its path.
pub fn cargo_build_user(release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "--package", "dataplane-user", "--bin", "dataplane"];
    if release {
        args.push("--release");
    }
    cargo(&args, &[])?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join("dataplane"))
}
