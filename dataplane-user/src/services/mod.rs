//! The typed API over the service load-balancing maps (`SERVICES_V2`, `BACKENDS_V2`,
//! `AFFINITY_V1`, `CT_V2`, `CONFIG_V2`; layouts in `dataplane_common::{lb, ct}`). Nothing else
//! writes them: the control plane and the tests both go through [`ServiceTable`].
//!
//! A [`ServiceTable`] turns [`ServicePort`]s into map entries with kube-proxy's semantics,
//! decided here at update time so the datapath does no per-packet policy work:
//! - eligible backends: within the frontend's traffic policy (internalTrafficPolicy for the
//!   ClusterIP, externalTrafficPolicy for NodePort, externalIPs and LoadBalancer IPs; Local keeps
//!   this node's endpoints) the ready endpoints, or if none is ready the serving-and-terminating
//!   ones; deduplicated and sorted, so an unchanged endpoint set writes nothing;
//! - flags: `SVC_F_EXTERNAL` for external frontends, `SVC_F_MASQUERADE` for those under
//!   externalTrafficPolicy Cluster, `SVC_F_LOCAL_ONLY` under a Local policy, `SVC_F_AFFINITY`
//!   with sessionAffinity ClientIP; `BE_F_LOCAL` on backends of this node;
//! - `count` 0 when no endpoint is eligible: the datapath rejects, like kube-proxy's REJECT.
//!
//! Every update is planned first, purely ([`plan`]), then executed in an order that keeps the
//! invariant of `dataplane_common::lb`: a packet never sees a half-written service. After the
//! switch, UDP conntrack entries and affinity entries of backends that left a frontend are
//! purged, so UDP flows move to a live backend on their next datagram; TCP connections drain.
//!
//! # One writer
//! The table keeps a mirror of `SERVICES_V2` and `BACKENDS_V2` and allocates ids from it, so
//! **one `ServiceTable` at a time may write a set of maps** (the control plane, or a test while
//! no control plane runs); this is not enforced. Opening a table adopts whatever the maps hold
//! (frontend ids in use, set ids continuing after the highest), so a restarted writer never
//! collides with live ids. Which service a frontend belongs to is not in the maps: after a
//! restart, [`ServiceTable::sync`] (the first thing a control plane does) reconciles every
//! frontend; until then [`ServiceTable::remove`] only knows frontends upserted since opening.
//! Readers ([`list_services`], [`list_conntrack`], the datapath) may run at any time.

pub mod addr_bits;
mod apply;
mod apply_batch;
#[cfg(test)]
mod batch_tests;
mod delta;
#[cfg(test)]
mod delta_tests;
#[cfg(test)]
mod failure_tests;
#[cfg(test)]
mod flow_tests;
mod mirror;
mod names;
mod outcome;
mod plan;
pub mod show;
mod source_ranges;
mod spec;
mod store;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod topology_tests;

use foldhash::{HashMap, HashMapExt as _, HashSet};
use std::{borrow::Borrow, fmt, path::Path};

use anyhow::Result;
use aya::Ebpf;
use dataplane_common::lb::{
    ServiceKey, ServiceValue, ADDR_F_BACKEND, ADDR_F_FRONTEND, ADDR_F_NODE,
};

use self::{
    mirror::Mirror,
    plan::{plan, Desired, MapOp},
    spec::{frontend_specs, show_key},
};
use crate::model::{ServicePort, ServicePortName};

pub use self::{
    delta::{ServiceDelta, INCREMENTAL_MAX},
    names::{read_names, ServiceNames},
    outcome::{CapacityProblem, RemovedBackend, ServiceFailure, SyncOutcome},
    show::{
        list_conntrack, list_services, render_conntrack, render_services, BackendRow, CtDirection,
        CtRow, ServiceRow,
    },
    source_ranges::{RangeEntry, SourceRanges},
    spec::service_key,
    store::{read_config, write_config, KernelMaps, MapSource, MapStore, MemMaps, StaleBackends},
};

