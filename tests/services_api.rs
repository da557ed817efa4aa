//! The typed service map API against the kernel: the datapath object loaded (not attached) into a
//! private pin dir, `services::ServiceTable` writing through the pins as a control plane in
//! another process would, and the raw map entries read back with aya. Needs root.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use aya::{
    maps::{Array, HashMap, Map, MapData},
    Pod,
};
use dataplane::{
    loader,
    model::{
        Backend, Frontend, FrontendKind, Protocol, ServicePort, ServicePortName, TrafficPolicy,
    },
    services::{self, CtDirection, LocalContext, ServiceTable, UpdateReport},
};
use dataplane_common::{
    ct::{Config, CtKey, CtValue, CT_F_REPLY},
    lb::{
        AffinityKey, AffinityValue, BackendValue, ServiceKey, ServiceValue, BE_F_LOCAL,
        SVC_F_AFFINITY,
    },
    map_names,
};

fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load eBPF maps into the kernel: run them as root (`sudo cargo xtask test`)"
    );
}

/// `/sys/fs/bpf/dpl-<pid>-svcapi/<test>`, removed when the test ends, also on panic.
struct PinDir(PathBuf);

impl PinDir {
    fn new(test: &str) -> PinDir {
        let dir = Self::root().join(test);
        let _ = fs::remove_dir_all(&dir);
        PinDir(dir)
    }

    fn root() -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/dpl-{}-svcapi", std::process::id()))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        // The other test may still use the shared parent; the last one removes it.
        let _ = fs::remove_dir(Self::root());
    }
}

/// The seed's worker k8s-2 runs 10.244.1.19; k8s-3 runs the other two.
fn local() -> LocalContext {
    LocalContext {
        node_name: "k8s-2".into(),
        ..Default::default()
    }
}

fn endpoint(ip: Ipv4Addr, port: u16, node: &str) -> Backend {
    Backend {
        ip,
        port,
        node_name: Some(node.into()),
        ready: true,
        serving: true,
        terminating: false,
        hints: Default::default(),
    }
}

/// The seed's test001/app-svc-clusterip (10.109.117.159:80), over `protocol`.
fn app_svc(name: &str, protocol: Protocol) -> ServicePort {
    ServicePort {
        name: ServicePortName {
            namespace: "test001".into(),
            name: name.into(),
            port: String::new(),
        },
        frontends: vec![Frontend {
            ip: Ipv4Addr::new(10, 109, 117, 159),
            port: 80,
            protocol,
            kind: FrontendKind::ClusterIp,
        }],
        backends: vec![
            endpoint(Ipv4Addr::new(10, 244, 2, 15), 8080, "k8s-3"),
            endpoint(Ipv4Addr::new(10, 244, 1, 19), 8080, "k8s-2"),
            endpoint(Ipv4Addr::new(10, 244, 2, 16), 8080, "k8s-3"),
        ],
        external_policy: TrafficPolicy::Cluster,
        internal_policy: TrafficPolicy::Cluster,
        affinity_timeout_secs: None,
        health_check_node_port: None,
        source_ranges: Vec::new(),
    }
}

fn be_ip(ip: [u8; 4]) -> u32 {
    u32::from_ne_bytes(ip)
}

fn backend(ip: [u8; 4], port: u16, flags: u16) -> BackendValue {
    BackendValue {
        addr: be_ip(ip),
        port: port.to_be(),
        flags,
    }
}

fn frontend_key(proto: u8) -> ServiceKey {
    ServiceKey {
        addr: be_ip([10, 109, 117, 159]),
        port: 80u16.to_be(),
        proto,
        _pad: 0,
    }
}

