//! `ServiceTable` over the in-memory model: end-to-end update semantics without root, and the
//! helpers the other test modules share. Failures and capacity: `failure_tests.rs`; flows of
//! removed backends: `flow_tests.rs`.

use std::net::Ipv4Addr;

use dataplane_common::{
    ct::{CtKey, CtValue, CT_F_REPLY},
    lb::{BackendKey, BackendValue, ServiceValue, BE_F_LOCAL},
};

use super::{spec::ip_to_be, *};
use crate::model::{Backend, Frontend, FrontendKind, Protocol, TrafficPolicy};

pub(super) fn local() -> LocalContext {
    LocalContext {
        node_name: "worker-1".into(),
        ..Default::default()
    }
}

pub(super) fn name(ns: &str, name: &str) -> ServicePortName {
    ServicePortName {
        namespace: ns.into(),
        name: name.into(),
        port: String::new(),
    }
}

pub(super) fn endpoint(ip: [u8; 4], port: u16, node: &str) -> Backend {
    Backend {
        ip: Ipv4Addr::from(ip),
        port,
        node_name: Some(node.into()),
        ready: true,
        serving: true,
        terminating: false,
        hints: Default::default(),
    }
}

pub(super) fn frontend(ip: [u8; 4], port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        ip: Ipv4Addr::from(ip),
        port,
        protocol,
        kind: FrontendKind::ClusterIp,
    }
}

/// The seed's test001/app-svc-clusterip.
pub(super) fn app_svc(protocol: Protocol) -> ServicePort {
    ServicePort {
        name: name("test001", "app-svc-clusterip"),
        frontends: vec![frontend([10, 109, 117, 159], 80, protocol)],
        backends: vec![
            endpoint([10, 244, 2, 15], 8080, "worker-2"),
            endpoint([10, 244, 1, 19], 8080, "worker-1"),
            endpoint([10, 244, 2, 16], 8080, "worker-2"),
        ],
        external_policy: TrafficPolicy::Cluster,
        internal_policy: TrafficPolicy::Cluster,
        affinity_timeout_secs: None,
        health_check_node_port: None,
        source_ranges: Vec::new(),
    }
}

/// `count` ClusterIP services of 3 endpoints each.
pub(super) fn many(count: u8) -> Vec<ServicePort> {
    (0..count)
        .map(|i| ServicePort {
            name: name("ns", &format!("svc-{i}")),
            frontends: vec![frontend([10, 96, 1, i], 80, Protocol::Tcp)],
            backends: (1..=3)
                .map(|j| endpoint([10, 244, i, j], 8080, "worker-2"))
                .collect(),
            ..app_svc(Protocol::Tcp)
        })
        .collect()
}

pub(super) fn table() -> ServiceTable<MemMaps> {
    ServiceTable::with_store(MemMaps::default(), local()).unwrap()
}

pub(super) fn be(ip: [u8; 4], port: u16, flags: u16) -> BackendValue {
    BackendValue {
        addr: ip_to_be(ip.into()),
        port: port.to_be(),
        flags,
    }
}

pub(super) fn key_of(svc: &ServicePort) -> dataplane_common::lb::ServiceKey {
    service_key(&svc.frontends[0])
}

/// The backends the maps serve for `svc`'s first frontend, asserting the set is complete.
pub(super) fn served(t: &ServiceTable<MemMaps>, svc: &ServicePort) -> Vec<BackendValue> {
    let v = t.store().services[&key_of(svc)];
    (0..v.count)
        .map(|slot| {
            t.store().backends[&BackendKey {
                set_id: v.set_id,
                slot,
            }
            .index()]
        })
        .collect()
}

/// CT entries of one UDP flow through frontend `fid` to `backend`, both directions.
pub(super) fn udp_flow(client: [u8; 4], fid: u32, backend: BackendValue) -> [(CtKey, CtValue); 2] {
    let (client, cport) = (ip_to_be(client.into()), 5353u16.to_be());
    let fwd_key = CtKey {
        saddr: client,
        daddr: ip_to_be([10, 109, 117, 159].into()),
        sport: cport,
        dport: 80u16.to_be(),
        proto: 17,
        phase: 0,
        _pad: [0; 2],
    };
    let fwd = CtValue {
        nat_saddr: client,
        nat_sport: cport,
        nat_daddr: backend.addr,
        nat_dport: backend.port,
        frontend_id: fid,
        ..Default::default()
    };
    let rep_key = CtKey {
        saddr: backend.addr,
        sport: backend.port,
        daddr: client,
        dport: cport,
        proto: 17,
        phase: 1,
        _pad: [0; 2],
    };
    let rep = CtValue {
        nat_saddr: fwd_key.daddr,
        nat_sport: fwd_key.dport,
        nat_daddr: client,
        nat_dport: cport,
        frontend_id: fid,
        flags: CT_F_REPLY,
        ..Default::default()
    };
    [(fwd_key, fwd), (rep_key, rep)]
}

