//! cgroup v2, where the socket programs attach.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::mounts::mount;

/// The cgroup v2 hierarchy's root: found in /proc/mounts, or mounted under /run if the host has
/// none (socket-level balancing needs cgroup v2).
pub fn root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if let Some(dir) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    }) {
        return Ok(dir);
    }
    let dir = PathBuf::from("/run/dataplane/cgroup2");
    std::fs::create_dir_all(&dir)?;
    mount("none", &dir, "cgroup2")?;
    log::info!("mounted cgroup2 at {}", dir.display());
    Ok(dir)
}

/// The id the kernel gives the cgroup v2 directory `dir` (what link info reports): its inode
/// number, as kernfs uses the node id for both.
pub fn id(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(dir)?.ino())
}
