//! `dataplane monitor`: the datapath's verdicts as events (`EVENTS_V1`), like
//! `cilium monitor -t drop`. It turns the events on in `MONITOR_V1` while it runs (the programs
//! emit nothing otherwise), reads the ring buffer, decodes hook, reason, device, the tuple before
//! and after translation and the service frontend, filters, and prints text or JSON lines.
//! Frontends are shown as address:port/protocol, as `dataplane services` shows them, with the
//! Service port the agent named them after in `SERVICE_NAMES_V1` (`namespace/name:port`).

use std::{
    collections::HashMap,
    io::Write,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use dataplane_common::{
    map_names,
    monitor::{MonitorEvent, MonitorTokens, EV_F_BEFORE, MON_F_ALL, MON_F_DROPS},
    Hook, Reason,
};

use crate::services;

/// What to show.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Every verdict of the packet hooks, not only drops.
    pub all: bool,
    /// Only events whose tuple (before or after) has this address.
    pub ip: Option<Ipv4Addr>,
    /// Only events to this frontend (address:port).
    pub frontend: Option<SocketAddrV4>,
    /// Only events to a frontend of this Service (`namespace/name`) or Service port
    /// (`namespace/name:port`), or replies from one.
    pub service: Option<String>,
    pub json: bool,
    /// Stop after this many events were printed.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub ktime_ns: u64,
    pub hook: &'static str,
    pub reason: &'static str,
    pub verdict: &'static str,
    pub iface: String,
    pub proto: &'static str,
    pub len: u32,
    /// `src -> dst` as the hook saw the packet (with `--all`).
    pub before: Option<(SocketAddrV4, SocketAddrV4)>,
    /// As it left the hook.
    pub after: (SocketAddrV4, SocketAddrV4),
    /// The frontend the packet was addressed to, if it is one.
    pub frontend: Option<String>,
    /// Its Service port, `namespace/name:port`, if the agent named it.
    pub service: Option<String>,
}

/// What the monitor knows about a frontend: how it is shown and the Service port it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendInfo {
    pub shown: String,
    pub service: Option<String>,
}

/// Frontends by (address:port, protocol).
pub type Frontends = HashMap<(SocketAddrV4, u8), FrontendInfo>;

fn proto_name(p: u8) -> &'static str {
    match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        0 => "-",
        _ => "other",
    }
}

fn endpoint(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr)), u16::from_be(port))
}

fn ifname(index: u32, cache: &mut HashMap<u32, String>) -> String {
    cache
        .entry(index)
        .or_insert_with(|| crate::host::netdev::name(index).unwrap_or(format!("if{index}")))
        .clone()
}

/// Decodes a raw record; `None` for a record of an unknown hook or reason (a newer datapath).
pub fn decode(
    raw: &MonitorEvent,
    frontends: &Frontends,
    ifnames: &mut HashMap<u32, String>,
) -> Option<Event> {
    let hook = *Hook::ALL.get(raw.hook as usize)?;
    let reason = Reason::from_u32(raw.reason as u32)?;
    let t = |t: &dataplane_common::monitor::EventTuple| {
        (endpoint(t.saddr, t.sport), endpoint(t.daddr, t.dport))
    };
    let before = (raw.flags & EV_F_BEFORE != 0).then(|| t(&raw.before));
    let after = t(&raw.after);
    let dst = before.map_or(after.1, |b| b.1);
    // A request is addressed to the frontend; a reply leaves the hook from it (un-DNAT).
    let frontend = frontends
        .get(&(dst, raw.proto))
        .or_else(|| frontends.get(&(after.0, raw.proto)));
    Some(Event {
        ktime_ns: raw.ktime_ns,
        hook: hook.name(),
        reason: reason.name(),
        verdict: if reason.is_drop() { "DROP" } else { "PASS" },
        iface: ifname(raw.ifindex, ifnames),
        proto: proto_name(raw.proto),
        len: raw.len,
        before,
        after,
        frontend: frontend.map(|f| f.shown.clone()),
        service: frontend.and_then(|f| f.service.clone()),
    })
}

impl Options {
    fn wants(&self, e: &Event) -> bool {
        let addrs = [
            Some(e.after.0),
            Some(e.after.1),
            e.before.map(|b| b.0),
            e.before.map(|b| b.1),
        ];
        let ip_ok = self
            .ip
            .is_none_or(|ip| addrs.iter().flatten().any(|a| *a.ip() == ip));
        let fe_ok = self
            .frontend
            .is_none_or(|f| e.before.map_or(e.after.1, |b| b.1) == f);
        let service_ok = self.service.as_deref().is_none_or(|want| {
            e.service.as_deref().is_some_and(|have| {
                have == want
                    || have
                        .strip_prefix(want)
                        .is_some_and(|port| port.starts_with(':'))
            })
        });
        ip_ok && fe_ok && service_ok
    }
}

