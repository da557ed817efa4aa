//! Applying a whole desired state one service port at a time, so that one service's failure
//! never stops the others and never leaves it half written.
//!
//! Each service port is a small transaction over its frontends' plan (see [`plan`]):
//! 1. every slot of every new backend set; a failed write deletes the slots written so far;
//! 2. every `SERVICES_V1` switch (and removal); a failed write restores the frontends already
//!    switched to their previous value (their old sets still exist: nothing is deleted before
//!    step 3), then deletes the new sets;
//! 3. the old sets' slots. A failure here leaves only slots no frontend names (the next sync's
//!    garbage collection deletes them): the service itself is fully applied.
//!
//! Readers see, per frontend, the old or the new value with a complete set at every instant; per
//! service, the transaction ends with all its frontends old or all new. (Within step 2 readers
//! may briefly see some frontends of a service switched and others not, as with kube-proxy's
//! iptables-restore of one chain after another.)
//!
//! Before any write the whole state is checked against the map sizes: when SERVICES_V1 or
//! BACKENDS_V1 would overflow, service ports that are already in the maps keep their place,
//! then new ones are admitted in name order while they fit; the rest are reported with the
//! count needed and the limit, and left as they are.

use foldhash::{HashMap, HashMapExt as _};

use anyhow::Result;
use dataplane_common::lb::{
    BackendKey, BackendValue, ServiceKey, ServiceValue, ADDR_F_BACKEND, ADDR_F_FRONTEND,
};

use super::{
    plan::{collect_garbage, plan, plan_each, Desired, MapOp},
    spec::{frontend_specs, ip_to_be, show_key},
    store::{MapStore, StaleBackends},
    ServiceTable, UpdateReport,
};
use crate::model::{ServicePort, ServicePortName};

/// What a [`ServiceTable::sync_report`] did and did not do.
#[derive(Clone, Debug, Default)]
pub struct SyncOutcome {
    /// Entries written and deleted by the service ports that were applied.
    pub report: UpdateReport,
    /// Service ports (or removals of frontends) whose writes failed: left as they were.
    pub failed: Vec<ServiceFailure>,
    /// Maps the desired state does not fit in, with the service ports left out.
    pub over_capacity: Vec<CapacityProblem>,
    /// Backends that left a frontend and are no longer endpoints of its service at all (gone
    /// from the EndpointSlices, not merely terminating or unready; or the service is gone).
    /// Sockets the node's socket-level balancing connected to them have no future.
    pub removed_backends: Vec<RemovedBackend>,
    /// Deferred work that failed (old slots, flow purges); retried by the next update. The
    /// services themselves are applied.
    pub cleanup_errors: Vec<String>,
}

impl SyncOutcome {
    /// Whether everything desired is in the maps and nothing is left to retry.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.over_capacity.is_empty() && self.cleanup_errors.is_empty()
    }

    /// Service ports not applied (failed or left out for capacity).
    pub fn not_applied(&self) -> usize {
        self.failed.len()
            + self
                .over_capacity
                .iter()
                .map(|p| p.skipped.len())
                .sum::<usize>()
    }

    /// One error describing everything that went wrong, if anything did.
    pub fn error(&self) -> Option<anyhow::Error> {
        if self.is_complete() {
            return None;
        }
        let mut parts: Vec<String> = self
            .failed
            .iter()
            .map(|f| format!("{}: {}", f.service, f.error))
            .collect();
        parts.extend(self.over_capacity.iter().map(ToString::to_string));
        parts.extend(self.cleanup_errors.iter().cloned());
        Some(anyhow::anyhow!("{}", parts.join("; ")))
    }
}

/// A service port (or a frontend removal) that could not be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFailure {
    /// `namespace/name:port`, or for a removal `namespace/name:port (removing frontend ...)`.
    pub service: String,
    pub error: String,
}

/// The desired state does not fit in `map`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapacityProblem {
    /// `SERVICES_V1` or `BACKENDS_V1`.
    pub map: &'static str,
    /// Entries the whole desired state needs (for BACKENDS_V1 including room for replacing the
    /// largest set, which an update writes before it deletes the old one).
    pub needed: usize,
    /// Entries the map has.
    pub limit: usize,
    /// Service ports left out (those already in the maps keep their previous state).
    pub skipped: Vec<ServicePortName>,
}

