//! Reading the service and conntrack maps back for operators (`dataplane services`,
//! `dataplane conntrack`): what iptables-save and `conntrack -L` showed under kube-proxy.

use std::{net::SocketAddrV4, time::Duration};

use anyhow::Result;
use dataplane_common::{
    ct::{ct_state, Config, CtKey, CtState, CtValue, CT_F_REPLY, CT_F_SNAT},
    lb::{
        BackendKey, BackendValue, ServiceKey, ServiceValue, BE_F_LOCAL, SVC_F_AFFINITY,
        SVC_F_DROP_IF_EMPTY, SVC_F_EXTERNAL, SVC_F_LOCAL_ONLY, SVC_F_MASQUERADE,
        SVC_F_SOURCE_RANGES,
    },
    map_names, maps,
};

use crate::maps::{open_array, open_hash};

use super::{
    mirror::slots,
    names,
    spec::{key_order, proto_name, sock},
    store::{dump, read_config, MapSource},
};

/// One frontend with its current backend set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRow {
    /// The frontend address:port (ClusterIP, node address, external or LB IP).
    pub frontend: SocketAddrV4,
    /// IP protocol number.
    pub proto: u8,
    pub frontend_id: u32,
    pub set_id: u32,
    /// `SVC_F_*` flags.
    pub flags: u32,
    pub affinity_timeout_secs: u32,
    /// The set's backends in slot order; empty: the frontend rejects.
    pub backends: Vec<BackendRow>,
    /// The Service port (`namespace/name:port`) from `SERVICE_NAMES_V1`, if the agent named it.
    pub name: Option<String>,
    /// Slots of the set that could not be read (0 unless an update raced the listing).
    pub missing_slots: u32,
}

/// One backend of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendRow {
    /// Backend (pod) address:port.
    pub addr: SocketAddrV4,
    /// On this node (`BE_F_LOCAL`).
    pub local: bool,
}

/// Which direction of its connection a conntrack entry translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CtDirection {
    /// client -> frontend, rewritten to the backend.
    Original,
    /// backend -> client, rewritten to come from the frontend.
    Reply,
}

/// One conntrack entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtRow {
    /// IP protocol number.
    pub proto: u8,
    /// The 5-tuple as on the wire (the key).
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// What the packet leaves with.
    pub nat_src: SocketAddrV4,
    pub nat_dst: SocketAddrV4,
    pub direction: CtDirection,
    /// Source-NATed to the masquerade address.
    pub snat: bool,
    /// The frontend the connection was balanced for (`ServiceRow::frontend_id`).
    pub frontend_id: u32,
    /// From the TCP flags seen in this direction (`Stateless` for UDP and ICMP).
    pub state: CtState,
    /// Since creation, and since the last packet in this direction (CLOCK_MONOTONIC, the
    /// datapath's bpf_ktime_get_ns()).
    pub age: Duration,
    pub idle: Duration,
    /// Packets and bytes in this direction.
    pub packets: u64,
    pub bytes: u64,
    /// Idle time left before the state's timeout (`CONFIG_V2`) expires the entry; `None`
    /// without a written config.
    pub expires_in: Option<Duration>,
}

/// Every frontend in the maps, in address order.
pub fn list_services(source: &(impl MapSource + ?Sized)) -> Result<Vec<ServiceRow>> {
    let services = open_hash::<ServiceKey, ServiceValue>(source, &maps::SERVICES)?;
    let backends = open_array::<BackendValue>(source, &maps::BACKENDS)?;
    let names = source
        .open_map(map_names::SERVICE_NAMES)
        .ok()
        .and_then(|data| names::read(data).ok())
        .unwrap_or_default();
    let mut entries = dump(&services, map_names::SERVICES)?;
    entries.sort_by_key(|(k, _)| key_order(k));
    // Slots are read right after their service value: a set lives at least as long as the
    // values naming it, so only an update racing this listing can make one disappear.
    Ok(entries
        .iter()
        .map(|(k, v)| {
            let mut row = service_row(k, v, |slot| {
                backends.get(&slot.index(), 0).ok().filter(|b| b.addr != 0)
            });
            row.name = names.get(&key_order(k)).cloned();
            row
        })
        .collect())
}

