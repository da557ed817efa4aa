//! The overlay: VXLAN (flannel) or IPIP (calico) without tunnel devices.
//!
//! - **Encapsulation** at tc egress of the uplink ([`encap`]): whatever the node routes toward
//!   another node's pod CIDR leaves there (forwarded pod traffic, the node's own traffic,
//!   service traffic DNATed to a remote backend at tc pod ingress or in XDP). The agent's kernel
//!   routes send it there (`<cidr> via <cidr> dev <uplink> onlink src <overlay address> mtu
//!   <uplink MTU - overhead>`, a permanent neighbour entry for the gateway), so the kernel does
//!   what it does for flannel.1/tunl0: TTL, PMTU, ICMP fragmentation needed, TCP MSS. Here the
//!   route is looked up again in `OVERLAY_ROUTES_V1`, headers are added with
//!   `bpf_skb_adjust_room` (GSO packets keep being segmented correctly) and written as the
//!   kernel devices write them (`dataplane_common::overlay`), and the outer next hop comes from
//!   `OVERLAY_NEXTHOP_V1`, which caches `bpf_fib_lookup`'s answer per node for a second (or
//!   `bpf_redirect_neigh` when the neighbour is not resolved yet). The outer UDP source port
//!   comes from the packet's flow hash when the stack set one (sockets do), else from a hash
//!   of the inner 5-tuple: never the flow dissector per packet.
//! - **Decapsulation** at tc ingress of the uplink ([`decap_tc`]) or in XDP ([`decap`]), before
//!   the service pipeline, so replies of remote backends get their reverse NAT on the inner
//!   packet. tc is where it happens when the agent attaches no XDP (a veth uplink: native XDP
//!   there makes the veth peer segment every GSO packet it sends, see BENCHMARKS.md (f)): a GSO
//!   tunnel packet is opened whole, so a 64 KB TCP burst costs one decapsulation, not 45. On
//!   an uplink with native XDP the XDP path opens them first (the NIC's GRO then merges the
//!   inner TCP segments, which it cannot do for VXLAN without a tunnel socket), and tc only
//!   sees what XDP left encapsulated. Only tunnel packets addressed
//!   to this node's tunnel address, from a known node, carrying an inner packet for this node,
//!   are opened; other tunnel packets are dropped with their reason (never relayed). The inner
//!   frame gets the outer frame's MAC addresses, so the stack sees a frame sent to the uplink's
//!   own MAC (PACKET_HOST), whatever VTEP MAC the peer used.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, BPF_ADJ_ROOM_ENCAP_L2_SHIFT,
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect,
        bpf_redirect_neigh, bpf_xdp_adjust_head, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use dataplane_common::{
    overlay::{
        ecn_encap, flow_hash, inner_pseudo_sum, ipv4_header, udp_src_port, vxlan_udp_checksum,
        InnerCsum, OverlayConfig, OverlayNextHop, OverlayRoute, IPIP_OVERHEAD, IPPROTO_IPIP,
        IPPROTO_UDP, MODE_IPIP, MODE_VXLAN, NEXTHOP_TTL_NS, OVL_F_UDP_CSUM, ROUTE_F_LOCAL,
        ROUTE_F_NO_ENCAP, VXLAN_OVERHEAD,
    },
    Reason,
};

use crate::maps::{
    OVERLAY_CONFIG_V1, OVERLAY_IPID_V1, OVERLAY_NEXTHOP_V1, OVERLAY_PEERS_V1, OVERLAY_ROUTES_V1,
};

const AF_INET: u8 = 2;
const ETH_HLEN: usize = 14;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMP: u8 = 1;

/// The route of a destination address, if a pod CIDR holds it.
#[inline(always)]
fn route_of(addr: u32) -> Option<OverlayRoute> {
    OVERLAY_ROUTES_V1.get(&Key::new(32, addr)).copied()
}

#[inline(always)]
fn config() -> Option<OverlayConfig> {
    let cfg = *OVERLAY_CONFIG_V1.get(0)?;
    if cfg.mode == MODE_VXLAN || cfg.mode == MODE_IPIP {
        Some(cfg)
    } else {
        None
    }
}

