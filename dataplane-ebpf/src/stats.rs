//! Counting verdicts per hook.

use dataplane_common::{stats::stats_index, Hook, Reason};

use crate::maps::STATS_V2;

/// Adds one packet of `len` bytes to the (hook, reason) counter of this CPU.
#[inline(always)]
pub fn count(hook: Hook, reason: Reason, len: u32) {
    if let Some(slot) = STATS_V2.get_ptr_mut(stats_index(hook, reason)) {
        // Per-CPU slot: no other CPU writes it, so plain adds are race-free.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += len as u64;
        }
    }
}
