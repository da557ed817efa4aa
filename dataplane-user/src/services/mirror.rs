//! The writer's copy of `SERVICES_V2` and `BACKENDS_V2`, and the id and slot allocation state
//! derived from it. The executor applies each [`MapOp`] here only after the kernel accepted it, so the mirror
//! is exactly what the maps hold even after a failed update. It is also the in-memory model the
//! planner's ordering invariant is tested against.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt as _};

use dataplane_common::lb::{
    BackendKey, BackendValue, ServiceKey, ServiceValue, MAX_BACKEND_SLOTS, MAX_FRONTENDS,
    SLOT_QUARANTINE_MS,
};

/// One map update. Addresses and ports in network order, as in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MapOp {
    /// Writes one slot of a backend set that no service references yet.
    PutBackend(BackendKey, BackendValue),
    DeleteBackend(BackendKey),
    /// Creates a frontend or switches it (atomically for readers) to another set or flags.
    PutService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    /// Forget the UDP conntrack entries and the affinity entries of `frontend_id` that lead to
    /// `backends` (address, port), which no longer serve it. Planned right after the switch
    /// that removed them; the executor defers and batches these (one table scan per update).
    PurgeFlows {
        frontend_id: u32,
        backends: Vec<(u32, u16)>,
    },
}

/// `SERVICES_V2` and `BACKENDS_V2` as they are, plus the allocators.
#[derive(Clone, Debug)]
pub(crate) struct Mirror {
    services: HashMap<ServiceKey, ServiceValue>,
    backends: HashMap<BackendKey, BackendValue>,
    /// Slots present in `backends`, per set id (a set id with slots is in use, referenced or not).
    set_slots: HashMap<u32, u32>,
    /// Services referencing each set id.
    set_refs: HashMap<u32, u32>,
    /// The slots each set in use occupies, `first slot -> count` (a set id is its first slot):
    /// runs a new set must not overlap.
    extents: BTreeMap<u32, u32>,
    /// Runs of sets that went out of use less than `SLOT_QUARANTINE_MS` ago, `first -> (count,
    /// when)`: a program may still be reading a service value that named them.
    retired: BTreeMap<u32, (u32, Instant)>,
    /// `retired`'s keys, oldest first (what [`Self::prune_retired`] walks).
    retired_order: VecDeque<(Instant, u32)>,
    /// Where the search for the next run starts: runs are handed out increasing, wrapping at
    /// `slot_limit` back to slot 1 (slot 0 is never a set's).
    next_set_id: u32,
    /// Slots of `BACKENDS_V2` (the store's capacity).
    slot_limit: u32,
    /// Lowest frontend id never handed out.
    next_frontend_id: u32,
    /// Frontend ids released by removed frontends, oldest first: reusing the oldest first
    /// leaves a removed frontend's id unused for as long as possible.
    free_frontend_ids: VecDeque<u32>,
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror::adopt(Vec::new(), Vec::new())
    }
}

