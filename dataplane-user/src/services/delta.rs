//! Incremental sync: one changed endpoint costs O(changed service ports), not O(all).
//!
//! A full [`ServiceTable::sync_report`] computes every service port's frontends, plans every
//! one against the mirror and finds nothing to do for all but the changed ones: at 10,000
//! services that is tens of milliseconds per change. [`ServiceDelta`] says which service ports
//! differ between two states (an equality walk, no allocation per unchanged port), and
//! [`ServiceTable::sync_delta`] plans and applies only those, with the same per-service
//! transactions (`apply.rs`: new slots, switch, old slots; deletes after), the same failure
//! accounting and the same flow purges.
//!
//! The shortcut is taken only when it is exactly equivalent to the full diff: the table's last
//! sync was complete (nothing failed, nothing left out for capacity, no frontend claimed by two
//! service ports, no orphan slots owed), nothing else wrote since (`upsert`/`remove`), the
//! changed ports claim no frontend another port holds, and the maps keep room. Otherwise, or
//! for a large delta (where batching wins), it runs the full sync.

use std::borrow::Borrow;

use foldhash::{HashMap, HashMapExt as _};

use dataplane_common::lb::ServiceKey;

use super::{
    outcome::SyncOutcome,
    plan::{plan, Desired},
    spec::{frontend_specs, key_order},
    store::MapStore,
    ServiceTable,
};
use crate::model::{ServicePort, ServicePortName, ServicePorts};

/// More changed service ports than this: the full sync, which batches its writes.
pub const INCREMENTAL_MAX: usize = 256;

/// What differs between two states' service ports, by name.
#[derive(Debug, Default)]
pub struct ServiceDelta<'a> {
    /// (before, after) of each service port that was added (`None` before), removed (`None`
    /// after) or changed, in name order.
    pub changes: Vec<Change<'a>>,
}

/// (before, after) of one service port.
pub type Change<'a> = (Option<&'a ServicePort>, Option<&'a ServicePort>);

impl<'a> ServiceDelta<'a> {
    /// The difference between two states' service ports. Sorted without duplicate names (what
    /// the sources publish, known by construction): one merge walk, where a port the two
    /// states share (one `Arc`) costs a pointer comparison.
    pub fn of(before: &'a ServicePorts, after: &'a ServicePorts) -> Self {
        if before.is_unique() && after.is_unique() {
            return ServiceDelta {
                changes: merge(before, after),
            };
        }
        ServiceDelta::between(before, after)
    }

    /// The difference from `before` to `after`, in any order. Both sorted by name: one merge
    /// walk comparing neighbours; otherwise by a name index.
    pub fn between<P: Borrow<ServicePort>>(before: &'a [P], after: &'a [P]) -> Self {
        let sorted = |v: &[P]| {
            v.windows(2)
                .all(|w| w[0].borrow().name < w[1].borrow().name)
        };
        if sorted(before) && sorted(after) {
            return ServiceDelta {
                changes: merge(before, after),
            };
        }
        let index = |v: &'a [P]| -> HashMap<&'a ServicePortName, &'a ServicePort> {
            v.iter().map(|s| (&s.borrow().name, s.borrow())).collect()
        };
        let (old, new) = (index(before), index(after));
        let mut changes = Vec::new();
        for (name, a) in &old {
            match new.get(name) {
                Some(b) if same(a, b) => {}
                b => changes.push((Some(*a), b.copied())),
            }
        }
        for (name, b) in &new {
            if !old.contains_key(name) {
                changes.push((None, Some(*b)));
            }
        }
        changes.sort_by(|x, y| name_of(x).cmp(name_of(y)));
        ServiceDelta { changes }
    }

    /// Whether the two states hold the same service ports.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }
}

