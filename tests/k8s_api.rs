//! The Kubernetes source against an API-server double: the unmodified kube-rs client (through
//! `k8s::start(Source::Kubernetes { kubeconfig })`) talks plain HTTP to an in-process server
//! that speaks the real list+watch protocol with real object JSON, including watch expiry
//! (410 Gone, as an ERROR event and as an HTTP status), dropped connections and an API server
//! that is down for a while.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use dataplane::{
    k8s::{self, decode, translate, Format, Source, SourceStats},
    model::ClusterState,
};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::k8s::{assert_quiet, backend_ips, local, wait_for, within, States, TempDir, SEED};
use tokio::{net::TcpListener, sync::broadcast, task::AbortHandle};

// ---------------------------------------------------------------------------------------------
// The API-server double
// ---------------------------------------------------------------------------------------------

/// The resources the double serves: URL path -> (apiVersion, kind).
const RESOURCES: &[(&str, &str, &str)] = &[
    ("/api/v1/services", "v1", "Service"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSlice",
    ),
    ("/api/v1/nodes", "v1", "Node"),
];

/// How the double answers a watch whose resourceVersion was compacted away.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GoneStyle {
    /// 200 and an ERROR event with a 410 Status, what kube-apiserver does.
    Event,
    /// An HTTP 410 response with a Status body.
    Http,
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: &'static str,
    event: &'static str,
    object: Value,
}

struct ApiState {
    rv: u64,
    /// kind -> "namespace/name" -> object (with apiVersion, kind, metadata.resourceVersion).
    objects: HashMap<&'static str, BTreeMap<String, Value>>,
    history: Vec<Change>,
    /// Watches from a resourceVersion below this are "too old".
    compacted: u64,
    gone_style: GoneStyle,
    down: bool,
    /// Every request: "GET /api/v1/services?limit=500&...".
    requests: Vec<String>,
    /// Connections accepted while down (and dropped at once).
    refused: usize,
    authorization: Vec<String>,
    connections: Vec<AbortHandle>,
}

#[derive(Clone)]
struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
    /// Wakes the open watches: Some(()) = new events, None = expire (send 410 and close).
    wake: broadcast::Sender<Wake>,
}

#[derive(Clone, Copy, Debug)]
enum Wake {
    Changed,
    Expire,
}

