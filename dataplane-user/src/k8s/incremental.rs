//! Translation in proportion to what changed, as kube-proxy's change trackers do: a
//! [`Translator`] keeps every Service's ports from the snapshots before, and translates again
//! only the Services whose own object, or one of whose EndpointSlices, is not the same object
//! (`Arc`) as in the last snapshot. Every other port keeps its `Arc`, so the published state
//! shares it with the previous one: comparing the two states, and the agent's delta walk
//! (`services::ServiceDelta::of`), pass over it with a pointer comparison.
//!
//! "The same object": the API source's reflector stores hand out the same `Arc` until an object
//! changes; the manifest source keeps the `Arc` of each object a re-read file holds unchanged.
//! Anything else translates everything again, keeping the `Arc` of each port that comes out
//! equal: another node context (addresses, zone, primary address), a snapshot that differs in
//! more than [`INCREMENTAL_MAX`] objects of a kind, and two objects of one name (then the
//! reference [`translate`] decides which one is used, until the duplicate goes).
//!
//! The result is the reference translation's, exactly (`incremental_tests.rs` checks it over
//! sequences of changes): a Service's ports read only its own object, its slices and the node
//! context, and the problems are the union of every object's.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{
    endpoints::{self, EndpointIndex, Here, SlicePort},
    local::LocalNode,
    nodes::translate_nodes,
    objects::{namespace, Objects},
    problem::Problem,
    this_node::{this_node, ThisNode},
    translate::{service_subject, translate, translate_service, NodeContext},
};
use crate::model::{ClusterState, NodeInfo, ServicePort, ServicePorts};

/// More objects of one kind changed than this: everything is translated again (cheaper than
/// that many sorted inserts, and a relist changes every object anyway).
pub const INCREMENTAL_MAX: usize = 256;

/// Translates snapshots of objects, each in proportion to what changed since the last one.
#[derive(Default)]
pub struct Translator {
    /// The snapshot translated last: the next one is diffed against it by identity.
    objects: Objects,
    /// The node context `index` was translated for.
    context: Option<NodeContext>,
    nodes: NodesDone,
    index: Index,
    /// Every Service's ports, sorted by name: the next state's.
    ports: Vec<Arc<ServicePort>>,
    /// `index` describes `objects` (false after the reference translation ran).
    indexed: bool,
    /// How the syncs went.
    paths: TranslatePaths,
}

/// How many syncs took each path (the tests check each is taken).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TranslatePaths {
    /// Only the changed objects translated.
    pub incremental: usize,
    /// Everything translated again by the index.
    pub rebuilt: usize,
    /// The reference translation (duplicate names).
    pub reference: usize,
}

/// Why the index cannot be updated (or built): translate everything again (or use the
/// reference translation).
struct Fallback;

impl Translator {
    pub fn new() -> Self {
        Translator::default()
    }

    /// [`translate`]`(&objects, local)`, translating only the Services that changed since the
    /// previous call (module documentation).
    pub fn translate(
        &mut self,
        objects: Objects,
        local: &LocalNode,
    ) -> (ClusterState, Vec<Problem>) {
        let out = match self.translate_indexed(&objects, local) {
            Ok(out) => out,
            Err(Fallback) => self.reference(&objects, local),
        };
        self.objects = objects;
        out
    }

    /// The snapshot translated last.
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    pub fn paths(&self) -> TranslatePaths {
        self.paths
    }

    fn translate_indexed(
        &mut self,
        objects: &Objects,
        local: &LocalNode,
    ) -> Result<(ClusterState, Vec<Problem>), Fallback> {
        self.nodes
            .refresh(&self.objects.nodes, &objects.nodes, &local.name);
        let context = NodeContext::new(local, &self.nodes.this);
        let same_context = self.context.as_ref() == Some(&context);
        self.context = Some(context);
        if self.indexed && same_context && self.update(objects).is_ok() {
            self.paths.incremental += 1;
        } else {
            self.rebuild(objects)?;
            self.paths.rebuilt += 1;
        }
        Ok((self.state(), self.problems()))
    }

