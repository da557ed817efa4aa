//! `ServiceTable::sync_delta`: writes only what changed, and ends where the full sync ends.

use std::collections::BTreeMap;

use dataplane_common::lb::{BackendKey, BackendValue, ServiceKey};

use super::tests::{endpoint, frontend, local, many, table};
use super::*;
use crate::model::{FrontendKind, Protocol, ServicePort, ServicePorts};

/// What the maps serve, without the ids (which may be handed out in another order): per
/// frontend its flags, affinity timeout and backends in slot order; and whether every slot in
/// `BACKENDS_V2` belongs to a frontend's set (no orphans, no leftovers of replaced sets).
fn served(t: &ServiceTable<MemMaps>) -> (BTreeMap<String, String>, bool) {
    let m = t.store();
    let mut out = BTreeMap::new();
    let mut slots = 0;
    for (k, v) in &m.services {
        let backends: Vec<BackendValue> = (0..v.count)
            .map(|slot| {
                m.backends[&BackendKey {
                    set_id: v.set_id,
                    slot,
                }
                .index()]
            })
            .collect();
        slots += backends.len();
        out.insert(
            format!("{k:?}"),
            format!("{} {} {backends:?}", v.flags, v.affinity_timeout_secs),
        );
    }
    (out, slots == m.backends.len())
}

/// Syncs `next` into `t` through the incremental path, asserting it was taken.
fn delta_sync(
    t: &mut ServiceTable<MemMaps>,
    prev: &[ServicePort],
    next: &[ServicePort],
) -> SyncOutcome {
    let delta = ServiceDelta::between(prev, next);
    let out = t
        .try_incremental(&delta)
        .expect("a clean table with a small delta takes the incremental path");
    assert!(out.is_complete(), "{:?}", out.error());
    out
}

fn synced(state: &[ServicePort]) -> ServiceTable<MemMaps> {
    let mut t = table();
    assert!(t.sync_report(state).is_complete());
    t
}

#[test]
fn one_changed_endpoint_writes_only_that_service() {
    let before = many(50);
    let mut after = before.clone();
    after[20].backends[2] = endpoint([10, 244, 20, 99], 8080, "worker-2");
    let mut t = synced(&before);
    let others: Vec<_> = before
        .iter()
        .filter(|s| s.name != after[20].name)
        .map(|s| {
            (
                service_key(&s.frontends[0]),
                t.frontend(&service_key(&s.frontends[0])),
            )
        })
        .collect();
    let out = delta_sync(&mut t, &before, &after);
    assert_eq!(
        out.report,
        UpdateReport {
            services_written: 1,
            backends_written: 3,
            backends_deleted: 3,
            ..Default::default()
        }
    );
    for (k, v) in others {
        assert_eq!(t.frontend(&k), v, "an unchanged service was rewritten");
    }
    assert_eq!(served(&t), served(&synced(&after)));
}

#[test]
fn unchanged_state_writes_nothing() {
    let state = many(20);
    let mut t = synced(&state);
    let delta = ServiceDelta::between(&state, &state);
    assert!(delta.is_empty());
    let out = delta_sync(&mut t, &state, &state);
    assert!(out.report.is_empty(), "{}", out.report);
}

#[test]
fn deletion_removes_the_service_and_its_slots() {
    let before = many(10);
    let after: Vec<ServicePort> = before
        .iter()
        .filter(|s| s.name.name != "svc-3")
        .cloned()
        .collect();
    let mut t = synced(&before);
    let out = delta_sync(&mut t, &before, &after);
    assert_eq!(
        out.report,
        UpdateReport {
            services_deleted: 1,
            backends_deleted: 3,
            ..Default::default()
        }
    );
    assert_eq!(
        out.removed_backends.len(),
        3,
        "its backends are gone for good"
    );
    assert_eq!(served(&t), served(&synced(&after)));
    // The removed port's frontends are free for another port without a full sync.
    let mut moved = after.clone();
    let mut taker = before[3].clone();
    taker.name.name = "svc-3-new".into();
    moved.push(taker);
    moved.sort_by(|a, b| a.name.cmp(&b.name));
    delta_sync(&mut t, &after, &moved);
    assert_eq!(served(&t), served(&synced(&moved)));
}

