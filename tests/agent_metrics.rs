//! `dataplane run`'s operator endpoints under stress: a service the kernel refuses to write is
//! named in /metrics and /readyz while the others apply, and the metrics server withstands idle
//! connections and scrape floods.

mod support;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::Duration,
};

use dataplane::model::Protocol;
use dataplane_lab::{
    manifests::{Endpoint, ServiceManifest},
    netns,
};
use support::agent::*;
use support::cluster::echo_servers;
use support::node::DataplaneNode;

fn api(endpoints: Vec<Endpoint>) -> ServiceManifest {
    ServiceManifest {
        name: "api".into(),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 11),
        node_port: None,
        ..web(endpoints)
    }
}

/// A service the kernel refuses to write (SERVICES_V2 is full: this test fills it behind the
/// agent's back, leaving room for one frontend, and web's change adds a NodePort) keeps its previous state, is named in the log, in
/// /metrics and in /readyz, while /healthz stays 200 and another service is applied; once
/// there is room the agent's retry applies it without any new event from the source.
#[test]
fn a_service_that_cannot_be_written_does_not_block_the_others() {
    use dataplane_common::lb::{ServiceKey, ServiceValue};
    let (lab, dir) = lab_with_manifests(1, 2);
    let (b1, b2) = (lab.pod(0, 0), lab.pod(0, 1));
    let _srv = echo_servers(&[b1, b2], &[Protocol::Tcp], 8080);
    let cluster_ip_only = |e| ServiceManifest {
        node_port: None,
        ..web(e)
    };
    write(
        &dir,
        "web.yaml",
        &cluster_ip_only(vec![endpoint(b1)]).to_yaml(),
    );
    let args = [
        "--manifests",
        dir.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:9464",
    ];
    let node = DataplaneNode::start(&lab, 0, &args).unwrap();
    let host = lab.node(0).host();
    let vip = SocketAddrV4::new(VIP, 80);
    let api_vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80);
    let ns = lab.node(0).ns.clone();
    eventually("web is served and ready", || {
        host.tcp_request(vip, "hello", T).is_ok() && http_get(&ns, "/readyz").0 == 200
    });

    // Fill SERVICES_V2 with frontends the agent never wrote (keys only: 203.0.113.0 upward,
    // port 9),
    // then free one entry.
    let pin = lab.pin_dir(0).unwrap();
    let data =
        aya::maps::MapData::from_pin(pin.join(dataplane_common::map_names::SERVICES)).unwrap();
    let mut services: aya::maps::HashMap<_, ServiceKey, ServiceValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    let junk = |n: u32| ServiceKey::new((0xcb00_7100u32 + n).to_be(), 9u16.to_be(), 6);
    let mut filled = 0;
    while services
        .insert(junk(filled), ServiceValue::default(), 0)
        .is_ok()
    {
        filled += 1;
        assert!(filled < 200_000, "SERVICES_V2 never filled up");
    }
    services.remove(&junk(0)).unwrap();

    // web (now also a NodePort: new frontends) cannot be written; api (one new frontend,
    // sorted first) can.
    write(
        &dir,
        "web.yaml",
        &web(vec![endpoint(b1), endpoint(b2)]).to_yaml(),
    );
    write(&dir, "api.yaml", &api(vec![endpoint(b2)]).to_yaml());
    eventually("api is applied", || {
        host.tcp_request(api_vip, "api", T)
            .is_ok_and(|r| r.server == b2.name)
    });
    eventually("web's failure is reported", || {
        node.stderr().contains("service default/web:p not applied")
    });
    assert!(
        node.stderr().contains("SERVICES_V2 is full"),
        "{}",
        node.stderr()
    );
    assert_eq!(
        servers_seen_from(&host, vip, 20),
        BTreeSet::from([b1.name.clone()]),
        "web keeps its complete previous state"
    );
    let (code, body) = http_get(&ns, "/healthz");
    assert_eq!(
        (code, body.trim()),
        (200, "ok"),
        "a failed apply is not a liveness failure"
    );
    let (code, body) = http_get(&ns, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("default/web:p"), "{body}");
    // The metrics text is a snapshot rebuilt every 2 s.
    eventually("/metrics names the failed service", || {
        let (_, metrics) = http_get(&ns, "/metrics");
        metrics.contains("dataplane_services_failed 1\n")
            && metrics.contains("dataplane_service_failed{service=\"default/web:p\"} 1\n")
    });

    // Room again: the retry (backoff 1, 2, 4 ... s) applies web with no new event.
    for n in 1..100 {
        services.remove(&junk(n)).unwrap();
    }
    // The backoff may have reached 16 s by now.
    eventually_within("the retry applies web", Duration::from_secs(40), || {
        servers_seen_from(&host, vip, 20).len() == 2
    });
    eventually("ready again", || http_get(&ns, "/readyz").0 == 200);
    node.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn servers_seen_from(
    host: &dataplane_lab::lab::Host,
    vip: SocketAddrV4,
    n: usize,
) -> BTreeSet<String> {
    (0..n)
        .filter_map(|i| host.tcp_request(vip, &format!("r{i}"), T).ok())
        .map(|r| r.server)
        .collect()
}

/// The metrics server against hostile clients: connections that never send a request take the
/// connection slots only until the header timeout, the connection beyond the limit is closed at
/// once, and a flood of scrapes delays neither the health answers nor the agent's applies (the
/// server and the snapshot run off the sync loop; a scrape never reads a map).
#[test]
fn the_metrics_server_withstands_idle_connections_and_scrape_floods() {
    use dataplane::metrics::{HEADER_TIMEOUT, MAX_CONNECTIONS};
    let (lab, dir) = lab_with_manifests(1, 2);
    let (b1, b2) = (lab.pod(0, 0), lab.pod(0, 1));
    let _srv = echo_servers(&[b1, b2], &[Protocol::Tcp], 8080);
    write(&dir, "web.yaml", &web(vec![endpoint(b1)]).to_yaml());
    let args = [
        "--manifests",
        dir.to_str().unwrap(),
        "--metrics-bind-address",
        "127.0.0.1:9464",
    ];
    let node = DataplaneNode::start(&lab, 0, &args).unwrap();
    let ns = lab.node(0).ns.clone();
    assert_eq!(http_get(&ns, "/healthz").0, 200);
    // Slowloris: every slot taken by a connection that sends nothing.
    let idle: Vec<TcpStream> = netns::in_netns(&ns, || {
        (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect("127.0.0.1:9464").unwrap())
            .collect()
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        http_get(&ns, "/healthz").0,
        0,
        "the connection beyond {MAX_CONNECTIONS} is closed unanswered"
    );
    // The header timeout frees the slots; the server answers again.
    std::thread::sleep(HEADER_TIMEOUT + Duration::from_millis(500));
    assert_eq!(http_get(&ns, "/healthz").0, 200);
    drop(idle);
    // A scrape flood while the source changes: the edit is applied as fast as ever.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let (ns, stop) = (ns.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert_eq!(http_get(&ns, "/metrics").0, 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    write(&dir, "web.yaml", &web(vec![endpoint(b2)]).to_yaml());
    eventually("the edit applies during the flood", || {
        servers_seen(&lab, 10) == BTreeSet::from([b2.name.clone()])
    });
    assert_eq!(http_get(&ns, "/healthz").0, 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes: u32 = flood.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(scrapes > 20, "{scrapes} scrapes");
    node.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