#[inline(always)]
fn addr_at<const N: usize>(b: &[u8; N], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// IPv4 ID of the next outer header: a per-CPU counter started at a random value and advanced
/// by the number of segments the packet becomes (the GSO code numbers them id, id+1, ...).
#[inline(always)]
fn next_ip_id(segs: u32) -> u16 {
    match OVERLAY_IPID_V1.get_ptr_mut(0) {
        Some(slot) => unsafe {
            let mut id = *slot;
            if id == 0 {
                id = bpf_get_prandom_u32() | 1;
            }
            *slot = id.wrapping_add(segs);
            id as u16
        },
        None => unsafe { bpf_get_prandom_u32() as u16 },
    }
}

/// tc egress of the uplink: encapsulates packets for another node's pod CIDR. `None` when the
/// packet is not overlay traffic (the caller's verdict stands), else the reason to count and
/// the tc action.
#[inline(always)]
pub fn encap(ctx: &TcContext) -> Option<(Reason, i32)> {
    let cfg = config()?;
    // Untagged IPv4: the uplink carries the node's own traffic, not trunks.
    let eth: [u8; ETH_HLEN] = ctx.load(0).ok()?;
    if eth[12] != 0x08 || eth[13] != 0x00 {
        return None;
    }
    let ip: [u8; 20] = ctx.load(ETH_HLEN).ok()?;
    if ip[0] >> 4 != 4 {
        return None;
    }
    let route = route_of(addr_at(&ip, 16))?;
    if route.flags & (ROUTE_F_LOCAL | ROUTE_F_NO_ENCAP) != 0 || route.node_addr == 0 {
        return None;
    }
    Some(encap_to(ctx, &cfg, &route, &ip))
}

/// Looks up the underlay route to `route.node_addr` from the tunnel address. A non-zero
/// `tot_len` makes the kernel check it against the route's MTU (and report the MTU when it
/// does not fit).
#[inline(always)]
fn underlay_route(
    ctx: &TcContext,
    cfg: &OverlayConfig,
    route: &OverlayRoute,
    proto: u8,
    tot_len: u32,
    fib: &mut bpf_fib_lookup,
) -> i64 {
    *fib = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.__bindgen_anon_1.tot_len = if tot_len > 0xffff {
        0xffff
    } else {
        tot_len as u16
    };
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    fib.__bindgen_anon_3.ipv4_src = cfg.tunnel_addr;
    fib.__bindgen_anon_4.ipv4_dst = route.node_addr;
    unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            fib as *mut _,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    }
}

/// The underlay next hop toward a node. `resolved` false: the neighbour is not known yet (the
/// kernel resolves it through `bpf_redirect_neigh`); such a hop is not cached.
struct Hop {
    dmac: [u8; 6],
    smac: [u8; 6],
    ifindex: u32,
    mtu: u32,
    resolved: bool,
}

/// The next hop toward `route.node_addr`: from `OVERLAY_NEXTHOP_V1` while it is fresh, else
/// from the FIB (cached again). Two FIB lookups on a refresh: the first, with the largest
/// length, learns the route's MTU (the kernel answers FRAG_NEEDED with it), the second the
/// MACs (the skb variant checks only the packet itself when `tot_len` is 0; FRAG_NEEDED then
/// still carries the MACs, set before that check).
#[inline(always)]
fn next_hop(ctx: &TcContext, cfg: &OverlayConfig, route: &OverlayRoute, proto: u8) -> Option<Hop> {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(h) = unsafe { OVERLAY_NEXTHOP_V1.get(&route.node_addr) } {
        if h.expires_ns > now {
            return Some(Hop {
                dmac: h.dmac,
                smac: h.smac,
                ifindex: h.ifindex,
                mtu: h.mtu,
                resolved: true,
            });
        }
    }
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let mut rc = underlay_route(ctx, cfg, route, proto, 0xffff, &mut fib);
    let mut mtu = 0xffff;
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        mtu = unsafe { fib.__bindgen_anon_1.mtu_result } as u32;
        rc = underlay_route(ctx, cfg, route, proto, 0, &mut fib);
    }
    let resolved =
        rc == BPF_FIB_LKUP_RET_SUCCESS as i64 || rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64;
    if !resolved && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return None;
    }
    if resolved {
        let cached = OverlayNextHop {
            dmac: fib.dmac,
            smac: fib.smac,
            ifindex: fib.ifindex,
            mtu,
            _pad: 0,
            expires_ns: now + NEXTHOP_TTL_NS,
        };
        let _ = OVERLAY_NEXTHOP_V1.insert(&route.node_addr, &cached, 0);
    }
    Some(Hop {
        dmac: fib.dmac,
        smac: fib.smac,
        ifindex: fib.ifindex,
        mtu,
        resolved,
    })
}