impl std::fmt::Display for CapacityProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.skipped.iter().take(5).map(|n| n.to_string()).collect();
        write!(
            f,
            "{} would need {} entries, limit {}: {} service port(s) not applied ({}{})",
            self.map,
            self.needed,
            self.limit,
            self.skipped.len(),
            names.join(", "),
            if self.skipped.len() > 5 { ", ..." } else { "" }
        )
    }
}

/// A backend that left `frontend` for good. Network order, as in the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemovedBackend {
    pub frontend: ServiceKey,
    pub addr: u32,
    pub port: u16,
}

/// What one applied transaction did.
#[derive(Default)]
pub(super) struct UnitDone {
    pub report: UpdateReport,
    /// (frontend id, backends that left it), from the plan's `PurgeFlows`.
    pub purges: Vec<(u32, Vec<(u32, u16)>)>,
    /// Deleting the old sets failed: they are orphans now.
    pub cleanup_error: Option<String>,
}

impl<S: MapStore> ServiceTable<S> {
    /// Makes the maps hold exactly `desired`, service port by service port: one that cannot be
    /// written (a map error, or no room) is left as it was and reported, the others are applied.
    /// Unchanged frontends are not touched; frontends no service lists are removed; slots left
    /// by an interrupted writer are deleted. Calling it again retries what failed.
    pub fn sync_report(&mut self, desired: &[ServicePort]) -> SyncOutcome {
        let mut out = SyncOutcome::default();
        let mut sorted: Vec<&ServicePort> = desired.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let by_name: HashMap<&ServicePortName, &ServicePort> =
            sorted.iter().map(|s| (&s.name, *s)).collect();
        let mut owners: HashMap<ServiceKey, ServicePortName> = HashMap::new();
        let mut units: Vec<(&ServicePort, Desired)> = Vec::new();
        let mut contested = false;
        for svc in sorted {
            let mut unit = Desired::default();
            let mut specs: Vec<_> = frontend_specs(svc, &self.local).into_iter().collect();
            specs.sort_by_key(|(k, _)| super::spec::key_order(k));
            for (key, spec) in specs {
                if let Some(owner) = owners.get(&key) {
                    contested = true;
                    log::warn!(
                        "{}: frontend {} already serves {owner}; skipped",
                        svc.name,
                        show_key(&key)
                    );
                    continue;
                }
                owners.insert(key, svc.name.clone());
                unit.insert(key, Some(spec));
            }
            units.push((svc, unit));
        }
        let mut removed: Vec<ServiceKey> = self
            .mirror
            .services()
            .map(|(k, _)| *k)
            .filter(|k| !owners.contains_key(k))
            .collect();
        removed.sort_by_key(super::spec::key_order);
        let old_owners = std::mem::take(&mut self.owners);
        self.set_owners(owners);

        let mut stale = std::mem::take(&mut self.pending_purge);
        for op in collect_garbage(&self.mirror) {
            match self.write(&op) {
                Ok(()) => out.report.record(&op),
                Err(e) => {
                    out.cleanup_errors
                        .push(format!("deleting orphan backend slots: {e:#}"));
                    break;
                }
            }
        }
        // Removals first: they free room for what is added.
        for key in removed {
            let owner = old_owners.get(&key);
            let who = match owner {
                Some(name) => format!("{name} (removing frontend {})", show_key(&key)),
                None => format!("removing frontend {}", show_key(&key)),
            };
            let still = owner.and_then(|n| by_name.get(n).copied());
            let ops = plan(&self.mirror, &[(key, None)].into_iter().collect());
            let fids = self.frontend_keys(&[key]);
            match self.apply_unit(ops) {
                Ok(done) => self.finish_unit(done, &fids, still, &mut stale, &mut out),
                Err(e) => out.failed.push(ServiceFailure {
                    service: who,
                    error: format!("{e:#}"),
                }),
            }
        }
        let admitted = self.admit(&units, &mut out);
        let admitted: Vec<(&ServicePort, &Desired)> = units
            .iter()
            .zip(admitted)
            .filter_map(|((svc, unit), ok)| ok.then_some((*svc, unit)))
            .collect();
        let rest = if self.store.batches() {
            self.apply_batched(&admitted, &mut stale, &mut out)
        } else {
            admitted
        };
        for (svc, unit) in rest {
            let ops = plan(&self.mirror, unit);
            if ops.is_empty() {
                continue;
            }
            let keys: Vec<ServiceKey> = unit.keys().copied().collect();
            let fids = self.frontend_keys(&keys);
            match self.apply_unit(ops) {
                Ok(done) => self.finish_unit(done, &fids, Some(svc), &mut stale, &mut out),
                Err(e) => out.failed.push(ServiceFailure {
                    service: svc.name.to_string(),
                    error: format!("{e:#}"),
                }),
            }
        }
        self.purge_stale(stale, &mut out);
        self.clean = out.is_complete() && !contested;
        self.largest_set = units
            .iter()
            .flat_map(|(_, u)| u.values().flatten())
            .map(|s| s.backends.len())
            .max()
            .unwrap_or(0);
        out
    }

