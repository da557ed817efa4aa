//! The pure planner: from what the maps hold ([`Mirror`]) and what they should hold, the map
//! operations in an order that keeps `dataplane_common::lb`'s invariant — a packet never sees a
//! half-written service:
//! - a changed frontend: every slot of a new set (a run of free slots, its first slot the
//!   `set_id`) first, then the `SERVICES_V2` value (one hash update, which readers see
//!   atomically), then the old set's slots;
//! - a removed frontend: the `SERVICES_V2` entry first, then its slots.
//!
//! Right after each switch or removal comes the purge of flows to backends that left it. The
//! executor runs purges after every write of the plan; their place in the plan records which
//! switch they depend on, so a plan interrupted after a switch still owes that switch's purge.
//!
//! A set is never modified once a service references it, so a reader that fetched a service
//! value always finds the complete set that value names (until the set is deleted, which
//! happens only after no value names it).

use std::collections::BTreeMap;

use foldhash::{HashMap, HashSet};

use dataplane_common::lb::{BackendKey, BackendValue, ServiceKey};

pub(crate) use super::mirror::MapOp;
use super::{
    mirror::{slots, Mirror},
    spec::{key_order, FrontendSpec},
};

/// What a plan must achieve: frontends mapped to `Some` end up with that spec, frontends mapped
/// to `None` are removed, frontends not listed are left alone.
pub(crate) type Desired = HashMap<ServiceKey, Option<FrontendSpec>>;

/// The operations that take the maps from `current` to `desired`, frontend by frontend in
/// address order (so equal inputs give equal plans). Unchanged frontends produce no operation.
pub(crate) fn plan(current: &Mirror, desired: &Desired) -> Vec<MapOp> {
    plan_each(current, &[desired]).pop().unwrap_or_default()
}

/// [`plan`] of several independent desired states at once, as if each were applied right after
/// the previous one: ids handed out to one are not handed out again to the next.
pub(crate) fn plan_each(current: &Mirror, desired: &[&Desired]) -> Vec<Vec<MapOp>> {
    let mut ids = Allocator::new(current);
    desired
        .iter()
        .map(|d| {
            let mut keys: Vec<ServiceKey> = d.keys().copied().collect();
            keys.sort_by_key(key_order);
            let mut ops = Vec::new();
            // Removals first: they free map capacity before additions need it.
            for key in keys.iter().filter(|k| d[*k].is_none()) {
                remove_frontend(current, key, &mut ops);
            }
            for key in &keys {
                if let Some(spec) = &d[key] {
                    upsert_frontend(current, key, spec, &mut ids, &mut ops);
                }
            }
            ops
        })
        .collect()
}

/// Deletes the slots no service reads (left by an interrupted writer). Safe at any time: no
/// service value names them, so no reader can be on its way to them.
pub(crate) fn collect_garbage(current: &Mirror) -> Vec<MapOp> {
    current
        .orphan_slots()
        .into_iter()
        .map(MapOp::DeleteBackend)
        .collect()
}

fn remove_frontend(current: &Mirror, key: &ServiceKey, ops: &mut Vec<MapOp>) {
    let Some(old) = current.service(key) else {
        return;
    };
    ops.push(MapOp::DeleteService(*key));
    push_purge(old.frontend_id, &current.set_backends(old), &[], ops);
    ops.extend(slots(old).map(MapOp::DeleteBackend));
}

fn upsert_frontend(
    current: &Mirror,
    key: &ServiceKey,
    spec: &FrontendSpec,
    ids: &mut Allocator,
    ops: &mut Vec<MapOp>,
) {
    let Some(old) = current.service(key) else {
        let value = spec.value(ids.frontend_id(), ids.set_id(spec.backends.len()));
        write_set(value.set_id, &spec.backends, ops);
        ops.push(MapOp::PutService(*key, value));
        return;
    };
    let old_backends = current.set_backends(old);
    if old_backends == spec.backends && current.set_is_complete(old) {
        // Same backends: a flags or timeout change is one value update on the same set.
        let value = spec.value(old.frontend_id, old.set_id);
        if value != *old {
            ops.push(MapOp::PutService(*key, value));
        }
        return;
    }
    // The frontend id stays (affinity and conntrack refer to it); the set is new.
    let value = spec.value(old.frontend_id, ids.set_id(spec.backends.len()));
    write_set(value.set_id, &spec.backends, ops);
    ops.push(MapOp::PutService(*key, value));
    push_purge(old.frontend_id, &old_backends, &spec.backends, ops);
    ops.extend(slots(old).map(MapOp::DeleteBackend));
}