    /// Applies the objects that differ from the last snapshot's to the index and the ports.
    fn update(&mut self, objects: &Objects) -> Result<(), Fallback> {
        let (gone_services, new_services) = changed(&self.objects.services, &objects.services)?;
        let (gone_slices, new_slices) =
            changed(&self.objects.endpoint_slices, &objects.endpoint_slices)?;
        let context = self.context.as_ref().expect("set by translate_indexed");
        let mut touched = HashSet::new();
        for slice in gone_slices {
            touched.extend(self.index.remove_slice(slice));
        }
        for service in gone_services {
            touched.insert(self.index.remove_service(service));
        }
        for slice in new_slices {
            touched.extend(self.index.add_slice(slice, &context.here())?);
        }
        for service in new_services {
            touched.insert(self.index.add_service(service)?);
        }
        for key in touched {
            let (old, new) = self.index.translate(&key, context, &self.ports);
            replace(&mut self.ports, &old, &new);
        }
        Ok(())
    }

    /// Builds the index from `objects` alone; ports equal to one of the last state's keep its
    /// `Arc`. Err: two objects of one name.
    fn rebuild(&mut self, objects: &Objects) -> Result<(), Fallback> {
        self.indexed = false;
        self.index = Index::default();
        let context = self.context.as_ref().expect("set by translate_indexed");
        for slice in &objects.endpoint_slices {
            self.index.add_slice(slice, &context.here())?;
        }
        for service in &objects.services {
            self.index.add_service(service)?;
        }
        let keys: Vec<String> = self.index.entries.keys().cloned().collect();
        let mut ports = Vec::new();
        for key in keys {
            ports.extend(self.index.translate(&key, context, &self.ports).1);
        }
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        self.ports = ports;
        self.indexed = true;
        Ok(())
    }

    /// The reference translation, for snapshots the index cannot describe (duplicates).
    fn reference(&mut self, objects: &Objects, local: &LocalNode) -> (ClusterState, Vec<Problem>) {
        self.index = Index::default();
        self.indexed = false;
        self.paths.reference += 1;
        let (mut state, problems) = translate(objects, local);
        let ports = state
            .services
            .iter()
            .map(|p| share(&self.ports, (**p).clone()));
        state.services = ports.collect();
        self.ports = state.services.to_vec();
        (state, problems)
    }

    fn state(&self) -> ClusterState {
        ClusterState {
            services: ServicePorts::from_sorted_unique(self.ports.clone()),
            nodes: self.nodes.infos.clone(),
            node_deleting: self.nodes.this.deleting,
        }
    }

    /// Every object's problems, sorted, without duplicates.
    fn problems(&self) -> Vec<Problem> {
        let mut out = self.nodes.problems.clone();
        for key in &self.index.troubled {
            out.extend(self.index.entries[key].problems.iter().cloned());
        }
        out.sort();
        out.dedup();
        out
    }
}

/// What the Nodes gave, translated again only when a Node object changed.
#[derive(Default)]
struct NodesDone {
    /// The node name `this` was read for; None before the first refresh.
    name: Option<String>,
    this: ThisNode,
    infos: Vec<NodeInfo>,
    problems: Vec<Problem>,
}

impl NodesDone {
    /// After `before`, the Nodes are `nodes` and this node is `name`.
    fn refresh(&mut self, before: &[Arc<Node>], nodes: &[Arc<Node>], name: &str) {
        let same =
            before.len() == nodes.len() && before.iter().zip(nodes).all(|(a, b)| Arc::ptr_eq(a, b));
        if same && self.name.as_deref() == Some(name) {
            return;
        }
        let mut problems = Vec::new();
        *self = NodesDone {
            name: Some(name.to_owned()),
            this: this_node(nodes, name),
            infos: translate_nodes(nodes, &mut problems),
            problems,
        };
    }
}

