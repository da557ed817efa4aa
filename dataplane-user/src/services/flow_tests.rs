//! `ServiceTable` over the in-memory model: the flows and sockets of backends that leave
//! (conntrack and affinity purges, removed backends reported for socket destruction).

use std::net::Ipv4Addr;

use dataplane_common::{
    ct::{CtKey, CtValue},
    lb::{AffinityKey, AffinityValue},
};

use super::tests::{app_svc, be, key_of, served, table, udp_flow};
use super::{spec::ip_to_be, *};
use crate::model::Protocol;

#[test]
fn removed_backend_loses_udp_flows_and_affinity_others_keep_theirs() {
    let mut t = table();
    let mut svc = app_svc(Protocol::Udp);
    svc.affinity_timeout_secs = Some(10_800);
    t.upsert(&svc).unwrap();
    let fid = t.store().services[&key_of(&svc)].frontend_id;
    let gone = be([10, 244, 2, 15], 8080, 0);
    let kept = be([10, 244, 2, 16], 8080, 0);
    let m = t.store_mut();
    m.ct.extend(udp_flow([10, 244, 1, 5], fid, gone));
    m.ct.extend(udp_flow([10, 244, 1, 6], fid, kept));
    // The same backend behind another frontend keeps its flows.
    m.ct.extend(udp_flow([10, 244, 1, 7], fid + 1, gone));
    // TCP to the removed backend drains.
    let (mut tcp_key, tcp) = udp_flow([10, 244, 1, 8], fid, gone)[0];
    tcp_key.proto = 6;
    m.ct.insert(tcp_key, tcp);
    for (client, backend) in [(1, gone), (2, kept)] {
        let key = AffinityKey {
            client,
            frontend_id: fid,
        };
        m.affinity.insert(
            key,
            AffinityValue {
                backend,
                last_used_ns: 1,
            },
        );
    }

    svc.backends
        .retain(|b| b.ip != Ipv4Addr::new(10, 244, 2, 15));
    let report = t.upsert(&svc).unwrap();
    assert_eq!((report.conntrack_deleted, report.affinity_deleted), (2, 1));
    let m = t.store();
    assert_eq!(m.ct.len(), 5);
    let to_gone = |k: &CtKey, v: &CtValue| {
        v.frontend_id == fid && (v.nat_daddr == gone.addr || k.saddr == gone.addr)
    };
    let left: Vec<u8> =
        m.ct.iter()
            .filter(|(k, v)| to_gone(k, v))
            .map(|(k, _)| k.proto)
            .collect();
    assert_eq!(
        left,
        [6],
        "only the TCP connection to the removed backend is left"
    );
    assert_eq!(
        m.affinity.values().map(|v| v.backend).collect::<Vec<_>>(),
        [kept]
    );

    // Removing the frontend purges the rest of its UDP flows.
    let report = t.remove(&svc.name).unwrap();
    assert_eq!((report.conntrack_deleted, report.affinity_deleted), (2, 1));
    assert_eq!(t.store().ct.len(), 3);
}

#[test]
fn removed_backends_are_those_gone_from_the_endpoints_not_terminating_ones() {
    let mut t = table();
    let mut svc = app_svc(Protocol::Tcp);
    t.sync(std::slice::from_ref(&svc)).unwrap();
    // 10.244.2.15 leaves the EndpointSlice; 10.244.2.16 is terminating (still listed).
    svc.backends
        .retain(|b| b.ip != Ipv4Addr::new(10, 244, 2, 15));
    for b in &mut svc.backends {
        if b.ip == Ipv4Addr::new(10, 244, 2, 16) {
            (b.ready, b.serving, b.terminating) = (false, true, true);
        }
    }
    let out = t.sync_report(std::slice::from_ref(&svc));
    assert!(out.is_complete());
    assert_eq!(served(&t, &svc).len(), 1);
    assert_eq!(
        out.removed_backends,
        [RemovedBackend {
            frontend: key_of(&svc),
            addr: ip_to_be(Ipv4Addr::new(10, 244, 2, 15)),
            port: 8080u16.to_be(),
        }]
    );
    // The service goes away: every backend it had is gone with it.
    let out = t.sync_report(&[] as &[ServicePort]);
    let gone: Vec<_> = out.removed_backends.iter().map(|r| r.addr).collect();
    assert_eq!(gone, [ip_to_be(Ipv4Addr::new(10, 244, 1, 19))]);
}