/// This node, as the traffic policies need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalContext {
    /// This node's name (as in the Node object): endpoints whose nodeName matches are local.
    pub node_name: String,
    /// loadBalancerSourceRanges also restrict the Service's NodePorts, not only its
    /// load-balancer IPs (`--lb-source-ranges-node-ports`, as Cilium's
    /// `bpf-lb-source-range-all-types`). kube-proxy restricts the load-balancer IPs only.
    pub source_ranges_on_node_ports: bool,
}

/// What one update did: entries written and deleted, per map. Unchanged frontends count zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// `SERVICES_V2` values written (new frontends, switches, flag changes).
    pub services_written: usize,
    /// `SERVICES_V2` entries deleted (removed frontends).
    pub services_deleted: usize,
    /// `BACKENDS_V2` slots written (new sets only).
    pub backends_written: usize,
    /// `BACKENDS_V2` slots deleted (replaced or removed sets, orphans).
    pub backends_deleted: usize,
    /// UDP conntrack entries of removed backends.
    pub conntrack_deleted: usize,
    /// sessionAffinity entries of removed backends.
    pub affinity_deleted: usize,
}

impl UpdateReport {
    /// `SERVICES_V2` and `BACKENDS_V2` entries written.
    pub fn written(&self) -> usize {
        self.services_written + self.backends_written
    }

    /// Entries deleted from any map.
    pub fn deleted(&self) -> usize {
        self.services_deleted
            + self.backends_deleted
            + self.conntrack_deleted
            + self.affinity_deleted
    }

    /// Whether the update left every map untouched.
    pub fn is_empty(&self) -> bool {
        self.written() == 0 && self.deleted() == 0
    }

    fn record(&mut self, op: &MapOp) {
        match op {
            MapOp::PutService(..) => self.services_written += 1,
            MapOp::DeleteService(..) => self.services_deleted += 1,
            MapOp::PutBackend(..) => self.backends_written += 1,
            MapOp::DeleteBackend(..) => self.backends_deleted += 1,
            MapOp::PurgeFlows { .. } => {}
        }
    }
}

impl fmt::Display for UpdateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "services +{} -{}, backends +{} -{}, conntrack -{}, affinity -{}",
            self.services_written,
            self.services_deleted,
            self.backends_written,
            self.backends_deleted,
            self.conntrack_deleted,
            self.affinity_deleted
        )
    }
}

/// The service maps as a table of [`ServicePort`]s. See the module documentation for the
/// semantics and the one-writer rule.
pub struct ServiceTable<S: MapStore = KernelMaps> {
    store: S,
    local: LocalContext,
    /// What the maps hold, as far as this writer knows (exactly, with one writer).
    mirror: Mirror,
    /// The service port each frontend was last upserted or synced for.
    owners: HashMap<ServiceKey, ServicePortName>,
    by_name: HashMap<ServicePortName, HashSet<ServiceKey>>,
    /// Purges of an update that failed after its switches; retried by the next update.
    pending_purge: StaleBackends,
    /// What `LB_ADDRS_V1` holds (the pod hooks' pre-filter): every frontend and backend
    /// address the maps ever held, and the node's own addresses the agent put there. Addresses
    /// are never retired: connections a removed service or backend still carries (TCP drains,
    /// as under kube-proxy) keep needing their translation at the pod hooks, and a stale
    /// address only costs its packets the full path. The set is bounded by the cluster's pod
    /// and service address ranges; `dataplane cleanup` empties it.
    addrs: HashMap<u32, u32>,
    /// The maps hold exactly the last synced state, nothing failed or was left out or is owed,
    /// and no frontend had two claimants: [`ServiceTable::sync_delta`] may plan only changes.
    clean: bool,
    /// The largest backend set admitted so far (the room a replacement needs; `sync_delta`).
    largest_set: usize,
}

impl ServiceTable<KernelMaps> {
    /// Opens the maps pinned under `pin_dir` (by `dataplane run` or `loader::load`, possibly in
    /// another process) and adopts their content.
    pub fn open_pinned(pin_dir: &Path, local: LocalContext) -> Result<Self> {
        Self::open(pin_dir, local)
    }

    /// Opens the maps of a loaded object; the object keeps its own handles.
    pub fn from_ebpf(ebpf: &Ebpf, local: LocalContext) -> Result<Self> {
        Self::open(ebpf, local)
    }

