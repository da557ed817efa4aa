//! Reading `STATS_V2` back: per-CPU values summed, decoded into hook and reason names. A pin dir
//! an older agent still runs from holds `STATS_V1` instead (same reasons, 32 columns per hook):
//! read as such, with a note, so an upgrade can be watched with the new binary.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use dataplane_common::{map_names, stats::MAX_REASONS_V1, Hook, Reason, StatsValue, MAX_REASONS};

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
    /// Set when the counters came from an older layout than this build's.
    pub note: Option<String>,
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

/// Reads the stats map pinned under `pin_dir` (`STATS_V2`, or an older agent's `STATS_V1`).
pub fn read_pinned(pin_dir: &Path) -> Result<Stats> {
    let path = pin_dir.join(map_names::STATS);
    let old = pin_dir.join("STATS_V1");
    if !path.exists() && old.exists() {
        let mut stats = read_width(&open(&old)?, MAX_REASONS_V1)?;
        stats.note = Some(format!(
            "{} is the layout of an older agent (32 reasons per hook); restart the agent with \
             this build to get {}",
            old.display(),
            map_names::STATS
        ));
        return Ok(stats);
    }
    read(&open(&path)?)
}

fn open(path: &Path) -> Result<PerCpuArray<MapData, StatsValue>> {
    let data = MapData::from_pin(path).with_context(|| {
        format!(
            "opening {} (is `dataplane run` pinned there?)",
            path.display()
        )
    })?;
    Ok(PerCpuArray::try_from(Map::from_map_data(data)?)?)
}

/// Reads counters from an open `STATS_V2`.
pub fn read<T: std::borrow::Borrow<MapData>>(array: &PerCpuArray<T, StatsValue>) -> Result<Stats> {
    read_width(array, MAX_REASONS)
}

/// Reads a stats array whose rows are `width` reasons wide (reasons beyond it are not there).
fn read_width<T: std::borrow::Borrow<MapData>>(
    array: &PerCpuArray<T, StatsValue>,
    width: u32,
) -> Result<Stats> {
    let mut rows = Vec::new();
    for hook in Hook::ALL {
        for reason in Reason::ALL.into_iter().filter(|r| (*r as u32) < width) {
            let per_cpu = array.get(&(hook as u32 * width + reason as u32), 0)?;
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
    Ok(Stats { rows, note: None })
}

/// Human-readable table, one line per non-zero counter.
pub fn render(stats: &Stats) -> String {
    let mut out = stats
        .note
        .as_ref()
        .map_or(String::new(), |n| format!("note: {n}\n"));
    out += &format!(
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
