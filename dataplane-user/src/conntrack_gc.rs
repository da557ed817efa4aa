//! Conntrack garbage collection, as Cilium's ctmap GC does: the agent sweeps `CT_V2`
//! periodically and removes connections whose every entry has timed out, all of their entries
//! together (both directions, and a masquerade reservation with them), so the table and the
//! masquerade port range never fill up with dead connections. The interval adapts to how full
//! the table is and how much each sweep found; the fill level is exported as metrics and a
//! warning is logged when the table passes 90%.
//!
//! The datapath frees a closed connection's tuple itself when a new one needs it; the sweep is
//! what keeps everything else bounded.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use dataplane_common::{
    ct::{idle_expired, next_key, Config, CtKey, CtValue, CT_MAX_ENTRIES},
    map_names,
};

use crate::{maps, services::show::monotonic_ns};

/// Shortest and longest pause between two sweeps.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// Fill ratio above which the agent warns.
pub const WARN_FILL: f64 = 0.9;

/// What the sweeps did, for `/metrics`.
#[derive(Default)]
pub struct GcStats {
    pub runs: AtomicU64,
    pub deleted: AtomicU64,
    pub errors: AtomicU64,
    /// Entries left after the last sweep.
    pub entries: AtomicU64,
    pub last_duration_micros: AtomicU64,
    pub interval_millis: AtomicU64,
}

/// The keys of every connection that has timed out as a whole: each entry idle past its state's
/// timeout, and every other entry of its ring too. An entry whose ring does not close (its
/// siblings were evicted, or one of its tuples was reused by a newer connection) goes alone
/// when it has timed out itself, never taking the newer connection's entries with it.
pub fn expired_keys(entries: &[(CtKey, CtValue)], now_ns: u64, cfg: &Config) -> Vec<CtKey> {
    let by_key: HashMap<CtKey, &CtValue> = entries.iter().map(|(k, v)| (*k, v)).collect();
    let mut doomed = HashSet::new();
    for (key, value) in entries {
        if doomed.contains(key) || !idle_expired(value, key.proto, now_ns, cfg) {
            continue;
        }
        match ring(key, value, &by_key) {
            Some(members) => {
                let all_dead = members
                    .iter()
                    .all(|k| idle_expired(by_key[k], k.proto, now_ns, cfg));
                if all_dead {
                    doomed.insert(*key);
                    doomed.extend(members);
                }
            }
            None => {
                doomed.insert(*key);
            }
        }
    }
    let mut out: Vec<CtKey> = doomed.into_iter().collect();
    out.sort_by_key(|k| (k.saddr, k.daddr, k.sport, k.dport, k.proto, k.phase));
    out
}

/// The other entries of `key`'s connection, if following `next_key` leads back to it within a
/// connection's four entries.
fn ring(key: &CtKey, value: &CtValue, by_key: &HashMap<CtKey, &CtValue>) -> Option<Vec<CtKey>> {
    let mut members = Vec::new();
    let mut k = next_key(key, value);
    for _ in 0..4 {
        if k == *key {
            return Some(members);
        }
        let v = by_key.get(&k)?;
        members.push(k);
        k = next_key(&k, v);
    }
    None
}