    /// Purges the flows of backends that left their frontends (with what earlier updates still
    /// owe); what fails is owed to the next update.
    pub(super) fn purge_stale(&mut self, stale: StaleBackends, out: &mut SyncOutcome) {
        if stale.is_empty() {
            return;
        }
        match self.store.purge_flows(&stale) {
            Ok((ct, affinity)) => {
                out.report.conntrack_deleted = ct;
                out.report.affinity_deleted = affinity;
            }
            Err(e) => {
                out.cleanup_errors.push(format!(
                    "purging flows of removed backends (retried next update): {e:#}"
                ));
                self.pending_purge = stale;
            }
        }
    }

    /// Applies many service ports' plans together, each step of the transaction (new slots,
    /// switches, old slots) for all of them in batch calls, in the module documentation's
    /// order across all: no frontend is switched before every new set is complete, no old set
    /// is deleted before every switch. A failed batch is rolled back to a boundary between
    /// service ports (the failing one's written slots and switches undone); the service ports
    /// from the failing one on are returned, to be applied one by one (which retries and
    /// reports them as before).
    fn apply_batched<'a>(
        &mut self,
        units: &[(&'a ServicePort, &'a Desired)],
        stale: &mut StaleBackends,
        out: &mut SyncOutcome,
    ) -> Vec<(&'a ServicePort, &'a Desired)> {
        let desired: Vec<&Desired> = units.iter().map(|(_, d)| *d).collect();
        let plans = plan_each(&self.mirror, &desired);
        let mut steps: Vec<UnitSteps> = plans.into_iter().map(UnitSteps::split).collect();
        let fids: Vec<HashMap<u32, ServiceKey>> = units
            .iter()
            .map(|(_, d)| self.frontend_keys(&d.keys().copied().collect::<Vec<_>>()))
            .collect();
        if let Err(e) = self.announce_all(&steps) {
            log::debug!("batched address announcement failed ({e:#}): one service at a time");
            return units.to_vec();
        }
        // 1. Every new set.
        let slots: Vec<(BackendKey, BackendValue)> = steps
            .iter()
            .flat_map(|s| s.new_slots.iter().copied())
            .collect();
        let written = self.store.put_backends(&slots);
        let done = written.as_ref().map_or_else(|p| p.done, |()| slots.len());
        for (k, v) in &slots[..done] {
            self.mirror.apply(&MapOp::PutBackend(*k, *v));
        }
        let mut ok = unit_count(&steps, |s| s.new_slots.len(), done);
        if let Err(p) = written {
            log::debug!("batched slot writes stopped: {:#}", p.error);
            // Only the failing service port has slots written (the batch stopped in it).
            let start: usize = steps[..ok].iter().map(|s| s.new_slots.len()).sum();
            let partial: Vec<MapOp> = slots[start..done]
                .iter()
                .map(|(k, v)| MapOp::PutBackend(*k, *v))
                .collect();
            self.undo_slots(&partial);
        }
        // 2. Every switch.
        let switches: Vec<(ServiceKey, ServiceValue)> = steps[..ok]
            .iter()
            .flat_map(|s| s.switches.iter().copied())
            .collect();
        let prev: Vec<Option<ServiceValue>> = switches
            .iter()
            .map(|(k, _)| self.mirror.service(k).copied())
            .collect();
        let switched = self.store.put_services(&switches);
        let done = switched
            .as_ref()
            .map_or_else(|p| p.done, |()| switches.len());
        for (k, v) in &switches[..done] {
            self.mirror.apply(&MapOp::PutService(*k, *v));
        }
        if let Err(p) = switched {
            log::debug!("batched switches stopped: {:#}", p.error);
            let failing = unit_count(&steps[..ok], |s| s.switches.len(), done);
            // The failing service port's frontends that did switch go back to their old value.
            let start: usize = steps[..failing].iter().map(|s| s.switches.len()).sum();
            for i in (start..done).rev() {
                self.restore(switches[i].0, prev[i]);
            }
            for s in &steps[failing..ok] {
                self.undo_slots(&s.new_slot_ops());
            }
            ok = failing;
        }
        // 3. Every old set.
        let old: Vec<BackendKey> = steps[..ok]
            .iter()
            .flat_map(|s| s.old_slots.iter().copied())
            .collect();
        let deleted = self.store.delete_backends(&old);
        let done = deleted.as_ref().map_or_else(|p| p.done, |()| old.len());
        for k in &old[..done] {
            self.mirror.apply(&MapOp::DeleteBackend(*k));
        }
        let clean = unit_count(&steps[..ok], |s| s.old_slots.len(), done);
        if let Err(p) = deleted {
            out.cleanup_errors.push(format!(
                "deleting replaced backend slots (collected by the next sync): {:#}",
                p.error
            ));
        }
        for (i, s) in steps.iter_mut().enumerate().take(ok) {
            let mut unit = UnitDone {
                purges: std::mem::take(&mut s.purges),
                ..Default::default()
            };
            unit.report.backends_written = s.new_slots.len();
            unit.report.services_written = s.switches.len();
            unit.report.backends_deleted = if i < clean { s.old_slots.len() } else { 0 };
            self.finish_unit(unit, &fids[i], Some(units[i].0), stale, out);
        }
        units[ok..].to_vec()
    }

    /// The `LB_ADDRS_V1` entries all of `steps` need, in one batch (before any slot or
    /// switch names the addresses: the pod hooks' pre-filter must not skip their packets).
    fn announce_all(&mut self, steps: &[UnitSteps]) -> Result<()> {
        let mut new: Vec<(u32, u32)> = Vec::new();
        let mut pending: HashMap<u32, u32> = HashMap::new();
        let wanted = steps.iter().flat_map(|s| {
            let backends = s.new_slots.iter().map(|(_, v)| (v.addr, ADDR_F_BACKEND));
            let frontends = s.switches.iter().map(|(k, _)| (k.addr, ADDR_F_FRONTEND));
            backends.chain(frontends)
        });
        for (addr, flag) in wanted {
            let old = pending
                .get(&addr)
                .or_else(|| self.addrs.get(&addr))
                .copied()
                .unwrap_or(0);
            if old & flag == 0 {
                pending.insert(addr, old | flag);
            }
        }
        new.extend(pending);
        let written = self.store.put_addrs(&new);
        let done = written.as_ref().map_or_else(|p| p.done, |()| new.len());
        self.addrs.extend(new[..done].iter().copied());
        written.map_err(|p| p.error)
    }

    /// Puts a frontend back to `prev` (or removes it) after a failed batch of switches.
    fn restore(&mut self, key: ServiceKey, prev: Option<ServiceValue>) {
        let undo = match prev {
            Some(v) => MapOp::PutService(key, v),
            None => MapOp::DeleteService(key),
        };
        if let Err(u) = self.write(&undo) {
            log::error!(
                "frontend {}: restoring its previous value failed: {u:#}",
                show_key(&key)
            );
        }
    }

    /// Which service ports of `units` fit in the maps (see the module documentation), in the
    /// order of `units`; the others are reported in `out.over_capacity`.
    fn admit(&self, units: &[(&ServicePort, Desired)], out: &mut SyncOutcome) -> Vec<bool> {
        let (max_frontends, max_slots) = self.store.capacity();
        let size = |d: &Desired| {
            let slots: usize = d.values().flatten().map(|s| s.backends.len()).sum();
            (d.len(), slots)
        };
        let in_maps = |d: &Desired| d.keys().any(|k| self.mirror.service(k).is_some());
        let mut order: Vec<usize> = (0..units.len()).collect();
        // Stable: by name within each group.
        order.sort_by_key(|&i| !in_maps(&units[i].1));
        let (mut frontends, mut slots, mut largest) = (0usize, 0usize, 0usize);
        let (mut need_frontends, mut need_slots, mut need_largest) = (0usize, 0usize, 0usize);
        let mut admitted = vec![false; units.len()];
        let (mut skip_fe, mut skip_slots) = (Vec::new(), Vec::new());
        for i in order {
            let (fe, sl) = size(&units[i].1);
            need_frontends += fe;
            need_slots += sl;
            need_largest = need_largest.max(sl);
            if frontends + fe > max_frontends {
                skip_fe.push(units[i].0.name.clone());
            } else if slots + sl + largest.max(sl) > max_slots {
                skip_slots.push(units[i].0.name.clone());
            } else {
                frontends += fe;
                slots += sl;
                largest = largest.max(sl);
                admitted[i] = true;
            }
        }
        for (map, needed, limit, mut skipped) in [
            (
                dataplane_common::map_names::SERVICES,
                need_frontends,
                max_frontends,
                skip_fe,
            ),
            (
                dataplane_common::map_names::BACKENDS,
                need_slots + need_largest,
                max_slots,
                skip_slots,
            ),
        ] {
            if !skipped.is_empty() {
                skipped.sort();
                out.over_capacity.push(CapacityProblem {
                    map,
                    needed,
                    limit,
                    skipped,
                });
            }
        }
        admitted
    }

    /// frontend id -> key of the frontends of `keys` that are in the maps now (the ids a plan's
    /// purges name).
    pub(super) fn frontend_keys(&self, keys: &[ServiceKey]) -> HashMap<u32, ServiceKey> {
        keys.iter()
            .filter_map(|k| self.mirror.service(k).map(|v| (v.frontend_id, *k)))
            .collect()
    }

    /// Books an applied transaction: its report, its purges, and the backends that left for
    /// good (not listed by `svc`, the service port that still owns the frontends, if any).
    pub(super) fn finish_unit(
        &self,
        done: UnitDone,
        fids: &HashMap<u32, ServiceKey>,
        svc: Option<&ServicePort>,
        stale: &mut StaleBackends,
        out: &mut SyncOutcome,
    ) {
        merge(&mut out.report, &done.report);
        if let Some(e) = done.cleanup_error {
            out.cleanup_errors.push(e);
        }
        for (fid, backends) in done.purges {
            let frontend = fids.get(&fid).copied();
            for &(addr, port) in &backends {
                stale.insert(fid, addr, port);
                let listed = svc.is_some_and(|s| {
                    s.backends
                        .iter()
                        .any(|b| ip_to_be(b.ip) == addr && b.port.to_be() == port)
                });
                if let (Some(frontend), false) = (frontend, listed) {
                    out.removed_backends.push(RemovedBackend {
                        frontend,
                        addr,
                        port,
                    });
                }
            }
        }
    }

    /// Runs one service port's plan as a transaction (module documentation). On `Err` the
    /// service's frontends are as they were (unless the rollback itself failed, which is
    /// logged) and the mirror matches the maps.
    pub(super) fn apply_unit(&mut self, ops: Vec<MapOp>) -> Result<UnitDone> {
        self.announce_addrs(&ops)?;
        let mut done = UnitDone::default();
        let (mut new_slots, mut switches, mut old_slots) = (Vec::new(), Vec::new(), Vec::new());
        for op in ops {
            match op {
                MapOp::PutBackend(..) => new_slots.push(op),
                MapOp::PutService(..) | MapOp::DeleteService(..) => switches.push(op),
                MapOp::DeleteBackend(..) => old_slots.push(op),
                MapOp::PurgeFlows {
                    frontend_id,
                    backends,
                } => done.purges.push((frontend_id, backends)),
            }
        }
        for (i, op) in new_slots.iter().enumerate() {
            if let Err(e) = self.write(op) {
                self.undo_slots(&new_slots[..i]);
                return Err(e);
            }
        }
        let mut switched: Vec<(ServiceKey, Option<ServiceValue>)> = Vec::new();
        for op in &switches {
            let (MapOp::PutService(key, _) | MapOp::DeleteService(key)) = op else {
                unreachable!("only switches here")
            };
            let prev = self.mirror.service(key).copied();
            if let Err(e) = self.write(op) {
                for (key, prev) in switched.iter().rev() {
                    let undo = match prev {
                        Some(v) => MapOp::PutService(*key, *v),
                        None => MapOp::DeleteService(*key),
                    };
                    if let Err(u) = self.write(&undo) {
                        log::error!(
                            "frontend {}: restoring its previous value failed: {u:#}",
                            show_key(key)
                        );
                    }
                }
                self.undo_slots(&new_slots);
                return Err(e);
            }
            switched.push((*key, prev));
        }
        for op in new_slots.iter().chain(&switches) {
            done.report.record(op);
        }
        for op in &old_slots {
            match self.write(op) {
                Ok(()) => done.report.record(op),
                Err(e) => {
                    done.cleanup_error = Some(format!(
                        "deleting replaced backend slots (collected by the next sync): {e:#}"
                    ));
                    break;
                }
            }
        }
        Ok(done)
    }

    /// Deletes slots a failed transaction wrote, unless a frontend names their set (possible
    /// only when restoring it failed). What cannot be deleted is an orphan for the next sync.
    fn undo_slots(&mut self, written: &[MapOp]) {
        for op in written {
            let MapOp::PutBackend(key, _) = op else {
                continue;
            };
            if self.mirror.set_referenced(key.set_id) {
                continue;
            }
            if let Err(e) = self.write(&MapOp::DeleteBackend(*key)) {
                log::debug!("rollback of a backend slot: {e:#}");
            }
        }
    }

    /// One map write, mirrored once the kernel accepted it.
    pub(super) fn write(&mut self, op: &MapOp) -> Result<()> {
        super::apply(&mut self.store, op)?;
        self.mirror.apply(op);
        Ok(())
    }
}

