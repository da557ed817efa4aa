//! The Kubernetes source against an API-server double: the unmodified kube-rs client (through
//! `k8s::start(Source::Kubernetes { kubeconfig })`) talks plain HTTP to an in-process server
//! that speaks the real list+watch protocol with real object JSON, including watch expiry
//! (410 Gone, as an ERROR event and as an HTTP status), dropped connections and an API server
//! that is down for a while.

mod support;

use std::{sync::Arc, time::Duration};

use dataplane::{
    k8s::{self, decode, translate, Format, Source, SourceStats},
    model::ClusterState,
};
use serde_json::{json, Value};
use support::k8s::{
    api::*, assert_quiet, backend_ips, local, wait_for, within, States, TempDir, SEED,
};

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The seed cluster plus a Service of another proxy, which must never show up.
fn cluster_yaml() -> String {
    format!(
        "{SEED}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: other-proxy, namespace: test001, labels: {{service.kubernetes.io/service-proxy-name: other}}}}\nspec: {{clusterIP: 10.96.7.7, ports: [{{port: 80}}]}}\n"
    )
}

/// What translating the same objects directly gives: the source must publish exactly this.
fn expected(yaml: &str) -> ClusterState {
    translate(&decode(yaml, Format::Yaml).unwrap().objects, &local()).0
}

struct Harness {
    api: FakeApi,
    rx: States,
    stats: Arc<SourceStats>,
    _dir: TempDir,
}

/// A fake API server with `yaml`, and the Kubernetes source started against it and synced.
async fn harness(yaml: &str) -> Harness {
    let _ = env_logger::builder().is_test(true).try_init();
    let api = FakeApi::start(yaml).await;
    let dir = TempDir::new("kubeconfig");
    let stats = Arc::new(SourceStats::default());
    let source = Source::Kubernetes {
        kubeconfig: Some(api.kubeconfig(&dir)),
    };
    let mut rx = k8s::start_with_stats(source, local(), stats.clone())
        .await
        .unwrap();
    let first = wait_for(&mut rx, 10, "the first state", |_| true).await;
    assert_eq!(
        *first,
        expected(yaml),
        "the first state is the complete initial list"
    );
    Harness {
        api,
        rx,
        stats,
        _dir: dir,
    }
}