#[test]
fn rename_moves_the_frontend_through_the_full_sync() {
    // The same frontend under a new name in one state: the old owner lets go while the new one
    // claims it, which the full sync's name order decides; the result is the full sync's.
    let before = many(10);
    let mut after = before.clone();
    after[4].name.name = "renamed".into();
    after.sort_by(|a, b| a.name.cmp(&b.name));
    let mut t = synced(&before);
    let delta = ServiceDelta::between(&before, &after);
    assert_eq!(delta.len(), 2, "one removed, one added: {delta:?}");
    assert!(t.try_incremental(&delta).is_none());
    let out = t.sync_delta(&after, &delta);
    assert!(out.is_complete());
    assert_eq!(served(&t), served(&synced(&after)));
    // Afterwards the table is clean again: the next change is incremental.
    let mut next = after.clone();
    next[0].backends.pop();
    delta_sync(&mut t, &after, &next);
    assert_eq!(served(&t), served(&synced(&next)));
}

#[test]
fn failure_falls_back_to_full_sync_and_retries() {
    let before = many(10);
    let mut after = before.clone();
    after[2].backends[0] = endpoint([10, 244, 2, 77], 8080, "worker-2");
    let mut t = synced(&before);
    t.store_mut()
        .poisoned_backends
        .insert(spec::ip_to_be([10, 244, 2, 77].into()));
    let delta = ServiceDelta::between(&before, &after);
    let out = t.sync_delta(&after, &delta);
    assert_eq!(out.failed.len(), 1, "{:?}", out.failed);
    // The failed port keeps its previous state; the table no longer trusts deltas.
    assert_eq!(served(&t), served(&synced(&before)));
    assert!(t.try_incremental(&ServiceDelta::default()).is_none());
    t.store_mut().poisoned_backends.clear();
    let out = t.sync_delta(&after, &ServiceDelta::default());
    assert!(out.is_complete());
    assert_eq!(served(&t), served(&synced(&after)));
}