/// Decodes one frontend, looking its slots up with `slot`.
fn service_row(
    key: &ServiceKey,
    value: &ServiceValue,
    slot: impl Fn(&BackendKey) -> Option<BackendValue>,
) -> ServiceRow {
    let found: Vec<BackendValue> = slots(value).filter_map(|k| slot(&k)).collect();
    ServiceRow {
        frontend: sock(key.addr, key.port),
        proto: key.proto,
        frontend_id: value.frontend_id,
        set_id: value.set_id,
        flags: value.flags,
        affinity_timeout_secs: value.affinity_timeout_secs,
        missing_slots: value.count - found.len() as u32,
        name: None,
        backends: found
            .iter()
            .map(|b| BackendRow {
                addr: sock(b.addr, b.port),
                local: b.flags & BE_F_LOCAL != 0,
            })
            .collect(),
    }
}

/// Every conntrack entry, by frontend, then direction, then 5-tuple.
pub fn list_conntrack(source: &(impl MapSource + ?Sized)) -> Result<Vec<CtRow>> {
    let ct = open_hash::<CtKey, CtValue>(source, &maps::CT)?;
    // A config never written is all zeros: no timeouts to show.
    let config = read_config(source).ok().filter(|c| c.timeout_udp != 0);
    let now = monotonic_ns();
    let mut rows: Vec<CtRow> = dump(&ct, map_names::CT)?
        .iter()
        .map(|(k, v)| ct_row(k, v, now, config.as_ref()))
        .collect();
    rows.sort_by_key(|r| {
        (
            r.frontend_id,
            r.direction,
            r.proto,
            *r.src.ip(),
            r.src.port(),
            *r.dst.ip(),
            r.dst.port(),
        )
    });
    Ok(rows)
}

/// Decodes one conntrack entry at monotonic time `now_ns`.
fn ct_row(key: &CtKey, value: &CtValue, now_ns: u64, config: Option<&Config>) -> CtRow {
    let state = ct_state(key.proto, value.seen);
    let idle = Duration::from_nanos(now_ns.saturating_sub(value.last_seen_ns));
    let timeout = config.map(|c| Duration::from_secs(c.timeout_secs(state, key.proto).into()));
    CtRow {
        proto: key.proto,
        src: sock(key.saddr, key.sport),
        dst: sock(key.daddr, key.dport),
        nat_src: sock(value.nat_saddr, value.nat_sport),
        nat_dst: sock(value.nat_daddr, value.nat_dport),
        direction: if value.flags & CT_F_REPLY != 0 {
            CtDirection::Reply
        } else {
            CtDirection::Original
        },
        snat: value.flags & CT_F_SNAT != 0,
        frontend_id: value.frontend_id,
        state,
        age: Duration::from_nanos(now_ns.saturating_sub(value.created_ns)),
        idle,
        packets: value.packets,
        bytes: value.bytes,
        expires_in: timeout.map(|t| t.saturating_sub(idle)),
    }
}

/// The clock bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One block per frontend, like iptables-save for humans:
/// ```text
/// 10.109.117.159:80/tcp  frontend 1  set 4  cluster
///     -> 10.244.1.19:8080
///     -> 10.244.2.15:8080  local
/// ```
pub fn render_services(rows: &[ServiceRow]) -> String {
    let mut out = format!("# {} service frontends\n", rows.len());
    for r in rows {
        out += &format!(
            "{}/{}  {}frontend {}  set {}  {}\n",
            r.frontend,
            proto_name(r.proto),
            r.name.as_ref().map_or(String::new(), |n| format!("{n}  ")),
            r.frontend_id,
            r.set_id,
            flag_names(r.flags, r.affinity_timeout_secs)
        );
        if r.backends.is_empty() && r.missing_slots == 0 {
            out += "    reject (no endpoints)\n";
        }
        for b in &r.backends {
            out += &format!(
                "    -> {}{}\n",
                b.addr,
                if b.local { "  local" } else { "" }
            );
        }
        if r.missing_slots > 0 {
            out += &format!(
                "    ({} slots missing: an update raced this listing)\n",
                r.missing_slots
            );
        }
    }
    out
}

