//! Filesystems the agent needs: bpffs for its pins, cgroup v2 (see [`super::cgroup`]).

use std::{ffi::CString, path::Path};

use anyhow::{Context, Result};

/// `statfs(2)` `f_type` of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mounts a filesystem of type `fstype` from `source` at `target`.
pub fn mount(source: &str, target: &Path, fstype: &str) -> Result<()> {
    let src = CString::new(source)?;
    let dst = CString::new(target.as_os_str().as_encoded_bytes())?;
    let kind = CString::new(fstype)?;
    // SAFETY: three NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting {fstype} at {}", target.display()));
    }
    Ok(())
}

/// Whether `dir` is on a bpffs (`statfs(2)`).
pub fn is_bpffs(dir: &Path) -> Result<bool> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs is plain old data, filled by the kernel on success.
    let mut st: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid statfs to write.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", dir.display()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}