/// One JSON object for an event (`-o json`, one per line).
pub fn render_json(e: &Event) -> String {
    let tuple = |(s, d): (SocketAddrV4, SocketAddrV4)| serde_json::json!({"src": s.to_string(), "dst": d.to_string()});
    serde_json::json!({
        "ktime_ns": e.ktime_ns,
        "hook": e.hook,
        "reason": e.reason,
        "verdict": e.verdict,
        "iface": e.iface,
        "proto": e.proto,
        "len": e.len,
        "before": e.before.map(tuple),
        "after": tuple(e.after),
        "frontend": e.frontend,
        "service": e.service,
    })
    .to_string()
}

/// One line of text for an event.
pub fn render_text(e: &Event) -> String {
    let tuple = |(s, d): (SocketAddrV4, SocketAddrV4)| format!("{s} -> {d}");
    let mut line = format!(
        "{:<5} {:<18} {:<26} {:<10} {:<5} {}",
        e.verdict,
        e.hook,
        e.reason,
        e.iface,
        e.proto,
        match e.before {
            Some(b) if b != e.after => format!("{} => {}", tuple(b), tuple(e.after)),
            _ => tuple(e.after),
        }
    );
    if let Some(f) = &e.frontend {
        line += &format!(" frontend {f}");
    }
    if let Some(s) = &e.service {
        line += &format!(" service {s}");
    }
    line + &format!(" len {}", e.len)
}

/// The frontends in the maps, with their names. Read again every [`REFRESH`] while the monitor
/// runs, so services created meanwhile are named too.
fn frontends(pin_dir: &Path) -> Frontends {
    services::list_services(pin_dir)
        .map(|rows| {
            rows.into_iter()
                .map(|r| {
                    let shown = format!("{}/{}", r.frontend, proto_name(r.proto));
                    let info = FrontendInfo {
                        shown,
                        service: r.name,
                    };
                    ((r.frontend, r.proto), info)
                })
                .collect()
        })
        .unwrap_or_default()
}

const REFRESH: Duration = Duration::from_secs(2);

fn open(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is `dataplane run` of this version pinned there?)",
            path.display()
        )
    })
}

fn lost(pin_dir: &Path) -> Result<u64> {
    let tokens: PerCpuArray<_, MonitorTokens> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pin_dir, map_names::MONITOR_TOKENS)?))?;
    Ok(tokens.get(&0, 0)?.iter().map(|t| t.lost).sum())
}

/// Clears `MONITOR_V1` when dropped, so the programs stop emitting even if printing fails.
struct Enabled(Array<MapData, u32>);

impl Drop for Enabled {
    fn drop(&mut self) {
        if let Err(e) = self.0.set(0, 0, 0) {
            log::error!("turning the monitor events off: {e}");
        }
    }
}

/// What a run saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub printed: u64,
    pub lost: u64,
}

