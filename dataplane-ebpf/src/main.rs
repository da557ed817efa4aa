//! Entry points only: one function per hook. Each parses the packet, decides, counts the verdict
//! in `STATS_V1` and returns the hook's action code.
#![no_std]
#![no_main]

mod maps;
mod parse;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use dataplane_common::{Hook, Reason};

/// Decides what to do with one frame seen on `hook`. Shared by every hook until the service and
/// overlay features give each hook its own pipeline.
#[inline(always)]
fn process(data: usize, data_end: usize, frame_len: usize) -> Reason {
    match parse::parse_ipv4(data, data_end, frame_len) {
        Ok(pkt) => parse::pass_reason(pkt.l4),
        Err(reason) => reason,
    }
}

#[inline(always)]
fn run_xdp(ctx: &XdpContext, hook: Hook) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let len = data_end - data;
    let reason = process(data, data_end, len);
    stats::count(hook, reason, len as u32);
    if reason.is_drop() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[inline(always)]
fn run_tc(ctx: &TcContext, hook: Hook) -> i32 {
    let len = ctx.len();
    // Headers may sit in paged skb data (GRO, veth); make the parse window linear first.
    let want = if len < parse::PARSE_WINDOW { len } else { parse::PARSE_WINDOW };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
    let reason = process(ctx.data(), ctx.data_end(), len as usize);
    stats::count(hook, reason, len);
    if reason.is_drop() { TC_ACT_SHOT } else { TC_ACT_OK }
}

/// XDP on the uplink: first look at every frame the node receives from the underlay.
#[xdp]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    run_xdp(&ctx, Hook::XdpUplink)
}

/// tc ingress on the uplink.
#[classifier]
pub fn tc_uplink_ingress(ctx: TcContext) -> i32 {
    run_tc(&ctx, Hook::TcUplinkIngress)
}

/// tc egress on the uplink.
#[classifier]
pub fn tc_uplink_egress(ctx: TcContext) -> i32 {
    run_tc(&ctx, Hook::TcUplinkEgress)
}

/// tc ingress on a pod-facing host device (traffic from the pod).
#[classifier]
pub fn tc_pod_ingress(ctx: TcContext) -> i32 {
    run_tc(&ctx, Hook::TcPodIngress)
}

/// tc egress on a pod-facing host device (traffic to the pod).
#[classifier]
pub fn tc_pod_egress(ctx: TcContext) -> i32 {
    run_tc(&ctx, Hook::TcPodEgress)
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
