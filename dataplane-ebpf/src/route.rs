//! Routing a packet again after an egress hook rewrote its destination (the node's own
//! connection to a service, translated at the uplink's egress: the kernel routed it toward the
//! frontend, which is not where the backend is).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use dataplane_common::Reason;

const AF_INET: u8 = 2;

/// Sends the packet out of the device the kernel's routes give for its (new) destination, with
/// the next hop's MAC from the neighbour table (resolved by the kernel if it is not yet).
/// `Err` when the destination is not routable from here: one of the node's own addresses (a
/// host-network backend on this node; its replies would never pass a hook to be restored), or
/// no route at all.
#[inline(always)]
pub fn reroute(ctx: &TcContext, saddr: u32, daddr: u32, proto: u8) -> Result<i32, Reason> {
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
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
    Ok(unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}