/// The outer UDP source port's input: the skb's flow hash when the stack already has one (a
/// socket's, or the receiving NIC's), else a hash of the inner addresses, protocol and (for
/// unfragmented TCP/UDP) ports, so every packet of a flow takes the same underlay path, as
/// the kernel's `udp_flow_src_port` does, without running the flow dissector.
#[inline(always)]
fn inner_flow_hash(ctx: &TcContext, ip: &[u8; 20], ihl: usize) -> u32 {
    let h = unsafe { (*ctx.skb.skb).hash };
    if h != 0 {
        return h;
    }
    let unfragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff == 0;
    let ports = match ip[9] {
        IPPROTO_TCP | IPPROTO_UDP if unfragmented => ctx.load::<u32>(ETH_HLEN + ihl).unwrap_or(0),
        _ => 0,
    };
    flow_hash(addr_at(ip, 12), addr_at(ip, 16), ip[9], ports)
}

/// What the inner packet's checksum lets the outer UDP checksum skip (see
/// `dataplane_common::overlay::vxlan_udp_checksum`).
#[inline(always)]
fn inner_csum(ctx: &TcContext, ip: &[u8; 20], ihl: usize, tot_len: u32) -> InnerCsum {
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        return InnerCsum::None;
    }
    let l4_len = tot_len.wrapping_sub(ihl as u32) as u16;
    match ip[9] {
        IPPROTO_TCP => InnerCsum::PseudoHeader(inner_pseudo_sum(
            addr_at(ip, 12),
            addr_at(ip, 16),
            IPPROTO_TCP,
            l4_len,
        )),
        IPPROTO_UDP => match ctx.load::<u16>(ETH_HLEN + ihl + 6) {
            Ok(c) if c != 0 => InnerCsum::PseudoHeader(inner_pseudo_sum(
                addr_at(ip, 12),
                addr_at(ip, 16),
                IPPROTO_UDP,
                l4_len,
            )),
            _ => InnerCsum::None,
        },
        IPPROTO_ICMP => InnerCsum::NoPseudoHeader,
        _ => InnerCsum::None,
    }
}

/// Length of the inner IP + transport headers that every GSO segment repeats.
#[inline(always)]
fn segment_headers(ctx: &TcContext, ip: &[u8; 20], ihl: usize) -> u32 {
    match ip[9] {
        IPPROTO_TCP => match ctx.load::<u8>(ETH_HLEN + ihl + 12) {
            Ok(off) => (ihl + ((off >> 4) as usize) * 4) as u32,
            Err(_) => (ihl + 60) as u32,
        },
        IPPROTO_UDP => (ihl + 8) as u32,
        _ => ihl as u32,
    }
}

