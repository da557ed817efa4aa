//! What the translation reads from this node's own Node object: its zone (topology hints), its
//! primary address (`--nodeport-addresses primary`) and whether it is being deleted or drained
//! (the node-level health check, KEP-3836). Kept apart from `nodes.rs`, which reads every Node
//! for the overlay.

use std::{net::Ipv4Addr, sync::Arc};

use k8s_openapi::api::core::v1::Node;

use super::{
    objects::label,
    parse::{self, Family},
};

/// The label kube-proxy reads this node's zone from (v1.LabelTopologyZone).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The taint the cluster autoscaler puts on a node it is about to delete (KEP-3836: kube-proxy's
/// /healthz then fails so load balancers drain the node first).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// This node as its Node object describes it; all empty when the object is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ThisNode {
    /// topology.kubernetes.io/zone, if set and not empty.
    pub zone: Option<String>,
    /// The first IPv4 InternalIP, else the first IPv4 ExternalIP (kube-proxy's
    /// GetNodeHostIPs order).
    pub primary_ip: Option<Ipv4Addr>,
    /// metadata.deletionTimestamp set, or the ToBeDeletedByClusterAutoscaler taint.
    pub deleting: bool,
}

/// Reads the Node named `name` (the first one, as `nodes.rs` keeps the first of duplicates).
pub(crate) fn this_node(nodes: &[Arc<Node>], name: &str) -> ThisNode {
    let Some(node) = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
    else {
        return ThisNode::default();
    };
    ThisNode {
        zone: label(&node.metadata, ZONE_LABEL)
            .filter(|z| !z.is_empty())
            .map(str::to_owned),
        primary_ip: primary_ip(node),
        deleting: node.metadata.deletion_timestamp.is_some() || has_deletion_taint(node),
    }
}

fn has_deletion_taint(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == TO_BE_DELETED_TAINT)
}

/// An invalid address is skipped here: `nodes.rs` reports it against the Node.
fn primary_ip(node: &Node) -> Option<Ipv4Addr> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let first_of = |kind: &str| {
        addresses
            .iter()
            .filter(|a| a.type_ == kind)
            .find_map(|a| match parse::ip(&a.address) {
                Ok(Family::V4(ip)) => Some(ip),
                _ => None,
            })
    };
    first_of("InternalIP").or_else(|| first_of("ExternalIP"))
}