fn write_set(set_id: u32, backends: &[BackendValue], ops: &mut Vec<MapOp>) {
    for (slot, backend) in (0..).zip(backends) {
        ops.push(MapOp::PutBackend(BackendKey { set_id, slot }, *backend));
    }
}

/// Purges flows of the backends in `old` that are not in `new` (by address and port: a backend
/// whose only change is a flag still serves its connections).
fn push_purge(frontend_id: u32, old: &[BackendValue], new: &[BackendValue], ops: &mut Vec<MapOp>) {
    let kept: HashSet<(u32, u16)> = new.iter().map(|b| (b.addr, b.port)).collect();
    let mut gone: Vec<(u32, u16)> = old
        .iter()
        .map(|b| (b.addr, b.port))
        .filter(|b| !kept.contains(b))
        .collect();
    gone.dedup();
    if !gone.is_empty() {
        ops.push(MapOp::PurgeFlows {
            frontend_id,
            backends: gone,
        });
    }
}

/// Hands out ids for one plan from the mirror's allocators, without changing the mirror (the
/// mirror advances when the operations are applied).
struct Allocator<'a> {
    current: &'a Mirror,
    frontend_ids: Box<dyn Iterator<Item = u32> + 'a>,
    next_set_id: u32,
    /// Runs handed out by this plan so far (`first -> count`).
    claimed: BTreeMap<u32, u32>,
}

impl<'a> Allocator<'a> {
    fn new(current: &'a Mirror) -> Self {
        Allocator {
            current,
            frontend_ids: Box::new(current.frontend_id_candidates()),
            next_set_id: current.next_set_id(),
            claimed: BTreeMap::new(),
        }
    }

    fn frontend_id(&mut self) -> u32 {
        self.frontend_ids
            .next()
            .expect("the candidate list is unbounded")
    }

    /// The first slot of a run of `count` free slots (one for an empty set, so that every set
    /// id is its own), searched upward from the last run handed out and wrapping once to slot 1.
    /// Free means in no set in use, in no set of the last `SLOT_QUARANTINE_MS` (a reader that
    /// fetched a just-replaced service value can never find its slots reused) and in no run of
    /// this plan. With no such run: the slot limit itself, which every write of the set refuses
    /// ("BACKENDS_V2 has no slot ..."), so the service port fails by name and the rest applies.
    fn set_id(&mut self, count: usize) -> u32 {
        let limit = self.current.slot_limit();
        let Ok(len) = u32::try_from(count.max(1)) else {
            return limit;
        };
        let from = self.next_set_id.clamp(1, limit);
        let mut start = from;
        let mut wrapped = false;
        loop {
            if wrapped && start >= from {
                return limit;
            }
            if start.saturating_add(len) > limit {
                if wrapped {
                    return limit;
                }
                (wrapped, start) = (true, 1);
                continue;
            }
            let mine = self
                .claimed
                .range(..start + len)
                .next_back()
                .map(|(&f, &n)| f + n)
                .filter(|&end| end > start);
            match self.current.blocker(start, len).max(mine) {
                Some(end) => start = end,
                None => break,
            }
        }
        self.claimed.insert(start, len);
        self.next_set_id = start + len;
        start
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        time::{Duration, Instant},
    };

    use dataplane_common::lb::{ServiceValue, SLOT_QUARANTINE_MS};

    use super::*;

    fn key(n: u8) -> ServiceKey {
        ServiceKey::new(u32::from_ne_bytes([10, 96, 0, n]), 80u16.to_be(), 6)
    }

    fn be(n: u8) -> BackendValue {
        BackendValue {
            addr: u32::from_ne_bytes([10, 244, 0, n]),
            port: 8080u16.to_be(),
            flags: 0,
        }
    }

    fn spec(backends: &[u8]) -> FrontendSpec {
        FrontendSpec {
            flags: 0,
            affinity_timeout_secs: 0,
            backends: backends.iter().map(|&n| be(n)).collect(),
        }
    }

