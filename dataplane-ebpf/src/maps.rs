//! Every BPF map the programs use. Names carry the layout version; see bpf-maps.md.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use dataplane_common::{StatsValue, STATS_ENTRIES};

/// Packets and bytes per (hook, verdict reason), per CPU. Index: `stats_index(hook, reason)`.
#[map(name = "STATS_V1")]
pub static STATS_V1: PerCpuArray<StatsValue> = PerCpuArray::pinned(STATS_ENTRIES, 0);
