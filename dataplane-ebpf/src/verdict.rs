//! The one result type of every pipeline step: why (a [`Reason`], counted in `STATS_V2`) and what
//! the hook does with the frame (an [`Action`], mapped to the hook's return code in `main.rs`).

use dataplane_common::Reason;

/// What the hook does with the frame after the pipeline ran.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    /// Send back out of the interface it arrived on (XDP_TX; tc: redirect to the same device,
    /// or into the node's stack from the uplink's egress).
    Bounce,
    /// At an egress hook: the destination was rewritten after the kernel routed the packet
    /// (the node's own connection to a service): route it again.
    Reroute,
    /// The step already chose the device (`bpf_redirect`, `bpf_redirect_neigh`): tc's
    /// TC_ACT_REDIRECT.
    Redirect,
}

#[derive(Clone, Copy)]
pub struct Verdict {
    pub reason: Reason,
    pub action: Action,
}

impl Verdict {
    #[inline(always)]
    pub const fn new(reason: Reason, action: Action) -> Self {
        Verdict { reason, action }
    }

    /// The reason's own action: drop reasons drop, the rest pass.
    #[inline(always)]
    pub fn of(reason: Reason) -> Self {
        let action = if reason.is_drop() {
            Action::Drop
        } else {
            Action::Pass
        };
        Verdict { reason, action }
    }

    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Verdict::new(reason, Action::Pass)
    }

    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Verdict::new(reason, Action::Drop)
    }

    /// `Ok` passes on to the next step; `Err(reason)` ends the pipeline with a drop.
    #[inline(always)]
    pub fn or_drop(result: Result<Verdict, Reason>) -> Self {
        match result {
            Ok(v) => v,
            Err(reason) => Verdict::drop(reason),
        }
    }
}

/// A step that either lets the packet go on to the next one (`Ok`) or ends the pipeline with
/// its verdict (`Err`).
pub type Step = Result<(), Verdict>;
