//! In-process test traffic: echo/HTTP servers and clients that run inside lab namespaces.
//!
//! Sockets are created on a thread that entered the host's namespace ([`in_netns`]) and keep
//! living there, so the serving and client logic itself runs on ordinary threads. Replies name
//! the answering server and the client address it saw, which is what service/NAT tests check:
//! `"{server_name} {peer_ip}:{peer_port} {payload}"`.
//!
//! Every blocking call has a timeout: a client never hangs, a server stops within a tick.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::lab::Host;
use crate::netns::in_netns;

mod framed;
mod pktinfo;

use framed::{is_timeout, Framed};

/// setsockopt(2) of `value` (a plain C option struct or integer) on `socket`.
pub fn set_option<T>(
    socket: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: a valid fd, and an option buffer of exactly the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How often server threads look at their stop flag.
const TICK: Duration = Duration::from_millis(50);

/// Largest UDP payload the echo server handles.
const MAX_DATAGRAM: usize = 65_535;

/// Longest line or HTTP header block accepted before a connection is dropped.
const MAX_LINE: usize = 64 * 1024;

/// A running test server. Dropping it (or [`Server::stop`]) stops and joins its threads.
pub struct Server {
    name: String,
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    main: Option<JoinHandle<()>>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Server {
    /// The name it answers with (the host's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on (0.0.0.0:port inside the host's namespace).
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Stops the server and waits for its threads.
    pub fn stop(self) {
        drop(self);
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(main) = self.main.take() {
            let _ = main.join();
        }
        let workers = std::mem::take(&mut *lock(&self.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a server thread needs to know.
#[derive(Clone)]
struct ServerCtx {
    name: String,
    stop: Arc<AtomicBool>,
}

impl ServerCtx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// The reply to a client request, parsed from `"{server} {peer_ip}:{peer_port} {body}"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Name of the host whose server answered.
    pub server: String,
    /// The client's address as the server saw it (after any NAT).
    pub peer: SocketAddrV4,
    /// The echoed payload.
    pub body: String,
    /// The client socket's own address.
    pub local: SocketAddrV4,
}

impl Reply {
    /// Parses a server reply line (without the newline).
    pub fn parse(text: &str, local: SocketAddrV4) -> Result<Reply> {
        let mut parts = text.splitn(3, ' ');
        let (Some(server), Some(peer)) = (parts.next(), parts.next()) else {
            bail!("malformed reply {text:?}");
        };
        let peer = peer
            .parse()
            .with_context(|| format!("malformed peer in reply {text:?}"))?;
        let body = parts.next().unwrap_or("").to_string();
        Ok(Reply {
            server: server.to_string(),
            peer,
            body,
            local,
        })
    }
}

/// `"{server} {peer_ip}:{peer_port} {payload}"`.
fn reply_text(name: &str, peer: SocketAddr, payload: &str) -> String {
    format!("{name} {}:{} {payload}", peer.ip(), peer.port())
}

fn v4(addr: SocketAddr) -> Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => Err(anyhow!("unexpected IPv6 address {a}")),
    }
}

/// A connection handler: serves one accepted TCP connection until EOF or stop.
type Handler = fn(TcpStream, SocketAddr, &ServerCtx) -> io::Result<()>;

impl Host {
    /// TCP echo server on 0.0.0.0:`port`: every line received on a connection (many per
    /// connection) is answered with `"{name} {peer_ip}:{peer_port} {line}\n"`.
    pub fn tcp_echo_server(&self, port: u16) -> Result<Server> {
        self.tcp_server(port, serve_echo_lines)
    }

    /// Minimal HTTP/1.1 server on 0.0.0.0:`port` answering every request with 200 and body
    /// `"{name}\n"`; connections are kept alive unless the client asks to close.
    pub fn http_server(&self, port: u16) -> Result<Server> {
        self.tcp_server(port, serve_http)
    }

    /// UDP echo server on 0.0.0.0:`port`: each datagram gets one datagram back,
    /// `"{name} {peer_ip}:{peer_port} {payload}"`.
    pub fn udp_echo_server(&self, port: u16) -> Result<Server> {
        let socket = in_netns(&self.ns, move || {
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
        })?
        .with_context(|| format!("{}: binding UDP port {port}", self.name))?;
        socket.set_read_timeout(Some(TICK))?;
        let addr = v4(socket.local_addr()?)?;
        let ctx = self.server_ctx();
        let thread_ctx = ctx.clone();
        let main = std::thread::Builder::new()
            .name(format!("udp-echo-{}", self.name))
            .spawn(move || serve_udp(socket, &thread_ctx))?;
        Ok(self.server(addr, ctx, main, Arc::default()))
    }

    fn server_ctx(&self) -> ServerCtx {
        ServerCtx {
            name: self.name.clone(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn server(
        &self,
        addr: SocketAddrV4,
        ctx: ServerCtx,
        main: JoinHandle<()>,
        workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    ) -> Server {
        Server {
            name: self.name.clone(),
            addr,
            stop: ctx.stop,
            main: Some(main),
            workers,
        }
    }

    /// Binds a listener in this host's namespace and runs `handler` per connection.
    fn tcp_server(&self, port: u16, handler: Handler) -> Result<Server> {
        let listener = in_netns(&self.ns, move || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        })?
        .with_context(|| format!("{}: binding TCP port {port}", self.name))?;
        // Non-blocking accept so the loop can notice the stop flag.
        listener.set_nonblocking(true)?;
        let addr = v4(listener.local_addr()?)?;
        let ctx = self.server_ctx();
        let workers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (thread_ctx, thread_workers) = (ctx.clone(), Arc::clone(&workers));
        let main = std::thread::Builder::new()
            .name(format!("tcp-{}-{port}", self.name))
            .spawn(move || accept_loop(listener, handler, &thread_ctx, &thread_workers))?;
        Ok(self.server(addr, ctx, main, workers))
    }

    /// Opens a TCP connection from this host to `dst` for repeated [`TcpConn::request`]s.
    pub fn tcp_connect(&self, dst: SocketAddrV4, timeout: Duration) -> Result<TcpConn> {
        let stream = in_netns(&self.ns, move || {
            TcpStream::connect_timeout(&dst.into(), timeout)
        })?
        .with_context(|| format!("{}: TCP connect to {dst}", self.name))?;
        TcpConn::new(stream, dst, timeout)
    }

    /// Connects to `dst`, sends `line` and returns the (first) reply line; `timeout` bounds the
    /// whole exchange.
    pub fn tcp_request(&self, dst: SocketAddrV4, line: &str, timeout: Duration) -> Result<Reply> {
        let deadline = Instant::now() + timeout;
        let mut conn = self.tcp_connect(dst, timeout)?;
        conn.timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        conn.request(line)
            .with_context(|| format!("{}: TCP request to {dst}", self.name))
    }

    /// Sends one datagram to `dst` and waits up to `timeout` for one back.
    ///
    /// The socket is connected, like most real UDP clients: a reply from any other source
    /// address than `dst` (e.g. a missing reverse NAT) is dropped by the kernel and the request
    /// times out.
    pub fn udp_request(
        &self,
        dst: SocketAddrV4,
        payload: &str,
        timeout: Duration,
    ) -> Result<Reply> {
        let socket = in_netns(&self.ns, move || -> io::Result<UdpSocket> {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.connect(dst)?;
            Ok(socket)
        })?
        .with_context(|| format!("{}: UDP socket to {dst}", self.name))?;
        udp_exchange(&socket, payload, timeout)
            .with_context(|| format!("{}: UDP request to {dst}", self.name))
    }

    /// HTTP GET `path` from `dst`; returns the body of a 200 response (other statuses are
    /// errors). `timeout` bounds the whole exchange.
    pub fn http_get(&self, dst: SocketAddrV4, path: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let stream = in_netns(&self.ns, move || {
            TcpStream::connect_timeout(&dst.into(), timeout)
        })?
        .with_context(|| format!("{}: TCP connect to {dst}", self.name))?;
        http_exchange(stream, dst, path, deadline)
            .with_context(|| format!("{}: HTTP GET http://{dst}{path}", self.name))
    }

    /// `ping -c count` from this host; fails unless every echo is answered. Each probe waits at
    /// most 1 s, and the whole run is capped, so it never hangs.
    pub fn ping(&self, dst: Ipv4Addr, count: u32) -> Result<()> {
        let (count_s, deadline_s) = (count.to_string(), (count + 2).to_string());
        let dst_s = dst.to_string();
        let argv = [
            "ping",
            "-n",
            "-q",
            "-c",
            &count_s,
            "-W",
            "1",
            "-i",
            "0.2",
            "-w",
            &deadline_s,
            &dst_s,
        ];
        self.run(&argv)
            .with_context(|| format!("{}: ping {dst}", self.name))
            .map(drop)
    }
}

/// Accepts connections until stopped; each one gets its own worker thread.
fn accept_loop(
    listener: TcpListener,
    handler: Handler,
    ctx: &ServerCtx,
    workers: &Mutex<Vec<JoinHandle<()>>>,
) {
    while !ctx.stopped() {
        match listener.accept() {
            Ok((stream, peer)) => {
                let worker_ctx = ctx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("conn-{peer}"))
                    .spawn(move || serve_connection(stream, peer, handler, &worker_ctx));
                match spawned {
                    Ok(handle) => {
                        let mut workers = lock(workers);
                        workers.retain(|h| !h.is_finished());
                        workers.push(handle);
                    }
                    Err(e) => log::warn!("{}: cannot spawn connection thread: {e}", ctx.name),
                }
            }
            Err(e) if is_timeout(&e) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                log::warn!("{}: accept: {e}", ctx.name);
                std::thread::sleep(TICK);
            }
        }
    }
}

/// Common set-up of an accepted connection, then the protocol handler.
fn serve_connection(stream: TcpStream, peer: SocketAddr, handler: Handler, ctx: &ServerCtx) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_read_timeout(Some(TICK)))
        .and_then(|_| stream.set_write_timeout(Some(Duration::from_secs(5))));
    if let Err(e) = setup.and_then(|_| handler(stream, peer, ctx)) {
        if !ctx.stopped() {
            log::debug!("{}: connection from {peer}: {e}", ctx.name);
        }
    }
}

fn serve_echo_lines(stream: TcpStream, peer: SocketAddr, ctx: &ServerCtx) -> io::Result<()> {
    let mut framed = Framed::new(stream);
    while let Some(line) = framed.read_until(b"\n", || !ctx.stopped())? {
        let line = String::from_utf8_lossy(&line);
        let reply = reply_text(&ctx.name, peer, line.trim_end_matches('\r')) + "\n";
        framed.stream.write_all(reply.as_bytes())?;
    }
    Ok(())
}

fn serve_http(stream: TcpStream, _peer: SocketAddr, ctx: &ServerCtx) -> io::Result<()> {
    let mut framed = Framed::new(stream);
    while let Some(head) = framed.read_until(b"\r\n\r\n", || !ctx.stopped())? {
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let body_len = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        framed.read_exact(body_len, || !ctx.stopped())?;
        let http10 = head.lines().next().is_some_and(|l| l.ends_with("http/1.0"));
        let close = header(&head, "connection") == Some("close") || http10;
        let body = format!("{}\n", ctx.name);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" }
        );
        framed.stream.write_all(response.as_bytes())?;
        if close {
            break;
        }
    }
    Ok(())
}

