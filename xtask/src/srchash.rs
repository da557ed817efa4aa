//! Fingerprint of every input of the eBPF object. Shared (via `#[path]`) by the xtask, which
//! records it next to the object it builds, and by dataplane-user's build.rs, which refuses to
//! embed an object whose recorded fingerprint differs from the sources: a stale object never
//! ships silently.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Paths, relative to the workspace root, whose content determines the eBPF object.
pub const EBPF_INPUTS: &[&str] = &[
    "dataplane-ebpf",
    "dataplane-common",
    "Cargo.toml",
    "Cargo.lock",
];

/// FNV-1a 64 over (relative path, length, content) of every input file, in sorted order.
pub fn ebpf_sources_hash(workspace: &Path) -> io::Result<String> {
    let mut files = Vec::new();
    for input in EBPF_INPUTS {
        collect(&workspace.join(input), &mut files)?;
    }
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        let rel = file.strip_prefix(workspace).unwrap_or(&file);
        let content = fs::read(&file)?;
        for chunk in [
            rel.to_string_lossy().as_bytes(),
            &(content.len() as u64).to_le_bytes(),
            &content,
        ] {
            for b in chunk {
                h ^= *b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    Ok(format!("{h:016x}"))
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let meta = fs::metadata(path)?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        // Build output and editor droppings are not inputs.
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        collect(&entry.path(), out)?;
    }
    Ok(())
}
