//! Nodes -> [`NodeInfo`] for the overlay: where to tunnel to, which pod CIDRs live there, and
//! the flannel/calico details of that node.

use std::{net::Ipv4Addr, sync::Arc};

use k8s_openapi::api::core::v1::Node;

use super::{
    objects::annotation,
    parse::{self, Family},
    problem::{ipv4_only, translate_each, Problem, Subject},
};
use crate::model::NodeInfo;

/// flannel's override of the tunnel endpoint address (`--public-ip`).
pub const FLANNEL_PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// flannel's backend data, JSON: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}` for vxlan.
pub const FLANNEL_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// calico's node address with prefix length, "192.168.100.111/24".
pub const CALICO_IPV4_ADDRESS: &str = "projectcalico.org/IPv4Address";
/// calico's tunl0 address on that node.
pub const CALICO_IPIP_TUNNEL_ADDR: &str = "projectcalico.org/IPv4IPIPTunnelAddr";

/// Every valid Node, sorted by name; invalid ones are skipped with a problem.
pub(crate) fn translate_nodes(nodes: &[Arc<Node>], problems: &mut Vec<Problem>) -> Vec<NodeInfo> {
    let subject = |node: &Arc<Node>| {
        let name = node.metadata.name.clone();
        Subject::new("Node", name.unwrap_or_else(|| "<unnamed>".into()))
    };
    let translate = |node: &Arc<Node>, subject: &Subject| {
        translate_node(node, subject).map(|(info, notes)| ([info], notes))
    };
    let mut out = translate_each(nodes, subject, translate, problems);
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One node plus its note about skipped IPv6 parts, or why it is invalid.
fn translate_node(node: &Node, subject: &Subject) -> Result<(NodeInfo, Vec<Problem>), Problem> {
    let name = match node.metadata.name.as_deref() {
        Some(name) if !name.is_empty() => name,
        _ => return Err(subject.invalid("metadata.name", "missing")),
    };
    let mut ipv6 = Vec::new();
    let address = node_address(node, subject, &mut ipv6)?;
    let pod_cidrs = pod_cidrs(node, subject, &mut ipv6)?;
    let info = NodeInfo {
        name: name.to_owned(),
        address,
        pod_cidrs,
        vtep_mac: vtep_mac(node, subject)?,
        ipip_tunnel_addr: annotated_ipv4(node, CALICO_IPIP_TUNNEL_ADDR, subject)?,
        created: node
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
    };
    let notes = if ipv6.is_empty() {
        Vec::new()
    } else {
        vec![subject.unsupported(
            ipv6.join(", "),
            "IPv6 skipped: the overlay serves IPv4 only",
        )]
    };
    Ok((info, notes))
}

/// The tunnel endpoint: flannel's public-ip, else calico's IPv4Address, else the first IPv4
/// InternalIP. Every one present must be valid, used or not.
fn node_address(
    node: &Node,
    subject: &Subject,
    ipv6: &mut Vec<String>,
) -> Result<Ipv4Addr, Problem> {
    let flannel = annotated_ipv4(node, FLANNEL_PUBLIC_IP, subject)?;
    let calico = match annotation(&node.metadata, CALICO_IPV4_ADDRESS) {
        None => None,
        Some(text) => match parse::address_with_prefix(text) {
            Ok(Family::V4((ip, _))) => Some(ip),
            Ok(Family::V6) => {
                return Err(subject.invalid(
                    annotation_field(CALICO_IPV4_ADDRESS),
                    format!("{text:?} is not IPv4"),
                ))
            }
            Err(message) => {
                return Err(subject.invalid(annotation_field(CALICO_IPV4_ADDRESS), message))
            }
        },
    };
    let internal = internal_ip(node, subject, ipv6)?;
    flannel.or(calico).or(internal).ok_or_else(|| {
        subject.invalid(
            "status.addresses",
            "no IPv4 InternalIP (and no address annotation)",
        )
    })
}

/// The first IPv4 address of type InternalIP in status.addresses.
fn internal_ip(
    node: &Node,
    subject: &Subject,
    ipv6: &mut Vec<String>,
) -> Result<Option<Ipv4Addr>, Problem> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let mut first = None;
    for (i, address) in addresses
        .iter()
        .enumerate()
        .filter(|(_, a)| a.type_ == "InternalIP")
    {
        let field = format!("status.addresses[{i}].address");
        match parse::ip(&address.address) {
            Ok(Family::V4(ip)) => first = first.or(Some(ip)),
            Ok(Family::V6) => ipv6.push(field),
            Err(message) => return Err(subject.invalid(field, message)),
        }
    }
    Ok(first)
}

/// spec.podCIDRs (dual-stack) or spec.podCIDR: the IPv4 ones.
fn pod_cidrs(
    node: &Node,
    subject: &Subject,
    ipv6: &mut Vec<String>,
) -> Result<Vec<(Ipv4Addr, u8)>, Problem> {
    let spec = node.spec.as_ref();
    let fields: Vec<(String, &str)> = match spec.and_then(|s| s.pod_cidrs.as_deref()) {
        Some(cidrs) if !cidrs.is_empty() => cidrs
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c.as_str()))
            .collect(),
        _ => spec
            .and_then(|s| s.pod_cidr.as_deref())
            .map(|c| ("spec.podCIDR".to_owned(), c))
            .into_iter()
            .collect(),
    };
    ipv4_only(fields, parse::cidr, subject, ipv6)
}

/// VtepMAC from flannel's backend-data. Other backends (host-gw writes `null`) have none.
fn vtep_mac(node: &Node, subject: &Subject) -> Result<Option<[u8; 6]>, Problem> {
    let Some(text) = annotation(&node.metadata, FLANNEL_BACKEND_DATA) else {
        return Ok(None);
    };
    let field = annotation_field(FLANNEL_BACKEND_DATA);
    let data: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| subject.invalid(&field, format!("not JSON: {e}")))?;
    match data.get("VtepMAC") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(mac)) => parse::mac(mac)
            .map(Some)
            .map_err(|m| subject.invalid(format!("{field}.VtepMAC"), m)),
        Some(other) => Err(subject.invalid(
            format!("{field}.VtepMAC"),
            format!("{other} is not a MAC address"),
        )),
    }
}

/// An annotation holding a plain IPv4 address, if present.
fn annotated_ipv4(node: &Node, key: &str, subject: &Subject) -> Result<Option<Ipv4Addr>, Problem> {
    annotation(&node.metadata, key)
        .map(|text| parse::ipv4(text).map_err(|m| subject.invalid(annotation_field(key), m)))
        .transpose()
}

fn annotation_field(key: &str) -> String {
    format!("metadata.annotations[{key}]")
}