#[inline(always)]
fn encap_to(
    ctx: &TcContext,
    cfg: &OverlayConfig,
    route: &OverlayRoute,
    ip: &[u8; 20],
) -> (Reason, i32) {
    let skb = ctx.skb.skb;
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as u32;
    let df = ip[6] & 0x40 != 0;
    let (gso_size, gso_segs, ifindex) =
        unsafe { ((*skb).gso_size, (*skb).gso_segs, (*skb).ifindex) };
    let vxlan = cfg.mode == MODE_VXLAN;
    let (overhead, proto) = if vxlan {
        (VXLAN_OVERHEAD, IPPROTO_UDP)
    } else {
        (IPIP_OVERHEAD, IPPROTO_IPIP)
    };

    // The largest packet that will be on the wire: the packet, or one segment of a GSO packet.
    let gso = gso_size != 0;
    let largest = if gso {
        segment_headers(ctx, ip, ihl) + gso_size
    } else {
        tot_len
    };
    let Some(hop) = next_hop(ctx, cfg, route, proto) else {
        return (Reason::DropOverlayEncapFailed, TC_ACT_SHOT);
    };
    // Segments that would not fit with the headers added: let the kernel shrink them instead
    // of keeping their size (the routes' MTU normally makes them fit already).
    let mut fixed_gso = true;
    if largest + overhead > hop.mtu {
        if !gso {
            return (Reason::DropOverlayTooBig, TC_ACT_SHOT);
        }
        fixed_gso = false;
    }
    let resolved = hop.resolved;

    // Everything that needs the inner headers, before they move.
    let hash = if vxlan {
        inner_flow_hash(ctx, ip, ihl)
    } else {
        0
    };
    let csum_kind = if vxlan && !gso && cfg.flags & OVL_F_UDP_CSUM != 0 {
        inner_csum(ctx, ip, ihl, tot_len)
    } else {
        InnerCsum::None
    };
    let id = next_ip_id(if gso_segs > 1 { gso_segs } else { 1 });

    let mut flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64;
    if vxlan {
        flags |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
            | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
            | ((ETH_HLEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);
    }
    if fixed_gso {
        flags |= BPF_F_ADJ_ROOM_FIXED_GSO as u64;
    }
    if ctx
        .adjust_room(overhead as i32, BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return (Reason::DropOverlayEncapFailed, TC_ACT_SHOT);
    }
    let outer_len = ctx.len() - ETH_HLEN as u32;
    let (dmac, smac) = if resolved {
        (hop.dmac, hop.smac)
    } else {
        ([0u8; 6], [0u8; 6])
    };

    let stored = if vxlan {
        let mut h = [0u8; 64];
        h[0..6].copy_from_slice(&dmac);
        h[6..12].copy_from_slice(&smac);
        h[12] = 0x08;
        let outer_ip = ipv4_header(
            ecn_encap(ip[1]),
            outer_len as u16,
            id,
            false,
            cfg.vxlan_ttl,
            IPPROTO_UDP,
            cfg.tunnel_addr,
            route.node_addr,
        );
        h[14..34].copy_from_slice(&outer_ip);
        let udp_len = (outer_len - 20) as u16;
        let sport = udp_src_port(hash, cfg.src_port_min, cfg.src_port_max);
        h[34..36].copy_from_slice(&sport.to_be_bytes());
        h[36..38].copy_from_slice(&cfg.vxlan_port.to_ne_bytes());
        h[38..40].copy_from_slice(&udp_len.to_be_bytes());
        h[42] = 0x08;
        h[46..49].copy_from_slice(&[(cfg.vni >> 16) as u8, (cfg.vni >> 8) as u8, cfg.vni as u8]);
        h[50..56].copy_from_slice(&route.vtep_mac);
        h[56..62].copy_from_slice(&cfg.vtep_mac);
        h[62] = 0x08;
        let mut covered = [0u8; 30];
        covered.copy_from_slice(&h[34..64]);
        let c = vxlan_udp_checksum(
            cfg.tunnel_addr,
            route.node_addr,
            udp_len,
            &covered,
            csum_kind,
        );
        h[40..42].copy_from_slice(&c.to_ne_bytes());
        ctx.store(0, &h, 0)
    } else {
        let mut h = [0u8; 34];
        h[0..6].copy_from_slice(&dmac);
        h[6..12].copy_from_slice(&smac);
        h[12] = 0x08;
        let outer_ip = ipv4_header(
            ecn_encap(ip[1]),
            outer_len as u16,
            id,
            df,
            ip[8],
            IPPROTO_IPIP,
            cfg.tunnel_addr,
            route.node_addr,
        );
        h[14..34].copy_from_slice(&outer_ip);
        ctx.store(0, &h, 0)
    };
    if stored.is_err() {
        return (Reason::DropOverlayEncapFailed, TC_ACT_SHOT);
    }

    let action = if !resolved {
        // The kernel routes the outer packet itself (replacing the inner route the skb still
        // carries: a packet queued for resolution would otherwise leave with that route's
        // neighbour's MAC), resolves the next hop and fills in the outer Ethernet addresses.
        unsafe { bpf_redirect_neigh(hop.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
    } else if hop.ifindex == ifindex {
        TC_ACT_OK
    } else {
        unsafe { bpf_redirect(hop.ifindex, 0) as i32 }
    };
    (Reason::OverlayEncap, action)
}

/// What XDP does with a received frame before the service pipeline.
pub enum Decap {
    /// Not a tunnel packet of the configured mode.
    NotTunnel,
    /// Opened: the frame is now the inner packet. Carries the outer frame's length.
    Decapsulated(u32),
    /// A tunnel packet this node does not accept.
    Drop(Reason),
}

#[inline(always)]
fn xdp_load<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    let rc =
        unsafe { bpf_xdp_load_bytes(ctx.ctx, offset as u32, buf.as_mut_ptr().cast(), N as u32) };
    if rc == 0 {
        Some(buf)
    } else {
        None
    }
}

#[inline(always)]
fn xdp_store<const N: usize>(ctx: &XdpContext, offset: usize, bytes: &[u8; N]) -> bool {
    let mut buf = *bytes;
    unsafe { bpf_xdp_store_bytes(ctx.ctx, offset as u32, buf.as_mut_ptr().cast(), N as u32) == 0 }
}

/// XDP on the uplink: opens tunnel packets for this node (see the module documentation).
#[inline(always)]
pub fn decap(ctx: &XdpContext) -> Decap {
    let Some(cfg) = config() else {
        return Decap::NotTunnel;
    };
    // Opaque to LLVM, like packet.rs: keeps pkt_end arithmetic away from the verifier.
    let frame_len = core::hint::black_box((ctx.data_end() - ctx.data()) as u32);
    let Some(outer) = xdp_load::<34>(ctx, 0) else {
        return Decap::NotTunnel;
    };
    if outer[12] != 0x08 || outer[13] != 0x00 || outer[14] >> 4 != 4 {
        return Decap::NotTunnel;
    }
    let vxlan = cfg.mode == MODE_VXLAN;
    let proto = outer[23];
    if vxlan {
        if proto != IPPROTO_UDP {
            return Decap::NotTunnel;
        }
        let ihl = ((outer[14] & 0x0f) as usize) * 4;
        let Some(ports) = xdp_load::<4>(ctx, ETH_HLEN + ihl) else {
            return Decap::NotTunnel;
        };
        if u16::from_ne_bytes([ports[2], ports[3]]) != cfg.vxlan_port {
            return Decap::NotTunnel;
        }
    } else if proto != IPPROTO_IPIP {
        return Decap::NotTunnel;
    }

    // A tunnel packet: opened only if it is for this node, from a node we know.
    if addr_at(&outer, 30) != cfg.tunnel_addr {
        return Decap::Drop(Reason::DropOverlayNotLocal);
    }
    if unsafe { OVERLAY_PEERS_V1.get(addr_at(&outer, 26)) }.is_none() {
        return Decap::Drop(Reason::DropOverlayUnknownPeer);
    }
    let frag = u16::from_be_bytes([outer[20], outer[21]]);
    if outer[14] != 0x45 || frag & 0x3fff != 0 {
        return Decap::Drop(Reason::DropOverlayMalformed);
    }
    let (inner_off, inner_saddr, inner_daddr) = if vxlan {
        // UDP (8) + VXLAN (8) + inner Ethernet (14) + inner IPv4 (20).
        let Some(v) = xdp_load::<50>(ctx, 34) else {
            return Decap::Drop(Reason::DropOverlayMalformed);
        };
        if let Err(reason) = check_vxlan(&cfg, &v) {
            return Decap::Drop(reason);
        }
        (34 + 16, addr_at(&v, 42), addr_at(&v, 46))
    } else {
        let Some(v) = xdp_load::<20>(ctx, 34) else {
            return Decap::Drop(Reason::DropOverlayMalformed);
        };
        if v[0] >> 4 != 4 {
            return Decap::Drop(Reason::DropOverlayMalformed);
        }
        (34 - ETH_HLEN, addr_at(&v, 12), addr_at(&v, 16))
    };
    if let Err(reason) = check_inner(addr_at(&outer, 26), inner_saddr, inner_daddr) {
        return Decap::Drop(reason);
    }

    // The inner frame takes the outer MAC addresses: sent to this uplink's own MAC.
    let mut eth = [0u8; ETH_HLEN];
    eth[..12].copy_from_slice(&outer[..12]);
    eth[12] = 0x08;
    if !xdp_store(ctx, inner_off, &eth) {
        return Decap::Drop(Reason::DropOverlayMalformed);
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, inner_off as i32) } != 0 {
        return Decap::Drop(Reason::DropOverlayMalformed);
    }
    Decap::Decapsulated(frame_len)
}

/// The VXLAN header and inner Ethernet header (`v`: from the UDP header on): the I flag, an
/// inner IPv4 frame, then the VNI.
#[inline(always)]
fn check_vxlan(cfg: &OverlayConfig, v: &[u8; 50]) -> Result<(), Reason> {
    if v[8] & 0x08 == 0 || v[28] != 0x08 || v[29] != 0x00 || v[30] >> 4 != 4 {
        return Err(Reason::DropOverlayMalformed);
    }
    let vni = ((v[12] as u32) << 16) | ((v[13] as u32) << 8) | v[14] as u32;
    if vni != cfg.vni {
        return Err(Reason::DropOverlayWrongVni);
    }
    Ok(())
}

/// The inner packet of a tunnel packet from node `outer_saddr`: for a pod (or address) of this
/// node, and from that node (its own address, or an address in its pod CIDRs: one LPM lookup,
/// the same trie that routes toward it). Anyone on the underlay can forge a known node's outer
/// address; this keeps them from injecting packets "from" any address.
#[inline(always)]
fn check_inner(outer_saddr: u32, inner_saddr: u32, inner_daddr: u32) -> Result<(), Reason> {
    match route_of(inner_daddr) {
        Some(r) if r.flags & ROUTE_F_LOCAL != 0 => {}
        _ => return Err(Reason::DropOverlayNotLocal),
    }
    if inner_saddr == outer_saddr {
        return Ok(());
    }
    match route_of(inner_saddr) {
        Some(r) if r.flags & ROUTE_F_LOCAL == 0 && r.node_addr == outer_saddr => Ok(()),
        _ => Err(Reason::DropOverlaySpoofedSource),
    }
}

/// [`decap_tc`]'s outer checks (the same as [`decap`]'s), on the first 34 bytes of the frame:
/// `None` if it is not a tunnel packet of the configured mode, else whether this node accepts it.
#[inline(always)]
fn accept_outer(
    cfg: &OverlayConfig,
    outer: &[u8; 34],
    udp_dport: Option<u16>,
) -> Option<Result<(), Reason>> {
    if outer[12] != 0x08 || outer[13] != 0x00 || outer[14] >> 4 != 4 {
        return None;
    }
    let proto = outer[23];
    if cfg.mode == MODE_VXLAN {
        if proto != IPPROTO_UDP || udp_dport? != cfg.vxlan_port {
            return None;
        }
    } else if proto != IPPROTO_IPIP {
        return None;
    }
    if addr_at(outer, 30) != cfg.tunnel_addr {
        return Some(Err(Reason::DropOverlayNotLocal));
    }
    if unsafe { OVERLAY_PEERS_V1.get(addr_at(outer, 26)) }.is_none() {
        return Some(Err(Reason::DropOverlayUnknownPeer));
    }
    let frag = u16::from_be_bytes([outer[20], outer[21]]);
    if outer[14] != 0x45 || frag & 0x3fff != 0 {
        return Some(Err(Reason::DropOverlayMalformed));
    }
    Some(Ok(()))
}

/// tc ingress of the uplink: opens tunnel packets for this node that XDP did not open (see the
/// module documentation), GSO packets included. The frame keeps its outer Ethernet header (sent
/// to this uplink's MAC) in front of the inner IPv4 header.
#[inline(always)]
pub fn decap_tc(ctx: &TcContext) -> Decap {
    let Some(cfg) = config() else {
        return Decap::NotTunnel;
    };
    let Ok(outer) = ctx.load::<[u8; 34]>(0) else {
        return Decap::NotTunnel;
    };
    let vxlan = cfg.mode == MODE_VXLAN;
    // Outer IHL is checked to be 5 by accept_outer before anything relies on it.
    let dport = if vxlan && outer[23] == IPPROTO_UDP {
        match ctx.load::<[u8; 4]>(34) {
            Ok(p) => Some(u16::from_ne_bytes([p[2], p[3]])),
            Err(_) => return Decap::NotTunnel,
        }
    } else {
        None
    };
    match accept_outer(&cfg, &outer, dport) {
        None => return Decap::NotTunnel,
        Some(Err(reason)) => return Decap::Drop(reason),
        Some(Ok(())) => {}
    }
    let outer_tot = u16::from_be_bytes([outer[16], outer[17]]) as u32;
    let (overhead, inner_tot, inner_saddr, inner_daddr) = if vxlan {
        let Ok(v) = ctx.load::<[u8; 50]>(34) else {
            return Decap::Drop(Reason::DropOverlayMalformed);
        };
        if let Err(reason) = check_vxlan(&cfg, &v) {
            return Decap::Drop(reason);
        }
        (
            VXLAN_OVERHEAD,
            u16::from_be_bytes([v[32], v[33]]) as u32,
            addr_at(&v, 42),
            addr_at(&v, 46),
        )
    } else {
        let Ok(v) = ctx.load::<[u8; 20]>(34) else {
            return Decap::Drop(Reason::DropOverlayMalformed);
        };
        if v[0] >> 4 != 4 {
            return Decap::Drop(Reason::DropOverlayMalformed);
        }
        (
            IPIP_OVERHEAD,
            u16::from_be_bytes([v[2], v[3]]) as u32,
            addr_at(&v, 12),
            addr_at(&v, 16),
        )
    };
    // One inner packet exactly filling the outer one. A GSO packet built by a sender's
    // encapsulation (or by GRO of a tunnel the kernel knows, IPIP) is one inner TCP burst behind
    // one outer header, both lengths covering the whole burst; a UDP GRO train of tunnel packets
    // (rx-udp-gro-forwarding) is many, and popping the first header would corrupt it.
    if inner_tot + overhead != outer_tot || ctx.len() < ETH_HLEN as u32 + outer_tot {
        return Decap::Drop(Reason::DropOverlayMalformed);
    }
    if let Err(reason) = check_inner(addr_at(&outer, 26), inner_saddr, inner_daddr) {
        return Decap::Drop(reason);
    }
    let frame_len = ctx.len();
    // FIXED_GSO: gso_size already is the inner MSS (without it the kernel would raise it by the
    // header length popped). The kernel keeps skb->encapsulation and the tunnel GSO type on a
    // shrink (v6.18 has no BPF_F_ADJ_ROOM_DECAP_L4_UDP); segmentation of the result is driven
    // by its IP/TCP headers, so a decapsulated burst that must be segmented (a pod device
    // without TSO) still comes out right: tests/overlay.rs checks it. Without
    // BPF_F_ADJ_ROOM_NO_CSUM_RESET the kernel drops a CHECKSUM_UNNECESSARY verdict, which was
    // about the outer UDP checksum, not the inner packet's.
    if ctx
        .adjust_room(
            -(overhead as i32),
            BPF_ADJ_ROOM_MAC,
            BPF_F_ADJ_ROOM_FIXED_GSO as u64,
        )
        .is_err()
    {
        return Decap::Drop(Reason::DropOverlayMalformed);
    }
    Decap::Decapsulated(frame_len)
}