impl Mirror {
    /// The state of maps holding `services` and `backends` (a map dump): frontend ids in use are
    /// kept, gaps below the highest are free, and set ids continue after the highest seen.
    pub fn adopt(
        services: impl IntoIterator<Item = (ServiceKey, ServiceValue)>,
        backends: impl IntoIterator<Item = (BackendKey, BackendValue)>,
    ) -> Mirror {
        let services: HashMap<_, _> = services.into_iter().collect();
        let backends: HashMap<_, _> = backends.into_iter().collect();
        let mut set_slots = HashMap::new();
        let mut extents = BTreeMap::new();
        for key in backends.keys() {
            *set_slots.entry(key.set_id).or_insert(0) += 1;
            widen(&mut extents, key.set_id, key.slot + 1);
        }
        let mut set_refs = HashMap::new();
        for value in services.values() {
            *set_refs.entry(value.set_id).or_insert(0) += 1;
            widen(&mut extents, value.set_id, value.count.max(1));
        }
        let end = extents.iter().map(|(&s, &n)| s.saturating_add(n)).max();
        let used: BTreeSet<u32> = services.values().map(|v| v.frontend_id).collect();
        let max_fid = used.last().copied().unwrap_or(0);
        // Our allocator keeps ids below the map size; don't list billions of gaps if a foreign
        // writer did not.
        let free = if max_fid <= 4 * MAX_FRONTENDS {
            (1..max_fid).filter(|id| !used.contains(id)).collect()
        } else {
            VecDeque::new()
        };
        Mirror {
            services,
            backends,
            set_slots,
            set_refs,
            extents,
            retired: BTreeMap::new(),
            retired_order: VecDeque::new(),
            next_set_id: end.unwrap_or(1).max(1),
            slot_limit: MAX_BACKEND_SLOTS,
            next_frontend_id: max_fid + 1,
            free_frontend_ids: free,
        }
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceValue> {
        self.services.get(key)
    }

    pub fn services(&self) -> impl Iterator<Item = (&ServiceKey, &ServiceValue)> {
        self.services.iter()
    }

    #[cfg(test)]
    pub fn backend(&self, key: &BackendKey) -> Option<&BackendValue> {
        self.backends.get(key)
    }

    /// Number of frontends (`SERVICES_V2` entries).
    pub fn services_len(&self) -> usize {
        self.services.len()
    }

    pub fn backends_len(&self) -> usize {
        self.backends.len()
    }

    /// The backends present in `value`'s set, in slot order (all of them unless
    /// [`Self::set_is_complete`] says otherwise).
    pub fn set_backends(&self, value: &ServiceValue) -> Vec<BackendValue> {
        slots(value)
            .filter_map(|k| self.backends.get(&k).copied())
            .collect()
    }

    /// Whether every slot `(set_id, 0..count)` of `value` is present.
    pub fn set_is_complete(&self, value: &ServiceValue) -> bool {
        slots(value).all(|k| self.backends.contains_key(&k))
    }

    /// A set id is in use while a service references it or any of its slots exists.
    pub fn set_id_in_use(&self, id: u32) -> bool {
        self.set_refs.contains_key(&id) || self.set_slots.contains_key(&id)
    }

    /// Caps the slots runs are handed out from (the store's `BACKENDS_V2` size).
    pub fn set_slot_limit(&mut self, limit: u32) {
        self.slot_limit = limit.min(MAX_BACKEND_SLOTS);
    }

    pub fn slot_limit(&self) -> u32 {
        self.slot_limit
    }

    /// The end of a run in use or in quarantine that overlaps `start .. start + count`, if any
    /// (runs of sets never overlap each other, so the last one starting before the end is the
    /// only candidate in each of the two tables).
    pub fn blocker(&self, start: u32, count: u32) -> Option<u32> {
        let end = start.saturating_add(count);
        let used = last_overlapping(&self.extents, start, end, |&n| n);
        let quarantined = last_overlapping(&self.retired, start, end, |&(n, _)| n);
        used.max(quarantined)
    }

    /// Forgets quarantined runs whose time is up: their slots can be handed out again.
    pub fn prune_retired(&mut self, now: Instant) {
        let quarantine = Duration::from_millis(SLOT_QUARANTINE_MS);
        while let Some(&(when, start)) = self.retired_order.front() {
            if now.duration_since(when) < quarantine {
                break;
            }
            self.retired_order.pop_front();
            if self.retired.get(&start).is_some_and(|&(_, w)| w == when) {
                self.retired.remove(&start);
            }
        }
    }

    /// Slots in quarantine.
    #[cfg(test)]
    pub fn quarantined_slots(&self) -> usize {
        self.retired.values().map(|&(n, _)| n as usize).sum()
    }

    /// Whether a service value names set `id`.
    pub fn set_referenced(&self, id: u32) -> bool {
        self.set_refs.contains_key(&id)
    }

    pub fn next_set_id(&self) -> u32 {
        self.next_set_id
    }

    /// Frontend ids to hand out, in order: released ones (oldest first), then never used ones.
    pub fn frontend_id_candidates(&self) -> impl Iterator<Item = u32> + '_ {
        self.free_frontend_ids
            .iter()
            .copied()
            .chain(self.next_frontend_id..)
    }

