//! Embeds the eBPF object built by `cargo xtask build-ebpf`, and refuses a missing, empty or
//! stale one (its recorded source fingerprint must match the current sources).

use std::{env, fs, path::PathBuf};

#[path = "../xtask/src/srchash.rs"]
mod srchash;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().to_path_buf();
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace.join(t)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let object = target.join("ebpf").join("dataplane-ebpf.o");
    let recorded = target.join("ebpf").join("dataplane-ebpf.o.srchash");

    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rerun-if-changed={}", recorded.display());
    for input in srchash::EBPF_INPUTS {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let fix = "run `cargo xtask build-ebpf` (or `cargo xtask test` / `cargo xtask lab`, which build it first)";
    let size = fs::metadata(&object).map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        fail(&format!(
            "eBPF object {} is missing or empty: {fix}",
            object.display()
        ));
    }
    let want = srchash::ebpf_sources_hash(&workspace).expect("hashing eBPF sources");
    let have = fs::read_to_string(&recorded).unwrap_or_default();
    if have.trim() != want {
        fail(&format!(
            "eBPF object {} is stale: it was built from other sources than dataplane-ebpf/ and \
             dataplane-common/ now hold (fingerprint {} != {want}): {fix}",
            object.display(),
            if have.trim().is_empty() {
                "none"
            } else {
                have.trim()
            },
        ));
    }
    println!("cargo:rustc-env=DATAPLANE_EBPF_OBJ={}", object.display());
}

fn fail(msg: &str) -> ! {
    // cargo shows build-script stderr on failure; make it the whole story.
    eprintln!("error: {msg}");
    std::process::exit(1);
}