/// Equal ports: the same one (shared by the two states), or equal by value.
fn same(a: &ServicePort, b: &ServicePort) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// The changes between two lists strictly sorted by name, in one walk.
fn merge<'a, P: Borrow<ServicePort>>(before: &'a [P], after: &'a [P]) -> Vec<Change<'a>> {
    let mut changes = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < after.len() {
        let a = before.get(i).map(Borrow::borrow);
        let b = after.get(j).map(Borrow::borrow);
        match (a, b) {
            // Shared: the same port, nothing to compare (the common case by far).
            (Some(x), Some(y)) if std::ptr::eq(x, y) => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.name == y.name => {
                if x != y {
                    changes.push((Some(x), Some(y)));
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.name < y.name => {
                changes.push((Some(x), None));
                i += 1;
            }
            (Some(x), None) => {
                changes.push((Some(x), None));
                i += 1;
            }
            (_, Some(y)) => {
                changes.push((None, Some(y)));
                j += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
    changes
}

fn name_of<'a>(c: &Change<'a>) -> &'a ServicePortName {
    match c {
        (_, Some(s)) | (Some(s), None) => &s.name,
        (None, None) => unreachable!("a change has a side"),
    }
}

impl<S: MapStore> ServiceTable<S> {
    /// Makes the maps hold exactly `desired`, like [`ServiceTable::sync_report`], given `delta`:
    /// what differs between `desired` and the state of this table's previous `sync_report` or
    /// `sync_delta`. Plans and writes only the changed service ports when that is equivalent to
    /// the full diff (module documentation), else runs the full sync.
    pub fn sync_delta(
        &mut self,
        desired: &[impl Borrow<ServicePort>],
        delta: &ServiceDelta,
    ) -> SyncOutcome {
        match self.try_incremental(delta) {
            Some(out) => {
                self.clean = out.is_complete();
                out
            }
            None => self.sync_report(desired),
        }
    }

    /// The incremental sync, or None if it would not be exactly the full one's result.
    pub(super) fn try_incremental(&mut self, delta: &ServiceDelta) -> Option<SyncOutcome> {
        if !self.clean || delta.len() > INCREMENTAL_MAX {
            return None;
        }
        // Each changed port's frontends. One another port holds (even one that lets go of it
        // in this delta) or two changed ports claim needs the full sync's name-order
        // arbitration.
        let mut units: Vec<(&ServicePort, Desired)> = Vec::new();
        let mut removed: Vec<&ServicePortName> = Vec::new();
        let mut claimed: HashMap<ServiceKey, &ServicePortName> = HashMap::new();
        for change in &delta.changes {
            let Some(svc) = change.1 else {
                removed.push(&change.0.expect("a change has a side").name);
                continue;
            };
            let specs = frontend_specs(svc, &self.local);
            let mut unit = self.dropped_frontends(&svc.name, &specs);
            for (key, spec) in specs {
                let taken = self.owners.get(&key).is_some_and(|o| *o != svc.name);
                if taken || claimed.insert(key, &svc.name).is_some() {
                    return None;
                }
                unit.insert(key, Some(spec));
            }
            units.push((svc, unit));
        }
        if !self.fits(&units, &removed) {
            return None;
        }
        let mut out = SyncOutcome::default();
        let mut stale = std::mem::take(&mut self.pending_purge);
        // Removals first: they free room for what is added.
        for name in removed {
            let mut keys: Vec<ServiceKey> = self
                .by_name
                .get(name)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            keys.sort_by_key(key_order);
            let unit: Desired = keys.iter().map(|k| (*k, None)).collect();
            let ops = plan(&self.mirror, &unit);
            if self.run_unit(ops, &keys, None, || name.to_string(), &mut stale, &mut out) {
                self.claim(name, &unit);
            }
        }
        for (svc, unit) in &units {
            // Owners follow the desired state, as in the full sync (a failed port is retried
            // by the full sync its failure forces). The plan reads only the mirror, which
            // claiming leaves alone.
            self.claim(&svc.name, unit);
            self.apply_port(svc, unit, &mut stale, &mut out);
        }
        self.purge_stale(stale, &mut out);
        Some(out)
    }

    /// Whether the maps keep room for the delta under the full sync's admission rule (every
    /// port in, plus room to replace the largest set), counted conservatively: the largest set
    /// is the largest this table has admitted.
    fn fits(&mut self, units: &[(&ServicePort, Desired)], removed: &[&ServicePortName]) -> bool {
        let (max_frontends, max_slots) = self.store.capacity();
        let (mut frontends, mut slots) = (self.mirror.services_len(), self.mirror.backends_len());
        let leaving = removed
            .iter()
            .copied()
            .chain(units.iter().map(|(s, _)| &s.name));
        for name in leaving {
            for key in self.by_name.get(name).into_iter().flatten() {
                if let Some(v) = self.mirror.service(key) {
                    frontends = frontends.saturating_sub(1);
                    slots = slots.saturating_sub(v.count as usize);
                }
            }
        }
        for spec in units.iter().flat_map(|(_, u)| u.values().flatten()) {
            frontends += 1;
            slots += spec.backends.len();
            self.largest_set = self.largest_set.max(spec.backends.len());
        }
        frontends <= max_frontends && slots + self.largest_set <= max_slots
    }
}
