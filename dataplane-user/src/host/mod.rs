//! The node's host, as the agent sees it from the calling thread's network namespace: devices
//! and addresses (`netdev`), routes, neighbours and addresses written over rtnetlink
//! (`routes`), filesystems (`mounts`), cgroup v2 (`cgroup`), the namespace's cookie (`netns`)
//! and sysctls (`sysctl`).
//!
//! The bottom layer of the agent: it knows nothing of services, the overlay or the maps. Every
//! kernel conversation that is not a BPF syscall goes through here, so the rest is pure logic
//! or map access.

pub mod cgroup;
pub mod mounts;
pub mod netdev;
mod netlink;
pub mod netns;
pub mod routes;
pub mod sysctl;