    /// `BACKENDS_V2` slots no service reads: what a writer interrupted between writing a new
    /// set and switching to it (or between the switch and deleting the old set) leaves behind.
    pub fn orphan_slots(&self) -> Vec<BackendKey> {
        let mut live: HashMap<u32, u32> = HashMap::new();
        for v in self.services.values() {
            let count = live.entry(v.set_id).or_insert(0);
            *count = (*count).max(v.count);
        }
        let mut orphans: Vec<BackendKey> = self
            .backends
            .keys()
            .filter(|k| live.get(&k.set_id).is_none_or(|&count| k.slot >= count))
            .copied()
            .collect();
        orphans.sort_by_key(|k| (k.set_id, k.slot));
        orphans
    }

    /// Records that the maps accepted `op`.
    pub fn apply(&mut self, op: &MapOp) {
        match op {
            MapOp::PutBackend(key, value) => {
                if self.backends.insert(*key, *value).is_none() {
                    *self.set_slots.entry(key.set_id).or_insert(0) += 1;
                }
                widen(&mut self.extents, key.set_id, key.slot + 1);
                self.next_set_id = key.index().saturating_add(1);
            }
            MapOp::DeleteBackend(key) => {
                if self.backends.remove(key).is_some() {
                    decrement(&mut self.set_slots, key.set_id);
                    self.retire_if_unused(key.set_id);
                }
            }
            MapOp::PutService(key, value) => {
                let prev = self.services.insert(*key, *value);
                self.track_ids(prev.as_ref(), Some(value));
            }
            MapOp::DeleteService(key) => {
                if let Some(prev) = self.services.remove(key) {
                    self.track_ids(Some(&prev), None);
                }
            }
            MapOp::PurgeFlows { .. } => {}
        }
    }

    /// Keeps the id bookkeeping in step with a service value change.
    fn track_ids(&mut self, prev: Option<&ServiceValue>, new: Option<&ServiceValue>) {
        let fid = |v: Option<&ServiceValue>| v.map(|v| v.frontend_id);
        if fid(prev) != fid(new) {
            if let Some(id) = fid(prev) {
                self.free_frontend_ids.push_back(id);
            }
            if let Some(id) = fid(new) {
                self.claim_frontend_id(id);
            }
        }
        let sid = |v: Option<&ServiceValue>| v.map(|v| v.set_id);
        if let Some(v) = new {
            widen(&mut self.extents, v.set_id, v.count.max(1));
        }
        if sid(prev) != sid(new) {
            if let Some(v) = new {
                *self.set_refs.entry(v.set_id).or_insert(0) += 1;
                if v.count == 0 {
                    // A set without slots has no PutBackend to move the cursor past it.
                    self.next_set_id = v.set_id.saturating_add(1);
                }
            }
            if let Some(id) = sid(prev) {
                decrement(&mut self.set_refs, id);
                self.retire_if_unused(id);
            }
        }
    }

    /// Moves a set that neither a service nor a slot holds any more into quarantine.
    fn retire_if_unused(&mut self, id: u32) {
        if self.set_id_in_use(id) {
            return;
        }
        if let Some(count) = self.extents.remove(&id) {
            let now = Instant::now();
            self.prune_retired(now);
            self.retired.insert(id, (count, now));
            self.retired_order.push_back((now, id));
        }
    }

    fn claim_frontend_id(&mut self, id: u32) {
        if id >= self.next_frontend_id {
            self.free_frontend_ids.extend(self.next_frontend_id..id);
            self.next_frontend_id = id + 1;
        } else if let Some(pos) = self.free_frontend_ids.iter().position(|&f| f == id) {
            self.free_frontend_ids.remove(pos);
        }
    }
}

/// Records that set `id` spans at least `count` slots.
fn widen(extents: &mut BTreeMap<u32, u32>, id: u32, count: u32) {
    let n = extents.entry(id).or_insert(count);
    *n = (*n).max(count);
}

/// The end of the last run of `runs` (`first -> value`, `len` its slot count) that starts
/// before `end` and reaches past `start`.
fn last_overlapping<V>(
    runs: &BTreeMap<u32, V>,
    start: u32,
    end: u32,
    len: impl Fn(&V) -> u32,
) -> Option<u32> {
    let (&first, v) = runs.range(..end).next_back()?;
    let run_end = first.saturating_add(len(v));
    (run_end > start).then_some(run_end)
}

