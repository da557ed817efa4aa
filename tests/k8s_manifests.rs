//! The `--manifests` source end to end: files in a directory, `k8s::start`, published states.

mod support;

use std::sync::Arc;

use dataplane::k8s::{self, Source, SourceStats};
use support::k8s::{assert_quiet, backend_ips, local, wait_for, TempDir, SEED};

const SEED_IPS: [&str; 3] = ["10.244.1.19", "10.244.2.15", "10.244.2.16"];

/// A Service list as the API returns it (items without kind), in JSON.
const EXTRA_JSON: &str = r#"{
  "apiVersion": "v1",
  "kind": "ServiceList",
  "metadata": {"resourceVersion": "42"},
  "items": [
    {"metadata": {"name": "extra", "namespace": "test001"},
     "spec": {"clusterIP": "10.96.0.99", "ports": [{"port": 53, "protocol": "UDP"}]}}
  ]
}"#;

/// Kinds the source does not read, mixed in as `kubectl get all -o yaml` would.
const OTHER_KINDS: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: test001}
spec: {replicas: 3}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: test001}
data: {a: b}
";

fn seed_without(ip: &str) -> String {
    // Drop one endpoint from both slices (each address line is unique per slice).
    let needle = format!("    - {ip}\n");
    let mut out = String::new();
    let mut lines = SEED.lines().peekable();
    while let Some(line) = lines.next() {
        // An endpoint is "  - addresses:\n    - IP\n    conditions: ...": skip it up to the next "  - " item.
        if line == "  - addresses:"
            && lines.peek().map(|l| format!("{l}\n")) == Some(needle.clone())
        {
            while lines.peek().is_some_and(|l| l.starts_with("    ")) {
                lines.next();
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert_ne!(out, SEED, "{ip} not found");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_source_follows_edits_and_survives_broken_files() {
    let dir = TempDir::new("manifests");
    dir.write("cluster.yaml", SEED);
    dir.write("extra.json", EXTRA_JSON);
    dir.write("other.yml", OTHER_KINDS);
    dir.write("README.txt", "not a manifest: ignored");
    dir.write(".#cluster.yaml", "{{{ editor lock file: hidden, ignored");
    let stats = Arc::new(SourceStats::default());
    let mut rx =
        k8s::start_with_stats(Source::Manifests(dir.path().into()), local(), stats.clone())
            .await
            .unwrap();

    let state = wait_for(&mut rx, 5, "the seed cluster", |s| !s.services.is_empty()).await;
    assert_eq!(
        backend_ips(&state, "test001", "app-svc-clusterip").unwrap(),
        SEED_IPS
    );
    assert_eq!(
        backend_ips(&state, "test001", "extra").unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(state.services.len(), 3);
    assert_eq!(state.nodes.len(), 3);
    let s = stats.snapshot();
    assert_eq!(
        (s.services, s.endpoint_slices, s.nodes, s.errors, s.updates),
        (3, 2, 3, 0, 1)
    );

    // An edit: one pod gone.
    dir.write("cluster.yaml", &seed_without("10.244.2.16"));
    let state = wait_for(&mut rx, 5, "10.244.2.16 to go", |s| {
        backend_ips(s, "test001", "app-svc-clusterip").is_some_and(|ips| ips.len() == 2)
    })
    .await;
    assert_eq!(
        backend_ips(&state, "test001", "app-svc-nodeport").unwrap(),
        ["10.244.1.19", "10.244.2.15"]
    );

    // A broken save: logged, and the file keeps its last good objects; nothing is published.
    dir.write("cluster.yaml", "items: [ {unclosed\n");
    assert_quiet(&mut rx, 3, "a broken file must not change the state").await;
    assert!(stats.snapshot().errors >= 1);
    assert_eq!(
        backend_ips(&rx.borrow(), "test001", "app-svc-clusterip")
            .unwrap()
            .len(),
        2
    );

    // Fixed again (in place this time, not by rename).
    std::fs::write(dir.path().join("cluster.yaml"), SEED).unwrap();
    wait_for(&mut rx, 5, "the fixed file", |s| {
        backend_ips(s, "test001", "app-svc-clusterip").is_some_and(|ips| ips == SEED_IPS)
    })
    .await;

    // A deleted file takes its objects with it; a new file adds its objects.
    std::fs::remove_file(dir.path().join("extra.json")).unwrap();
    wait_for(&mut rx, 5, "extra to go", |s| {
        backend_ips(s, "test001", "extra").is_none()
    })
    .await;
    dir.write("more.yaml", &EXTRA_JSON.replace("\"extra\"", "\"more\""));
    let state = wait_for(&mut rx, 5, "more to come", |s| {
        backend_ips(s, "test001", "more").is_some()
    })
    .await;
    assert_eq!(state.services.len(), 3);
}

#[tokio::test]
async fn single_file_source() {
    let dir = TempDir::new("manifest-file");
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, SEED).unwrap();
    let mut rx = k8s::start(Source::Manifests(file.clone()), local())
        .await
        .unwrap();
    let state = wait_for(&mut rx, 5, "the seed cluster", |s| !s.services.is_empty()).await;
    assert_eq!(state.services.len(), 2);
    std::fs::write(&file, seed_without("10.244.1.19")).unwrap();
    wait_for(&mut rx, 5, "10.244.1.19 to go", |s| {
        backend_ips(s, "test001", "app-svc-clusterip")
            .is_some_and(|ips| ips == ["10.244.2.15", "10.244.2.16"])
    })
    .await;
}

#[tokio::test]
async fn a_file_broken_from_the_start_contributes_nothing_and_the_others_apply() {
    let dir = TempDir::new("manifest-broken");
    dir.write("a.yaml", SEED);
    dir.write(
        "b.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x\n",
    );
    let stats = Arc::new(SourceStats::default());
    let mut rx =
        k8s::start_with_stats(Source::Manifests(dir.path().into()), local(), stats.clone())
            .await
            .unwrap();
    let state = wait_for(&mut rx, 5, "the first state", |_| true).await;
    assert_eq!(state.services.len(), 2);
    assert_eq!(stats.snapshot().errors, 1);
}

#[tokio::test]
async fn an_empty_directory_publishes_an_empty_state() {
    let dir = TempDir::new("manifest-empty");
    let mut rx = k8s::start(Source::Manifests(dir.path().into()), local())
        .await
        .unwrap();
    let state = wait_for(&mut rx, 5, "the first state", |_| true).await;
    assert!(state.services.is_empty() && state.nodes.is_empty());
}

#[tokio::test]
async fn a_missing_path_is_an_error() {
    let dir = TempDir::new("manifest-missing");
    let error = k8s::start(Source::Manifests(dir.path().join("nope")), local())
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("nope"), "{error:#}");
}

#[tokio::test]
async fn the_source_stops_when_every_receiver_is_dropped() {
    let dir = TempDir::new("manifest-drop");
    dir.write("a.yaml", SEED);
    let stats = Arc::new(SourceStats::default());
    let mut rx =
        k8s::start_with_stats(Source::Manifests(dir.path().into()), local(), stats.clone())
            .await
            .unwrap();
    wait_for(&mut rx, 5, "the first state", |_| true).await;
    drop(rx);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let syncs = stats.snapshot().syncs;
    // An edit the poller would pick up within a second, if it were still running.
    dir.write("a.yaml", &seed_without("10.244.2.15"));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        stats.snapshot().syncs,
        syncs,
        "nobody listens: no more syncs"
    );
}

/// `--nodeport-addresses` at runtime through the manifests source: a new address of the node
/// (what `LocalNode::follow` publishes) re-translates at once, with no manifest change.
#[tokio::test]
async fn a_new_node_address_gets_node_ports_without_a_manifest_change() {
    use dataplane::{k8s::NodePortAddresses, model::FrontendKind};
    let dir = TempDir::new("manifest-addresses");
    dir.write("cluster.yaml", SEED);
    let mut node = local();
    node.nodeport_addresses = NodePortAddresses::parse("192.168.100.0/24").unwrap();
    let (tx, addresses) = tokio::sync::watch::channel(node.clone());
    let mut rx = k8s::start_following(
        Source::Manifests(dir.path().into()),
        addresses,
        Arc::default(),
    )
    .await
    .unwrap();
    let node_ports = |s: &dataplane::model::ClusterState| -> Vec<String> {
        s.services
            .iter()
            .find(|p| p.name.name == "app-svc-nodeport")
            .map(|p| {
                p.frontends
                    .iter()
                    .filter(|f| f.kind == FrontendKind::NodePort)
                    .map(|f| f.ip.to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for(&mut rx, 5, "the seed", |s| {
        node_ports(s) == ["192.168.100.102"]
    })
    .await;
    // An address inside the CIDR appears, one outside too: only the first gets the NodePort.
    node.addresses.extend([
        "192.168.100.200".parse::<std::net::Ipv4Addr>().unwrap(),
        "10.9.9.9".parse().unwrap(),
    ]);
    tx.send_replace(node.clone());
    wait_for(&mut rx, 5, "the new address", |s| {
        node_ports(s) == ["192.168.100.102", "192.168.100.200"]
    })
    .await;
    // It goes again.
    node.addresses.retain(|ip| ip.octets()[3] != 200);
    tx.send_replace(node);
    wait_for(&mut rx, 5, "the address to go", |s| {
        node_ports(s) == ["192.168.100.102"]
    })
    .await;
}