#[test]
fn upsert_outside_a_sync_makes_the_next_delta_a_full_sync() {
    let state = many(5);
    let mut t = synced(&state);
    let mut extra = state[0].clone();
    extra.name.name = "extra".into();
    extra.frontends = vec![frontend([10, 96, 9, 9], 80, Protocol::Tcp)];
    t.upsert(&extra).unwrap();
    assert!(t.try_incremental(&ServiceDelta::default()).is_none());
    // The full sync removes what no state lists.
    assert!(t.sync_delta(&state, &ServiceDelta::default()).is_complete());
    assert_eq!(served(&t), served(&synced(&state)));
}

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random state: up to 24 service ports named from a small pool (so successive states
/// share, change, add and drop them), frontends from a small pool (so ports collide on
/// frontends and move them), random endpoints, policies and affinity.
fn random_state(rng: &mut Rng) -> Vec<ServicePort> {
    let mut out: Vec<ServicePort> = Vec::new();
    let base = many(1).pop().unwrap();
    for i in 0..rng.below(24) {
        let mut s = base.clone();
        s.name.name = format!("svc-{}", rng.below(30));
        if out.iter().any(|o| o.name == s.name) {
            continue;
        }
        s.frontends = (0..1 + rng.below(2))
            .map(|_| {
                let mut f = frontend([10, 96, 0, rng.below(28) as u8], 80, Protocol::Tcp);
                if rng.below(4) == 0 {
                    f.kind = FrontendKind::NodePort;
                    f.ip = [192, 168, 0, 1].into();
                    f.port = 30000 + rng.below(8) as u16;
                }
                f
            })
            .collect();
        s.backends = (0..rng.below(5))
            .map(|_| {
                let node = if rng.below(2) == 0 {
                    "worker-1"
                } else {
                    "worker-2"
                };
                let mut e = endpoint([10, 244, 1, rng.below(12) as u8], 8080, node);
                e.ready = rng.below(5) != 0;
                e
            })
            .collect();
        if rng.below(5) == 0 {
            s.affinity_timeout_secs = Some(30 + i as u32);
        }
        if rng.below(5) == 0 {
            s.external_policy = crate::model::TrafficPolicy::Local;
        }
        out.push(s);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A mutation of `prev`: a few ports changed, added or dropped (what one watch event does).
fn mutate(rng: &mut Rng, prev: &[ServicePort]) -> Vec<ServicePort> {
    if rng.below(6) == 0 {
        return random_state(rng);
    }
    let mut next = prev.to_vec();
    for _ in 0..1 + rng.below(3) {
        let fresh = random_state(rng);
        match (rng.below(3), next.is_empty(), fresh.first()) {
            (0, false, _) => {
                next.remove(rng.below(next.len() as u64) as usize);
            }
            (1, false, Some(f)) => {
                let i = rng.below(next.len() as u64) as usize;
                next[i].backends = f.backends.clone();
            }
            (_, _, Some(f)) if !next.iter().any(|s| s.name == f.name) => next.push(f.clone()),
            _ => {}
        }
    }
    next.sort_by(|a, b| a.name.cmp(&b.name));
    next
}

#[test]
fn delta_sync_ends_where_the_full_sync_ends_on_random_states() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut incremental_taken = 0;
    for _ in 0..200 {
        let mut prev = random_state(&mut rng);
        let mut inc = ServiceTable::with_store(MemMaps::default(), local()).unwrap();
        let mut full = ServiceTable::with_store(MemMaps::default(), local()).unwrap();
        inc.sync_report(&prev);
        full.sync_report(&prev);
        for _ in 0..8 {
            let next = if rng.below(8) == 0 {
                // Unsorted input takes the name-index diff.
                let mut n = mutate(&mut rng, &prev);
                n.reverse();
                n
            } else {
                mutate(&mut rng, &prev)
            };
            let delta = ServiceDelta::between(&prev, &next);
            let fast = inc.clean && delta.len() <= INCREMENTAL_MAX;
            let a = inc.sync_delta(&next, &delta);
            let b = full.sync_report(&next);
            if fast && inc.clean {
                incremental_taken += 1;
            }
            assert_eq!(served(&inc), served(&full), "after {delta:?}");
            assert!(served(&inc).1, "orphan slots");
            assert_eq!(a.is_complete(), b.is_complete());
            let removed = |o: &SyncOutcome| {
                let mut r: Vec<(ServiceKey, u32, u16)> = o
                    .removed_backends
                    .iter()
                    .map(|r| (r.frontend, r.addr, r.port))
                    .collect();
                r.sort_by_key(|(k, a, p)| (spec::key_order(k), *a, *p));
                r
            };
            assert_eq!(removed(&a), removed(&b), "removed backends");
            prev = next;
        }
    }
    assert!(
        incremental_taken > 300,
        "the shortcut ran {incremental_taken} times"
    );
}

/// `next` as a source publishes it after `prev`: each port equal to one of `prev`'s is that
/// port's `Arc`.
fn shared_with(prev: &ServicePorts, next: &[ServicePort]) -> ServicePorts {
    let ports = next.iter().map(|p| match prev.iter().find(|q| ***q == *p) {
        Some(q) => q.clone(),
        None => std::sync::Arc::new(p.clone()),
    });
    ports.collect()
}

/// The changes as values, to compare deltas over different containers.
fn owned(delta: &ServiceDelta) -> Vec<(Option<ServicePort>, Option<ServicePort>)> {
    let changes = delta.changes.iter();
    changes.map(|(a, b)| (a.cloned(), b.cloned())).collect()
}

#[test]
fn the_walk_over_shared_ports_finds_what_the_value_diff_finds() {
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    for _ in 0..100 {
        let mut prev = random_state(&mut rng);
        let mut prev_ports: ServicePorts = prev.clone().into();
        for _ in 0..8 {
            let next = mutate(&mut rng, &prev);
            let next_ports = shared_with(&prev_ports, &next);
            assert!(prev_ports.is_unique() && next_ports.is_unique());
            let walked = ServiceDelta::of(&prev_ports, &next_ports);
            assert_eq!(owned(&walked), owned(&ServiceDelta::between(&prev, &next)));
            (prev, prev_ports) = (next, next_ports);
        }
    }
    // Two ports of one name: not unique, so the name-index diff (the first one wins there).
    let twice: ServicePorts = [many(1), many(1)].concat().into();
    assert!(!twice.is_unique());
    let delta = ServiceDelta::of(&twice, &twice);
    assert!(delta.is_empty());
}
