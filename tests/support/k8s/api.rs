//! The API-server double for the Kubernetes source tests: an in-process server that speaks the
//! real list+watch protocol with real object JSON, including watch expiry (410 Gone, as an
//! ERROR event and as an HTTP status), dropped connections and an API server that is down.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use super::TempDir;
use bytes::Bytes;
use dataplane::k8s::{self, Format};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::broadcast, task::AbortHandle};

/// The resources the double serves: URL path -> (apiVersion, kind).
pub const RESOURCES: &[(&str, &str, &str)] = &[
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
pub enum GoneStyle {
    /// 200 and an ERROR event with a 410 Status, what kube-apiserver does.
    Event,
    /// An HTTP 410 response with a Status body.
    Http,
}

#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: &'static str,
    pub event: &'static str,
    pub object: Value,
}

pub struct ApiState {
    pub rv: u64,
    /// kind -> "namespace/name" -> object (with apiVersion, kind, metadata.resourceVersion).
    pub objects: HashMap<&'static str, BTreeMap<String, Value>>,
    pub history: Vec<Change>,
    /// Watches from a resourceVersion below this are "too old".
    pub compacted: u64,
    pub gone_style: GoneStyle,
    pub down: bool,
    /// Every request: "GET /api/v1/services?limit=500&...".
    pub requests: Vec<String>,
    /// Connections accepted while down (and dropped at once).
    pub refused: usize,
    pub authorization: Vec<String>,
    pub connections: Vec<AbortHandle>,
}

#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ApiState>>,
    /// Wakes the open watches: Some(()) = new events, None = expire (send 410 and close).
    pub wake: broadcast::Sender<Wake>,
}

#[derive(Clone, Copy, Debug)]
pub enum Wake {
    Changed,
    Expire,
}

impl FakeApi {
    /// Serves the objects of `yaml` (a List or documents of Services, EndpointSlices, Nodes).
    pub async fn start(yaml: &str) -> FakeApi {
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

    pub fn lock(&self) -> MutexGuard<'_, ApiState> {
        self.state.lock().unwrap()
    }

    pub async fn accept(self, listener: TcpListener) {
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

    pub fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
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
    pub fn list(
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
    pub fn watch(
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
    pub fn apply(&self, mut object: Value) {
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
    pub fn delete(&self, kind: &'static str, key: &str) {
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
    pub fn delete_silently(&self, kind: &'static str, key: &str) {
        let mut state = self.lock();
        state.objects.get_mut(kind).unwrap().remove(key).unwrap();
        state.rv += 1;
        state.compacted = state.rv;
        state.history.clear();
    }

    pub fn get(&self, kind: &'static str, key: &str) -> Value {
        self.lock().objects[kind][key].clone()
    }

    /// Every open watch gets 410 Gone (ERROR event), as when etcd compacts past it.
    pub fn expire_watches(&self) {
        let _ = self.wake.send(Wake::Expire);
    }

    /// Closes every connection abruptly (mid-stream for watches).
    pub fn disconnect(&self) {
        for conn in self.lock().connections.drain(..) {
            conn.abort();
        }
    }

    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
        if down {
            self.disconnect();
        }
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }

    pub fn lists(&self, path: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.starts_with(&format!("GET {path}?")) && !r.contains("watch=true"))
            .count()
    }

    pub fn kubeconfig(&self, dir: &TempDir) -> std::path::PathBuf {
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
pub fn objects_of(yaml: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for document in k8s::documents(yaml, Format::Yaml).unwrap() {
        match document.get("items") {
            Some(Value::Array(items)) => out.extend(items.iter().cloned()),
            _ => out.push(document),
        }
    }
    out
}

pub fn kind_of(object: &Value) -> &'static str {
    let kind = object["kind"].as_str().expect("objects carry their kind");
    RESOURCES
        .iter()
        .map(|(_, _, k)| *k)
        .find(|k| *k == kind)
        .unwrap_or_else(|| panic!("unserved kind {kind}"))
}

pub fn key_of(object: &Value) -> String {
    let meta = &object["metadata"];
    match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", meta["name"].as_str().unwrap()),
        None => meta["name"].as_str().unwrap().to_owned(),
    }
}

pub fn gone_event(rv: u64) -> Bytes {
    let line = json!({
        "type": "ERROR",
        "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {rv}"), "reason": "Expired", "code": 410
        }
    });
    Bytes::from(format!("{line}\n"))
}

pub fn status(
    code: StatusCode,
    reason: &str,
    message: &str,
) -> Response<BoxBody<Bytes, Infallible>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()
    });
    json_response(code, &body)
}

pub fn json_response(code: StatusCode, body: &Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .unwrap()
}

pub fn percent_decode(text: &str) -> String {
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
pub struct Selector(Vec<(bool, String, Option<String>)>);

impl Selector {
    pub fn parse(text: &str) -> Selector {
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

    pub fn matches(&self, object: &Value) -> bool {
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