#[test]
fn seed_service_becomes_exact_entries() {
    let mut t = table();
    let svc = app_svc(Protocol::Tcp);
    let report = t.upsert(&svc).unwrap();
    assert_eq!(
        report,
        UpdateReport {
            services_written: 1,
            backends_written: 3,
            ..Default::default()
        }
    );
    let m = t.store();
    assert_eq!(
        m.services[&key_of(&svc)],
        ServiceValue {
            frontend_id: 1,
            set_id: 1,
            count: 3,
            flags: 0,
            affinity_timeout_secs: 0,
            _pad: 0
        }
    );
    assert_eq!(
        served(&t, &svc),
        [
            be([10, 244, 1, 19], 8080, BE_F_LOCAL),
            be([10, 244, 2, 15], 8080, 0),
            be([10, 244, 2, 16], 8080, 0)
        ]
    );
    assert_eq!(t.store().backends.len(), 3);
}

#[test]
fn resync_of_unchanged_state_writes_nothing() {
    let mut t = table();
    let svcs = many(20);
    let first = t.sync(&svcs).unwrap();
    assert_eq!((first.services_written, first.backends_written), (20, 60));
    let mut shuffled = svcs.clone();
    shuffled.reverse();
    shuffled.iter_mut().for_each(|s| s.backends.reverse());
    assert!(t.sync(&shuffled).unwrap().is_empty());
    assert!(t.upsert(&svcs[3]).unwrap().is_empty());
}

#[test]
fn one_changed_endpoint_rewrites_only_its_frontend() {
    let mut t = table();
    let mut svcs = many(20);
    t.sync(&svcs).unwrap();
    let before: Vec<ServiceValue> = svcs
        .iter()
        .map(|s| t.store().services[&key_of(s)])
        .collect();
    svcs[7].backends[1].ip = Ipv4Addr::new(10, 244, 99, 9);
    let report = t.sync(&svcs).unwrap();
    assert_eq!(
        report,
        UpdateReport {
            services_written: 1,
            backends_written: 3,
            backends_deleted: 3,
            ..Default::default()
        }
    );
    for (i, s) in svcs.iter().enumerate() {
        let now = t.store().services[&key_of(s)];
        if i == 7 {
            assert_eq!(
                now.frontend_id, before[i].frontend_id,
                "frontend id is stable"
            );
            assert_ne!(now.set_id, before[i].set_id, "a new set for the new list");
        } else {
            assert_eq!(now, before[i]);
        }
    }
    assert_eq!(t.store().backends.len(), 60, "the old set is gone");
}

#[test]
fn sync_removes_missing_services_and_remove_forgets_one() {
    let mut t = table();
    let svcs = many(5);
    t.sync(&svcs).unwrap();
    let report = t.sync(&svcs[..3]).unwrap();
    assert_eq!((report.services_deleted, report.backends_deleted), (2, 6));
    let report = t.remove(&svcs[0].name).unwrap();
    assert_eq!((report.services_deleted, report.backends_deleted), (1, 3));
    assert_eq!(t.len(), 2);
    assert_eq!(t.store().backends.len(), 6);
    assert!(
        t.remove(&svcs[0].name).unwrap().is_empty(),
        "removing twice is a no-op"
    );
}

#[test]
fn upsert_drops_frontends_the_service_no_longer_lists() {
    let mut t = table();
    let mut svc = app_svc(Protocol::Tcp);
    svc.frontends.push(Frontend {
        kind: FrontendKind::NodePort,
        ..frontend([192, 168, 0, 10], 30080, Protocol::Tcp)
    });
    t.upsert(&svc).unwrap();
    assert_eq!(t.len(), 2);
    svc.frontends.truncate(1);
    let report = t.upsert(&svc).unwrap();
    assert_eq!(
        (
            report.services_deleted,
            report.backends_deleted,
            report.written()
        ),
        (1, 3, 0)
    );
    assert_eq!(t.len(), 1);
}

