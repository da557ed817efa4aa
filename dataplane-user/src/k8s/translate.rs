//! Services + EndpointSlices + Nodes -> [`ClusterState`], with kube-proxy's semantics
//! (pkg/proxy servicechangetracker and endpointslicecache, IPv4 proxier):
//!
//! - one [`ServicePort`] per (Service, spec.ports[]);
//! - skipped like kube-proxy skips them: type ExternalName, headless (clusterIP None) and
//!   not-yet-allocated (clusterIP "") Services, Services labelled
//!   `service.kubernetes.io/service-proxy-name`, IPv6-only Services;
//! - frontends: the IPv4 cluster IP, the nodePort on every local address, spec.externalIPs,
//!   status.loadBalancer.ingress[].ip (unless ipMode is Proxy);
//! - backends: the endpoints of every slice labelled `kubernetes.io/service-name`, matched by
//!   port name and protocol, with the slice's port number as target port.
//!
//! Invalid objects are skipped whole with an [`Severity::Invalid`](super::Severity) problem;
//! IPv6 and SCTP parts are skipped with one [`Severity::Unsupported`](super::Severity) problem
//! per object. Nothing here panics or logs.

use std::{collections::HashSet, net::Ipv4Addr};

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::{
    endpoints::{EndpointIndex, Here},
    load_balancer::LoadBalancerSpec,
    local::LocalNode,
    nodes,
    objects::{namespace, namespaced_name, not_proxied, Objects},
    parse::{self, PortProtocol},
    policies::{Policies, ServiceType},
    problem::{ipv4_only, translate_each, Problem, Subject},
    this_node::{this_node, ThisNode},
};
use crate::model::{ClusterState, Frontend, FrontendKind, Protocol, ServicePort, ServicePortName};

/// Translates a consistent set of objects into the state the datapath should have, plus what
/// was wrong with them. Sorted by name so equal inputs give equal outputs. The reference
/// translation: [`Translator`](super::incremental::Translator) gives the same, translating only
/// what changed since its last snapshot.
pub fn translate(objects: &Objects, local: &LocalNode) -> (ClusterState, Vec<Problem>) {
    let mut problems = Vec::new();
    let this = this_node(&objects.nodes, &local.name);
    let context = NodeContext::new(local, &this);
    let endpoints = EndpointIndex::build(&objects.endpoint_slices, &context.here(), &mut problems);
    let services = translate_each(
        &objects.services,
        |service| service_subject(service),
        |service, subject| translate_service(service, subject, &endpoints, &context),
        &mut problems,
    );
    let nodes = nodes::translate_nodes(&objects.nodes, &mut problems);
    problems.sort();
    problems.dedup();
    let state = ClusterState {
        services: services.into(),
        nodes,
        node_deleting: this.deleting,
    };
    (state, problems)
}

/// What a Service's translation reads besides its own objects: this node. Another context
/// (an address added, the zone label changed) can change every Service's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeContext {
    pub local: LocalNode,
    /// This node's zone, for the endpoints' zone hints.
    zone: Option<String>,
    /// The addresses this sync's NodePorts answer on.
    node_ports: Vec<Ipv4Addr>,
}

impl NodeContext {
    pub fn new(local: &LocalNode, this: &ThisNode) -> Self {
        NodeContext {
            local: local.clone(),
            zone: this.zone.clone(),
            node_ports: local
                .nodeport_addresses
                .select(&local.addresses, this.primary_ip),
        }
    }

    pub fn here(&self) -> Here<'_> {
        Here {
            node: &self.local.name,
            zone: self.zone.as_deref(),
        }
    }
}

/// How problems name a Service.
pub(crate) fn service_subject(service: &Service) -> Subject {
    Subject::new("Service", namespaced_name(&service.metadata))
}