/// The pause before the next sweep, from what the last one saw (Cilium's rule of thumb: sweep
/// more often when a sweep frees much or the table is full, less often when it is idle).
pub fn next_interval(prev: Duration, entries: usize, deleted: usize, max_entries: u32) -> Duration {
    let fill = (entries + deleted) as f64 / max_entries as f64;
    let freed = deleted as f64 / max_entries as f64;
    let next = if fill > 0.5 || freed > 0.1 {
        prev / 2
    } else if fill < 0.1 && freed < 0.01 {
        prev * 2
    } else {
        prev
    };
    next.clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// One sweep over the pinned `CT_V2`: returns (entries left, entries deleted).
pub fn sweep(pin_dir: &Path) -> Result<(usize, usize)> {
    let cfg = maps::read_config(pin_dir)?;
    let mut ct: maps::Hash<CtKey, CtValue> = maps::open_hash(pin_dir, &dataplane_common::maps::CT)?;
    // Bounded: datapath inserts and evictions during the walk can restart get_next_key.
    let mut entries = Vec::new();
    for entry in ct.iter().take(2 * CT_MAX_ENTRIES as usize) {
        match entry {
            Ok(kv) => entries.push(kv),
            // Deleted between get_next_key and lookup: skip it.
            Err(_) => continue,
        }
    }
    let now = monotonic_ns();
    let doomed = expired_keys(&entries, now, &cfg);
    let mut deleted = 0;
    for k in &doomed {
        if ct.remove(k).is_ok() {
            deleted += 1;
        }
    }
    Ok((entries.len().saturating_sub(deleted), deleted))
}

/// Sweeps until dropped (the agent runs it as a task), on blocking threads: a full table takes
/// a noticeable fraction of a second to walk, which must not stall map updates.
pub async fn run(pin_dir: PathBuf, first: Duration, stats: Arc<GcStats>) {
    let mut interval = first;
    let mut warned = false;
    loop {
        stats
            .interval_millis
            .store(interval.as_millis() as u64, Relaxed);
        tokio::time::sleep(interval).await;
        let dir = pin_dir.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || sweep(&dir)).await;
        stats
            .last_duration_micros
            .store(started.elapsed().as_micros() as u64, Relaxed);
        stats.runs.fetch_add(1, Relaxed);
        let (left, deleted) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                stats.errors.fetch_add(1, Relaxed);
                log::warn!("conntrack GC: {e:#}");
                continue;
            }
            Err(e) => {
                stats.errors.fetch_add(1, Relaxed);
                log::warn!("conntrack GC task: {e}");
                continue;
            }
        };
        stats.deleted.fetch_add(deleted as u64, Relaxed);
        stats.entries.store(left as u64, Relaxed);
        let fill = left as f64 / CT_MAX_ENTRIES as f64;
        if fill > WARN_FILL && !warned {
            log::warn!(
                "{} is {:.0}% full ({left} of {CT_MAX_ENTRIES} entries after GC): the oldest \
                 connections are being evicted",
                map_names::CT,
                fill * 100.0
            );
        }
        warned = fill > WARN_FILL;
        if deleted > 0 {
            log::debug!(
                "conntrack GC: {deleted} entries of timed-out connections removed, {left} left"
            );
        }
        interval = next_interval(interval, left, deleted, CT_MAX_ENTRIES);
    }
}

#[cfg(test)]
mod tests {
    use dataplane_common::ct::{
        CT_F_FULL, CT_F_MASQ, CT_F_REPLY, CT_F_SNAT, NS_PER_SEC, PHASE_EGRESS, PHASE_INGRESS,
        TCP_ACK,
    };

    use super::*;

    fn key(t: (u32, u16, u32, u16), phase: u8) -> CtKey {
        CtKey::new(t.0, t.1, t.2, t.3, 6, phase)
    }

    fn val(nat: (u32, u16, u32, u16), flags: u8, last_seen_s: u64) -> CtValue {
        CtValue {
            last_seen_ns: last_seen_s * NS_PER_SEC,
            seen: TCP_ACK as u32,
            ..CtValue::rewriting(nat.0, nat.1, nat.2, nat.3, flags)
        }
    }

    /// A masqueraded connection: client c:10 -> frontend 2:20, backend 3:30, masq 4:40.
    fn masqueraded_from(c: u32, base: u32, last_seen: [u64; 4]) -> Vec<(CtKey, CtValue)> {
        let (f, b, m) = (base + 2, base + 3, base + 4);
        let fl = CT_F_MASQ | CT_F_SNAT;
        vec![
            (
                key((c, 10, f, 20), PHASE_INGRESS),
                val((c, 10, b, 30), fl, last_seen[0]),
            ),
            (
                key((c, 10, b, 30), PHASE_EGRESS),
                val((m, 40, b, 30), fl, last_seen[1]),
            ),
            (
                key((b, 30, m, 40), PHASE_INGRESS),
                val((b, 30, c, 10), fl | CT_F_REPLY, last_seen[2]),
            ),
            (
                key((b, 30, c, 10), PHASE_EGRESS),
                val((f, 20, c, 10), fl | CT_F_REPLY, last_seen[3]),
            ),
        ]
    }