/// "cluster" or "external", then the other flags.
fn flag_names(flags: u32, affinity_timeout_secs: u32) -> String {
    let mut names = vec![if flags & SVC_F_EXTERNAL != 0 {
        "external"
    } else {
        "cluster"
    }
    .to_string()];
    if flags & SVC_F_MASQUERADE != 0 {
        names.push("masquerade".into());
    }
    if flags & SVC_F_LOCAL_ONLY != 0 {
        names.push("local-only".into());
    }
    if flags & SVC_F_AFFINITY != 0 {
        names.push(format!("affinity={affinity_timeout_secs}s"));
    }
    if flags & SVC_F_DROP_IF_EMPTY != 0 {
        names.push("drop-if-empty".into());
    }
    if flags & SVC_F_SOURCE_RANGES != 0 {
        names.push("source-ranges".into());
    }
    let known = SVC_F_EXTERNAL
        | SVC_F_MASQUERADE
        | SVC_F_LOCAL_ONLY
        | SVC_F_AFFINITY
        | SVC_F_DROP_IF_EMPTY
        | SVC_F_SOURCE_RANGES;
    if flags & !known != 0 {
        names.push(format!("{:#x}", flags & !known));
    }
    names.join(",")
}

/// A table like `conntrack -L`, one line per entry (two per NATed connection).
pub fn render_conntrack(rows: &[CtRow]) -> String {
    let header = [
        "PROTO",
        "DIR",
        "SOURCE",
        "DESTINATION",
        "NAT SOURCE",
        "NAT DESTINATION",
        "FE",
        "STATE",
        "AGE",
        "IDLE",
        "EXPIRES",
        "PACKETS",
        "BYTES",
    ];
    let mut out = ct_line(header.map(String::from));
    for r in rows {
        let dir = match (r.direction, r.snat) {
            (CtDirection::Original, false) => "orig",
            (CtDirection::Original, true) => "orig,snat",
            (CtDirection::Reply, false) => "reply",
            (CtDirection::Reply, true) => "reply,snat",
        };
        let expires = match r.expires_in {
            None => "-".to_string(),
            Some(d) if d.is_zero() => "expired".to_string(),
            Some(d) => short_duration(d),
        };
        out += &ct_line([
            proto_name(r.proto),
            dir.to_string(),
            r.src.to_string(),
            r.dst.to_string(),
            r.nat_src.to_string(),
            r.nat_dst.to_string(),
            r.frontend_id.to_string(),
            state_name(r.state).to_string(),
            short_duration(r.age),
            short_duration(r.idle),
            expires,
            r.packets.to_string(),
            r.bytes.to_string(),
        ]);
    }
    out
}

/// One line of the conntrack table: text columns left-aligned, numbers right-aligned.
fn ct_line(c: [String; 13]) -> String {
    format!(
        "{:<5} {:<10} {:<21} {:<21} {:<21} {:<21} {:>5} {:<11} {:>8} {:>8} {:>8} {:>9} {:>11}\n",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12]
    )
}

fn state_name(state: CtState) -> &'static str {
    match state {
        CtState::SynSent => "syn-sent",
        CtState::Established => "established",
        CtState::HalfClosed => "half-closed",
        CtState::Closed => "time-wait",
        CtState::Reset => "closed",
        CtState::Stateless => "-",
    }
}

