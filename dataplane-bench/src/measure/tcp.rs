//! (c): TCP connections from a pod to a ClusterIP.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dataplane_lab::netns::in_netns;
use serde::Serialize;

use crate::modes::{Mode, ModeLab};
use crate::scenario;

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct TcpSample {
    pub row: String,
    pub services: usize,
    pub rep: usize,
    pub connections: u64,
    pub errors: u64,
    pub seconds: f64,
    pub connections_per_sec: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub per_backend: Vec<u64>,
    pub problems: Vec<String>,
}

/// (c): sequential connect + one request/response + abortive close from node1's pod0 to the
/// TCP ClusterIP (to the backends directly for the no-NAT floor), for `duration`.
pub fn tcp_run(ml: &ModeLab, n: usize, rep: usize, duration: Duration) -> Result<TcpSample> {
    let floor = ml.mode == Mode::NoNat;
    let row = if ml.mode == Mode::EbpfXdp {
        "ebpf (xdp+tc, as deployed)".to_string()
    } else {
        ml.mode.key().to_string()
    };
    let ns = ml.node1.pods[0].ns.clone();
    let r = in_netns(&ns, move || -> Result<(Vec<f64>, u64, Vec<u64>, f64)> {
        let backends = scenario::backends();
        let mut lat = Vec::new();
        let mut errors = 0u64;
        let mut per = vec![0u64; backends.len()];
        // One warm-up connection (not counted): first-packet effects of a fresh lab.
        let warm = if floor {
            SocketAddrV4::new(backends[0], scenario::TARGET_PORT)
        } else {
            SocketAddrV4::new(scenario::TCP_VIP, scenario::SERVICE_PORT)
        };
        let _ = one_connection(warm);
        let start = Instant::now();
        let mut i = 0usize;
        while start.elapsed() < duration {
            let dst = if floor {
                SocketAddrV4::new(backends[i % backends.len()], scenario::TARGET_PORT)
            } else {
                SocketAddrV4::new(scenario::TCP_VIP, scenario::SERVICE_PORT)
            };
            i += 1;
            let t0 = Instant::now();
            match one_connection(dst) {
                Ok(b) => {
                    lat.push(t0.elapsed().as_secs_f64() * 1e6);
                    if let Some(c) = per.get_mut(b) {
                        *c += 1;
                    }
                }
                Err(_) => errors += 1,
            }
        }
        Ok((lat, errors, per, start.elapsed().as_secs_f64()))
    })??;
    let (mut lat, errors, per, secs) = r;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        if lat.is_empty() {
            None
        } else {
            Some(lat[((lat.len() - 1) as f64 * p).round() as usize])
        }
    };
    let mut problems = Vec::new();
    if errors > 0 {
        problems.push(format!("{errors} connections failed"));
    }
    if lat.is_empty() {
        problems.push("no connection succeeded".into());
    } else if lat.len() >= 100 && per.contains(&0) {
        problems.push(format!("some backends got no connection: {per:?}"));
    }
    Ok(TcpSample {
        row,
        services: n,
        rep,
        connections: lat.len() as u64,
        errors,
        seconds: secs,
        connections_per_sec: lat.len() as f64 / secs,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        per_backend: per,
        problems,
    })
}

/// One connection; returns the index of the backend that answered.
fn one_connection(dst: SocketAddrV4) -> Result<usize> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(1))
        .context("connect")?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"hello\n")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    abort(&s);
    let idx = line
        .trim()
        .strip_prefix("backend-")
        .and_then(|x| x.parse().ok())
        .context("bad reply")?;
    Ok(idx)
}

/// SO_LINGER 0: close with RST, no TIME_WAIT (the client would run out of ports otherwise).
fn abort(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // Best effort, as before: a socket that keeps its linger only costs a TIME_WAIT entry.
    let _ = dataplane_lab::traffic::set_option(s, libc::SOL_SOCKET, libc::SO_LINGER, &l);
}
