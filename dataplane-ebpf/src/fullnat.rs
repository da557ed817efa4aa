//! Connections translated whole at ingress (`CT_F_FULL`, the XDP fast path's masqueraded
//! connections: two entries, see `dataplane_common::ct`): how each hook context handles them.
//! A packet rewritten by such an entry has a node address as its source (the masquerade
//! address toward the backend, the frontend toward the client), which the kernel's routing
//! drops as a martian: the hook that rewrote it sends it out itself. XDP does it on its fast
//! path (XDP_TX) and leaves what it cannot finish untouched for tc ingress; tc ingress
//! rewrites, decrements the TTL and redirects through the FIB (`route::forward`).

use dataplane_common::{
    lb::{BackendValue, ServiceValue},
    Reason,
};

use crate::{
    conntrack::Hit,
    net::{Packet, Parsed, TcPacket},
    verdict::Verdict,
};

pub trait FullNat: Packet {
    /// A new masqueraded connection to `backend`: `Some(verdict)` when this hook opens it as a
    /// whole-translation connection and sends the packet out itself; `None` for the four-entry
    /// connection every hook can open.
    #[inline(always)]
    fn start_full(
        &self,
        _pkt: &Parsed,
        _svc: &ServiceValue,
        _backend: &BackendValue,
        _len: u32,
        _now: u64,
    ) -> Option<Verdict> {
        None
    }

    /// A packet of a whole-translation connection, not yet rewritten: `Some(verdict)` when
    /// this hook settled it (sent it, or left it for a later hook); `None`: rewrite it here
    /// and route it with the FIB (`Action::Reroute`).
    fn send_full(&self, pkt: &Parsed, hit: &Hit, len: u32) -> Option<Verdict>;

    /// A packet of a whole-translation connection that only the generic path handles (an ICMP
    /// error about it, a later fragment): `Some(verdict)` when this hook leaves it untouched
    /// for a later one.
    fn leave_full(&self) -> Option<Verdict>;
}

/// tc: every packet of such a connection is rewritten here and redirected (`Reroute` at
/// ingress, see `datapath::pod_rx` and `datapath::uplink_rx_tc`).
impl FullNat for TcPacket<'_> {
    #[inline(always)]
    fn send_full(&self, _pkt: &Parsed, _hit: &Hit, _len: u32) -> Option<Verdict> {
        None
    }

    #[inline(always)]
    fn leave_full(&self) -> Option<Verdict> {
        None
    }
}

/// XDP's way to leave a packet of such a connection to tc ingress: marked, else dropped (an
/// unmarked packet would only be classified there, and delivered to the node untranslated).
#[inline(always)]
pub fn leave_to_tc(marked: bool) -> Verdict {
    if marked {
        Verdict::pass(Reason::PassFullNatToTc)
    } else {
        Verdict::drop(Reason::DropRewriteFailed)
    }
}
