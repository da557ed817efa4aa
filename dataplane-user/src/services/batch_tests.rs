//! The batched sync (what `KernelMaps` takes) over the in-memory model: the same end state as
//! one service port after the other, and after a failure at any write every frontend still
//! serves a complete set (its old one or its new one), nothing is left half written, and the
//! next sync finishes.

use std::collections::HashMap;

use dataplane_common::lb::{BackendValue, ServiceKey};

use super::tests::{assert_no_orphans, endpoint, key_of, local, many, served, table};
use super::*;

fn batched() -> ServiceTable<MemMaps> {
    let maps = MemMaps {
        batch: true,
        ..Default::default()
    };
    ServiceTable::with_store(maps, local()).unwrap()
}

/// Every frontend's backends, by frontend (ids differ between runs; contents must not).
fn contents(t: &ServiceTable<MemMaps>) -> HashMap<ServiceKey, Vec<BackendValue>> {
    let m = t.store();
    m.services
        .iter()
        .map(|(k, v)| {
            let set = (0..v.count)
                .map(|slot| {
                    m.backends[&dataplane_common::lb::BackendKey {
                        set_id: v.set_id,
                        slot,
                    }
                    .index()]
                })
                .collect();
            (*k, set)
        })
        .collect()
}

/// Every service's endpoints replaced, one added and one removed by another.
fn changed(svcs: &[ServicePort]) -> Vec<ServicePort> {
    let mut out = svcs.to_vec();
    for (i, s) in out.iter_mut().enumerate() {
        s.backends.remove(0);
        s.backends
            .push(endpoint([10, 244, i as u8, 77], 8080, "worker-2"));
    }
    out.pop();
    out
}

#[test]
fn batched_and_one_by_one_syncs_reach_the_same_maps_with_the_same_report() {
    let (mut one, mut all) = (table(), batched());
    let svcs = many(20);
    for state in [svcs.clone(), changed(&svcs), svcs.clone(), Vec::new()] {
        let (a, b) = (one.sync_report(&state), all.sync_report(&state));
        assert!(a.is_complete() && b.is_complete(), "{a:?} {b:?}");
        assert_eq!(a.report, b.report);
        assert_eq!(contents(&one), contents(&all));
        assert_eq!(one.store().addrs, all.store().addrs);
        assert_no_orphans(&all);
    }
}

#[test]
fn a_batch_failing_at_any_write_leaves_complete_sets_and_the_next_sync_finishes() {
    let svcs = many(6);
    let after = changed(&svcs);
    let mut reference = batched();
    reference.sync(&svcs).unwrap();
    let writes = {
        let r = reference.sync_report(&after).report;
        r.written() + r.deleted()
    };
    for fail_at in 0..=writes {
        let mut t = batched();
        t.sync(&svcs).unwrap();
        let old = contents(&t);
        t.store_mut().writes_before_failure = Some(fail_at);
        let out = t.sync_report(&after);
        let now = contents(&t);
        for s in &after {
            let key = key_of(s);
            let new: Vec<BackendValue> = {
                let mut r = ServiceTable::with_store(MemMaps::default(), local()).unwrap();
                r.sync(std::slice::from_ref(s)).unwrap();
                served(&r, s)
            };
            let have = &now[&key];
            assert!(
                *have == old[&key] || *have == new,
                "fail at {fail_at}: {} serves neither its old nor its new set: {have:?}",
                s.name
            );
        }
        assert!(
            out.is_complete() || !out.failed.is_empty() || !out.cleanup_errors.is_empty(),
            "fail at {fail_at}: {out:?}"
        );
        t.store_mut().writes_before_failure = None;
        let out = t.sync_report(&after);
        assert!(out.is_complete(), "fail at {fail_at}: {out:?}");
        let mut want = reference
            .store()
            .services
            .keys()
            .copied()
            .collect::<Vec<_>>();
        let mut got = t.store().services.keys().copied().collect::<Vec<_>>();
        want.sort_by_key(super::spec::key_order);
        got.sort_by_key(super::spec::key_order);
        assert_eq!(got, want, "fail at {fail_at}");
        for s in &after {
            assert_eq!(served(&t, s).len(), s.backends.len(), "fail at {fail_at}");
        }
        assert_no_orphans(&t);
    }
}

#[test]
fn one_unwritable_service_in_a_batch_does_not_stop_the_others() {
    let mut t = batched();
    let mut svcs = many(5);
    t.sync(&svcs).unwrap();
    let old = served(&t, &svcs[2]);
    for (i, s) in svcs.iter_mut().enumerate() {
        s.backends
            .push(endpoint([10, 244, i as u8, 9], 8080, "worker-2"));
    }
    let poison = spec::ip_to_be(std::net::Ipv4Addr::new(10, 244, 2, 9));
    t.store_mut().poisoned_backends.insert(poison);
    let out = t.sync_report(&svcs);
    let failed: Vec<&str> = out.failed.iter().map(|f| f.service.as_str()).collect();
    assert_eq!(failed, ["ns/svc-2"], "{out:?}");
    assert_eq!(
        served(&t, &svcs[2]),
        old,
        "svc-2 keeps its complete old set"
    );
    for i in [0, 1, 3, 4] {
        assert_eq!(served(&t, &svcs[i]).len(), 4, "svc-{i} applied");
    }
    assert_no_orphans(&t);
    t.store_mut().poisoned_backends.clear();
    let out = t.sync_report(&svcs);
    assert!(out.is_complete(), "{out:?}");
    assert_eq!(
        (out.report.services_written, out.report.backends_written),
        (1, 4)
    );
}

#[test]
fn a_failed_switch_in_a_batch_puts_the_service_port_back() {
    let mut t = batched();
    let mut svcs = many(3);
    svcs[1].frontends.push(super::tests::frontend(
        [10, 96, 9, 1],
        80,
        crate::model::Protocol::Tcp,
    ));
    t.sync(&svcs).unwrap();
    let before = contents(&t);
    for s in &mut svcs {
        s.backends.pop();
    }
    let second = service_key(&svcs[1].frontends[1]);
    t.store_mut().poisoned_frontends.insert(second);
    let out = t.sync_report(&svcs);
    let failed: Vec<&str> = out.failed.iter().map(|f| f.service.as_str()).collect();
    assert_eq!(failed, ["ns/svc-1"], "{out:?}");
    let now = contents(&t);
    for k in svcs[1].frontends.iter().map(service_key) {
        assert_eq!(now[&k], before[&k], "both frontends of svc-1 as before");
    }
    for i in [0, 2] {
        assert_eq!(served(&t, &svcs[i]).len(), 2, "svc-{i} applied");
    }
    assert_no_orphans(&t);
}