/// 42s, 5m03s, 2h05m, 3d04h.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..86_400 => format!("{}h{:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use dataplane_common::ct::{TCP_ACK, TCP_SYN};

    use super::*;
    use crate::services::spec::ip_to_be;

    fn be(ip: [u8; 4], port: u16, flags: u16) -> BackendValue {
        BackendValue {
            addr: ip_to_be(ip.into()),
            port: port.to_be(),
            flags,
        }
    }

    #[test]
    fn service_rows_decode_and_render() {
        let key = ServiceKey::new(ip_to_be([10, 109, 117, 159].into()), 80u16.to_be(), 6);
        let value = ServiceValue {
            frontend_id: 1,
            set_id: 4,
            count: 2,
            ..Default::default()
        };
        let slots = HashMap::from([
            (
                BackendKey { set_id: 4, slot: 0 },
                be([10, 244, 1, 19], 8080, BE_F_LOCAL),
            ),
            (
                BackendKey { set_id: 4, slot: 1 },
                be([10, 244, 2, 15], 8080, 0),
            ),
        ]);
        let row = service_row(&key, &value, |k| slots.get(k).copied());
        assert_eq!(row.frontend.to_string(), "10.109.117.159:80");
        assert_eq!(row.missing_slots, 0);
        assert_eq!(
            render_services(&[row]),
            "# 1 service frontends\n\
             10.109.117.159:80/tcp  frontend 1  set 4  cluster\n    \
             -> 10.244.1.19:8080  local\n    \
             -> 10.244.2.15:8080\n"
        );
        let udp = ServiceKey { proto: 17, ..key };
        let value = ServiceValue {
            count: 0,
            flags: SVC_F_EXTERNAL | SVC_F_MASQUERADE | SVC_F_AFFINITY,
            affinity_timeout_secs: 10_800,
            ..value
        };
        let text = render_services(&[service_row(&udp, &value, |_| None)]);
        let want = "80/udp  frontend 1  set 4  external,masquerade,affinity=10800s\n    reject";
        assert!(text.contains(want), "{text}");
    }

    #[test]
    fn conntrack_rows_decode_times_state_and_expiry() {
        let key = CtKey {
            saddr: ip_to_be([10, 244, 1, 5].into()),
            daddr: ip_to_be([10, 109, 117, 159].into()),
            sport: 40_000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            phase: 0,
            _pad: [0; 2],
        };
        let value = CtValue {
            nat_saddr: key.saddr,
            nat_sport: key.sport,
            nat_daddr: ip_to_be([10, 244, 2, 15].into()),
            nat_dport: 8080u16.to_be(),
            frontend_id: 1,
            created_ns: 1_000_000_000,
            last_seen_ns: 91_000_000_000,
            packets: 10,
            bytes: 1_500,
            flags: 0,
            seen: (TCP_SYN | TCP_ACK) as u32,
            _pad: [0; 3],
        };
        let config = Config::with_masq_addr(0);
        let row = ct_row(&key, &value, 100_000_000_000, Some(&config));
        assert_eq!(row.direction, CtDirection::Original);
        assert_eq!(row.state, CtState::Established);
        assert_eq!(row.age, Duration::from_secs(99));
        assert_eq!(row.idle, Duration::from_secs(9));
        assert_eq!(row.expires_in, Some(Duration::from_secs(86_400 - 9)));
        assert_eq!(row.nat_dst.to_string(), "10.244.2.15:8080");
        let text = render_conntrack(&[row]);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("tcp   orig       10.244.1.5:40000"),
            "{text}"
        );
        assert!(
            text.contains("established") && text.contains("1m39s") && text.contains("23h59m"),
            "{text}"
        );

        let udp = CtKey { proto: 17, ..key };
        let reply = CtValue {
            flags: CT_F_REPLY | CT_F_SNAT,
            ..value
        };
        let row = ct_row(&udp, &reply, 300_000_000_000, Some(&config));
        assert_eq!(
            (row.direction, row.snat, row.state),
            (CtDirection::Reply, true, CtState::Stateless)
        );
        assert_eq!(row.expires_in, Some(Duration::ZERO));
        assert!(render_conntrack(&[row]).contains("expired"));
        assert_eq!(
            ct_row(&udp, &value, 0, None).age,
            Duration::ZERO,
            "clock before creation"
        );
    }

    #[test]
    fn durations_are_short() {
        let d = Duration::from_secs;
        assert_eq!(short_duration(d(42)), "42s");
        assert_eq!(short_duration(d(303)), "5m03s");
        assert_eq!(short_duration(d(7_500)), "2h05m");
        assert_eq!(short_duration(d(273_600)), "3d04h");
    }
}