/// Every Service's objects and what they translated to, by "namespace/name".
#[derive(Default)]
struct Index {
    entries: HashMap<String, Entry>,
    /// Every slice's "namespace/name", to notice a second slice of one name.
    slice_names: HashSet<String>,
    /// The entries with problems.
    troubled: HashSet<String>,
}

/// One Service name: its object and slices, as far as the snapshot has them.
#[derive(Default)]
struct Entry {
    service: Option<Arc<Service>>,
    slices: Vec<SliceRead>,
    /// What they translated to.
    ports: Vec<Arc<ServicePort>>,
    problems: Vec<Problem>,
}

/// One slice of a Service and what it was read as (the node context is fixed while the index
/// lives).
struct SliceRead {
    object: Arc<EndpointSlice>,
    ports: Vec<SlicePort>,
    problems: Vec<Problem>,
}

impl Index {
    /// Adds a slice; Some: the Service it belongs to.
    fn add_slice(
        &mut self,
        slice: &Arc<EndpointSlice>,
        here: &Here,
    ) -> Result<Option<String>, Fallback> {
        let subject = endpoints::slice_subject(slice);
        if !self.slice_names.insert(subject.object.clone()) {
            return Err(Fallback);
        }
        let mut problems = Vec::new();
        let Some(((ns, name), ports)) = endpoints::read(slice, &subject, here, &mut problems)
        else {
            return Ok(None);
        };
        let key = entry_key(ns, name)?;
        self.entries
            .entry(key.clone())
            .or_default()
            .slices
            .push(SliceRead {
                object: slice.clone(),
                ports,
                problems,
            });
        Ok(Some(key))
    }

    /// Removes a slice of the last snapshot; Some: the Service it belonged to.
    fn remove_slice(&mut self, slice: &Arc<EndpointSlice>) -> Option<String> {
        self.slice_names
            .remove(&endpoints::slice_subject(slice).object);
        let (ns, name) = endpoints::service_of(slice)?;
        let key = entry_key(ns, name).ok()?;
        let entry = self.entries.get_mut(&key)?;
        entry.slices.retain(|s| !Arc::ptr_eq(&s.object, slice));
        Some(key)
    }

    /// Adds a Service; its name.
    fn add_service(&mut self, service: &Arc<Service>) -> Result<String, Fallback> {
        let meta = &service.metadata;
        let key = entry_key(namespace(meta), meta.name.as_deref().unwrap_or("<unnamed>"))?;
        debug_assert_eq!(key, service_subject(service).object);
        let entry = self.entries.entry(key.clone()).or_default();
        if entry.service.is_some() {
            return Err(Fallback);
        }
        entry.service = Some(service.clone());
        Ok(key)
    }

    /// Removes a Service of the last snapshot; its name.
    fn remove_service(&mut self, service: &Arc<Service>) -> String {
        let key = service_subject(service).object;
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.service = None;
        }
        key
    }

    /// Translates the Service `key` again: (its ports before, its ports now). A new port equal
    /// to one in `shared` (sorted by name) is that one.
    fn translate(
        &mut self,
        key: &str,
        context: &NodeContext,
        shared: &[Arc<ServicePort>],
    ) -> (Vec<Arc<ServicePort>>, Vec<Arc<ServicePort>>) {
        let Some(entry) = self.entries.get_mut(key) else {
            return Default::default();
        };
        let old = std::mem::take(&mut entry.ports);
        let (ports, problems) = entry.read(context);
        entry.ports = ports.into_iter().map(|p| share(shared, p)).collect();
        entry.problems = problems;
        let new = entry.ports.clone();
        if entry.problems.is_empty() {
            self.troubled.remove(key);
        } else {
            self.troubled.insert(key.to_owned());
        }
        if entry.service.is_none() && entry.slices.is_empty() {
            self.entries.remove(key);
        }
        (old, new)
    }
}

