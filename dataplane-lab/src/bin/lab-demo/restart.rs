//! An agent upgrade under load: while a pod keeps one TCP connection to a ClusterIP busy,
//! sends UDP requests to another and pings a pod on another node every 10 ms, its node's agent
//! is SIGTERMed, stays down a moment and starts again (adopting the pinned maps and swapping
//! its programs into the pinned links). Nothing may be lost.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dataplane_lab::lab::Host;

use crate::cluster::{DNS_VIP, WEB_VIP};
use crate::Demo;

/// The pause between requests of each load loop.
const PACE: Duration = Duration::from_millis(10);
/// Echo requests of the ping (at 10 ms: 8 s, longer than a restart takes).
const PINGS: &str = "800";
/// How long the node runs without an agent.
const DOWN: Duration = Duration::from_millis(500);

/// Requests answered and failed by one load loop, and the backends that answered.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    backends: std::collections::BTreeSet<String>,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, result: Result<String>) {
        match result {
            Ok(server) => {
                self.ok += 1;
                self.backends.insert(server);
            }
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }

    fn verdict(&self, what: &str) -> Result<String> {
        let backends: Vec<&str> = self.backends.iter().map(String::as_str).collect();
        let text = format!(
            "{} {what} answered, {} failed (by {})",
            self.ok,
            self.failed,
            backends.join(", ")
        );
        match &self.first_error {
            _ if self.ok == 0 => bail!("{text}: nothing answered"),
            Some(e) => bail!("{text}; first error: {e}"),
            None => Ok(text),
        }
    }
}

/// Runs `request` every [`PACE`] until `stop`.
fn load(
    stop: &Arc<AtomicBool>,
    mut request: impl FnMut(u64) -> Result<String> + Send + 'static,
) -> JoinHandle<Tally> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        let mut tally = Tally::default();
        for i in 0.. {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            tally.record(request(i));
            std::thread::sleep(PACE);
        }
        tally
    })
}

pub fn restart_under_load(demo: &mut Demo) -> Result<()> {
    let client = demo.lab.pod(0, 0).host();
    let peer = demo.lab.pod(1, 0).host();
    let web = SocketAddrV4::new(WEB_VIP, 80);
    let dns = SocketAddrV4::new(DNS_VIP, 53);
    let mut conn = client.tcp_connect(web, Duration::from_secs(2))?;
    let local = conn.local();
    println!(
        "   {}: one TCP connection {local} -> {web}, UDP requests to {dns}, ping -i 0.01 {}, \
         all every 10 ms",
        client.name, peer.ip
    );

    let stop = Arc::new(AtomicBool::new(false));
    let tcp = load(&stop, move |i| {
        Ok(conn.request(&format!("keepalive {i}"))?.server)
    });
    let udp_client: Host = client.clone();
    let udp = load(&stop, move |i| {
        let reply = udp_client.udp_request(dns, &format!("query {i}"), Duration::from_secs(1))?;
        Ok(reply.server)
    });
    let ping = demo.lab.spawn_in(
        &client.ns,
        &[
            "ping",
            "-n",
            "-q",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            PINGS,
            &peer.ip.to_string(),
        ],
    )?;
    std::thread::sleep(Duration::from_millis(500));

    let agent = demo.agents.first_mut().context("no agent")?;
    let (node, old_pid) = (agent.node.clone(), agent.pid().unwrap_or(0));
    let down_at = Instant::now();
    let stopped = agent.stop();
    let stop_check =
        stopped.map(|s| format!("pid {old_pid}: {s}, programs stay attached (pinned links)"));
    std::thread::sleep(DOWN);
    let restarted = agent.restart(&demo.lab);
    let down_for = down_at.elapsed();
    let new_pid = agent.pid().unwrap_or(0);
    let adopted = agent.log().lines().any(|l| l.contains("adopt"));
    std::thread::sleep(Duration::from_millis(700));

    let ping = ping_summary(ping);
    stop.store(true, Ordering::SeqCst);
    let tcp = tcp
        .join()
        .map_err(|_| anyhow!("TCP load thread panicked"))?;
    let udp = udp
        .join()
        .map_err(|_| anyhow!("UDP load thread panicked"))?;

    demo.check(&format!("{node}: SIGTERM"), stop_check);
    demo.check(
        &format!("{node}: dataplane run again"),
        restarted.map(|()| {
            format!(
                "pid {new_pid}, agent gone for {} ms{}",
                down_for.as_millis(),
                if adopted {
                    ", adopted the pinned maps"
                } else {
                    ""
                }
            )
        }),
    );
    demo.check(
        &format!("one TCP connection {local}"),
        tcp.verdict("requests"),
    );
    demo.check(&format!("udp {dns}"), udp.verdict("requests"));
    demo.check(&format!("ping {}", peer.ip), ping);
    Ok(())
}

/// ping's `N packets transmitted, M received` line, which must show no loss.
fn ping_summary(mut ping: dataplane_lab::lab::Child) -> Result<String> {
    if ping.wait_timeout(Duration::from_secs(15))?.is_none() {
        bail!("ping still runs after 15 s");
    }
    let out = ping.stdout();
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no summary from ping: {out}{}", ping.stderr()))?
        .trim()
        .to_string();
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match numbers.as_slice() {
        [sent, received, ..] if sent == received => Ok(line),
        _ => bail!("{line}"),
    }
}
