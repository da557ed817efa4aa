//! EndpointSlices, indexed by the service port they serve (kube-proxy's endpointslicecache).

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::{
    objects::{label, namespace, namespaced_name, not_proxied},
    parse::{self, PortProtocol},
    problem::{Problem, Subject},
};
use crate::model::{Backend, Hint, Hints, Protocol};

/// This node, as endpoint hints are resolved against it.
pub(crate) struct Here<'a> {
    pub node: &'a str,
    /// topology.kubernetes.io/zone of this node's Node object.
    pub zone: Option<&'a str>,
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What a slice port is matched to a service port by: its name and protocol, as kube-proxy's
/// ServicePortName.
pub(crate) type PortKey = (String, Protocol);

/// Every IPv4 endpoint of every service port, from all the slices of each service.
#[derive(Debug, Default)]
pub(crate) struct EndpointIndex {
    /// (namespace, service name) -> port -> backends, unsorted and possibly duplicated.
    services: HashMap<(String, String), HashMap<PortKey, Vec<Backend>>>,
}

impl EndpointIndex {
    /// Reads every slice; invalid ones are skipped with a problem.
    pub fn build(slices: &[Arc<EndpointSlice>], here: &Here, problems: &mut Vec<Problem>) -> Self {
        let mut index = EndpointIndex::default();
        let mut seen = HashSet::new();
        for slice in slices {
            let subject = slice_subject(slice);
            if !seen.insert(subject.object.clone()) {
                problems.push(duplicate(&subject));
                continue;
            }
            if let Some((service, ports)) = read(slice, &subject, here, problems) {
                index.insert(service, ports);
            }
        }
        index
    }

    /// Adds one slice's backends (what [`read`] returned) to `service`'s.
    pub fn insert(&mut self, (namespace, service): ServiceRef<'_>, ports: Vec<SlicePort>) {
        let entry = self
            .services
            .entry((namespace.to_owned(), service.to_owned()))
            .or_default();
        for (key, backends) in ports {
            entry.entry(key).or_default().extend(backends);
        }
    }

    /// The backends of one service port, sorted by address. An address:port listed in several
    /// slices appears once; like kube-proxy, the copy on `local_node` wins if there is one.
    pub fn backends(
        &self,
        namespace: &str,
        service: &str,
        port: &PortKey,
        local_node: &str,
    ) -> Vec<Backend> {
        let Some(all) = self
            .services
            .get(&(namespace.to_owned(), service.to_owned()))
            .and_then(|ports| ports.get(port))
        else {
            return Vec::new();
        };
        let mut backends = all.clone();
        backends.sort();
        let mut out: Vec<Backend> = Vec::with_capacity(backends.len());
        for backend in backends {
            match out.last_mut() {
                Some(last) if (last.ip, last.port) == (backend.ip, backend.port) => {
                    if backend.node_name.as_deref() == Some(local_node) {
                        *last = backend;
                    }
                }
                _ => out.push(backend),
            }
        }
        out
    }
}

/// (namespace, name) of a Service, as a slice's label names it.
pub(crate) type ServiceRef<'a> = (&'a str, &'a str);

/// One port of a slice: what it is matched by, and the slice's endpoints on it.
pub(crate) type SlicePort = (PortKey, Vec<Backend>);

/// How problems name a slice.
pub(crate) fn slice_subject(slice: &EndpointSlice) -> Subject {
    Subject::new("EndpointSlice", namespaced_name(&slice.metadata))
}

/// The problem of a second slice of one name.
pub(crate) fn duplicate(subject: &Subject) -> Problem {
    subject.invalid(
        "metadata.name",
        "duplicate EndpointSlice, the first one is used",
    )
}

/// What one slice gives its Service; None for a slice of no proxied Service. An invalid slice
/// gives no backends (its problem pushed).
pub(crate) fn read<'s>(
    slice: &'s EndpointSlice,
    subject: &Subject,
    here: &Here,
    problems: &mut Vec<Problem>,
) -> Option<(ServiceRef<'s>, Vec<SlicePort>)> {
    let service = service_of(slice)?;
    let ports = read_slice(slice, subject, here, problems).unwrap_or_else(|problem| {
        problems.push(problem);
        Vec::new()
    });
    Some((service, ports))
}

/// The Service a slice belongs to: its label's, unless kube-proxy's selector leaves it out.
/// Slices without the label belong to no Service (kube-proxy ignores them too).
pub(crate) fn service_of(slice: &EndpointSlice) -> Option<ServiceRef<'_>> {
    let service = label(&slice.metadata, SERVICE_NAME_LABEL)?;
    (!not_proxied(&slice.metadata)).then_some((namespace(&slice.metadata), service))
}

