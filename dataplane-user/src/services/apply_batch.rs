//! The batched form of the per-service-port transaction (see `apply.rs`): when the store
//! has batch syscalls, each transaction step of many service ports is written in
//! BPF_MAP_UPDATE_BATCH/DELETE_BATCH calls, in the same order across all of them.

use foldhash::{HashMap, HashMapExt as _};

use anyhow::Result;
use dataplane_common::lb::{
    BackendKey, BackendValue, ServiceKey, ServiceValue, ADDR_F_BACKEND, ADDR_F_FRONTEND,
};

use super::{
    apply::UnitDone,
    outcome::SyncOutcome,
    plan::{plan_each, Desired, MapOp},
    store::{MapStore, StaleBackends},
    ServiceTable,
};
use crate::model::ServicePort;

impl<S: MapStore> ServiceTable<S> {
    /// Applies many service ports' plans together, each step of the transaction (new slots,
    /// switches, old slots) for all of them in batch calls, in the module documentation's
    /// order across all: no frontend is switched before every new set is complete, no old set
    /// is deleted before every switch. A failed batch is rolled back to a boundary between
    /// service ports (the failing one's written slots and switches undone); the service ports
    /// from the failing one on are returned, to be applied one by one (which retries and
    /// reports them as before).
    pub(super) fn apply_batched<'a>(
        &mut self,
        units: &[(&'a ServicePort, &'a Desired)],
        stale: &mut StaleBackends,
        out: &mut SyncOutcome,
    ) -> Vec<(&'a ServicePort, &'a Desired)> {
        let desired: Vec<&Desired> = units.iter().map(|(_, d)| *d).collect();
        self.mirror.prune_retired(std::time::Instant::now());
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