impl Entry {
    /// What the reference translation makes of this Service and its slices.
    fn read(&self, context: &NodeContext) -> (Vec<ServicePort>, Vec<Problem>) {
        let mut problems: Vec<Problem> = self
            .slices
            .iter()
            .flat_map(|s| s.problems.iter().cloned())
            .collect();
        let Some(service) = &self.service else {
            return (Vec::new(), problems);
        };
        let mut index = EndpointIndex::default();
        let name = service.metadata.name.as_deref().unwrap_or_default();
        for slice in &self.slices {
            index.insert((namespace(&service.metadata), name), slice.ports.clone());
        }
        let subject = service_subject(service);
        match translate_service(service, &subject, &index, context) {
            Ok((ports, notes)) => {
                problems.extend(notes);
                (ports, problems)
            }
            Err(problem) => {
                problems.push(problem);
                (Vec::new(), problems)
            }
        }
    }
}

/// "namespace/name" of a Service, as its problems name it; Err for a part with a "/" (no valid
/// object has one), where two names could give one key: the reference translation decides.
fn entry_key(namespace: &str, name: &str) -> Result<String, Fallback> {
    if namespace.contains('/') || name.contains('/') {
        return Err(Fallback);
    }
    Ok(format!("{namespace}/{name}"))
}

/// The port of `shared` (sorted by name) equal to `port`, else `port`.
fn share(shared: &[Arc<ServicePort>], port: ServicePort) -> Arc<ServicePort> {
    match shared.binary_search_by(|p| p.name.cmp(&port.name)) {
        Ok(i) if *shared[i] == port => shared[i].clone(),
        _ => Arc::new(port),
    }
}

/// In `ports` (sorted by name), one Service's `old` ports replaced by its `new` ones.
fn replace(ports: &mut Vec<Arc<ServicePort>>, old: &[Arc<ServicePort>], new: &[Arc<ServicePort>]) {
    let find = |ports: &[Arc<ServicePort>], p: &ServicePort| {
        ports.binary_search_by(|q| q.name.cmp(&p.name))
    };
    for gone in old.iter().filter(|o| new.iter().all(|n| n.name != o.name)) {
        if let Ok(i) = find(ports, gone) {
            ports.remove(i);
        }
    }
    for port in new {
        match find(ports, port) {
            Ok(i) => ports[i] = port.clone(),
            Err(i) => ports.insert(i, port.clone()),
        }
    }
}

/// The objects `before` holds and `after` does not, and those `after` holds new, by identity.
/// Snapshots keep their order between changes (a store's, or the files'), so the common head
/// and tail are skipped by pointer; Err when more than [`INCREMENTAL_MAX`] objects differ.
#[allow(clippy::type_complexity)]
fn changed<'a, T>(
    before: &'a [Arc<T>],
    after: &'a [Arc<T>],
) -> Result<(Vec<&'a Arc<T>>, Vec<&'a Arc<T>>), Fallback> {
    let same = |(a, b): &(&Arc<T>, &Arc<T>)| Arc::ptr_eq(a, b);
    let head = before.iter().zip(after).take_while(same).count();
    let (before, after) = (&before[head..], &after[head..]);
    let tail = before
        .iter()
        .rev()
        .zip(after.iter().rev())
        .take_while(same)
        .count();
    let (before, after) = (&before[..before.len() - tail], &after[..after.len() - tail]);
    if before.len().max(after.len()) > INCREMENTAL_MAX {
        return Err(Fallback);
    }
    let ids = |v: &[Arc<T>]| v.iter().map(Arc::as_ptr).collect::<HashSet<_>>();
    let (old, new) = (ids(before), ids(after));
    let gone = before.iter().filter(|o| !new.contains(&Arc::as_ptr(o)));
    let added = after.iter().filter(|o| !old.contains(&Arc::as_ptr(o)));
    Ok((gone.collect(), added.collect()))
}
