//! Shared by the integration tests (every test target has `mod support;`): the BPF_PROG_TEST_RUN
//! fixture harness (`fixture`), the `dataplane` binary on lab nodes (`node`), a lab with services
//! written through `ServiceTable` (`cluster`), the k8s source helpers (`k8s`) and nginx as an
//! HTTP backend (`nginx`).
#![allow(dead_code)]

pub mod agent;
pub mod cluster;
pub mod datapath;
pub mod fixture;
pub mod k8s;
pub mod nginx;
pub mod node;
pub mod overlay;

/// Fails (never skips) when the tests cannot do what they must: they need root for BPF and
/// network namespaces.
pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load eBPF programs and create network namespaces: run them as root \
         (`sudo cargo xtask test`)"
    );
}

/// Sends raw frames out of `eth0` of namespace `ns` (AF_PACKET): crafted or malformed frames
/// the stack would not build itself.
pub fn inject(ns: &str, frames: Vec<Vec<u8>>) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    dataplane_lab::netns::in_netns(ns, move || {
        // SAFETY: plain socket syscall; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = dataplane::host::netdev::index("eth0").unwrap() as i32;
        sll.sll_halen = 6;
        for f in frames {
            // SAFETY: f and sll outlive the call; the lengths are theirs.
            let rc = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, f.len() as isize, "{}", std::io::Error::last_os_error());
        }
    })
    .unwrap();
}
