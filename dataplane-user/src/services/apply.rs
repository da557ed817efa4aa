//! Applying a whole desired state one service port at a time, so that one service's failure
//! never stops the others and never leaves it half written.
//!
//! Each service port is a small transaction over its frontends' plan (see [`plan`]):
//! 1. every slot of every new backend set; a failed write deletes the slots written so far;
//! 2. every `SERVICES_V2` switch (and removal); a failed write restores the frontends already
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
//! Before any write the whole state is checked against the map sizes: when SERVICES_V2 or
//! BACKENDS_V2 would overflow, service ports that are already in the maps keep their place,
//! then new ones are admitted in name order while they fit; the rest are reported with the
//! count needed and the limit, and left as they are.
//!
//! The outcome's types are in `outcome.rs`; the same transactions written with batch syscalls,
//! many service ports per call, in `apply_batch.rs`.

use std::borrow::Borrow;

use foldhash::{HashMap, HashMapExt as _};

use anyhow::Result;
use dataplane_common::lb::{ServiceKey, ServiceValue};

use super::{
    outcome::{CapacityProblem, RemovedBackend, ServiceFailure, SyncOutcome},
    plan::{collect_garbage, plan, Desired, MapOp},
    spec::{frontend_specs, ip_to_be, show_key},
    store::{MapStore, StaleBackends},
    ServiceTable, UpdateReport,
};
use crate::model::{ServicePort, ServicePortName};

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
    pub fn sync_report(&mut self, desired: &[impl Borrow<ServicePort>]) -> SyncOutcome {
        let mut out = SyncOutcome::default();
        let mut sorted: Vec<&ServicePort> = desired.iter().map(Borrow::borrow).collect();
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
            self.run_unit(ops, &[key], still, || who, &mut stale, &mut out);
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
            self.apply_port(svc, unit, &mut stale, &mut out);
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

    /// Applies one service port's `unit` as a transaction, if it changes anything, and books
    /// the outcome (a failure under the port's name).
    pub(super) fn apply_port(
        &mut self,
        svc: &ServicePort,
        unit: &Desired,
        stale: &mut StaleBackends,
        out: &mut SyncOutcome,
    ) {
        self.mirror.prune_retired(std::time::Instant::now());
        let ops = plan(&self.mirror, unit);
        if ops.is_empty() {
            return;
        }
        let keys: Vec<ServiceKey> = unit.keys().copied().collect();
        self.run_unit(ops, &keys, Some(svc), || svc.name.to_string(), stale, out);
    }

    /// Runs `ops`, the plan of the frontends `keys`, as one transaction and books it: applied
    /// (for `owner`, the service port that still holds the frontends, if any), or failed under
    /// the name `who` gives. Returns whether it was applied.
    pub(super) fn run_unit(
        &mut self,
        ops: Vec<MapOp>,
        keys: &[ServiceKey],
        owner: Option<&ServicePort>,
        who: impl FnOnce() -> String,
        stale: &mut StaleBackends,
        out: &mut SyncOutcome,
    ) -> bool {
        let fids = self.frontend_keys(keys);
        match self.apply_unit(ops) {
            Ok(done) => {
                self.finish_unit(done, &fids, owner, stale, out);
                true
            }
            Err(e) => {
                out.failed.push(ServiceFailure {
                    service: who(),
                    error: format!("{e:#}"),
                });
                false
            }
        }
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

    /// Puts a frontend back to `prev` (or removes it) after a failed batch of switches.
    pub(super) fn restore(&mut self, key: ServiceKey, prev: Option<ServiceValue>) {
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
                    self.restore(*key, *prev);
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
    pub(super) fn undo_slots(&mut self, written: &[MapOp]) {
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

fn merge(into: &mut UpdateReport, r: &UpdateReport) {
    into.services_written += r.services_written;
    into.services_deleted += r.services_deleted;
    into.backends_written += r.backends_written;
    into.backends_deleted += r.backends_deleted;
    into.conntrack_deleted += r.conntrack_deleted;
    into.affinity_deleted += r.affinity_deleted;
}
