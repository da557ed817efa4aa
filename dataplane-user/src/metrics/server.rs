//! The HTTP side of `/metrics`, `/healthz`, `/livez` and `/readyz`: hyper's HTTP/1.1 server on
//! a thread and runtime of its own, so that no number of clients can delay the agent's sync
//! loop, with the limits a node-local endpoint needs against a hostile or broken client:
//!
//! - at most [`MAX_CONNECTIONS`] connections at once (more are closed at accept);
//! - the request head must arrive within [`HEADER_TIMEOUT`] (slowloris);
//! - a connection lives at most [`CONNECTION_TIMEOUT`], keep-alive included;
//! - only GET and HEAD; bodies are never read.
//!
//! Answers cost no map access: `/metrics` is the last [`super::snapshot`] text, refreshed in the
//! background; the health paths read a few atomics.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{health, readiness, AgentStatus, LIVENESS_PATH, LIVEZ_PATH, READINESS_PATH};

/// Concurrent connections served; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The text `/metrics` answers with, replaced whole by the snapshot thread.
pub type SharedText = Arc<RwLock<Arc<String>>>;

/// What a request can see.
#[derive(Clone)]
pub struct State {
    pub status: Arc<AgentStatus>,
    pub metrics: SharedText,
}

/// Binds `addr` now (so a taken port is reported by the caller), then serves on a thread of its
/// own until the process exits.
pub fn spawn(addr: SocketAddr, state: State) -> Result<()> {
    let std_listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    std_listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return log::error!("metrics server runtime: {e}"),
            };
            rt.block_on(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(listener) => accept_loop(listener, state).await,
                    Err(e) => log::error!("metrics listener: {e}"),
                }
            })
        })
        .context("starting the metrics thread")?;
    Ok(())
}

async fn accept_loop(listener: TcpListener, state: State) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(8192)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, &req)) }
                    }),
                );
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

fn answer(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    let (code, body) = match req.uri().path() {
        "/metrics" => {
            let body = state
                .metrics
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut r = Response::new(Full::new(Bytes::from(body.as_bytes().to_vec())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return r;
        }
        LIVENESS_PATH | LIVEZ_PATH => health(&state.status),
        READINESS_PATH => readiness(&state.status),
        _ => (
            "404 Not Found",
            "try /metrics, /healthz, /livez or /readyz\n".into(),
        ),
    };
    let status = code
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(status, body)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