    fn masqueraded(base: u32, last_seen: [u64; 4]) -> Vec<(CtKey, CtValue)> {
        masqueraded_from(base + 1, base, last_seen)
    }

    #[test]
    fn a_connection_goes_whole_and_only_when_every_entry_timed_out() {
        let mut cfg = Config::with_masq_addr(0);
        cfg.timeout_tcp_established = 100;
        let dead = masqueraded(0, [0, 0, 0, 0]);
        // One direction still busy (a download): the whole connection stays.
        let busy = masqueraded(100, [0, 0, 0, 150]);
        let mut all = dead.clone();
        all.extend(busy);
        let doomed = expired_keys(&all, 200 * NS_PER_SEC, &cfg);
        let mut want: Vec<CtKey> = dead.iter().map(|(k, _)| *k).collect();
        want.sort_by_key(|k| (k.saddr, k.daddr, k.sport, k.dport, k.proto, k.phase));
        assert_eq!(doomed, want);
    }

    #[test]
    fn a_broken_ring_never_takes_a_newer_connections_entries() {
        let mut cfg = Config::with_masq_addr(0);
        cfg.timeout_tcp_established = 100;
        // The old connection lost its reply entries; its masquerade port now belongs to a live
        // one whose entries the old egress entry would lead to.
        let old = masqueraded(0, [0, 0, 0, 0]);
        let live = masqueraded_from(9, 0, [190, 190, 190, 190]);
        let mut entries = vec![old[0], old[1]];
        entries.extend(live.iter().copied());
        let doomed = expired_keys(&entries, 200 * NS_PER_SEC, &cfg);
        assert_eq!(doomed.len(), 2, "{doomed:?}");
        assert!(doomed.contains(&old[0].0) && doomed.contains(&old[1].0));
    }

    /// The XDP fast path's masqueraded connection: two entries, both at ingress, each with the
    /// whole translation (client c:10 -> frontend 2:20 becomes masq 4:40 -> backend 3:30).
    fn full_nat(base: u32, last_seen: [u64; 2]) -> Vec<(CtKey, CtValue)> {
        let (c, f, b, m) = (base + 1, base + 2, base + 3, base + 4);
        let fl = CT_F_FULL | CT_F_MASQ | CT_F_SNAT;
        vec![
            (
                key((c, 10, f, 20), PHASE_INGRESS),
                val((m, 40, b, 30), fl, last_seen[0]),
            ),
            (
                key((b, 30, m, 40), PHASE_INGRESS),
                val((f, 20, c, 10), fl | CT_F_REPLY, last_seen[1]),
            ),
        ]
    }

    #[test]
    fn a_two_entry_connection_goes_whole_too() {
        let mut cfg = Config::with_masq_addr(0);
        cfg.timeout_tcp_established = 100;
        let dead = full_nat(0, [0, 0]);
        let busy = full_nat(100, [0, 150]);
        let mut all = dead.clone();
        all.extend(busy);
        let doomed = expired_keys(&all, 200 * NS_PER_SEC, &cfg);
        let mut want: Vec<CtKey> = dead.iter().map(|(k, _)| *k).collect();
        want.sort_by_key(|k| (k.saddr, k.daddr, k.sport, k.dport, k.proto, k.phase));
        assert_eq!(doomed, want);
    }

    #[test]
    fn the_interval_follows_fill_and_findings() {
        let s = Duration::from_secs(40);
        assert_eq!(next_interval(s, 200_000, 0, 262_144), s / 2);
        assert_eq!(next_interval(s, 1_000, 50_000, 262_144), s / 2);
        assert_eq!(next_interval(s, 100, 0, 262_144), s * 2);
        assert_eq!(
            next_interval(MIN_INTERVAL, 250_000, 0, 262_144),
            MIN_INTERVAL
        );
        assert_eq!(next_interval(MAX_INTERVAL, 0, 0, 262_144), MAX_INTERVAL);
    }
}
