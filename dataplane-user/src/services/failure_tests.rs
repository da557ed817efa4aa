//! `ServiceTable` over the in-memory model when writes fail or the maps are full: every
//! other service is applied, nothing is left half written, the next update finishes.

use std::net::Ipv4Addr;

use super::tests::{
    app_svc, assert_no_orphans, be, endpoint, frontend, key_of, local, many, name, served, table,
    udp_flow,
};
use super::{spec::ip_to_be, *};
use crate::model::Protocol;

#[test]
fn a_failed_write_leaves_a_consistent_table_and_the_next_update_finishes() {
    let mut t = table();
    let mut svcs = many(4);
    t.sync(&svcs).unwrap();
    for s in &mut svcs {
        s.backends.pop();
    }
    // 3 writes: the first frontend's 2 new slots and its switch; then every write fails.
    t.store_mut().writes_before_failure = Some(3);
    let fid = t.store().services[&key_of(&svcs[0])].frontend_id;
    let dropped = be([10, 244, 0, 3], 8080, 0);
    t.store_mut()
        .ct
        .extend(udp_flow([10, 244, 1, 5], fid, dropped));
    let out = t.sync_report(&svcs);
    assert!(t.sync(&svcs).is_err());
    let failed: Vec<&str> = out.failed.iter().map(|f| f.service.as_str()).collect();
    assert_eq!(failed, ["ns/svc-1", "ns/svc-2", "ns/svc-3"]);
    assert_eq!(out.cleanup_errors.len(), 1, "{out:?}");
    assert_eq!(served(&t, &svcs[0]).len(), 2, "switched before the failure");
    assert_eq!(out.report.conntrack_deleted, 2, "its flows purged at once");
    for s in &svcs[1..] {
        assert_eq!(served(&t, s).len(), 3, "still the complete old set");
    }
    t.store_mut().writes_before_failure = None;
    let out = t.sync_report(&svcs);
    assert!(out.is_complete(), "{out:?}");
    for s in &svcs {
        assert_eq!(served(&t, s).len(), 2);
    }
    assert_eq!(
        t.store().backends.len(),
        8,
        "old sets and the first frontend's old slots are gone"
    );
}

#[test]
fn a_service_that_cannot_be_written_does_not_stop_the_others_and_is_retried() {
    let mut t = table();
    let mut svcs = many(4);
    t.sync(&svcs).unwrap();
    let old = served(&t, &svcs[1]);
    // Every service gets a new endpoint; svc-1's cannot be written.
    for (i, s) in svcs.iter_mut().enumerate() {
        s.backends
            .push(endpoint([10, 244, i as u8, 9], 8080, "worker-2"));
    }
    let poison = ip_to_be(Ipv4Addr::new(10, 244, 1, 9));
    t.store_mut().poisoned_backends.insert(poison);
    let out = t.sync_report(&svcs);
    assert_eq!(out.failed.len(), 1, "{out:?}");
    assert_eq!(out.failed[0].service, "ns/svc-1");
    assert!(out.failed[0].error.contains("injected"), "{out:?}");
    assert!(!out.is_complete());
    assert_eq!(
        served(&t, &svcs[1]),
        old,
        "svc-1 keeps its complete old set"
    );
    for i in [0, 2, 3] {
        assert_eq!(served(&t, &svcs[i]).len(), 4, "svc-{i} applied");
    }
    assert_no_orphans(&t);
    // A retry with nothing changed writes only what failed.
    t.store_mut().poisoned_backends.clear();
    let out = t.sync_report(&svcs);
    assert!(out.is_complete(), "{out:?}");
    assert_eq!(
        (out.report.services_written, out.report.backends_written),
        (1, 4)
    );
    assert_eq!(served(&t, &svcs[1]).len(), 4);
    assert_no_orphans(&t);
}

