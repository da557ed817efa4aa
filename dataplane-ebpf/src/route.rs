//! Routing a packet again after an egress hook rewrote its destination (the node's own
//! connection to a service, translated at the uplink's egress: the kernel routed it toward the
//! frontend, which is not where the backend is).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
};
use dataplane_common::{ip::AF_INET, Reason};

use crate::net::{parse, Packet, TcPacket};

/// Sends the packet out of the device the kernel's routes give for its (new) destination, with
/// the next hop's MAC from the neighbour table (resolved by the kernel if it is not yet).
/// `Ok`: redirected (TC_ACT_REDIRECT). `Err` when the destination is not routable from here:
/// one of the node's own addresses (a host-network backend on this node; its replies would
/// never pass a hook to be restored), or no route at all.
#[inline(always)]
pub fn reroute(p: &TcPacket) -> Result<(), Reason> {
    // The rewritten flow, as it is in the packet now.
    let flow = parse::parse(p.data(), p.data_end(), p.frame_len() as usize)?.flow;
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = flow.proto;
    fib.ifindex = p.ifindex();
    fib.__bindgen_anon_3.ipv4_src = flow.saddr;
    fib.__bindgen_anon_4.ipv4_dst = flow.daddr;
    let rc = unsafe {
        fib_lookup(
            p.0.skb.skb as *mut _,
            &mut fib as *mut _,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            // An input-style lookup: an output lookup is bound to `ifindex` as the outgoing
            // device, and would send a local pod's packet to the default gateway.
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Err(Reason::DropNoRoute);
    }
    // No next-hop parameters: the helper looks the route's gateway (or the destination itself
    // on a connected route) up in the neighbour table of that device.
    unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) };
    Ok(())
}