/// One slice's backends per port. Err: the slice is invalid and skipped whole.
fn read_slice(
    slice: &EndpointSlice,
    subject: &Subject,
    here: &Here,
    notes: &mut Vec<Problem>,
) -> Result<Vec<SlicePort>, Problem> {
    if slice.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(subject.invalid("metadata.name", "missing"));
    }
    match slice.address_type.as_str() {
        "IPv4" => {}
        "IPv6" => {
            notes.push(subject.unsupported(
                "addressType",
                "IPv6 endpoints skipped: the datapath serves IPv4 only",
            ));
            return Ok(Vec::new());
        }
        // kube-proxy ignores FQDN slices: there is no address to forward to.
        "FQDN" => return Ok(Vec::new()),
        // k8s-openapi decodes a missing required string as "".
        "" => return Err(subject.invalid("addressType", "missing")),
        other => {
            return Err(subject.invalid("addressType", format!("unknown address type {other:?}")))
        }
    }
    let ports = slice_ports(slice, subject)?;
    let targets: Vec<Target> = slice
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, endpoint)| Target::read(endpoint, i, subject, here))
        .collect::<Result<_, _>>()?;
    Ok(ports
        .into_iter()
        .map(|(key, port)| (key, targets.iter().map(|t| t.backend(port)).collect()))
        .collect())
}

/// The slice's ports as (name, protocol) -> target port number.
fn slice_ports(slice: &EndpointSlice, subject: &Subject) -> Result<Vec<(PortKey, u16)>, Problem> {
    let mut ports = Vec::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        let protocol = match parse::protocol(port.protocol.as_deref()) {
            Ok(PortProtocol::Supported(protocol)) => protocol,
            // The Service side reports SCTP once; its endpoints are simply not needed.
            Ok(PortProtocol::Sctp) => continue,
            Err(message) => return Err(subject.invalid(format!("ports[{i}].protocol"), message)),
        };
        // A port without a number means "all ports", which no Service uses: nothing to match.
        let Some(number) = port.port else { continue };
        let number =
            parse::port(number).map_err(|m| subject.invalid(format!("ports[{i}].port"), m))?;
        ports.push(((port.name.clone().unwrap_or_default(), protocol), number));
    }
    Ok(ports)
}

/// One endpoint of a slice, before it is combined with a port.
struct Target {
    ip: Ipv4Addr,
    node_name: Option<String>,
    ready: bool,
    serving: bool,
    terminating: bool,
    hints: Hints,
}

impl Target {
    fn read(
        endpoint: &Endpoint,
        index: usize,
        subject: &Subject,
        here: &Here,
    ) -> Result<Target, Problem> {
        // kube-proxy uses the first address only; the API allows exactly one per endpoint.
        let field = format!("endpoints[{index}].addresses");
        let address = endpoint
            .addresses
            .first()
            .ok_or_else(|| subject.invalid(&field, "no address"))?;
        let ip = parse::ipv4(address).map_err(|m| subject.invalid(format!("{field}[0]"), m))?;
        let conditions = endpoint.conditions.clone().unwrap_or_default();
        // The API's documented defaults: ready absent = true, serving absent = ready,
        // terminating absent = false.
        let ready = conditions.ready.unwrap_or(true);
        Ok(Target {
            ip,
            node_name: endpoint.node_name.clone().filter(|n| !n.is_empty()),
            ready,
            serving: conditions.serving.unwrap_or(ready),
            terminating: conditions.terminating.unwrap_or(false),
            hints: hints(endpoint, here),
        })
    }

    fn backend(&self, port: u16) -> Backend {
        Backend {
            ip: self.ip,
            port,
            node_name: self.node_name.clone(),
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
            hints: self.hints,
        }
    }
}

/// hints.forNodes and hints.forZones against this node (kube-proxy's NodeHints/ZoneHints sets:
/// an empty list is no hint). A node without a zone label matches no zone hint.
fn hints(endpoint: &Endpoint, here: &Here) -> Hints {
    let hints = endpoint.hints.as_ref();
    let nodes = hints
        .and_then(|h| h.for_nodes.as_deref())
        .unwrap_or_default();
    let zones = hints
        .and_then(|h| h.for_zones.as_deref())
        .unwrap_or_default();
    Hints {
        node: hint(nodes.iter().map(|n| n.name.as_str()), Some(here.node)),
        zone: hint(zones.iter().map(|z| z.name.as_str()), here.zone),
    }
}

fn hint<'a>(mut names: impl ExactSizeIterator<Item = &'a str>, this: Option<&str>) -> Hint {
    if names.len() == 0 {
        Hint::Absent
    } else if this.is_some_and(|this| names.any(|n| n == this)) {
        Hint::Here
    } else {
        Hint::Elsewhere
    }
}
