//! Entry points only: one function per hook. Each runs its pipeline (`datapath.rs`, `sock.rs`),
//! counts the verdict once (`stats::Recorder`: `STATS_V2` and the monitor) and maps it to the
//! hook's return code.
#![no_std]
#![no_main]
// BPF atomic instructions for conntrack counters and flags (see conntrack::or_seen).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod config;
mod conntrack;
mod datapath;
mod fastpath;
mod frag;
mod fullnat;
mod icmp;
mod lb;
mod maps;
mod monitor;
mod net;
mod overlay;
mod prefilter;
mod route;
mod sock;
mod stats;
mod verdict;

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_INGRESS, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use dataplane_common::Hook;
use net::{Packet, TcPacket, XdpPacket};
use stats::Recorder;
use verdict::{Action, Verdict};

#[inline(always)]
fn xdp_action(v: Verdict) -> u32 {
    match v.action {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
        Action::Bounce => xdp_action::XDP_TX,
        // Only tc hooks reroute or redirect.
        Action::Reroute | Action::Redirect => xdp_action::XDP_PASS,
    }
}

/// tc's code for a verdict. `bounce_flags`: where a bounced frame goes (0: out of the device it
/// came in on, back to the pod that sent it; BPF_F_INGRESS: into the node's stack).
#[inline(always)]
fn tc_action(p: &TcPacket, v: Verdict, bounce_flags: u64) -> i32 {
    match v.action {
        Action::Pass => TC_ACT_OK,
        Action::Drop => TC_ACT_SHOT,
        Action::Bounce => unsafe { bpf_redirect(p.ifindex(), bounce_flags) as i32 },
        Action::Redirect => TC_ACT_REDIRECT,
        // Rerouted in the pipelines (datapath::uplink_tx, datapath::sent_whole).
        Action::Reroute => TC_ACT_OK,
    }
}

/// cgroup sock_addr hooks: allow the syscall (with whatever address the hook wrote), or fail it
/// (its error set with bpf_set_retval).
#[inline(always)]
fn sock_action(v: Verdict) -> i32 {
    if v.action == Action::Drop {
        0
    } else {
        1
    }
}

/// A cgroup sock_addr program: its verdict `v`, counted (sockets have no frame length), as the
/// hook's return code.
#[inline(always)]
fn sock_program(hook: Hook, v: Verdict) -> i32 {
    stats::count(hook, v.reason, 0);
    sock_action(v)
}

/// The body of a tc program: wraps `ctx` as `$p`, makes its recorder `$rec`, takes the verdict
/// of `$pipeline` on the frame, counts it once and returns the hook's code (`$bounce`: see
/// [`tc_action`]). A macro, not a function taking the pipeline as a closure: a closure LLVM
/// chose not to inline became a BPF subprogram, which the verifier refused in
/// tc_uplink_ingress. Expanded, each program is what it was written out.
macro_rules! tc_program {
    ($ctx:expr, $hook:expr, $bounce:expr, |$p:ident, $rec:ident| $pipeline:expr) => {{
        let $p = TcPacket(&$ctx);
        let $rec = Recorder::new($hook, $p.ifindex(), $p.frame_len());
        let v = $pipeline;
        $rec.record(&$p, v);
        tc_action(&$p, v, $bounce)
    }};
}

/// 1 when `xdp_uplink` is attached to the uplink (it runs the ingress pipeline there), 0 when
/// the agent attached no XDP and `tc_uplink_ingress` runs it instead. Set by the loader
/// (`EbpfLoader::set_global`) before the programs load.
#[no_mangle]
static UPLINK_XDP: u32 = 1;

#[inline(always)]
fn uplink_xdp() -> bool {
    config::load_time_flag(&UPLINK_XDP)
}

/// XDP on the uplink: NodePort/external traffic enters here, and replies of connections this
/// node translated come back here; tunnel packets for this node are opened first.
#[xdp]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    let p = XdpPacket(&ctx);
    let rec = Recorder::new(
        Hook::XdpUplink,
        unsafe { (*ctx.ctx).ingress_ifindex },
        // black_box: the length must be computed here, as a scalar; left to LLVM, the
        // subtraction is sunk past the helper calls of the pipeline and a 32-bit half of the
        // packet pointer is spilled instead, which the verifier refuses.
        core::hint::black_box(p.frame_len()),
    );
    let v = datapath::uplink_rx_xdp(&p, &rec);
    rec.record(&p, v);
    xdp_action(v)
}

/// tc ingress on the uplink (after XDP, and after GRO): tunnel packets XDP left closed, and the
/// ingress pipeline when no XDP runs it.
#[classifier]
pub fn tc_uplink_ingress(ctx: TcContext) -> i32 {
    tc_program!(ctx, Hook::TcUplinkIngress, 0, |p, rec| {
        datapath::uplink_rx_tc(&p, &rec, uplink_xdp())
    })
}

/// tc egress on the uplink: ICMP errors the node emits about translated connections, the node's
/// own packets to services (balanced here), and the overlay's encapsulation.
#[classifier]
pub fn tc_uplink_egress(ctx: TcContext) -> i32 {
    // A reject for the node's own packet: into the node's stack, not out to the wire.
    tc_program!(ctx, Hook::TcUplinkEgress, BPF_F_INGRESS as u64, |p, rec| {
        datapath::uplink_tx(&p, &rec)
    })
}

/// tc ingress on a pod-facing host device: connections from pods to services start here.
#[classifier]
pub fn tc_pod_ingress(ctx: TcContext) -> i32 {
    tc_program!(ctx, Hook::TcPodIngress, 0, |p, rec| datapath::pod_rx(
        &p, &rec
    ))
}

/// tc egress on a pod-facing host device (traffic to the pod): replies of translated
/// connections, and ICMP errors the node emits about them (fragmentation needed, TTL exceeded).
#[classifier]
pub fn tc_pod_egress(ctx: TcContext) -> i32 {
    tc_program!(ctx, Hook::TcPodEgress, 0, |p, rec| datapath::pod_tx(&p))
}

/// cgroup connect4: host sockets connecting to a service get a backend instead.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock_program(Hook::SockConnect4, sock::balance(&ctx, false))
}

/// cgroup sendmsg4: unconnected host UDP sends to a service.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_program(Hook::SockSendmsg4, sock::balance(&ctx, true))
}

/// cgroup recvmsg4: datagrams from a backend appear to come from the service.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock_program(Hook::SockRecvmsg4, sock::reverse(&ctx))
}

/// cgroup getpeername4: a balanced socket's peer is the service.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock_program(Hook::SockGetpeername4, sock::reverse(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No panics can be reached in verified code; the verifier rejects unbounded loops.
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
