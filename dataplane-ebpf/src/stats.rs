//! Counting verdicts per hook (`STATS_V2`) and handing them to the monitor.

use core::cell::Cell;

use dataplane_common::{stats::stats_index, Hook, Reason};

use crate::{maps::STATS_V2, monitor, net::Packet, verdict::Verdict};

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

/// Where a verdict is counted: the hook, its device and the frame's length as the hook
/// received it (computed once, before the pipeline, as a scalar: see `main.rs`), less what a
/// decapsulation removed (the inner packet's verdict counts the inner frame's bytes).
pub struct Recorder {
    pub hook: Hook,
    pub ifindex: u32,
    len: Cell<u32>,
}

impl Recorder {
    #[inline(always)]
    pub fn new(hook: Hook, ifindex: u32, len: u32) -> Self {
        Recorder {
            hook,
            ifindex,
            len: Cell::new(len),
        }
    }

    /// The frame's length as counted (a scalar computed before the pipeline).
    #[inline(always)]
    pub fn len(&self) -> u32 {
        self.len.get()
    }

    /// The frame lost `bytes` of headers (a decapsulation): later verdicts count the rest.
    #[inline(always)]
    pub fn shrunk_by(&self, bytes: u32) {
        self.len.set(self.len.get().saturating_sub(bytes));
    }

    /// Counts the verdict and sends its monitor event (if a monitor wants it).
    #[inline(always)]
    pub fn record<P: Packet>(&self, p: &P, v: Verdict) {
        let len = self.len.get();
        count(self.hook, v.reason, len);
        monitor::emit(p, self.hook, v.reason, self.ifindex, len);
    }

    /// Counts a stage that has its own counter and no event (the decapsulation: the inner
    /// packet's verdict follows).
    #[inline(always)]
    pub fn count(&self, reason: Reason) {
        count(self.hook, reason, self.len.get());
    }
}
