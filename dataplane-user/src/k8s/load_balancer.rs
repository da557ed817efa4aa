//! The LoadBalancer-only parts of a Service: spec.healthCheckNodePort and
//! spec.loadBalancerSourceRanges, as kube-proxy's serviceport.go reads them.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::ServiceSpec;

use super::{
    local::in_cidr,
    parse::{self, Family},
    policies::{Policies, ServiceType},
    problem::{Problem, Subject},
};
use crate::model::TrafficPolicy;

/// What a Service's load balancers need from this node.
#[derive(Clone, Debug, Default)]
pub(crate) struct LoadBalancerSpec {
    pub health_check_node_port: Option<u16>,
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
}

impl LoadBalancerSpec {
    /// Both fields are read for type LoadBalancer only (the API clears them for other types).
    /// IPv6 ranges are skipped and noted in `ipv6`. An unparsable range invalidates the Service:
    /// kube-proxy skips just that entry, but if every entry were skipped the empty list would
    /// open the load balancer to everyone.
    pub fn read(
        spec: &ServiceSpec,
        service_type: ServiceType,
        policies: &Policies,
        subject: &Subject,
        ipv6: &mut Vec<String>,
    ) -> Result<Self, Problem> {
        if service_type != ServiceType::LoadBalancer {
            return Ok(Self::default());
        }
        Ok(LoadBalancerSpec {
            health_check_node_port: health_check_node_port(spec, policies, subject)?,
            source_ranges: source_ranges(spec, subject, ipv6)?,
        })
    }
}

impl LoadBalancerSpec {
    /// The clients the load-balancer frontends accept: the ranges, plus (kube-proxy's
    /// allowFromNode) the load-balancer IPs themselves when a range holds one of this node's
    /// addresses: a VIP-like load balancer configured on the node makes the node's own
    /// requests arrive from the VIP.
    pub fn allowed_sources(&self, lb_ips: &[Ipv4Addr], node: &[Ipv4Addr]) -> Vec<(Ipv4Addr, u8)> {
        let mut out = self.source_ranges.clone();
        let from_node = node
            .iter()
            .any(|ip| out.iter().any(|range| in_cidr(*ip, *range)));
        if from_node {
            out.extend(lb_ips.iter().map(|ip| (*ip, 32)));
            out.sort();
            out.dedup();
        }
        out
    }
}

/// kube-proxy's NeedsHealthCheck: LoadBalancer with externalTrafficPolicy Local. 0 or absent
/// means the API server did not allocate one (kube-proxy logs it and serves none).
fn health_check_node_port(
    spec: &ServiceSpec,
    policies: &Policies,
    subject: &Subject,
) -> Result<Option<u16>, Problem> {
    if policies.external != TrafficPolicy::Local {
        return Ok(None);
    }
    match spec.health_check_node_port {
        None | Some(0) => Ok(None),
        Some(port) => parse::port(port)
            .map(Some)
            .map_err(|m| subject.invalid("spec.healthCheckNodePort", m)),
    }
}

/// spec.loadBalancerSourceRanges, IPv4 ones; surrounding blanks allowed as kube-proxy trims
/// them.
fn source_ranges(
    spec: &ServiceSpec,
    subject: &Subject,
    ipv6: &mut Vec<String>,
) -> Result<Vec<(Ipv4Addr, u8)>, Problem> {
    let mut out = Vec::new();
    let ranges = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    for (i, text) in ranges.iter().enumerate() {
        let field = format!("spec.loadBalancerSourceRanges[{i}]");
        match parse::network(text.trim()) {
            Ok(Family::V4(cidr)) => out.push(cidr),
            Ok(Family::V6) => ipv6.push(field),
            Err(message) => return Err(subject.invalid(field, message)),
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}