impl FakeApi {
    /// Serves the objects of `yaml` (a List or documents of Services, EndpointSlices, Nodes).
    async fn start(yaml: &str) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = FakeApi {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(ApiState {
                rv: 1000,
                objects: RESOURCES
                    .iter()
                    .map(|(_, _, kind)| (*kind, BTreeMap::new()))
                    .collect(),
                history: Vec::new(),
                compacted: 0,
                gone_style: GoneStyle::Event,
                down: false,
                requests: Vec::new(),
                refused: 0,
                authorization: Vec::new(),
                connections: Vec::new(),
            })),
            wake: broadcast::channel(1024).0,
        };
        for object in objects_of(yaml) {
            api.apply(object);
        }
        tokio::spawn(api.clone().accept(listener));
        api
    }

    fn lock(&self) -> MutexGuard<'_, ApiState> {
        self.state.lock().unwrap()
    }

    async fn accept(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let mut state = self.lock();
            if state.down {
                state.refused += 1;
                drop(stream); // as if the API server's process were gone
                continue;
            }
            let api = self.clone();
            let conn = tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req)) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            state.connections.push(conn.abort_handle());
        }
    }

    fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let path = req.uri().path().to_owned();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), percent_decode(v)))
            .collect();
        {
            let mut state = self.lock();
            state
                .requests
                .push(format!("{} {}", req.method(), req.uri()));
            if let Some(auth) = req.headers().get("authorization") {
                state
                    .authorization
                    .push(auth.to_str().unwrap_or("").to_owned());
            }
        }
        let Some(&(_, api_version, kind)) = RESOURCES.iter().find(|(p, _, _)| *p == path) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no resource at {path}"),
            );
        };
        let selector =
            Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""));
        if query.get("watch").map(String::as_str) == Some("true") {
            let rv = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let timeout = query
                .get("timeoutSeconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(300);
            self.watch(kind, rv, selector, Duration::from_secs(timeout))
        } else {
            self.list(api_version, kind, &selector)
        }
    }

    /// A list as the API returns it: items without apiVersion/kind.
    fn list(
        &self,
        api_version: &str,
        kind: &'static str,
        selector: &Selector,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let state = self.lock();
        let items: Vec<Value> = state.objects[kind]
            .values()
            .filter(|o| selector.matches(o))
            .map(|o| {
                let mut item = o.clone();
                let map = item.as_object_mut().unwrap();
                map.remove("apiVersion");
                map.remove("kind");
                item
            })
            .collect();
        let body = json!({
            "apiVersion": api_version,
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": state.rv.to_string()},
            "items": items,
        });
        json_response(StatusCode::OK, &body)
    }

    /// A watch: newline-delimited events after `from`, then live ones, until the timeout, an
    /// expiry or a dropped connection.
    fn watch(
        &self,
        kind: &'static str,
        from: u64,
        selector: Selector,
        timeout: Duration,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let (too_old, style) = {
            let state = self.lock();
            (from < state.compacted, state.gone_style)
        };
        if too_old && style == GoneStyle::Http {
            return status(
                StatusCode::GONE,
                "Expired",
                &format!("too old resource version: {from}"),
            );
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let api = self.clone();
        let mut wake = self.wake.subscribe();
        tokio::spawn(async move {
            if too_old {
                let _ = tx.send(gone_event(from)).await;
                return;
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let mut sent = from;
            loop {
                let changes: Vec<Change> = api
                    .lock()
                    .history
                    .iter()
                    .filter(|c| c.kind == kind && c.rv > sent)
                    .cloned()
                    .collect();
                for change in changes {
                    sent = change.rv;
                    if selector.matches(&change.object) {
                        let line = json!({"type": change.event, "object": change.object});
                        if tx.send(Bytes::from(format!("{line}\n"))).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    wake = wake.recv() => match wake {
                        Ok(Wake::Expire) => {
                            let _ = tx.send(gone_event(sent)).await;
                            return;
                        }
                        Ok(Wake::Changed) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep_until(deadline) => return,
                }
            }
        });
        let frames = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
        });
        Response::builder()
            .header("content-type", "application/json")
            .header("transfer-encoding", "chunked")
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .unwrap()
    }

    // -- what tests do to the "cluster" --------------------------------------------------------

    /// Creates or updates an object (ADDED / MODIFIED event).
    fn apply(&self, mut object: Value) {
        let mut state = self.lock();
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = kind_of(&object);
        let key = key_of(&object);
        let event = if state.objects[kind].contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state
            .objects
            .get_mut(kind)
            .unwrap()
            .insert(key, object.clone());
        state.history.push(Change {
            rv,
            kind,
            event,
            object,
        });
        drop(state);
        let _ = self.wake.send(Wake::Changed);
    }

    /// Deletes an object (DELETED event).
    fn delete(&self, kind: &'static str, key: &str) {
        let mut state = self.lock();
        let mut object = state
            .objects
            .get_mut(kind)
            .unwrap()
            .remove(key)
            .unwrap_or_else(|| panic!("no {kind} {key}"));
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.history.push(Change {
            rv,
            kind,
            event: "DELETED",
            object,
        });
        drop(state);
        let _ = self.wake.send(Wake::Changed);
    }

    /// Deletes an object whose event is then lost to compaction: only a relist can see it.
    fn delete_silently(&self, kind: &'static str, key: &str) {
        let mut state = self.lock();
        state.objects.get_mut(kind).unwrap().remove(key).unwrap();
        state.rv += 1;
        state.compacted = state.rv;
        state.history.clear();
    }

    fn get(&self, kind: &'static str, key: &str) -> Value {
        self.lock().objects[kind][key].clone()
    }

    /// Every open watch gets 410 Gone (ERROR event), as when etcd compacts past it.
    fn expire_watches(&self) {
        let _ = self.wake.send(Wake::Expire);
    }

    /// Closes every connection abruptly (mid-stream for watches).
    fn disconnect(&self) {
        for conn in self.lock().connections.drain(..) {
            conn.abort();
        }
    }

    fn set_down(&self, down: bool) {
        self.lock().down = down;
        if down {
            self.disconnect();
        }
    }

    fn count(&self, prefix: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }

    fn lists(&self, path: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.starts_with(&format!("GET {path}?")) && !r.contains("watch=true"))
            .count()
    }

    fn kubeconfig(&self, dir: &TempDir) -> std::path::PathBuf {
        let path = dir.path().join("kubeconfig");
        let config = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://{}
contexts:
- name: fake
  context: {{cluster: fake, user: fake}}
current-context: fake
users:
- name: fake
  user: {{token: fake-token}}
",
            self.addr
        );
        std::fs::write(&path, config).unwrap();
        path
    }
}

/// The objects of a manifest, each with apiVersion and kind, as the API stores them.
fn objects_of(yaml: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for document in k8s::documents(yaml, Format::Yaml).unwrap() {
        match document.get("items") {
            Some(Value::Array(items)) => out.extend(items.iter().cloned()),
            _ => out.push(document),
        }
    }
    out
}

fn kind_of(object: &Value) -> &'static str {
    let kind = object["kind"].as_str().expect("objects carry their kind");
    RESOURCES
        .iter()
        .map(|(_, _, k)| *k)
        .find(|k| *k == kind)
        .unwrap_or_else(|| panic!("unserved kind {kind}"))
}

fn key_of(object: &Value) -> String {
    let meta = &object["metadata"];
    match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", meta["name"].as_str().unwrap()),
        None => meta["name"].as_str().unwrap().to_owned(),
    }
}

fn gone_event(rv: u64) -> Bytes {
    let line = json!({
        "type": "ERROR",
        "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {rv}"), "reason": "Expired", "code": 410
        }
    });
    Bytes::from(format!("{line}\n"))
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()
    });
    json_response(code, &body)
}

fn json_response(code: StatusCode, body: &Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .unwrap()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The label selector subset kube-proxy's informers use: "!key", "key", "key=value", ANDed.
struct Selector(Vec<(bool, String, Option<String>)>);

impl Selector {
    fn parse(text: &str) -> Selector {
        Selector(
            text.split(',')
                .filter(|t| !t.is_empty())
                .map(|t| match (t.strip_prefix('!'), t.split_once('=')) {
                    (Some(key), _) => (false, key.to_owned(), None),
                    (None, Some((k, v))) => (true, k.to_owned(), Some(v.to_owned())),
                    (None, None) => (true, t.to_owned(), None),
                })
                .collect(),
        )
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0.iter().all(
            |(present, key, value)| match (&labels[key.as_str()], value) {
                (Value::Null, _) => !present,
                (found, Some(value)) => *present && found.as_str() == Some(value.as_str()),
                (_, None) => *present,
            },
        )
    }
}

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
