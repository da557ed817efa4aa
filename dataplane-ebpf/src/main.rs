//! Entry points only: one function per hook. Each runs its pipeline (datapath.rs), counts the
//! verdict in `STATS_V2` and returns the hook's action code.
#![no_std]
#![no_main]
// BPF atomic instructions for conntrack counters and flags (see conntrack::or_seen).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod conntrack;
mod datapath;
mod frag;
mod icmp;
mod lb;
mod maps;
mod monitor;
mod overlay;
mod packet;
mod parse;
mod prefilter;
mod route;
mod sock;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use datapath::Action;
use dataplane_common::{Hook, Reason};
use packet::{Packet, TcPacket, XdpPacket};

#[inline(always)]
fn xdp_action(action: Action) -> u32 {
    match action {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
        Action::Bounce => xdp_action::XDP_TX,
        // Only egress hooks reroute.
        Action::Reroute => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn tc_action(ctx: &TcContext, action: Action) -> i32 {
    match action {
        Action::Pass => TC_ACT_OK,
        Action::Drop => TC_ACT_SHOT,
        // Egress of the device the frame came in on: back to the pod that sent it.
        Action::Bounce => unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 },
        // Only the uplink's egress reroutes (tc_uplink_egress).
        Action::Reroute => TC_ACT_OK,
    }
}

/// Headers may sit in paged skb data (GRO, veth); make what the parser reads linear first.
///
/// Only what it reads: a pull copies payload out of the frags into the head, reallocating it
/// when it is shared, and every TCP segment a local socket sends is a clone whose head holds
/// just its headers (66 bytes with timestamps). Pulling the whole 128-byte window for each of
/// them was a head copy per GSO burst on every hook it crossed. TCP and UDP need their fixed
/// header; anything else (ICMP errors carry the headers they quote) gets the whole window.
#[inline(always)]
fn linearize(ctx: &TcContext) {
    let len = ctx.len();
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear >= len || linear >= parse::PARSE_WINDOW {
        return;
    }
    let need = match ctx.load::<[u8; 24]>(0) {
        Ok(h) if h[12] == 0x08 && h[13] == 0x00 => {
            let l4 = 14 + ((h[14] & 0x0f) as u32) * 4;
            match h[23] {
                6 => l4 + 20,
                17 => l4 + 8,
                _ => parse::PARSE_WINDOW,
            }
        }
        _ => parse::PARSE_WINDOW,
    };
    let want = if len < need { len } else { need };
    if linear < want {
        let _ = ctx.pull_data(want);
    }
}

#[inline(always)]
fn tc_ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn xdp_ifindex(ctx: &XdpContext) -> u32 {
    unsafe { (*ctx.ctx).ingress_ifindex }
}

#[inline(always)]
fn tc_observe(ctx: &TcContext, hook: Hook) -> i32 {
    linearize(ctx);
    let p = TcPacket(ctx);
    let len = p.frame_len();
    monitor::snapshot(&p);
    let reason: Reason = datapath::observe(&p);
    stats::count(hook, reason, len);
    monitor::emit(&p, hook, reason, tc_ifindex(ctx), len);
    if reason.is_drop() {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

#[inline(always)]
fn tc_egress(ctx: &TcContext, hook: Hook) -> i32 {
    linearize(ctx);
    let p = TcPacket(ctx);
    let len = p.frame_len();
    monitor::snapshot(&p);
    let (reason, action) = datapath::egress(&p, false);
    stats::count(hook, reason, len);
    monitor::emit(&p, hook, reason, tc_ifindex(ctx), len);
    tc_action(ctx, action)
}

/// XDP on the uplink: NodePort/external traffic enters here, and replies of connections this
/// node translated come back here.
#[xdp]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    // Tunnel packets for this node are opened first: the service pipeline sees the inner packet.
    match overlay::decap(&ctx) {
        overlay::Decap::NotTunnel => {}
        overlay::Decap::Decapsulated(outer_len) => {
            stats::count(Hook::XdpUplink, Reason::OverlayDecap, outer_len)
        }
        overlay::Decap::Drop(reason) => {
            // black_box: the length must be computed here, as a scalar; left to LLVM, the
            // subtraction is sunk past the helper calls below and a 32-bit half of the packet
            // pointer is spilled instead, which the verifier refuses.
            let len = core::hint::black_box((ctx.data_end() - ctx.data()) as u32);
            stats::count(Hook::XdpUplink, reason, len);
            let p = XdpPacket(&ctx);
            monitor::emit(&p, Hook::XdpUplink, reason, xdp_ifindex(&ctx), len);
            return xdp_action::XDP_DROP;
        }
    }
    let p = XdpPacket(&ctx);
    let len = core::hint::black_box(p.frame_len());
    monitor::snapshot(&p);
    let (reason, action) = datapath::service_ingress(&p);
    stats::count(Hook::XdpUplink, reason, len);
    monitor::emit(&p, Hook::XdpUplink, reason, xdp_ifindex(&ctx), len);
    xdp_action(action)
}

/// 1 when `xdp_uplink` is attached to the uplink (it runs the service pipeline there), 0 when
/// the agent attached no XDP and `tc_uplink_ingress` runs it instead. Set by the loader
/// (`EbpfLoader::set_global`) before the programs load.
#[no_mangle]
static UPLINK_XDP: u32 = 1;

#[inline(always)]
fn uplink_xdp() -> bool {
    // Volatile: the value is patched into .rodata at load time; the compiler must not fold it.
    unsafe { core::ptr::read_volatile(&UPLINK_XDP) != 0 }
}

#[inline(always)]
fn tc_service_ingress(ctx: &TcContext, hook: Hook) -> i32 {
    linearize(ctx);
    let p = TcPacket(ctx);
    let len = p.frame_len();
    monitor::snapshot(&p);
    let (reason, action) = datapath::service_ingress(&p);
    stats::count(hook, reason, len);
    monitor::emit(&p, hook, reason, tc_ifindex(ctx), len);
    tc_action(ctx, action)
}

/// tc ingress on the uplink (after XDP, and after GRO): opens tunnel packets XDP left closed,
/// and runs the service pipeline on them (and on everything when no XDP is attached).
#[classifier]
pub fn tc_uplink_ingress(ctx: TcContext) -> i32 {
    match overlay::decap_tc(&ctx) {
        overlay::Decap::NotTunnel => {}
        overlay::Decap::Decapsulated(outer_len) => {
            stats::count(Hook::TcUplinkIngress, Reason::OverlayDecap, outer_len);
            return tc_service_ingress(&ctx, Hook::TcUplinkIngress);
        }
        overlay::Decap::Drop(reason) => {
            let len = ctx.len();
            stats::count(Hook::TcUplinkIngress, reason, len);
            let p = TcPacket(&ctx);
            monitor::emit(&p, Hook::TcUplinkIngress, reason, tc_ifindex(&ctx), len);
            return TC_ACT_SHOT;
        }
    }
    if uplink_xdp() {
        tc_observe(&ctx, Hook::TcUplinkIngress)
    } else {
        tc_service_ingress(&ctx, Hook::TcUplinkIngress)
    }
}

/// tc egress on the uplink: ICMP errors the node emits about translated connections, the node's
/// own packets to services (balanced here), and the overlay's encapsulation.
#[classifier]
pub fn tc_uplink_egress(ctx: TcContext) -> i32 {
    linearize(&ctx);
    let p = TcPacket(&ctx);
    let len = p.frame_len();
    monitor::snapshot(&p);
    let (reason, action) = datapath::egress(&p, true);
    stats::count(Hook::TcUplinkEgress, reason, len);
    monitor::emit(&p, Hook::TcUplinkEgress, reason, tc_ifindex(&ctx), len);
    match action {
        Action::Pass | Action::Reroute => {}
        // A reject for the node's own packet: into the node's stack, not out to the wire.
        Action::Bounce => {
            return unsafe { bpf_redirect((*ctx.skb.skb).ifindex, BPF_F_INGRESS as u64) as i32 }
        }
        Action::Drop => return TC_ACT_SHOT,
    }
    // Packets for another node's pod CIDR are encapsulated (counted a second time as such).
    if let Some((reason, act)) = overlay::encap(&ctx) {
        stats::count(Hook::TcUplinkEgress, reason, len);
        monitor::emit(
            &p,
            Hook::TcUplinkEgress,
            reason,
            tc_ifindex(&ctx),
            ctx.len(),
        );
        return act;
    }
    if action == Action::Reroute {
        return reroute(&ctx, len);
    }
    TC_ACT_OK
}

#[inline(always)]
fn reroute(ctx: &TcContext, len: u32) -> i32 {
    let p = TcPacket(ctx);
    let routed = match parse::parse_ipv4(p.data(), p.data_end(), len as usize) {
        Ok(pkt) => route::reroute(ctx, pkt.saddr, pkt.daddr, pkt.proto),
        Err(reason) => Err(reason),
    };
    routed.unwrap_or_else(|reason| {
        stats::count(Hook::TcUplinkEgress, reason, len);
        TC_ACT_SHOT
    })
}

/// tc ingress on a pod-facing host device: connections from pods to services start here.
#[classifier]
pub fn tc_pod_ingress(ctx: TcContext) -> i32 {
    tc_service_ingress(&ctx, Hook::TcPodIngress)
}

/// tc egress on a pod-facing host device (traffic to the pod): ICMP errors the node emits
/// about translated connections (fragmentation needed, TTL exceeded).
#[classifier]
pub fn tc_pod_egress(ctx: TcContext) -> i32 {
    tc_egress(&ctx, Hook::TcPodEgress)
}

/// cgroup connect4: host sockets connecting to a service get a backend instead.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    let (reason, ret) = sock::balance(&ctx, false);
    stats::count(Hook::SockConnect4, reason, 0);
    ret
}

/// cgroup sendmsg4: unconnected host UDP sends to a service.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    let (reason, ret) = sock::balance(&ctx, true);
    stats::count(Hook::SockSendmsg4, reason, 0);
    ret
}

/// cgroup recvmsg4: datagrams from a backend appear to come from the service.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    let reason = sock::reverse(&ctx);
    stats::count(Hook::SockRecvmsg4, reason, 0);
    sock::SOCK_ALLOW
}

/// cgroup getpeername4: a balanced socket's peer is the service.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    let reason = sock::reverse(&ctx);
    stats::count(Hook::SockGetpeername4, reason, 0);
    sock::SOCK_ALLOW
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
