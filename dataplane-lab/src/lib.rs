//! The built-in lab: a Kubernetes-like cluster of nodes, pods and an external client, each in its
//! own network namespace, wired like the seed topologies (flannel bridge or calico routed veths),
//! plus packet builders/parsers for BPF_PROG_TEST_RUN fixtures.
//!
//! Nothing is created in the root network namespace: every address and route lives inside
//! namespaces the lab creates and removes.

pub mod flannel;
pub mod lab;
pub mod manifests;
pub mod netns;
pub mod packet;
pub mod traffic;