/// A pinned map opened raw, as bpftool would.
fn raw<K: Pod, V: Pod>(dir: &Path, name: &str) -> HashMap<MapData, K, V> {
    let data = MapData::from_pin(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    HashMap::try_from(Map::from_map_data(data).unwrap()).unwrap()
}

fn entries<K: Pod, V: Pod>(dir: &Path, name: &str) -> Vec<(K, V)> {
    raw::<K, V>(dir, name)
        .iter()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `BACKENDS_V2` opened raw, as bpftool would (an array: a free slot is all zero).
fn raw_slots(dir: &Path) -> Array<MapData, BackendValue> {
    let name = map_names::BACKENDS;
    let data = MapData::from_pin(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    Array::try_from(Map::from_map_data(data).unwrap()).unwrap()
}

/// The used slots of `BACKENDS_V2`, `(index, value)`.
fn used_slots(dir: &Path) -> Vec<(u32, BackendValue)> {
    raw_slots(dir)
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u32, v.unwrap()))
        .filter(|(_, v)| v.addr != 0)
        .collect()
}

/// The raw slots of `value`'s set, asserting every one is present.
fn raw_set(dir: &Path, value: &ServiceValue) -> Vec<BackendValue> {
    let map = raw_slots(dir);
    (0..value.count)
        .map(|slot| {
            map.get(&(value.set_id + slot), 0)
                .ok()
                .filter(|b| b.addr != 0)
                .expect("complete set")
        })
        .collect()
}

fn raw_service(dir: &Path, key: &ServiceKey) -> ServiceValue {
    raw::<ServiceKey, ServiceValue>(dir, map_names::SERVICES)
        .get(key, 0)
        .expect("frontend")
}

/// Both CT entries of a flow client -> 10.109.117.159:80 balanced to `to`, as the datapath
/// writes them (the test stands in for traffic here; it never writes the service maps).
fn flow(
    proto: u8,
    client: [u8; 4],
    sport: u16,
    frontend_id: u32,
    to: BackendValue,
) -> [(CtKey, CtValue); 2] {
    let client = be_ip(client);
    let sport = sport.to_be();
    let vip = frontend_key(proto);
    let fwd_key = CtKey {
        saddr: client,
        daddr: vip.addr,
        sport,
        dport: vip.port,
        proto,
        phase: 0,
        _pad: [0; 2],
    };
    let base = CtValue {
        frontend_id,
        created_ns: 1,
        last_seen_ns: 1,
        packets: 1,
        bytes: 60,
        ..Default::default()
    };
    let fwd = CtValue {
        nat_saddr: client,
        nat_sport: sport,
        nat_daddr: to.addr,
        nat_dport: to.port,
        ..base
    };
    let rep_key = CtKey {
        saddr: to.addr,
        daddr: client,
        sport: to.port,
        dport: sport,
        proto,
        phase: 1,
        _pad: [0; 2],
    };
    let rep = CtValue {
        nat_saddr: vip.addr,
        nat_sport: vip.port,
        nat_daddr: client,
        nat_dport: sport,
        flags: CT_F_REPLY,
        ..base
    };
    [(fwd_key, fwd), (rep_key, rep)]
}

fn dataplane_cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dataplane {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn seed_service_entries_updates_removal_and_adoption() {
    require_root();
    let pins = PinDir::new("seed");
    let dir = pins.path();
    let datapath = loader::load(dir).unwrap_or_else(|e| panic!("loading the datapath: {e:#}"));
    let mut table = ServiceTable::open_pinned(dir, local()).unwrap();
    assert!(table.is_empty());

    // The 15 iptables rules of the seed become one SERVICES_V2 entry and three slots.
    let mut tcp = app_svc("app-svc-clusterip", Protocol::Tcp);
    let report = table.upsert(&tcp).unwrap();
    assert_eq!(
        report,
        UpdateReport {
            services_written: 1,
            backends_written: 3,
            ..Default::default()
        }
    );
    let first = ServiceValue {
        frontend_id: 1,
        set_id: 1,
        count: 3,
        flags: 0,
        affinity_timeout_secs: 0,
        _pad: 0,
    };
    assert_eq!(
        entries::<ServiceKey, ServiceValue>(dir, map_names::SERVICES),
        [(frontend_key(6), first)]
    );
    // Set 1 is slots 1, 2 and 3 (a set id is its first slot; slot 0 is never handed out).
    assert_eq!(
        used_slots(dir),
        [
            (1, backend([10, 244, 1, 19], 8080, BE_F_LOCAL)),
            (2, backend([10, 244, 2, 15], 8080, 0)),
            (3, backend([10, 244, 2, 16], 8080, 0)),
        ]
    );

    // The same port over UDP, with sessionAffinity: a second frontend.
    let mut udp = app_svc("app-svc-udp", Protocol::Udp);
    udp.affinity_timeout_secs = Some(10_800);
    table.upsert(&udp).unwrap();
    let udp_before = raw_service(dir, &frontend_key(17));
    assert_eq!((udp_before.frontend_id, udp_before.set_id), (2, 4));
    assert_eq!(
        (udp_before.flags, udp_before.affinity_timeout_secs),
        (SVC_F_AFFINITY, 10_800)
    );

    // Flows as the datapath would track them: UDP to .16 (to be removed) and to .15 (kept),
    // TCP to .16; affinity of two clients.
    let gone = backend([10, 244, 2, 16], 8080, 0);
    let kept = backend([10, 244, 2, 15], 8080, 0);
    let mut ct = raw::<CtKey, CtValue>(dir, map_names::CT);
    let seeded = [
        flow(17, [10, 244, 1, 5], 5353, 2, gone),
        flow(17, [10, 244, 1, 6], 5353, 2, kept),
        flow(6, [10, 244, 1, 7], 40_000, 1, gone),
    ];
    for (k, v) in seeded.iter().flatten() {
        ct.insert(k, v, 0).unwrap();
    }
    let mut affinity = raw::<AffinityKey, AffinityValue>(dir, map_names::AFFINITY);
    for (client, to) in [([10, 244, 1, 5], gone), ([10, 244, 1, 6], kept)] {
        let key = AffinityKey {
            client: be_ip(client),
            frontend_id: 2,
        };
        affinity
            .insert(
                key,
                AffinityValue {
                    backend: to,
                    last_used_ns: 1,
                },
                0,
            )
            .unwrap();
    }

    // 10.244.2.16 is replaced by 10.244.2.17 in both services.
    for svc in [&mut tcp, &mut udp] {
        svc.backends[2].ip = Ipv4Addr::new(10, 244, 2, 17);
    }
    let report = table.upsert(&tcp).unwrap();
    assert_eq!(
        report,
        UpdateReport {
            services_written: 1,
            backends_written: 3,
            backends_deleted: 3,
            ..Default::default()
        },
        "TCP connections to the removed backend drain"
    );
    let report = table.upsert(&udp).unwrap();
    assert_eq!((report.conntrack_deleted, report.affinity_deleted), (2, 1));
    let tcp_now = raw_service(dir, &frontend_key(6));
    let udp_now = raw_service(dir, &frontend_key(17));
    assert_eq!(
        (tcp_now.frontend_id, udp_now.frontend_id),
        (1, 2),
        "frontend ids are stable"
    );
    assert_eq!(
        (tcp_now.set_id, udp_now.set_id),
        (7, 10),
        "fresh runs of slots after the old ones"
    );
    assert_eq!(
        raw_set(dir, &udp_now),
        [
            backend([10, 244, 1, 19], 8080, BE_F_LOCAL),
            kept,
            backend([10, 244, 2, 17], 8080, 0)
        ]
    );
    let used: Vec<u32> = used_slots(dir).iter().map(|(i, _)| *i).collect();
    assert_eq!(used, [7, 8, 9, 10, 11, 12], "old sets 1 and 4 are cleared");
    let ct_left: Vec<CtKey> = entries::<CtKey, CtValue>(dir, map_names::CT)
        .iter()
        .map(|(k, _)| *k)
        .collect();
    let mut want: Vec<CtKey> = [
        seeded[1][0].0,
        seeded[1][1].0,
        seeded[2][0].0,
        seeded[2][1].0,
    ]
    .to_vec();
    let order = |k: &CtKey| (k.proto, k.saddr, k.sport);
    want.sort_by_key(order);
    let mut ct_left = ct_left;
    ct_left.sort_by_key(order);
    assert_eq!(
        ct_left, want,
        "UDP flows to the removed backend are gone, the others stay"
    );
    let aff_left = entries::<AffinityKey, AffinityValue>(dir, map_names::AFFINITY);
    assert_eq!(
        aff_left.iter().map(|(_, v)| v.backend).collect::<Vec<_>>(),
        [kept]
    );

    // Operators' read-back, through the library and the CLI.
    let rows = services::list_services(dir).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].backends.len(), 3);
    assert_eq!(rows[0].backends[0].addr.to_string(), "10.244.1.19:8080");
    assert!(rows[0].backends[0].local);
    let text = dataplane_cli(&["services", "--pin-dir", dir.to_str().unwrap()]);
    assert!(
        text.contains("10.109.117.159:80/tcp  frontend 1  set 7  cluster\n"),
        "{text}"
    );
    assert!(text.contains("-> 10.244.1.19:8080  local\n"), "{text}");
    assert!(
        text.contains("10.109.117.159:80/udp  frontend 2  set 10  cluster,affinity=10800s\n"),
        "{text}"
    );
    let conns = services::list_conntrack(dir).unwrap();
    assert_eq!(conns.len(), 4);
    let tcp_fwd = conns
        .iter()
        .find(|r| r.proto == 6 && r.direction == CtDirection::Original)
        .unwrap();
    assert_eq!(tcp_fwd.nat_dst.to_string(), "10.244.2.16:8080");
    let text = dataplane_cli(&["conntrack", "--pin-dir", dir.to_str().unwrap()]);
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(text.contains("10.244.1.7:40000"), "{text}");

    // CONFIG_V2 through the pin dir and through the loaded object.
    let mut cfg = Config::with_masq_addr(be_ip([192, 168, 0, 10]));
    services::write_config(dir, &cfg).unwrap();
    assert_eq!(services::read_config(&datapath).unwrap(), cfg);
    cfg.timeout_udp = 30;
    services::write_config(&datapath.ebpf, &cfg).unwrap();
    assert_eq!(services::read_config(dir).unwrap(), cfg);

    // Removal: the entry, then its slots, then the rest of its UDP flows.
    let report = table.remove(&udp.name).unwrap();
    assert_eq!(
        (
            report.services_deleted,
            report.backends_deleted,
            report.conntrack_deleted
        ),
        (1, 3, 2)
    );
    assert_eq!(
        entries::<ServiceKey, ServiceValue>(dir, map_names::SERVICES).len(),
        1
    );
    assert_eq!(used_slots(dir).len(), 3);
    drop(table);

    // A restarted writer adopts the maps: nothing to write for the same state, no id collides.
    let mut adopted = ServiceTable::open_pinned(dir, local()).unwrap();
    assert_eq!(adopted.frontend(&frontend_key(6)), Some(tcp_now));
    assert!(adopted.sync(std::slice::from_ref(&tcp)).unwrap().is_empty());
    let mut other = app_svc("other", Protocol::Udp);
    other.frontends[0].ip = Ipv4Addr::new(10, 96, 0, 10);
    assert_eq!(adopted.upsert(&other).unwrap().written(), 4);
    let other_key = ServiceKey {
        addr: be_ip([10, 96, 0, 10]),
        ..frontend_key(17)
    };
    let other_now = raw_service(dir, &other_key);
    assert_eq!(other_now.frontend_id, 2, "the freed frontend id");
    assert_eq!(
        other_now.set_id,
        tcp_now.set_id + tcp_now.count,
        "after the highest run of slots in the maps"
    );
    drop(adopted);

    // Opening from the loaded object sees the same maps.
    let mut from_object = ServiceTable::from_ebpf(&datapath.ebpf, local()).unwrap();
    assert_eq!(from_object.len(), 2);
    let report = from_object.sync(&[] as &[ServicePort]).unwrap();
    assert_eq!((report.services_deleted, report.backends_deleted), (2, 6));
    assert!(used_slots(dir).is_empty());
}

