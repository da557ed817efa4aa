//! Helpers of the agent tests: the `web` service as a manifest, a lab with a manifest
//! directory, polling, and the metrics endpoint fetched from inside a node.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use crate::support::node::CheckedLab;
use dataplane_lab::{
    lab::{Cni, Lab, LabSpec, Pod},
    manifests::{Endpoint, ServiceManifest},
    netns,
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const T: Duration = Duration::from_secs(3);

pub fn endpoint(p: &Pod) -> Endpoint {
    Endpoint {
        ip: p.ip,
        node: format!("node{}", p.node_index),
    }
}

pub fn web(endpoints: Vec<Endpoint>) -> ServiceManifest {
    ServiceManifest {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ip: VIP,
        port: 80,
        target_port: 8080,
        protocol: "TCP".into(),
        node_port: Some(30080),
        endpoints,
    }
}

/// Retries `f` until it returns true or 10 s pass (the source polls files every second).
pub fn eventually(what: &str, f: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(10), f)
}

pub fn eventually_within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for: {what}");
}

pub fn servers_seen(lab: &Lab, n: usize) -> BTreeSet<String> {
    let client = lab.pod(0, 0).host();
    (0..n)
        .filter_map(|i| {
            client
                .tcp_request(SocketAddrV4::new(VIP, 80), &format!("r{i}"), T)
                .ok()
        })
        .map(|r| r.server)
        .collect()
}

pub fn http_get(ns: &str, path: &'static str) -> (u16, String) {
    netns::in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&"127.0.0.1:9464".parse().unwrap(), T)
            .expect("metrics endpoint");
        s.set_read_timeout(Some(T)).unwrap();
        // A connection the server closed at once (over its limit): no answer, code 0.
        let _ = s.set_nodelay(true);
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let _ = s.write_all(request.as_bytes());
        let mut text = String::new();
        if s.read_to_string(&mut text).is_err() {
            text.clear();
        }
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (
            code,
            text.split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string(),
        )
    })
    .unwrap()
}

pub fn write(dir: &Path, file: &str, text: &str) {
    // Write then rename, as kubectl/editors do, so the poller never reads half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(file)).unwrap();
}

/// A flannel lab of `nodes` nodes with `pods` pods each, and an empty manifest directory for
/// its agents.
pub fn lab_with_manifests(nodes: usize, pods: usize) -> (CheckedLab, std::path::PathBuf) {
    super::require_root();
    let lab = CheckedLab::build(&LabSpec {
        nodes,
        pods_per_node: pods,
        cni: Cni::Flannel,
        ..Default::default()
    })
    .unwrap();
    let dir = tempdir(&lab);
    (lab, dir)
}

pub fn tempdir(lab: &Lab) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{}manifests", lab.prefix()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