/// The seed slice of app-svc-clusterip with one more endpoint.
fn slice_with_endpoint(api: &FakeApi, address: &str) -> Value {
    let mut slice = api.get("EndpointSlice", "test001/app-svc-clusterip-x7k2p");
    slice["endpoints"].as_array_mut().unwrap().push(json!({
        "addresses": [address], "conditions": {"ready": true}, "nodeName": "k8s-1"
    }));
    slice
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_then_watch_events() {
    let Harness {
        api,
        mut rx,
        stats,
        _dir,
    } = harness(&cluster_yaml()).await;
    // Real requests: lists and watches of exactly the watched resources, kube-proxy's selector,
    // the kubeconfig's token.
    for (path, _, _) in RESOURCES {
        assert!(api.lists(path) >= 1, "{path} listed");
        assert!(api.count(&format!("GET {path}?")) >= 2, "{path} watched");
    }
    assert!(api
        .lock()
        .requests
        .iter()
        .any(|r| r.starts_with("GET /api/v1/services?") && r.contains("labelSelector=")));
    assert!(api
        .lock()
        .authorization
        .iter()
        .all(|a| a == "Bearer fake-token"));
    assert!(!api.lock().authorization.is_empty());

    // MODIFIED: one more endpoint.
    api.apply(slice_with_endpoint(&api, "10.244.0.9"));
    wait_for(&mut rx, 10, "the new endpoint", |s| {
        backend_ips(s, "test001", "app-svc-clusterip")
            .is_some_and(|ips| ips.contains(&"10.244.0.9".to_owned()))
    })
    .await;

    // ADDED: a service and its slice.
    let [svc, slice] = objects_of(
        "
apiVersion: v1
kind: Service
metadata: {name: new, namespace: test001}
spec: {clusterIP: 10.96.8.8, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: new-1, namespace: test001, labels: {kubernetes.io/service-name: new}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.88]}]
",
    )
    .try_into()
    .unwrap();
    api.apply(svc);
    api.apply(slice);
    wait_for(&mut rx, 10, "the new service", |s| {
        backend_ips(s, "test001", "new").is_some_and(|ips| ips == ["10.244.1.88"])
    })
    .await;

    // DELETED: the service disappears (its slice is still there, but serves nothing).
    api.delete("Service", "test001/app-svc-nodeport");
    let state = wait_for(&mut rx, 10, "app-svc-nodeport to go", |s| {
        backend_ips(s, "test001", "app-svc-nodeport").is_none()
    })
    .await;
    assert!(backend_ips(&state, "test001", "app-svc-clusterip").is_some());
    assert!(backend_ips(&state, "test001", "other-proxy").is_none());

    // A node joins.
    let mut node = api.get("Node", "k8s-3");
    node["metadata"]["name"] = json!("k8s-4");
    node["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"] =
        json!("192.168.100.104");
    node["spec"] = json!({"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24"]});
    api.apply(node);
    let state = wait_for(&mut rx, 10, "k8s-4", |s| s.nodes.len() == 4).await;
    assert_eq!(
        state.nodes[3].pod_cidrs,
        [("10.244.3.0".parse().unwrap(), 24)]
    );

    let s = stats.snapshot();
    assert_eq!((s.services, s.endpoint_slices, s.nodes), (2, 3, 4), "{s:?}");
    assert_eq!(s.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_expiry_as_an_error_event_relists() {
    let Harness {
        api,
        mut rx,
        stats,
        _dir,
    } = harness(SEED).await;
    let lists = api.lists("/api/v1/services");
    // The deletion's event is compacted away: the watch cannot replay it; only a relist shows it.
    api.delete_silently("Service", "test001/app-svc-nodeport");
    assert_quiet(&mut rx, 1, "nothing announced the deletion yet").await;
    api.expire_watches();
    wait_for(&mut rx, 15, "the relist to drop app-svc-nodeport", |s| {
        backend_ips(s, "test001", "app-svc-nodeport").is_none()
    })
    .await;
    assert!(
        api.lists("/api/v1/services") > lists,
        "services were relisted"
    );
    assert!(stats.snapshot().errors >= 1, "the 410 was counted");
    // And the new watch works.
    api.apply(slice_with_endpoint(&api, "10.244.0.10"));
    wait_for(&mut rx, 10, "an event after the relist", |s| {
        backend_ips(s, "test001", "app-svc-clusterip").is_some_and(|ips| ips.len() == 4)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_expiry_as_http_410_relists() {
    let Harness {
        api, mut rx, _dir, ..
    } = harness(SEED).await;
    api.lock().gone_style = GoneStyle::Http;
    let lists = api.lists("/api/v1/services");
    api.delete_silently("Service", "test001/app-svc-clusterip");
    // Watches drop; re-watching from their last resourceVersion is answered 410.
    api.disconnect();
    wait_for(&mut rx, 20, "the relist to drop app-svc-clusterip", |s| {
        backend_ips(s, "test001", "app-svc-clusterip").is_none()
    })
    .await;
    assert!(
        api.lists("/api/v1/services") > lists,
        "services were relisted"
    );
    assert!(api.lock().requests.iter().any(|r| r.contains("watch=true")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_resume_from_their_resource_version() {
    let Harness {
        api, mut rx, _dir, ..
    } = harness(SEED).await;
    let lists = api.lists("/api/v1/services");
    api.disconnect();
    // Changed while the watches were being re-established: replayed from history.
    api.delete("Service", "test001/app-svc-clusterip");
    wait_for(&mut rx, 15, "app-svc-clusterip to go", |s| {
        backend_ips(s, "test001", "app-svc-clusterip").is_none()
    })
    .await;
    assert_eq!(
        api.lists("/api/v1/services"),
        lists,
        "a dropped watch resumes without relisting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_then_back_reconnects_with_backoff() {
    let Harness {
        api,
        mut rx,
        stats,
        _dir,
    } = harness(SEED).await;
    api.set_down(true);
    api.delete("Service", "test001/app-svc-nodeport");
    api.apply(slice_with_endpoint(&api, "10.244.0.11"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let refused = api.lock().refused;
    println!("{refused} connection attempts in 4 s of outage");
    // Three watchers retrying with backoff (0.8 s doubling, jittered) make a handful of
    // attempts in 4 s; without backoff it would be thousands.
    assert!(
        (3..=30).contains(&refused),
        "{refused} connection attempts while down"
    );
    assert!(stats.snapshot().errors >= 3);
    // The datapath keeps its last good state meanwhile.
    assert!(backend_ips(&rx.borrow(), "test001", "app-svc-nodeport").is_some());
    api.set_down(false);
    let state = wait_for(&mut rx, 40, "convergence after the outage", |s| {
        backend_ips(s, "test001", "app-svc-nodeport").is_none()
            && backend_ips(s, "test001", "app-svc-clusterip").is_some_and(|ips| ips.len() == 4)
    })
    .await;
    assert_eq!(state.nodes.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_published_until_every_initial_list_is_done() {
    let _ = env_logger::builder().is_test(true).try_init();
    let api = FakeApi::start(SEED).await;
    api.set_down(true);
    let dir = TempDir::new("kubeconfig");
    let source = Source::Kubernetes {
        kubeconfig: Some(api.kubeconfig(&dir)),
    };
    // An unreachable API server is not a startup error.
    let mut rx = within(10, "start", k8s::start(source, local()))
        .await
        .unwrap();
    assert_quiet(&mut rx, 2, "no state before the lists").await;
    api.set_down(false);
    let first = wait_for(&mut rx, 40, "the first state", |_| true).await;
    assert_eq!(*first, expected(SEED));
}

#[tokio::test]
async fn a_bad_kubeconfig_is_a_startup_error() {
    let dir = TempDir::new("kubeconfig-bad");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "clusters: [this is not a kubeconfig").unwrap();
    let error = k8s::start(
        Source::Kubernetes {
            kubeconfig: Some(path),
        },
        local(),
    )
    .await
    .unwrap_err();
    assert!(format!("{error:#}").contains("kubeconfig"), "{error:#}");
}

/// Issue 11 through watch events: this node's zone label, endpoint hints and the cluster
/// autoscaler's deletion taint (KEP-3836) all reach the published state without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_label_hints_and_deletion_taint_follow_watch_events() {
    use dataplane::model::Hint;
    let Harness {
        api, mut rx, _dir, ..
    } = harness(&cluster_yaml()).await;
    let zone_of = |s: &ClusterState| -> Vec<Hint> {
        s.services
            .iter()
            .find(|p| p.name.name == "app-svc-clusterip")
            .map(|p| p.backends.iter().map(|b| b.hints.zone).collect())
            .unwrap_or_default()
    };
    // The controller hints the first endpoint for zone-a, the others for zone-b.
    let mut slice = api.get("EndpointSlice", "test001/app-svc-clusterip-x7k2p");
    for (i, ep) in slice["endpoints"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        let zone = if i == 0 { "zone-a" } else { "zone-b" };
        ep["hints"] = json!({"forZones": [{"name": zone}]});
    }
    api.apply(slice);
    // This node (k8s-2) has no zone label yet: every hint is for another zone.
    wait_for(&mut rx, 10, "the hints", |s| {
        zone_of(s).iter().all(|h| *h == Hint::Elsewhere) && !zone_of(s).is_empty()
    })
    .await;
    let mut node = api.get("Node", "k8s-2");
    node["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!("zone-b");
    api.apply(node.clone());
    let state = wait_for(&mut rx, 10, "the zone label", |s| {
        zone_of(s).contains(&Hint::Here)
    })
    .await;
    assert_eq!(
        zone_of(&state).iter().filter(|h| **h == Hint::Here).count(),
        zone_of(&state).len() - 1
    );
    assert!(!state.node_deleting);
    node["spec"]["taints"] =
        json!([{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]);
    api.apply(node);
    wait_for(&mut rx, 10, "the deletion taint", |s| s.node_deleting).await;
}