/// Service `i` of the scale test: ClusterIP 10.96.x.y:80, ten endpoints of its own.
fn scale_service(i: u32) -> ServicePort {
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 10;
    ServicePort {
        name: ServicePortName {
            namespace: "scale".into(),
            name: format!("svc-{i}"),
            port: "http".into(),
        },
        frontends: vec![Frontend {
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i),
            port: 80,
            protocol: Protocol::Tcp,
            kind: FrontendKind::ClusterIp,
        }],
        backends: (0..10)
            .map(|j| endpoint(Ipv4Addr::from(base + j), 8080, "k8s-3"))
            .collect(),
        external_policy: TrafficPolicy::Cluster,
        internal_policy: TrafficPolicy::Cluster,
        affinity_timeout_secs: None,
        health_check_node_port: None,
        source_ranges: Vec::new(),
    }
}

#[test]
fn ten_thousand_services_sync_and_resync_writes_only_changes() {
    require_root();
    let pins = PinDir::new("scale");
    let dir = pins.path();
    let _datapath = loader::load(dir).unwrap_or_else(|e| panic!("loading the datapath: {e:#}"));
    let mut table = ServiceTable::open_pinned(dir, local()).unwrap();
    let mut svcs: Vec<ServicePort> = (0..10_000).map(scale_service).collect();

    let started = Instant::now();
    let report = table.sync(&svcs).unwrap();
    eprintln!(
        "10,000 services x 10 endpoints synced in {:?}",
        started.elapsed()
    );
    assert_eq!(
        report,
        UpdateReport {
            services_written: 10_000,
            backends_written: 100_000,
            ..Default::default()
        }
    );
    assert_eq!(
        entries::<ServiceKey, ServiceValue>(dir, map_names::SERVICES).len(),
        10_000
    );
    assert_eq!(used_slots(dir).len(), 100_000);

    let started = Instant::now();
    assert!(
        table.sync(&svcs).unwrap().is_empty(),
        "an unchanged resync writes nothing"
    );
    eprintln!("unchanged resync in {:?}", started.elapsed());

    let key = services::service_key(&svcs[4242].frontends[0]);
    let before = raw_service(dir, &key);
    svcs[4242].backends[3].ip = Ipv4Addr::new(10, 200, 0, 1);
    let report = table.sync(&svcs).unwrap();
    assert_eq!(
        report,
        UpdateReport {
            services_written: 1,
            backends_written: 10,
            backends_deleted: 10,
            ..Default::default()
        }
    );
    let after = raw_service(dir, &key);
    assert_eq!(after.frontend_id, before.frontend_id);
    assert_ne!(after.set_id, before.set_id);
    assert!(raw_set(dir, &after).contains(&backend([10, 200, 0, 1], 8080, 0)));
    assert_eq!(used_slots(dir).len(), 100_000);
    drop(table);

    // A restarted writer adopts 10,000 frontends and finds nothing to do.
    let started = Instant::now();
    let mut adopted = ServiceTable::open_pinned(dir, local()).unwrap();
    assert!(adopted.sync(&svcs).unwrap().is_empty());
    eprintln!("adoption and resync in {:?}", started.elapsed());
}
