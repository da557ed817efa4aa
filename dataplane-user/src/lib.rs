//! The `dataplane` loader: loads and attaches the eBPF programs, pins their maps, and reads them
//! back for operators (`dataplane stats`). The binary in main.rs is a thin CLI over this library,
//! which the integration tests also use.

pub mod agent;
pub mod bpf_link;
pub mod conntrack_gc;
pub mod health;
pub mod host;
pub mod k8s;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod node_validation;
pub mod overlay;
pub mod pin;
pub mod services;
pub mod sockdiag;
pub mod stats;
pub mod tasks;

/// The eBPF object built by `cargo xtask build-ebpf` (checked fresh by build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("DATAPLANE_EBPF_OBJ"));
