//! A minimal HTTP/1 responder on hyper for the health endpoints: GET/HEAD by path, bounded
//! in time and connections so a slow or hostile client cannot pin the agent.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{HeaderValue, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

/// What one request is answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    content_type: &'static str,
}

impl Answer {
    /// 200 or 503 with a JSON body, as kube-proxy's health handlers answer.
    pub fn json(ok: bool, body: String) -> Answer {
        Answer {
            status: if ok { 200 } else { 503 },
            body,
            content_type: "application/json",
        }
    }

    pub fn not_found() -> Answer {
        Answer {
            status: 404,
            body: "404 page not found\n".into(),
            content_type: "text/plain; charset=utf-8",
        }
    }
}

/// Bounds per server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Time to receive a request's headers.
    pub header_timeout: Duration,
    /// Lifetime of a connection (keep-alive included).
    pub connection_timeout: Duration,
}

impl Default for Limits {
    /// Load balancers probe every few seconds from a handful of addresses: 64 connections and
    /// a few seconds each are plenty.
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(15),
        }
    }
}

/// Accepts connections on `listener` forever, answering each request with `route(path)`.
pub async fn serve<F>(listener: TcpListener, limits: Limits, route: F)
where
    F: Fn(&str) -> Answer + Send + Sync + 'static,
{
    let route = Arc::new(route);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::debug!(
                "health: connection from {peer} refused: {} open",
                limits.max_connections
            );
            continue; // dropping the stream closes it
        };
        let route = route.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let route = route.clone();
                async move { Ok::<_, Infallible>(respond(&req, &*route)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_timeout, conn).await;
        });
    }
}

fn respond<B>(req: &Request<B>, route: &dyn Fn(&str) -> Answer) -> Response<Full<Bytes>> {
    let answer = match *req.method() {
        Method::GET | Method::HEAD => route(req.uri().path()),
        _ => Answer {
            status: 405,
            body: "method not allowed\n".into(),
            content_type: "text/plain; charset=utf-8",
        },
    };
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(answer.body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}