/// Value of header `name` (lower-case) in a lower-cased header block.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

/// Answers each datagram from the address it was sent to (like a well-behaved UDP server):
/// a node has several addresses, and a reply from another one would be dropped by connected
/// clients.
fn serve_udp(socket: UdpSocket, ctx: &ServerCtx) {
    if let Err(e) = pktinfo::enable(&socket) {
        log::warn!(
            "{}: IP_PKTINFO unavailable, replies use the routing source: {e}",
            ctx.name
        );
    }
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !ctx.stopped() {
        match pktinfo::recv(&socket, &mut buf) {
            Ok((n, peer, dst)) => {
                let payload = String::from_utf8_lossy(&buf[..n]);
                let reply = reply_text(&ctx.name, peer.into(), &payload);
                if let Err(e) = pktinfo::send(&socket, reply.as_bytes(), peer, dst) {
                    log::debug!("{}: UDP reply to {peer}: {e}", ctx.name);
                }
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            // e.g. ECONNREFUSED from an ICMP error for an earlier reply: keep serving.
            Err(e) => log::debug!("{}: UDP recv: {e}", ctx.name),
        }
    }
}

fn udp_exchange(socket: &UdpSocket, payload: &str, timeout: Duration) -> Result<Reply> {
    let local = v4(socket.local_addr()?)?;
    socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    socket.send(payload.as_bytes()).context("send")?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let n = socket.recv(&mut buf).map_err(|e| {
        if is_timeout(&e) {
            anyhow!("no reply within {timeout:?}")
        } else {
            // Keep the io::Error in the chain: tests check for ConnectionRefused (an ICMP port
            // unreachable on a connected UDP socket).
            anyhow::Error::new(e).context("recv")
        }
    })?;
    Reply::parse(&String::from_utf8_lossy(&buf[..n]), local)
}

fn http_exchange(
    stream: TcpStream,
    dst: SocketAddrV4,
    path: &str,
    deadline: Instant,
) -> Result<String> {
    stream.set_read_timeout(Some(TICK))?;
    stream.set_write_timeout(Some(remaining(deadline)))?;
    let mut framed = Framed::new(stream);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n");
    framed.stream.write_all(request.as_bytes())?;
    let head = framed
        .read_until(b"\r\n\r\n", || Instant::now() < deadline)?
        .ok_or_else(|| anyhow!("connection closed before the response"))?;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.lines().next().unwrap_or_default().to_string();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("unexpected status line {status:?}");
    }
    let len = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("response without Content-Length"))?;
    let body = framed.read_exact(len, || Instant::now() < deadline)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// A long-lived client connection: several requests over the same TCP connection (the same