/// A service port with two frontends, the second of which cannot be switched: the first one,
/// already switched, is put back, so the service is never half written.
#[test]
fn a_failed_switch_restores_the_frontends_already_switched() {
    let mut t = table();
    let mut svc = app_svc(Protocol::Tcp);
    svc.frontends
        .push(frontend([10, 109, 117, 160], 80, Protocol::Tcp));
    t.sync(std::slice::from_ref(&svc)).unwrap();
    let before = t.store().services.clone();
    svc.backends.pop();
    let second = service_key(&svc.frontends[1]);
    t.store_mut().poisoned_frontends.insert(second);
    let out = t.sync_report(std::slice::from_ref(&svc));
    assert_eq!(out.failed.len(), 1, "{out:?}");
    assert_eq!(t.store().services, before, "both frontends as before");
    assert_no_orphans(&t);
    assert_eq!(
        out.report,
        UpdateReport::default(),
        "nothing counted as done"
    );

    // A new service whose second frontend cannot be created leaves no first frontend behind.
    let mut other = many(1).remove(0);
    other
        .frontends
        .push(frontend([10, 109, 117, 160], 81, Protocol::Tcp));
    t.store_mut()
        .poisoned_frontends
        .insert(service_key(&other.frontends[1]));
    let out = t.sync_report(&[svc.clone(), other.clone()]);
    assert_eq!(out.failed.len(), 2, "{out:?}");
    assert!(!t.store().services.contains_key(&key_of(&other)));
    assert_no_orphans(&t);
    t.store_mut().poisoned_frontends.clear();
    assert!(t.sync_report(&[svc.clone(), other.clone()]).is_complete());
    assert_eq!(served(&t, &svc).len(), 2);
    assert_eq!(served(&t, &other).len(), 3);
}

#[test]
fn overflowing_services_map_keeps_every_service_that_fits_and_names_count_and_limit() {
    let mut t = ServiceTable::with_store(
        MemMaps {
            capacity: Some((3, 1000)),
            ..Default::default()
        },
        local(),
    )
    .unwrap();
    let svcs = many(5);
    let out = t.sync_report(&svcs);
    assert_eq!(out.over_capacity.len(), 1, "{out:?}");
    let p = &out.over_capacity[0];
    assert_eq!((p.map, p.needed, p.limit), ("SERVICES_V2", 5, 3));
    assert_eq!(p.skipped, [name("ns", "svc-3"), name("ns", "svc-4")]);
    let text = p.to_string();
    assert!(
        text.contains("SERVICES_V2 would need 5 entries, limit 3") && text.contains("ns/svc-3"),
        "{text}"
    );
    assert!(out.failed.is_empty(), "nothing was even tried: {out:?}");
    for s in &svcs[..3] {
        assert_eq!(served(&t, s).len(), 3);
    }
    // A newcomer that sorts first does not evict services already in the maps.
    let mut more = svcs.clone();
    more.push(ServicePort {
        name: name("a", "first"),
        frontends: vec![frontend([10, 96, 9, 9], 80, Protocol::Tcp)],
        ..svcs[0].clone()
    });
    let out = t.sync_report(&more);
    assert_eq!(out.over_capacity[0].skipped[0], name("a", "first"));
    for s in &svcs[..3] {
        assert_eq!(served(&t, s).len(), 3);
    }
    assert!(t.sync(&more).is_err(), "sync reports the overflow");
}

#[test]
fn overflowing_backends_map_keeps_room_for_replacing_a_set() {
    // 3 slots per service; 10 slots: two services (6) plus one set being replaced (3) fit.
    let mut t = ServiceTable::with_store(
        MemMaps {
            capacity: Some((100, 10)),
            ..Default::default()
        },
        local(),
    )
    .unwrap();
    let mut svcs = many(3);
    let out = t.sync_report(&svcs);
    let p = &out.over_capacity[0];
    assert_eq!((p.map, p.needed, p.limit), ("BACKENDS_V2", 12, 10));
    assert_eq!(p.skipped, [name("ns", "svc-2")]);
    // The admitted ones can still be updated: the replacement set fits.
    svcs[0].backends[0].ip = Ipv4Addr::new(10, 244, 0, 77);
    let out = t.sync_report(&svcs[..2]);
    assert!(out.is_complete(), "{out:?}");
    assert!(served(&t, &svcs[0]).contains(&be([10, 244, 0, 77], 8080, 0)));
}