/// One service port's plan by transaction step.
struct UnitSteps {
    new_slots: Vec<(BackendKey, BackendValue)>,
    switches: Vec<(ServiceKey, ServiceValue)>,
    old_slots: Vec<BackendKey>,
    purges: Vec<(u32, Vec<(u32, u16)>)>,
}

impl UnitSteps {
    fn split(ops: Vec<MapOp>) -> UnitSteps {
        let mut s = UnitSteps {
            new_slots: Vec::new(),
            switches: Vec::new(),
            old_slots: Vec::new(),
            purges: Vec::new(),
        };
        for op in ops {
            match op {
                MapOp::PutBackend(k, v) => s.new_slots.push((k, v)),
                MapOp::PutService(k, v) => s.switches.push((k, v)),
                MapOp::DeleteBackend(k) => s.old_slots.push(k),
                MapOp::PurgeFlows {
                    frontend_id,
                    backends,
                } => s.purges.push((frontend_id, backends)),
                // A service port's own plan removes none of its frontends (sync_report removes
                // them beforehand, one by one).
                MapOp::DeleteService(_) => unreachable!("removal in a service port's plan"),
            }
        }
        s
    }

    fn new_slot_ops(&self) -> Vec<MapOp> {
        self.new_slots
            .iter()
            .map(|(k, v)| MapOp::PutBackend(*k, *v))
            .collect()
    }
}

/// How many whole units a batch of `done` elements covered (each unit has `len(unit)`
/// elements, in order).
fn unit_count(steps: &[UnitSteps], len: impl Fn(&UnitSteps) -> usize, done: usize) -> usize {
    let mut total = 0;
    for (i, s) in steps.iter().enumerate() {
        total += len(s);
        if total > done {
            return i;
        }
    }
    steps.len()
}

fn merge(into: &mut UpdateReport, r: &UpdateReport) {
    into.services_written += r.services_written;
    into.services_deleted += r.services_deleted;
    into.backends_written += r.backends_written;
    into.backends_deleted += r.backends_deleted;
    into.conntrack_deleted += r.conntrack_deleted;
    into.affinity_deleted += r.affinity_deleted;
}