    /// Opens the maps from any [`MapSource`] and adopts their content.
    pub fn open(source: &(impl MapSource + ?Sized), local: LocalContext) -> Result<Self> {
        Self::with_store(KernelMaps::open(source)?, local)
    }
}

impl<S: MapStore> ServiceTable<S> {
    /// A table over `store`, adopting what it holds.
    pub fn with_store(store: S, local: LocalContext) -> Result<Self> {
        let mut mirror = Mirror::adopt(store.dump_services()?, store.dump_backends()?);
        mirror.set_slot_limit(u32::try_from(store.capacity().1).unwrap_or(u32::MAX));
        let adopted = mirror.services().count();
        if adopted > 0 {
            log::info!(
                "adopted {adopted} service frontends, {} backend slots",
                mirror.backends_len()
            );
        }
        let addrs = store.dump_addrs()?.into_iter().collect();
        let mut store = store;
        store.adopt_addr_bits()?;
        Ok(ServiceTable {
            store,
            local,
            mirror,
            owners: HashMap::new(),
            by_name: HashMap::new(),
            pending_purge: StaleBackends::default(),
            addrs,
            clean: false,
            largest_set: 0,
        })
    }

    /// Lists the addresses `ops` are about to put in the maps in `LB_ADDRS_V1` first: a pod hook
    /// passes untranslated every packet whose addresses the set lacks, so an address must be
    /// there before the service or backend that uses it.
    fn announce_addrs(&mut self, ops: &[MapOp]) -> Result<()> {
        for op in ops {
            let (addr, flag) = match op {
                MapOp::PutBackend(_, v) => (v.addr, ADDR_F_BACKEND),
                MapOp::PutService(k, _) => (k.addr, ADDR_F_FRONTEND),
                _ => continue,
            };
            let old = self.addrs.get(&addr).copied().unwrap_or(0);
            if old & flag == 0 {
                self.store.put_addr(addr, old | flag)?;
                self.addrs.insert(addr, old | flag);
            }
        }
        Ok(())
    }

    /// Lists the node's own addresses in `LB_ADDRS_V1` (replies of masqueraded connections and
    /// of the node's own connections to services go to them; the agent calls this at start).
    pub fn set_node_addrs(&mut self, node: &[u32]) -> Result<()> {
        for addr in node {
            let old = self.addrs.get(addr).copied().unwrap_or(0);
            if old & ADDR_F_NODE == 0 {
                self.store.put_addr(*addr, old | ADDR_F_NODE)?;
                self.addrs.insert(*addr, old | ADDR_F_NODE);
            }
        }
        Ok(())
    }

    /// Creates or updates every frontend of `svc`, and removes frontends it had and no longer
    /// lists. A frontend (address:port:protocol) that another service port already holds is
    /// left to it (logged): the first to claim it keeps it until it lets go or a `sync` decides.
    pub fn upsert(&mut self, svc: &ServicePort) -> Result<UpdateReport> {
        // Not a state `sync_delta` knows: the next one diffs everything.
        self.clean = false;
        let specs = frontend_specs(svc, &self.local);
        let mut desired = self.dropped_frontends(&svc.name, &specs);
        for (key, spec) in specs {
            if let Some(owner) = self.owners.get(&key).filter(|owner| **owner != svc.name) {
                log::warn!(
                    "{}: frontend {} already serves {owner}; skipped",
                    svc.name,
                    show_key(&key)
                );
                continue;
            }
            desired.insert(key, Some(spec));
        }
        self.claim(&svc.name, &desired);
        self.mirror.prune_retired(std::time::Instant::now());
        self.execute(plan(&self.mirror, &desired))
    }

    /// Removes every frontend of the service port `name` (none if it is unknown).
    pub fn remove(&mut self, name: &ServicePortName) -> Result<UpdateReport> {
        self.clean = false;
        let keys = self.by_name.remove(name).unwrap_or_default();
        for key in &keys {
            self.owners.remove(key);
        }
        let desired: Desired = keys.into_iter().map(|key| (key, None)).collect();
        self.execute(plan(&self.mirror, &desired))
    }

