//! The writer's copy of `SERVICES_V1` and `BACKENDS_V1`, and the id allocation state derived from
//! it. The executor applies each [`MapOp`] here only after the kernel accepted it, so the mirror
//! is exactly what the maps hold even after a failed update. It is also the in-memory model the
//! planner's ordering invariant is tested against.

use std::collections::{BTreeSet, VecDeque};

use foldhash::{HashMap, HashMapExt as _};

use dataplane_common::lb::{BackendKey, BackendValue, ServiceKey, ServiceValue, MAX_FRONTENDS};

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

/// `SERVICES_V1` and `BACKENDS_V1` as they are, plus the allocators.
#[derive(Clone, Debug)]
pub(crate) struct Mirror {
    services: HashMap<ServiceKey, ServiceValue>,
    backends: HashMap<BackendKey, BackendValue>,
    /// Slots present in `backends`, per set id (a set id with slots is in use, referenced or not).
    set_slots: HashMap<u32, u32>,
    /// Services referencing each set id.
    set_refs: HashMap<u32, u32>,
    /// Where the search for the next set id starts: ids are handed out increasing (wrapping).
    next_set_id: u32,
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
        for key in backends.keys() {
            *set_slots.entry(key.set_id).or_insert(0) += 1;
        }
        let mut set_refs = HashMap::new();
        for value in services.values() {
            *set_refs.entry(value.set_id).or_insert(0) += 1;
        }
        let max_set = set_slots.keys().chain(set_refs.keys()).copied().max();
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
            next_set_id: max_set.map_or(1, next_id),
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

    /// Number of frontends (`SERVICES_V1` entries).
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

    /// `BACKENDS_V1` slots no service reads: what a writer interrupted between writing a new
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
                self.advance_set_id(key.set_id);
            }
            MapOp::DeleteBackend(key) => {
                if self.backends.remove(key).is_some() {
                    decrement(&mut self.set_slots, key.set_id);
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
        if sid(prev) != sid(new) {
            if let Some(id) = sid(prev) {
                decrement(&mut self.set_refs, id);
            }
            if let Some(id) = sid(new) {
                *self.set_refs.entry(id).or_insert(0) += 1;
                self.advance_set_id(id);
            }
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

    /// Moves the set id cursor past `id` if `id` is ahead of it (serial number arithmetic, so
    /// the cursor keeps increasing across the u32 wrap and never goes back to an old id).
    fn advance_set_id(&mut self, id: u32) {
        if id.wrapping_sub(self.next_set_id) < 1 << 31 {
            self.next_set_id = next_id(id);
        }
    }
}

/// The id after `id`, skipping 0 (never a valid set id).
pub(crate) fn next_id(id: u32) -> u32 {
    id.wrapping_add(1).max(1)
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
        assert_eq!(m.next_set_id(), 13, "max set id seen (slots included) + 1");
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
    fn set_id_cursor_is_monotonic_across_wrap() {
        let mut m = Mirror::default();
        m.apply(&MapOp::PutService(key(1), value(1, u32::MAX, 0)));
        assert_eq!(m.next_set_id(), 1, "wraps past 0");
        m.apply(&MapOp::PutService(key(1), value(1, 5, 0)));
        assert_eq!(m.next_set_id(), 6);
        // An older id written again (not by the planner) does not move the cursor back.
        m.apply(&MapOp::PutService(key(2), value(2, 3, 0)));
        assert_eq!(m.next_set_id(), 6);
    }
}
