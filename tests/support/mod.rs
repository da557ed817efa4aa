//! Shared by the integration tests: the BPF_PROG_TEST_RUN fixture harness and helpers to run the
//! `dataplane` binary on lab nodes.
#![allow(dead_code)]

pub mod fixture;
pub mod node;

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
