//! The calling thread's network namespace.

use anyhow::{Context, Result};

/// `SO_NETNS_COOKIE` (Linux >= 5.14; not in the libc crate yet).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Cookie of the calling thread's network namespace: what `bpf_get_netns_cookie()` returns for
/// sockets of that namespace. The agent records its own in two places: `CONFIG_V2`, so the
/// socket programs act only on this node's sockets, and `OVERLAY_CONFIG_V1`, so routes are
/// programmed (and removed by `dataplane cleanup`) only in the namespace that owns them.
pub fn cookie() -> Result<u64> {
    // An unbound socket: binding would need an address (a fresh namespace's lo is down).
    // SAFETY: socket(2) returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket()");
    }
    // SAFETY: `fd` is a descriptor of our own, closed once by OwnedFd.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = core::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(SO_NETNS_COOKIE)");
    }
    Ok(cookie)
}

/// Whether the calling thread is in the network namespace of `cookie`.
pub fn is_current(cookie_of: u64) -> Result<bool> {
    Ok(cookie()? == cookie_of)
}