/// Runs the monitor until `stop`, `count` or `duration`.
pub fn run(
    pin_dir: &Path,
    opts: &Options,
    stop: &AtomicBool,
    out: &mut impl Write,
) -> Result<Summary> {
    let mut ring = RingBuf::try_from(Map::RingBuf(open(pin_dir, map_names::EVENTS)?))?;
    let mut flags: Array<_, u32> = Array::try_from(Map::Array(open(pin_dir, map_names::MONITOR)?))?;
    let lost_before = lost(pin_dir)?;
    // Records left from an earlier monitor are not this run's.
    while ring.next().is_some() {}
    flags.set(
        0,
        if opts.all {
            MON_F_ALL | MON_F_DROPS
        } else {
            MON_F_DROPS
        },
        0,
    )?;
    let _enabled = Enabled(flags);
    let mut known = frontends(pin_dir);
    let mut read_at = Instant::now();
    let mut ifnames = HashMap::new();
    let started = Instant::now();
    let mut summary = Summary::default();
    loop {
        if read_at.elapsed() >= REFRESH {
            known = frontends(pin_dir);
            read_at = Instant::now();
        }
        while let Some(item) = ring.next() {
            if item.len() < size_of::<MonitorEvent>() {
                continue;
            }
            // SAFETY: the record is at least one MonitorEvent long; read_unaligned needs no alignment.
            let raw: MonitorEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let Some(e) = decode(&raw, &known, &mut ifnames) else {
                continue;
            };
            if !opts.wants(&e) {
                continue;
            }
            if opts.json {
                writeln!(out, "{}", render_json(&e))?;
            } else {
                writeln!(out, "{}", render_text(&e))?;
            }
            out.flush()?;
            summary.printed += 1;
            if opts.count.is_some_and(|n| summary.printed >= n) {
                summary.lost = lost(pin_dir)? - lost_before;
                return Ok(summary);
            }
        }
        if stop.load(Ordering::Relaxed) || opts.duration.is_some_and(|d| started.elapsed() >= d) {
            summary.lost = lost(pin_dir)? - lost_before;
            return Ok(summary);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::monitor::EventTuple;

    fn raw(hook: Hook, reason: Reason) -> MonitorEvent {
        MonitorEvent {
            hook: hook as u8,
            reason: reason as u8,
            proto: 6,
            flags: EV_F_BEFORE,
            ifindex: 1,
            len: 60,
            before: EventTuple {
                saddr: u32::from(Ipv4Addr::new(10, 244, 1, 2)).to_be(),
                daddr: u32::from(Ipv4Addr::new(10, 96, 0, 10)).to_be(),
                sport: 40000u16.to_be(),
                dport: 80u16.to_be(),
            },
            after: EventTuple {
                saddr: u32::from(Ipv4Addr::new(10, 244, 1, 2)).to_be(),
                daddr: u32::from(Ipv4Addr::new(10, 244, 2, 5)).to_be(),
                sport: 40000u16.to_be(),
                dport: 8080u16.to_be(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn events_decode_with_their_frontend_and_filter() {
        let fe = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
        let info = FrontendInfo {
            shown: "10.96.0.10:80/tcp".into(),
            service: Some("default/web:http".into()),
        };
        let frontends = HashMap::from([((fe, 6), info)]);
        let e = decode(
            &raw(Hook::TcPodIngress, Reason::LbNewConnection),
            &frontends,
            &mut HashMap::new(),
        )
        .unwrap();
        assert_eq!(
            (e.hook, e.reason, e.verdict),
            ("tc-pod-ingress", "lb-new-connection", "PASS")
        );
        assert_eq!(e.frontend.as_deref(), Some("10.96.0.10:80/tcp"));
        assert_eq!(e.service.as_deref(), Some("default/web:http"));
        assert!(render_text(&e).ends_with("service default/web:http len 60"));
        assert!(render_json(&e).contains(r#""service":"default/web:http""#));
        let named = |name: &str| Options {
            service: Some(name.into()),
            ..Default::default()
        };
        assert!(named("default/web").wants(&e));
        assert!(named("default/web:http").wants(&e));
        assert!(!named("default/we").wants(&e));
        assert!(!named("default/web:https").wants(&e));
        assert!(!named("other/web").wants(&e));
        // The reply, un-DNATed on its way back: named after the frontend it now comes from.
        let mut reply = raw(Hook::TcPodEgress, Reason::NatReply);
        (reply.before, reply.after) = (reply.after, reply.before);
        std::mem::swap(&mut reply.before.saddr, &mut reply.before.daddr);
        std::mem::swap(&mut reply.before.sport, &mut reply.before.dport);
        std::mem::swap(&mut reply.after.saddr, &mut reply.after.daddr);
        std::mem::swap(&mut reply.after.sport, &mut reply.after.dport);
        let r = decode(&reply, &frontends, &mut HashMap::new()).unwrap();
        assert_eq!(r.after.0, fe, "{r:?}");
        assert_eq!(r.service.as_deref(), Some("default/web:http"));
        assert!(named("default/web").wants(&r));
        assert_eq!(e.after.1, "10.244.2.5:8080".parse().unwrap());
        let text = render_text(&e);
        assert!(
            text.contains(
                "10.244.1.2:40000 -> 10.96.0.10:80 => 10.244.1.2:40000 -> 10.244.2.5:8080"
            ),
            "{text}"
        );
        let only = |ip: [u8; 4]| Options {
            ip: Some(Ipv4Addr::from(ip)),
            ..Default::default()
        };
        assert!(only([10, 244, 2, 5]).wants(&e));
        assert!(!only([10, 244, 9, 9]).wants(&e));
        let to = Options {
            frontend: Some(fe),
            ..Default::default()
        };
        assert!(to.wants(&e));
        let mut bad = raw(Hook::TcPodIngress, Reason::PassTcp);
        bad.reason = 250;
        assert!(decode(&bad, &frontends, &mut HashMap::new()).is_none());
    }
}