    /// Makes the maps hold exactly `desired`: changed frontends are updated, missing ones
    /// removed, unchanged ones not touched at all; slots left by an interrupted writer are
    /// deleted. Two service ports claiming one frontend: the first by name keeps it (logged).
    /// Service ports are applied one by one ([`ServiceTable::sync_report`]): an error names
    /// those that failed or did not fit, and every other one is applied.
    pub fn sync(&mut self, desired: &[impl Borrow<ServicePort>]) -> Result<UpdateReport> {
        let outcome = self.sync_report(desired);
        match outcome.error() {
            Some(e) => Err(e),
            None => Ok(outcome.report),
        }
    }

    /// The `SERVICES_V2` value of a frontend, as this table last wrote or adopted it.
    pub fn frontend(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.mirror.service(key).copied()
    }

    /// Number of frontends in the maps.
    pub fn len(&self) -> usize {
        self.mirror.services().count()
    }

    /// Whether the maps hold no frontend.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The node the traffic policies are evaluated for.
    pub fn local(&self) -> &LocalContext {
        &self.local
    }

    /// The id the maps give the frontend `key`, if the table holds it.
    pub fn frontend_id(&self, key: &ServiceKey) -> Option<u32> {
        self.mirror.service(key).map(|v| v.frontend_id)
    }

    /// The underlying maps (the in-memory model's entries, in tests).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The underlying maps, e.g. to seed conntrack entries of an in-memory model.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Removals of the frontends the service port `name` holds and `specs` no longer lists:
    /// where an update of one port starts.
    fn dropped_frontends(
        &self,
        name: &ServicePortName,
        specs: &std::collections::HashMap<ServiceKey, spec::FrontendSpec>,
    ) -> Desired {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter(|key| !specs.contains_key(key))
            .map(|key| (*key, None))
            .collect()
    }

    fn claim(&mut self, name: &ServicePortName, desired: &Desired) {
        let keys = self.by_name.entry(name.clone()).or_default();
        for (key, spec) in desired {
            if spec.is_some() {
                keys.insert(*key);
                self.owners.insert(*key, name.clone());
            } else {
                keys.remove(key);
                self.owners.remove(key);
            }
        }
        if keys.is_empty() {
            self.by_name.remove(name);
        }
    }

    fn set_owners(&mut self, owners: HashMap<ServiceKey, ServicePortName>) {
        self.by_name.clear();
        for (key, name) in &owners {
            self.by_name.entry(name.clone()).or_default().insert(*key);
        }
        self.owners = owners;
    }

    /// Applies the plan of one service port's frontends as one transaction (see `apply`),
    /// then purges the flows of backends that left them, with the purges an earlier update
    /// still owes.
    fn execute(&mut self, ops: Vec<MapOp>) -> Result<UpdateReport> {
        let done = self.apply_unit(ops)?;
        let mut report = done.report;
        let mut stale = std::mem::take(&mut self.pending_purge);
        for (frontend_id, backends) in done.purges {
            stale.extend(
                backends
                    .iter()
                    .map(|&(addr, port)| (frontend_id, addr, port)),
            );
        }
        if !stale.is_empty() {
            match self.store.purge_flows(&stale) {
                Ok((ct, affinity)) => {
                    report.conntrack_deleted = ct;
                    report.affinity_deleted = affinity;
                }
                Err(e) => {
                    self.pending_purge = stale;
                    return Err(e);
                }
            }
        }
        if let Some(e) = done.cleanup_error {
            log::warn!("{e}");
        }
        if !report.is_empty() {
            log::debug!("service maps updated: {report}");
        }
        Ok(report)
    }
}

fn apply(store: &mut impl MapStore, op: &MapOp) -> Result<()> {
    match op {
        MapOp::PutBackend(key, value) => store.put_backend(key, value),
        MapOp::DeleteBackend(key) => store.delete_backend(key),
        MapOp::PutService(key, value) => store.put_service(key, value),
        MapOp::DeleteService(key) => store.delete_service(key),
        MapOp::PurgeFlows { .. } => Ok(()),
    }
}