/// One Service's ports plus its unsupported-part notes, or the reason it is invalid.
pub(crate) fn translate_service(
    service: &Service,
    subject: &Subject,
    endpoints: &EndpointIndex,
    context: &NodeContext,
) -> Result<(Vec<ServicePort>, Vec<Problem>), Problem> {
    let name = match service.metadata.name.as_deref() {
        Some(name) if !name.is_empty() => name,
        _ => return Err(subject.invalid("metadata.name", "missing")),
    };
    if not_proxied(&service.metadata) {
        return Ok(Default::default());
    }
    let spec = service
        .spec
        .as_ref()
        .ok_or_else(|| subject.invalid("spec", "missing"))?;
    let service_type = ServiceType::read(spec, subject)?;
    if service_type == ServiceType::ExternalName {
        return Ok(Default::default());
    }
    let mut ipv6 = Vec::new();
    let Some(ips) = FrontendIps::read(service, spec, subject, &mut ipv6)? else {
        return Ok((Vec::new(), ipv6_note(subject, &ipv6)));
    };
    let policies = Policies::read(spec, service_type, subject)?;
    let (ports, mut notes) = read_ports(spec, subject)?;
    let load_balancer = LoadBalancerSpec::read(spec, service_type, &policies, subject, &mut ipv6)?;
    notes.extend(ipv6_note(subject, &ipv6));
    let service = Validated {
        namespace: namespace(&service.metadata),
        name,
        ips,
        policies,
        load_balancer,
    };
    Ok((
        ports
            .iter()
            .map(|port| service.port(port, endpoints, context))
            .collect(),
        notes,
    ))
}

/// A Service whose shared parts all passed validation.
struct Validated<'a> {
    namespace: &'a str,
    name: &'a str,
    ips: FrontendIps,
    policies: Policies,
    load_balancer: LoadBalancerSpec,
}

impl Validated<'_> {
    fn port(
        &self,
        port: &PortSpec,
        endpoints: &EndpointIndex,
        context: &NodeContext,
    ) -> ServicePort {
        let local = &context.local;
        let key = (port.name.clone(), port.protocol);
        ServicePort {
            name: ServicePortName {
                namespace: self.namespace.to_owned(),
                name: self.name.to_owned(),
                port: port.name.clone(),
            },
            frontends: self.ips.frontends(port, &context.node_ports),
            backends: endpoints.backends(self.namespace, self.name, &key, &local.name),
            external_policy: self.policies.external,
            internal_policy: self.policies.internal,
            affinity_timeout_secs: self.policies.affinity_timeout_secs,
            health_check_node_port: self.load_balancer.health_check_node_port,
            source_ranges: self
                .load_balancer
                .allowed_sources(&self.ips.load_balancer, &local.addresses),
        }
    }
}

/// The one log line per object for all its IPv6 parts.
fn ipv6_note(subject: &Subject, fields: &[String]) -> Vec<Problem> {
    if fields.is_empty() {
        return Vec::new();
    }
    vec![subject.unsupported(
        fields.join(", "),
        "IPv6 skipped: the datapath serves IPv4 only",
    )]
}

/// The IPv4 addresses a Service answers on, besides the node's own.
struct FrontendIps {
    cluster: Ipv4Addr,
    external: Vec<Ipv4Addr>,
    load_balancer: Vec<Ipv4Addr>,
}

impl FrontendIps {
    /// None: the Service has nothing for an IPv4 proxy (headless, unallocated, IPv6-only).
    /// IPv6 addresses are skipped and their fields added to `ipv6`.
    fn read(
        service: &Service,
        spec: &ServiceSpec,
        subject: &Subject,
        ipv6: &mut Vec<String>,
    ) -> Result<Option<FrontendIps>, Problem> {
        let cluster_ips = cluster_ip_fields(spec);
        // kube-proxy's ShouldSkipService: clusterIP "None" (headless) or "" (not allocated).
        match cluster_ips.first() {
            None => return Ok(None),
            Some((_, ip)) if ip.is_empty() || *ip == "None" => return Ok(None),
            Some(_) => {}
        }
        let cluster = ipv4_addresses(cluster_ips, subject, ipv6)?
            .into_iter()
            .next();
        let external = ipv4_addresses(
            indexed("spec.externalIPs", spec.external_ips.as_deref()),
            subject,
            ipv6,
        )?;
        let load_balancer = ipv4_addresses(load_balancer_ips(service), subject, ipv6)?;
        // An IPv6-only Service: the IPv4 proxier has no cluster IP for it and skips it whole.
        Ok(cluster.map(|cluster| FrontendIps {
            cluster,
            external,
            load_balancer,
        }))
    }