#[test]
fn a_frontend_claimed_by_another_service_is_left_to_it() {
    let mut t = table();
    let a = app_svc(Protocol::Tcp);
    let b = ServicePort {
        name: name("other", "thief"),
        backends: vec![],
        ..a.clone()
    };
    t.upsert(&a).unwrap();
    assert!(t.upsert(&b).unwrap().is_empty());
    assert_eq!(served(&t, &a).len(), 3);
    // sync decides by name: "other/thief" sorts before "test001/...".
    t.sync(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(t.store().services[&key_of(&a)].count, 0);
}

#[test]
fn adoption_continues_where_the_previous_writer_stopped() {
    let mut t = table();
    let svcs = many(10);
    t.sync(&svcs).unwrap();
    t.remove(&svcs[2].name).unwrap();
    let dump = t.store().clone();
    let mut old_sets: Vec<u32> = dump.services.values().map(|v| v.set_id).collect();
    old_sets.sort();

    let mut adopted = ServiceTable::with_store(dump, local()).unwrap();
    assert_eq!(adopted.len(), 9);
    let report = adopted.sync(&[&svcs[..2], &svcs[3..]].concat()).unwrap();
    assert!(
        report.is_empty(),
        "the adopted state already is the desired one: {report}"
    );
    // A new frontend reuses the freed frontend id and takes a set id after every old one.
    let report = adopted.upsert(&svcs[2]).unwrap();
    assert_eq!(report.written(), 4);
    let v = adopted.store().services[&key_of(&svcs[2])];
    assert_eq!(v.frontend_id, 3);
    assert!(v.set_id > *old_sets.last().unwrap());
    // Frontend ids are unique.
    let mut fids: Vec<u32> = adopted
        .store()
        .services
        .values()
        .map(|v| v.frontend_id)
        .collect();
    fids.sort();
    fids.dedup();
    assert_eq!(fids.len(), 10);
}

#[test]
fn sync_after_adoption_removes_unknown_frontends_and_orphan_slots() {
    let mut maps = MemMaps::default();
    let orphan = BackendKey {
        set_id: 40,
        slot: 0,
    };
    maps.backends
        .insert(orphan.index(), be([10, 0, 0, 1], 80, 0));
    let mut t = ServiceTable::with_store(maps, local()).unwrap();
    t.upsert(&app_svc(Protocol::Tcp)).unwrap();
    assert_eq!(
        t.store().services[&key_of(&app_svc(Protocol::Tcp))].set_id,
        41
    );
    let report = t.sync(&[] as &[ServicePort]).unwrap();
    assert_eq!((report.services_deleted, report.backends_deleted), (1, 4));
    assert!(t.store().backends.is_empty());
}

/// Every slot in BACKENDS_V2 belongs to the set of a frontend (no leftovers of a rollback).
pub(super) fn assert_no_orphans(t: &ServiceTable<MemMaps>) {
    let m = t.store();
    for &k in m.backends.keys() {
        assert!(
            m.services
                .values()
                .any(|v| k >= v.set_id && k - v.set_id < v.count),
            "orphan slot {k}"
        );
    }
}

/// The pod hooks' pre-filter: every frontend and backend address is in LB_ADDRS_V1 with its
/// role, and stays there after the service goes (its connections still drain through the pod
/// hooks); the node's addresses keep their own flag.
#[test]
fn frontend_and_backend_addresses_are_listed_and_kept() {
    use dataplane_common::lb::{ADDR_F_BACKEND, ADDR_F_FRONTEND, ADDR_F_NODE};
    let mut t = table();
    let node = ip_to_be(Ipv4Addr::new(198, 18, 0, 11));
    t.set_node_addrs(&[node]).unwrap();
    let svc = app_svc(Protocol::Tcp);
    t.sync(std::slice::from_ref(&svc)).unwrap();
    let addrs = &t.store().addrs;
    let vip = key_of(&svc).addr;
    assert_eq!(addrs[&vip] & ADDR_F_FRONTEND, ADDR_F_FRONTEND);
    for b in served(&t, &svc) {
        assert_eq!(addrs[&b.addr] & ADDR_F_BACKEND, ADDR_F_BACKEND, "{b:?}");
    }
    assert_eq!(addrs[&node], ADDR_F_NODE);
    let listed = addrs.len();
    t.sync(&[] as &[ServicePort]).unwrap();
    assert_eq!(
        t.store().addrs.len(),
        listed,
        "kept for draining connections"
    );
}