/// The keys of a service value's backend set.
pub(crate) fn slots(value: &ServiceValue) -> impl Iterator<Item = BackendKey> {
    let set_id = value.set_id;
    (0..value.count).map(move |slot| BackendKey { set_id, slot })
}

fn decrement(counts: &mut HashMap<u32, u32>, id: u32) {
    if let Some(n) = counts.get_mut(&id) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> ServiceKey {
        ServiceKey::new(n, 80u16.to_be(), 6)
    }

    fn value(frontend_id: u32, set_id: u32, count: u32) -> ServiceValue {
        ServiceValue {
            frontend_id,
            set_id,
            count,
            ..Default::default()
        }
    }

    fn slot(set_id: u32, slot: u32) -> (BackendKey, BackendValue) {
        (
            BackendKey { set_id, slot },
            BackendValue {
                addr: slot + 1,
                port: 1,
                flags: 0,
            },
        )
    }

    #[test]
    fn adoption_rebuilds_ids_from_a_dump() {
        let services = [
            (key(1), value(1, 7, 2)),
            (key(2), value(4, 9, 1)),
            (key(3), value(2, 3, 0)),
        ];
        // Set 9 is complete, set 7 too; set 12 is an orphan left by an interrupted writer.
        let backends = [slot(7, 0), slot(7, 1), slot(9, 0), slot(12, 0), slot(9, 5)];
        let m = Mirror::adopt(services, backends);
        assert_eq!(
            m.next_set_id(),
            15,
            "after the highest run seen (set 9 reaches slot 14)"
        );
        let fids: Vec<u32> = m.frontend_id_candidates().take(3).collect();
        assert_eq!(
            fids,
            [3, 5, 6],
            "gaps below the highest id first, then new ids"
        );
        for id in [3, 7, 9, 12] {
            assert!(m.set_id_in_use(id), "{id}");
        }
        assert!(!m.set_id_in_use(8));
        assert!(m.set_is_complete(&value(1, 7, 2)));
        assert_eq!(
            m.orphan_slots(),
            [
                BackendKey { set_id: 9, slot: 5 },
                BackendKey {
                    set_id: 12,
                    slot: 0
                }
            ]
        );
    }

    #[test]
    fn empty_adoption_starts_at_one() {
        let m = Mirror::default();
        assert_eq!(m.next_set_id(), 1);
        assert_eq!(m.frontend_id_candidates().next(), Some(1));
    }

    #[test]
    fn released_frontend_ids_are_reused_oldest_first() {
        let mut m = Mirror::default();
        for n in 1..=3 {
            m.apply(&MapOp::PutService(key(n), value(n, 10 + n, 0)));
        }
        m.apply(&MapOp::DeleteService(key(2)));
        m.apply(&MapOp::DeleteService(key(1)));
        assert_eq!(
            m.frontend_id_candidates().take(3).collect::<Vec<_>>(),
            [2, 1, 4]
        );
        m.apply(&MapOp::PutService(key(9), value(2, 20, 0)));
        assert_eq!(
            m.frontend_id_candidates().take(2).collect::<Vec<_>>(),
            [1, 4]
        );
    }

    #[test]
    fn the_cursor_follows_the_last_run_written_and_unused_sets_go_to_quarantine() {
        let mut m = Mirror::default();
        m.apply(&MapOp::PutService(key(1), value(1, 5, 0)));
        assert_eq!(m.next_set_id(), 6, "an empty set takes one slot");
        let (k, v) = slot(20, 2);
        m.apply(&MapOp::PutBackend(k, v));
        assert_eq!(m.next_set_id(), 23);
        assert_eq!(m.blocker(21, 1), Some(23), "slots 20..23 are in use");
        // Set 5 loses its only reference: quarantined, still blocking.
        m.apply(&MapOp::PutService(key(1), value(1, 20, 3)));
        assert_eq!(m.quarantined_slots(), 1);
        assert_eq!(m.blocker(5, 1), Some(6));
        m.prune_retired(Instant::now() + Duration::from_millis(SLOT_QUARANTINE_MS + 1));
        assert_eq!((m.quarantined_slots(), m.blocker(5, 1)), (0, None));
    }
}