    fn frontends(&self, port: &PortSpec, node_addresses: &[Ipv4Addr]) -> Vec<Frontend> {
        let protocol = port.protocol;
        let at = |ip: &Ipv4Addr, port: u16, kind| Frontend {
            ip: *ip,
            port,
            protocol,
            kind,
        };
        let mut frontends = vec![at(&self.cluster, port.port, FrontendKind::ClusterIp)];
        // kube-proxy serves a nodePort whenever one is set (the API sets it only for the
        // NodePort and LoadBalancer types).
        if let Some(node_port) = port.node_port {
            frontends.extend(
                node_addresses
                    .iter()
                    .map(|ip| at(ip, node_port, FrontendKind::NodePort)),
            );
        }
        frontends.extend(
            self.external
                .iter()
                .map(|ip| at(ip, port.port, FrontendKind::ExternalIp)),
        );
        frontends.extend(
            self.load_balancer
                .iter()
                .map(|ip| at(ip, port.port, FrontendKind::LoadBalancer)),
        );
        frontends.sort();
        frontends.dedup();
        frontends
    }
}

/// spec.clusterIPs (the dual-stack field) if set, else the legacy spec.clusterIP.
fn cluster_ip_fields(spec: &ServiceSpec) -> Vec<(String, &str)> {
    match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => indexed("spec.clusterIPs", Some(ips)),
        _ => spec
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_owned(), ip.as_str()))
            .collect(),
    }
}

/// status.loadBalancer.ingress[].ip, except ipMode Proxy ingresses: those load balancers
/// deliver to the node ports themselves, so kube-proxy does not program their IPs.
fn load_balancer_ips(service: &Service) -> Vec<(String, &str)> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref());
    ingress
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter(|(_, ing)| ing.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|(i, ing)| {
            Some((
                format!("status.loadBalancer.ingress[{i}].ip"),
                ing.ip.as_deref()?,
            ))
        })
        .collect()
}

/// ("field[i]", value) for every element of a list field.
fn indexed<'a>(field: &str, values: Option<&'a [String]>) -> Vec<(String, &'a str)> {
    let values = values.unwrap_or_default();
    values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("{field}[{i}]"), v.as_str()))
        .collect()
}

/// Parses addresses: IPv4 kept, IPv6 skipped (field noted), anything else invalidates the object.
fn ipv4_addresses(
    fields: Vec<(String, &str)>,
    subject: &Subject,
    ipv6: &mut Vec<String>,
) -> Result<Vec<Ipv4Addr>, Problem> {
    ipv4_only(fields, parse::ip, subject, ipv6)
}

/// One valid, supported entry of spec.ports.
struct PortSpec {
    name: String,
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
}

/// spec.ports: the supported ports plus notes for the SCTP ones.
fn read_ports(
    spec: &ServiceSpec,
    subject: &Subject,
) -> Result<(Vec<PortSpec>, Vec<Problem>), Problem> {
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        return Err(subject.invalid(
            "spec.ports",
            "a Service with a cluster IP needs at least one port",
        ));
    }
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    for (i, p) in ports.iter().enumerate() {
        let field = |name: &str| format!("spec.ports[{i}].{name}");
        let name = p.name.clone().unwrap_or_default();
        if !names.insert(name.clone()) {
            return Err(subject.invalid(field("name"), format!("duplicate port name {name:?}")));
        }
        let port = parse::port(p.port).map_err(|m| subject.invalid(field("port"), m))?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(parse::port(n).map_err(|m| subject.invalid(field("nodePort"), m))?),
        };
        let protocol = match parse::protocol(p.protocol.as_deref()) {
            Ok(PortProtocol::Supported(protocol)) => protocol,
            Ok(PortProtocol::Sctp) => {
                notes.push(subject.unsupported(
                    field("protocol"),
                    "SCTP port skipped: the datapath serves TCP and UDP",
                ));
                continue;
            }
            Err(message) => return Err(subject.invalid(field("protocol"), message)),
        };
        if !numbers.insert((port, protocol)) {
            return Err(
                subject.invalid(field("port"), format!("duplicate port {port}/{protocol:?}"))
            );
        }
        out.push(PortSpec {
            name,
            protocol,
            port,
            node_port,
        });
    }
    Ok((out, notes))
}