    /// (frontend, its backends or `None` for removal), by number.
    type Case<'a> = &'a [(u8, Option<&'a [u8]>)];

    fn desired(entries: Case) -> Desired {
        entries
            .iter()
            .map(|&(k, b)| (key(k), b.map(spec)))
            .collect()
    }

    fn apply_all(m: &mut Mirror, ops: &[MapOp]) {
        ops.iter().for_each(|op| m.apply(op));
    }

    /// A mirror holding frontends 1..=3 with backends {1,2,3}, {4} and none.
    fn populated() -> Mirror {
        let mut m = Mirror::default();
        let d = desired(&[(1, Some(&[1, 2, 3])), (2, Some(&[4])), (3, Some(&[]))]);
        let ops = plan(&m, &d);
        apply_all(&mut m, &ops);
        m
    }

    /// The invariant readers rely on, checked after every prefix of a plan: each service entry
    /// names a complete set whose backends are exactly the old or the new list of its frontend.
    fn assert_every_prefix_is_consistent(start: &Mirror, d: &Desired) {
        let ops = plan(start, d);
        for n in 0..=ops.len() {
            let mut m = start.clone();
            apply_all(&mut m, &ops[..n]);
            for (k, v) in m.services() {
                assert!(
                    m.set_is_complete(v),
                    "after {n} ops, {k:?} names an incomplete set"
                );
                let now = m.set_backends(v);
                let old = start.service(k).map(|o| start.set_backends(o));
                let new = d
                    .get(k)
                    .and_then(|s| s.as_ref())
                    .map(|s| s.backends.clone());
                assert!(
                    Some(&now) == old.as_ref() || Some(&now) == new.as_ref(),
                    "after {n} ops, {k:?} serves {now:?}: neither old {old:?} nor new {new:?}"
                );
            }
        }
    }

    #[test]
    fn every_prefix_of_every_kind_of_update_is_consistent() {
        let start = populated();
        let cases: &[Case] = &[
            &[(1, Some(&[1, 2, 3])), (2, Some(&[4])), (3, Some(&[]))], // unchanged
            &[(1, Some(&[1, 2, 5]))],                                  // one endpoint replaced
            &[(1, Some(&[]))],                                         // all endpoints gone
            &[(3, Some(&[7, 8]))],                                     // endpoints appear
            &[(1, None), (2, None)],                                   // frontends removed
            &[(4, Some(&[1, 2])), (5, Some(&[]))],                     // frontends added
            &[
                (1, Some(&[2])),
                (2, None),
                (4, Some(&[4, 9])),
                (3, Some(&[3])),
            ], // everything
        ];
        for case in cases {
            assert_every_prefix_is_consistent(&start, &desired(case));
        }
    }

    #[test]
    fn changed_frontend_writes_new_set_then_switches_then_purges_and_deletes_old() {
        let start = populated();
        let old = *start.service(&key(1)).unwrap();
        let ops = plan(&start, &desired(&[(1, Some(&[1, 2, 5]))]));
        let new_set = start.next_set_id();
        let new = ServiceValue {
            set_id: new_set,
            ..old
        };
        let mut expect: Vec<MapOp> = [1, 2, 5]
            .iter()
            .zip(0..)
            .map(|(&b, slot)| {
                MapOp::PutBackend(
                    BackendKey {
                        set_id: new_set,
                        slot,
                    },
                    be(b),
                )
            })
            .collect();
        expect.push(MapOp::PutService(key(1), new));
        expect.push(MapOp::PurgeFlows {
            frontend_id: old.frontend_id,
            backends: vec![(be(3).addr, be(3).port)],
        });
        expect.extend(slots(&old).map(MapOp::DeleteBackend));
        assert_eq!(ops, expect);
    }

    #[test]
    fn removal_deletes_the_service_before_its_slots() {
        let start = populated();
        let old = *start.service(&key(2)).unwrap();
        let ops = plan(&start, &desired(&[(2, None)]));
        assert_eq!(
            ops,
            [
                MapOp::DeleteService(key(2)),
                MapOp::PurgeFlows {
                    frontend_id: old.frontend_id,
                    backends: vec![(be(4).addr, be(4).port)]
                },
                MapOp::DeleteBackend(BackendKey {
                    set_id: old.set_id,
                    slot: 0
                }),
            ]
        );
    }

    #[test]
    fn unchanged_frontends_produce_no_operations() {
        let start = populated();
        let d = desired(&[(1, Some(&[1, 2, 3])), (2, Some(&[4])), (3, Some(&[]))]);
        assert!(plan(&start, &d).is_empty());
        assert!(plan(&start, &Desired::default()).is_empty());
        assert!(collect_garbage(&start).is_empty());
    }

    #[test]
    fn one_changed_endpoint_touches_only_its_frontend() {
        let start = populated();
        let d = desired(&[(1, Some(&[1, 2, 3])), (2, Some(&[5])), (3, Some(&[]))]);
        let ops = plan(&start, &d);
        let old_set = start.service(&key(2)).unwrap().set_id;
        for op in &ops {
            match op {
                MapOp::PutService(k, _) | MapOp::DeleteService(k) => assert_eq!(*k, key(2)),
                MapOp::PutBackend(k, _) => assert_eq!(k.set_id, start.next_set_id()),
                MapOp::DeleteBackend(k) => assert_eq!(k.set_id, old_set),
                MapOp::PurgeFlows { frontend_id, .. } => {
                    assert_eq!(*frontend_id, start.service(&key(2)).unwrap().frontend_id)
                }
            }
        }
        assert_eq!(
            ops.len(),
            4,
            "1 slot + switch + 1 old slot + purge: {ops:?}"
        );
    }

    #[test]
    fn flag_change_keeps_the_set() {
        let start = populated();
        let mut s = spec(&[4]);
        s.flags = dataplane_common::lb::SVC_F_AFFINITY;
        s.affinity_timeout_secs = 30;
        let old = *start.service(&key(2)).unwrap();
        let ops = plan(&start, &[(key(2), Some(s))].into_iter().collect());
        let want = ServiceValue {
            flags: dataplane_common::lb::SVC_F_AFFINITY,
            affinity_timeout_secs: 30,
            ..old
        };
        assert_eq!(ops, [MapOp::PutService(key(2), want)]);
    }

    #[test]
    fn ids_are_stable_fresh_and_reused() {
        let mut m = populated();
        let fids: BTreeSet<u32> = m.services().map(|(_, v)| v.frontend_id).collect();
        assert_eq!(fids, BTreeSet::from([1, 2, 3]));
        let mut seen_sets: BTreeSet<u32> = m.services().map(|(_, v)| v.set_id).collect();
        // Every backend change gets a set id never used before (and never 0); the frontend id
        // stays, including when the set becomes empty and when it is refilled.
        let before = *m.service(&key(1)).unwrap();
        for backends in [&[1, 2][..], &[], &[], &[6]] {
            let ops = plan(&m, &desired(&[(1, Some(backends))]));
            apply_all(&mut m, &ops);
            let now = *m.service(&key(1)).unwrap();
            assert_eq!(now.frontend_id, before.frontend_id);
            if backends.is_empty() && ops.is_empty() {
                continue; // the second empty update is a no-op
            }
            assert!(
                now.set_id != 0 && seen_sets.insert(now.set_id),
                "set {} reused",
                now.set_id
            );
        }
        // A removed frontend's id is not handed out in the plan that removes it, then is.
        let gone = m.service(&key(2)).unwrap().frontend_id;
        let ops = plan(&m, &desired(&[(2, None), (4, Some(&[1]))]));
        apply_all(&mut m, &ops);
        assert_eq!(m.service(&key(4)).unwrap().frontend_id, 4);
        let ops = plan(&m, &desired(&[(5, Some(&[1]))]));
        apply_all(&mut m, &ops);
        assert_eq!(m.service(&key(5)).unwrap().frontend_id, gone);
    }

    /// The runs of every set the mirror holds, `(first, slots)`, asserting none overlaps
    /// another.
    fn disjoint_runs(m: &Mirror) -> Vec<(u32, u32)> {
        let mut runs: Vec<(u32, u32)> = m
            .services()
            .map(|(_, v)| (v.set_id, v.count.max(1)))
            .collect();
        runs.sort_unstable();
        runs.dedup();
        for w in runs.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "runs overlap: {runs:?}");
        }
        runs
    }

    fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
        a.0 < b.0 + b.1 && b.0 < a.0 + a.1
    }

    #[test]
    fn runs_skip_sets_in_use_and_in_quarantine_and_say_when_none_fits() {
        let mut m = Mirror::default();
        m.set_slot_limit(24);
        let three = |a: u8| desired(&[(1, Some(&[a, 2, 3])), (2, Some(&[a, 5])), (3, Some(&[a]))]);
        let ops = plan(&m, &three(1));
        apply_all(&mut m, &ops);
        assert_eq!(disjoint_runs(&m), [(1, 3), (4, 2), (6, 1)]);
        // Replacing all three: the new sets come after the old, which are in quarantine after.
        let ops = plan(&m, &three(10));
        apply_all(&mut m, &ops);
        assert_eq!(disjoint_runs(&m), [(7, 3), (10, 2), (12, 1)]);
        assert_eq!(m.quarantined_slots(), 6);
        let ops = plan(&m, &three(11));
        apply_all(&mut m, &ops);
        assert_eq!(disjoint_runs(&m), [(13, 3), (16, 2), (18, 1)]);
        // Slots 19..=23 hold the next 3 + 2; the last set finds no run: slots 1..=12 are in
        // quarantine and 13..=18 in use. Its set id is the limit, which every write refuses.
        let ops = plan(&m, &three(12));
        let firsts: Vec<u32> = ops
            .iter()
            .filter_map(|op| match op {
                MapOp::PutService(_, v) => Some(v.set_id),
                _ => None,
            })
            .collect();
        assert_eq!(firsts, [19, 22, 24]);
        // Once the quarantine is over, the search wraps to slot 1.
        m.prune_retired(Instant::now() + Duration::from_millis(SLOT_QUARANTINE_MS + 1));
        let ops = plan(&m, &three(12));
        apply_all(&mut m, &ops);
        assert_eq!(disjoint_runs(&m), [(1, 1), (19, 3), (22, 2)]);
    }

    /// Random updates in a small array: no set is ever written over slots that a set in use
    /// or a set retired since the last end of quarantine holds, and slots are reused.
    #[test]
    fn random_updates_never_reuse_live_or_quarantined_slots() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut m = Mirror::default();
        m.set_slot_limit(400);
        let mut quarantined: Vec<(u32, u32)> = Vec::new();
        let mut wrapped = false;
        for round in 0..600 {
            if round % 7 == 6 {
                m.prune_retired(Instant::now() + Duration::from_millis(SLOT_QUARANTINE_MS + 1));
                quarantined.clear();
            }
            let before = disjoint_runs(&m);
            let backends: Vec<Vec<u8>> = (0..6).map(|_| (0..next(6) as u8).collect()).collect();
            let mut d = Desired::default();
            for k in 0..6u8 {
                if next(3) > 0 {
                    let keep = next(8) > 0;
                    d.insert(key(k + 1), keep.then(|| spec(&backends[k as usize])));
                }
            }
            let ops = plan(&m, &d);
            for op in &ops {
                if let MapOp::PutBackend(k, _) = op {
                    let slot = (k.index(), 1);
                    assert!(k.index() >= 1 && k.index() < 400, "{k:?}");
                    for r in before.iter().chain(&quarantined) {
                        assert!(!overlaps(slot, *r), "slot {k:?} of {r:?} reused");
                    }
                    wrapped |= before.iter().any(|r| r.0 > k.index());
                }
            }
            apply_all(&mut m, &ops);
            let after = disjoint_runs(&m);
            quarantined.extend(before.iter().filter(|r| !after.contains(r)));
        }
        assert!(wrapped, "600 rounds in 400 slots should wrap");
    }

    #[test]
    fn set_ids_skip_slot_zero_and_sets_in_use_when_wrapping() {
        // A dump whose highest set id is u32::MAX, with 1 and 2 still in use.
        let v = |fid, set_id| ServiceValue {
            frontend_id: fid,
            set_id,
            ..Default::default()
        };
        let m = Mirror::adopt(
            [
                (key(1), v(1, u32::MAX)),
                (key(2), v(2, 1)),
                (key(3), v(3, 2)),
            ],
            [],
        );
        let ops = plan(&m, &desired(&[(4, Some(&[]))]));
        assert_eq!(ops, [MapOp::PutService(key(4), v(4, 3))]);
    }

    #[test]
    fn adopted_state_plans_like_the_original() {
        let start = populated();
        let dump_services: Vec<_> = start.services().map(|(k, v)| (*k, *v)).collect();
        let dump_backends: Vec<_> = (1..start.next_set_id())
            .flat_map(|set_id| (0..8).map(move |slot| BackendKey { set_id, slot }))
            .filter_map(|k| start.backend(&k).map(|v| (k, *v)))
            .collect();
        let adopted = Mirror::adopt(dump_services, dump_backends);
        assert_eq!(adopted.next_set_id(), start.next_set_id());
        let d = desired(&[
            (1, Some(&[1, 2, 3])),
            (2, Some(&[4])),
            (3, Some(&[])),
            (4, Some(&[1])),
        ]);
        assert_eq!(plan(&adopted, &d), plan(&start, &d));
    }

    #[test]
    fn incomplete_adopted_set_is_replaced_and_orphans_collected() {
        let v = ServiceValue {
            frontend_id: 1,
            set_id: 5,
            count: 2,
            ..Default::default()
        };
        // Slot 1 of set 5 is missing; set 6 was written but never switched to.
        let orphan = (BackendKey { set_id: 6, slot: 0 }, be(9));
        let m = Mirror::adopt(
            [(key(1), v)],
            [(BackendKey { set_id: 5, slot: 0 }, be(1)), orphan],
        );
        let ops = plan(&m, &desired(&[(1, Some(&[1]))]));
        let switched = ServiceValue {
            set_id: 7,
            count: 1,
            ..v
        };
        assert!(ops.contains(&MapOp::PutService(key(1), switched)));
        assert_eq!(collect_garbage(&m), [MapOp::DeleteBackend(orphan.0)]);
    }
}
