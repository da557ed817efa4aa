//! Reading `STATS_V1` back: per-CPU values summed, decoded into hook and reason names.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use dataplane_common::{map_names, stats::stats_index, Hook, Reason, StatsValue};

/// One non-zero counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatRow {
    pub hook: Hook,
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

/// All counters, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub rows: Vec<StatRow>,
}

impl Stats {
    /// Packets counted for (hook, reason); 0 if none.
    pub fn packets(&self, hook: Hook, reason: Reason) -> u64 {
        self.rows
            .iter()
            .find(|r| r.hook == hook && r.reason == reason)
            .map_or(0, |r| r.packets)
    }

    /// Packets counted on a hook, all reasons.
    pub fn hook_packets(&self, hook: Hook) -> u64 {
        self.rows
            .iter()
            .filter(|r| r.hook == hook)
            .map(|r| r.packets)
            .sum()
    }
}

/// Reads the stats map pinned under `pin_dir`.
pub fn read_pinned(pin_dir: &Path) -> Result<Stats> {
    let path = pin_dir.join(map_names::STATS);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is `dataplane run` pinned there?)",
            path.display()
        )
    })?;
    let map = Map::from_map_data(data)?;
    let array: PerCpuArray<_, StatsValue> = PerCpuArray::try_from(map)?;
    read(&array)
}

/// Reads counters from an open stats map.
pub fn read<T: std::borrow::Borrow<MapData>>(array: &PerCpuArray<T, StatsValue>) -> Result<Stats> {
    let mut rows = Vec::new();
    for hook in Hook::ALL {
        for reason in Reason::ALL {
            let per_cpu = array.get(&stats_index(hook, reason), 0)?;
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0, 0), |(p, b), v| (p + v.packets, b + v.bytes));
            if packets > 0 {
                rows.push(StatRow {
                    hook,
                    reason,
                    packets,
                    bytes,
                });
            }
        }
    }
    Ok(Stats { rows })
}

/// Human-readable table, one line per non-zero counter.
pub fn render(stats: &Stats) -> String {
    let mut out = format!(
        "{:<20} {:<22} {:>12} {:>14}\n",
        "HOOK", "REASON", "PACKETS", "BYTES"
    );
    for r in &stats.rows {
        let verdict = if r.reason.is_drop() { "DROP" } else { "PASS" };
        out += &format!(
            "{:<20} {:<22} {:>12} {:>14}  {verdict}\n",
            r.hook.name(),
            r.reason.name(),
            r.packets,
            r.bytes
        );
    }
    out
}