/// 5-tuple), e.g. to check that established flows survive service updates.
pub struct TcpConn {
    framed: Framed,
    local: SocketAddrV4,
    dst: SocketAddrV4,
    timeout: Duration,
}

impl TcpConn {
    fn new(stream: TcpStream, dst: SocketAddrV4, timeout: Duration) -> Result<TcpConn> {
        stream.set_read_timeout(Some(TICK))?;
        let local = v4(stream.local_addr()?)?;
        Ok(TcpConn {
            framed: Framed::new(stream),
            local,
            dst,
            timeout,
        })
    }

    /// The client socket's address.
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    /// The address this connection was opened to.
    pub fn dst(&self) -> SocketAddrV4 {
        self.dst
    }

    /// Changes the per-request timeout (initially the connect timeout).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `line` (a newline is appended) and waits for one reply line.
    pub fn request(&mut self, line: &str) -> Result<Reply> {
        let deadline = Instant::now() + self.timeout;
        self.framed
            .stream
            .set_write_timeout(Some(remaining(deadline)))?;
        self.framed
            .stream
            .write_all(format!("{line}\n").as_bytes())
            .context("send")?;
        let reply = self
            .framed
            .read_until(b"\n", || Instant::now() < deadline)
            .map_err(|e| anyhow!("waiting for reply from {}: {e}", self.dst))?
            .ok_or_else(|| anyhow!("{} closed the connection", self.dst))?;
        Reply::parse(
            String::from_utf8_lossy(&reply).trim_end_matches('\r'),
            self.local,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reply() {
        let local: SocketAddrV4 = "10.244.1.2:40000".parse().unwrap();
        let r = Reply::parse("node2-pod0 10.244.1.2:40000 hello world", local).unwrap();
        assert_eq!(r.server, "node2-pod0");
        assert_eq!(r.peer, local);
        assert_eq!(r.body, "hello world");
        assert_eq!(Reply::parse("a 1.2.3.4:5 ", local).unwrap().body, "");
        assert!(Reply::parse("garbage", local).is_err());
    }

    #[test]
    fn header_lookup() {
        let head = "get / http/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close";
        assert_eq!(header(head, "content-length"), Some("3"));
        assert_eq!(header(head, "connection"), Some("close"));
        assert_eq!(header(head, "missing"), None);
    }
}
