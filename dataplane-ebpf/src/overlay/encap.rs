//! VXLAN/IPIP encapsulation at tc egress of the uplink (see the module documentation).

use core::mem::{offset_of, size_of};

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, BPF_ADJ_ROOM_ENCAP_L2_SHIFT,
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect,
        bpf_redirect_neigh, bpf_xdp_adjust_head,
    },
};
use dataplane_common::{
    ip::{AF_INET, IPPROTO_ICMP, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP},
    overlay::{
        ecn_encap, flow_hash, inner_pseudo_sum, ipv4_header, udp_src_port, vxlan_udp_checksum,
        InnerCsum, OverlayConfig, OverlayNextHop, OverlayRoute, IPIP_OVERHEAD, MODE_VXLAN,
        NEXTHOP_TTL_NS, OVL_F_UDP_CSUM, ROUTE_F_LOCAL, ROUTE_F_NO_ENCAP, VXLAN_OVERHEAD,
    },
    Reason,
};

use super::{config, config_ref, route_of};
use crate::{
    maps::{OVERLAY_IPID_V1, OVERLAY_NEXTHOP_V1},
    net::{
        flow::Addr,
        hdr::{
            bytes_of, from_bytes, tcp_hdr_len, EthHdr, IpipEncap, Ipv4Hdr, L4Ports, TcpHdr, UdpHdr,
            VxlanEncap, VxlanHdr, VxlanTunnel, ETH_HLEN, UDP_CHECK_OFF,
        },
        Packet, TcPacket, XdpPacket,
    },
    stats::Recorder,
    verdict::{Action, Verdict},
};

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

/// The overlay stage after the uplink's egress pipeline: a packet for another node's pod CIDR
/// is encapsulated, and `prev` (the service verdict) is counted as a stage of its own; any other
/// packet keeps `prev` as the hook's verdict.
#[inline(always)]
pub fn encap(p: &TcPacket, prev: Verdict, rec: &Recorder) -> Verdict {
    let Some(cfg) = config() else {
        return prev;
    };
    // Untagged IPv4: the uplink carries the node's own traffic, not trunks. Read in place
    // (the pipeline made the headers linear), not copied by a helper.
    let Some(eth) = p.read::<EthHdr>(0) else {
        return prev;
    };
    if !eth.is_ipv4() {
        return prev;
    }
    let Some(ip) = p.read::<Ipv4Hdr>(ETH_HLEN) else {
        return prev;
    };
    if ip.version() != 4 {
        return prev;
    }
    let Some(route) = route_of(ip.daddr).and_then(remote) else {
        return prev;
    };
    rec.record(p, prev);
    Verdict::or_drop(encap_to(p, &cfg, &route, &ip))
}
/// Looks up the underlay route to `route.node_addr` from the tunnel address. A non-zero
/// `tot_len` makes the kernel check it against the route's MTU (and report the MTU when it
/// does not fit).
#[inline(always)]
fn underlay_route(
    p: &TcPacket,
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
    fib.ifindex = p.ifindex();
    fib.__bindgen_anon_3.ipv4_src = cfg.tunnel_addr;
    fib.__bindgen_anon_4.ipv4_dst = route.node_addr;
    unsafe {
        fib_lookup(
            p.0.skb.skb as *mut _,
            fib as *mut _,
            size_of::<bpf_fib_lookup>() as i32,
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

/// The cached next hop toward node `node_addr`, while it is fresh at `now`.
#[inline(always)]
fn cached_hop(node_addr: u32, now: u64) -> Option<OverlayNextHop> {
    let h = *unsafe { OVERLAY_NEXTHOP_V1.get(&node_addr) }?;
    (h.expires_ns > now).then_some(h)
}

/// The next hop toward `route.node_addr`: from `OVERLAY_NEXTHOP_V1` while it is fresh, else
/// from the FIB (cached again). Two FIB lookups on a refresh: the first, with the largest
/// length, learns the route's MTU (the kernel answers FRAG_NEEDED with it), the second the
/// MACs (the skb variant checks only the packet itself when `tot_len` is 0; FRAG_NEEDED then
/// still carries the MACs, set before that check).
#[inline(always)]
fn next_hop(p: &TcPacket, cfg: &OverlayConfig, route: &OverlayRoute, proto: u8) -> Option<Hop> {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(h) = cached_hop(route.node_addr, now) {
        return Some(Hop {
            dmac: h.dmac,
            smac: h.smac,
            ifindex: h.ifindex,
            mtu: h.mtu,
            resolved: true,
        });
    }
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let mut rc = underlay_route(p, cfg, route, proto, 0xffff, &mut fib);
    let mut mtu = 0xffff;
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        mtu = unsafe { fib.__bindgen_anon_1.mtu_result } as u32;
        rc = underlay_route(p, cfg, route, proto, 0, &mut fib);
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
/// socket's, or the receiving NIC's), else [`tuple_hash`].
#[inline(always)]
fn inner_flow_hash(p: &TcPacket, ip: &Ipv4Hdr) -> u32 {
    let h = unsafe { (*p.0.skb.skb).hash };
    if h != 0 {
        return h;
    }
    tuple_hash(p, ip)
}

/// A hash of the inner addresses, protocol and (for unfragmented TCP/UDP) ports, so every
/// packet of a flow takes the same underlay path, as the kernel's `udp_flow_src_port` does,
/// without running the flow dissector.
#[inline(always)]
fn tuple_hash<P: Packet>(p: &P, ip: &Ipv4Hdr) -> u32 {
    // Both ports as one word, network order: what the hash mixes.
    let ports = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP if !ip.is_fragment() => p
            .read::<L4Ports>(ETH_HLEN + ip.hdr_len())
            .map_or(0, |ports| ports.word()),
        _ => 0,
    };
    flow_hash(ip.saddr, ip.daddr, ip.proto, ports)
}

/// What the inner packet's checksum lets the outer UDP checksum skip (see
/// `dataplane_common::overlay::vxlan_udp_checksum`).
#[inline(always)]
fn inner_csum<P: Packet>(p: &P, ip: &Ipv4Hdr) -> InnerCsum {
    if ip.is_fragment() {
        return InnerCsum::None;
    }
    let l4_len = (ip.tot_len() as u32).wrapping_sub(ip.hdr_len() as u32) as u16;
    let pseudo = InnerCsum::PseudoHeader(inner_pseudo_sum(ip.saddr, ip.daddr, ip.proto, l4_len));
    match ip.proto {
        IPPROTO_TCP => pseudo,
        IPPROTO_UDP => match p.read::<u16>(ETH_HLEN + ip.hdr_len() + UDP_CHECK_OFF) {
            Some(c) if c != 0 => pseudo,
            _ => InnerCsum::None,
        },
        IPPROTO_ICMP => InnerCsum::NoPseudoHeader,
        _ => InnerCsum::None,
    }
}

/// Length of the inner IP + transport headers that every GSO segment repeats.
#[inline(always)]
fn segment_headers(p: &TcPacket, ip: &Ipv4Hdr) -> u32 {
    let ihl = ip.hdr_len();
    match ip.proto {
        IPPROTO_TCP => match p.read::<u16>(ETH_HLEN + ihl + offset_of!(TcpHdr, off_flags)) {
            Some(off_flags) => (ihl + tcp_hdr_len(off_flags)) as u32,
            None => (ihl + 60) as u32,
        },
        IPPROTO_UDP => (ihl + size_of::<UdpHdr>()) as u32,
        _ => ihl as u32,
    }
}

#[inline(always)]
fn encap_to(
    p: &TcPacket,
    cfg: &OverlayConfig,
    route: &OverlayRoute,
    ip: &Ipv4Hdr,
) -> Result<Verdict, Reason> {
    let skb = p.0.skb.skb;
    let tot_len = ip.tot_len() as u32;
    let (gso_size, gso_segs, ifindex) =
        unsafe { ((*skb).gso_size, (*skb).gso_segs, (*skb).ifindex) };
    let vxlan = cfg.mode == MODE_VXLAN;
    let (overhead, proto) = (
        overhead(cfg),
        if vxlan { IPPROTO_UDP } else { IPPROTO_IPIP },
    );

    // The largest packet that will be on the wire: the packet, or one segment of a GSO packet.
    let gso = gso_size != 0;
    let largest = if gso {
        segment_headers(p, ip) + gso_size
    } else {
        tot_len
    };
    let hop = next_hop(p, cfg, route, proto).ok_or(Reason::DropOverlayEncapFailed)?;
    // Segments that would not fit with the headers added: let the kernel shrink them instead
    // of keeping their size (the routes' MTU normally makes them fit already).
    let mut fixed_gso = true;
    if largest + overhead > hop.mtu {
        if !gso {
            return Err(Reason::DropOverlayTooBig);
        }
        fixed_gso = false;
    }
    let resolved = hop.resolved;

    // Everything that needs the inner headers, before they move.
    let hash = if vxlan { inner_flow_hash(p, ip) } else { 0 };
    let csum_kind = if vxlan && !gso && cfg.flags & OVL_F_UDP_CSUM != 0 {
        inner_csum(p, ip)
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
    p.0.adjust_room(overhead as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| Reason::DropOverlayEncapFailed)?;
    let eth = if resolved {
        EthHdr::ipv4(hop.dmac, hop.smac)
    } else {
        EthHdr::ipv4([0; 6], [0; 6])
    };
    let outer = Outer {
        eth,
        id,
        hash,
        csum_kind,
    };
    write_outer(p, cfg, route, ip, &outer)?;

    if !resolved {
        // The kernel routes the outer packet itself (replacing the inner route the skb still
        // carries: a packet queued for resolution would otherwise leave with that route's
        // neighbour's MAC), resolves the next hop and fills in the outer Ethernet addresses.
        unsafe { bpf_redirect_neigh(hop.ifindex, core::ptr::null_mut(), 0, 0) };
        return Ok(Verdict::new(Reason::OverlayEncap, Action::Redirect));
    }
    if hop.ifindex == ifindex {
        return Ok(Verdict::pass(Reason::OverlayEncap));
    }
    unsafe { bpf_redirect(hop.ifindex, 0) };
    Ok(Verdict::new(Reason::OverlayEncap, Action::Redirect))
}

/// What the outer headers carry besides the route: the outer Ethernet header, the outer IPv4
/// ID, the flow hash for the UDP source port and what the outer UDP checksum may skip.
struct Outer {
    eth: EthHdr,
    id: u16,
    hash: u32,
    csum_kind: InnerCsum,
}

/// Writes the outer headers (as the kernel devices write them, `dataplane_common::overlay`) in
/// front of the inner packet whose IPv4 header was `ip`, into the room the caller made.
#[inline(always)]
fn write_outer<P: Packet>(
    p: &P,
    cfg: &OverlayConfig,
    route: &OverlayRoute,
    ip: &Ipv4Hdr,
    o: &Outer,
) -> Result<(), Reason> {
    let outer_len = p.frame_len() - ETH_HLEN as u32;
    let stored = if cfg.mode == MODE_VXLAN {
        let outer_ip = ipv4_header(
            ecn_encap(ip.tos),
            outer_len as u16,
            o.id,
            false,
            cfg.vxlan_ttl,
            IPPROTO_UDP,
            cfg.tunnel_addr,
            route.node_addr,
        );
        let udp_len = (outer_len - size_of::<Ipv4Hdr>() as u32) as u16;
        let sport = udp_src_port(o.hash, cfg.src_port_min, cfg.src_port_max);
        let mut tun = VxlanTunnel {
            udp: UdpHdr {
                source: sport.to_be(),
                dest: cfg.vxlan_port,
                len: udp_len.to_be(),
                check: 0,
            },
            vxlan: VxlanHdr::new(cfg.vni),
            eth: EthHdr::ipv4(route.vtep_mac, cfg.vtep_mac),
        };
        tun.udp.check = vxlan_udp_checksum(
            cfg.tunnel_addr,
            route.node_addr,
            udp_len,
            bytes_of(&tun),
            o.csum_kind,
        );
        let h = VxlanEncap {
            eth: o.eth,
            ip: from_bytes(&outer_ip),
            tun,
        };
        p.write_front(&h)
    } else {
        let outer_ip = ipv4_header(
            ecn_encap(ip.tos),
            outer_len as u16,
            o.id,
            ip.dont_fragment(),
            ip.ttl,
            IPPROTO_IPIP,
            cfg.tunnel_addr,
            route.node_addr,
        );
        let h = IpipEncap {
            eth: o.eth,
            ip: from_bytes(&outer_ip),
        };
        p.write_front(&h)
    };
    stored.map_err(|_| Reason::DropOverlayEncapFailed)
}

/// A route that leads through the tunnel: another node's pod CIDR, with the node's address.
#[inline(always)]
fn remote(route: OverlayRoute) -> Option<OverlayRoute> {
    let direct = route.flags & (ROUTE_F_LOCAL | ROUTE_F_NO_ENCAP) != 0 || route.node_addr == 0;
    (!direct).then_some(route)
}

/// Bytes the encapsulation adds in front of the inner IPv4 packet.
#[inline(always)]
fn overhead(cfg: &OverlayConfig) -> u32 {
    if cfg.mode == MODE_VXLAN {
        VXLAN_OVERHEAD
    } else {
        IPIP_OVERHEAD
    }
}

/// The XDP fast path's tunnel toward a translated packet's pod on another node: the overlay's
/// settings, the route and the cached next hop back out of the uplink.
pub struct FastTunnel {
    cfg: &'static OverlayConfig,
    route: OverlayRoute,
    hop: OverlayNextHop,
}

/// Where the XDP fast path may send a translated packet (inner IPv4 header `ip`, untagged).
pub enum FastHop {
    /// Not into the overlay: routed on the underlay as it is.
    Direct,
    /// Encapsulated through this tunnel.
    Tunnel(FastTunnel),
    /// Into the overlay, but not from here: the kernel and tc egress (a local or unencapsulated
    /// pod CIDR, no fresh next hop out of the uplink, too big for the tunnel's route).
    Kernel,
}

/// One route lookup for the fast path's decision. The next hop only comes from the cache tc
/// egress keeps (`OVERLAY_NEXTHOP_V1`): a missing or stale entry sends the packet the
/// kernel's way, whose encapsulation refreshes it, so at most one packet per node and second
/// leaves the fast path for it (and the FIB query's 64 bytes stay off this program's stack,
/// which the verifier caps at 512).
#[inline(always)]
pub fn fast_hop(ifindex: u32, daddr: Addr, tot_len: u16) -> FastHop {
    let Some(cfg) = config_ref() else {
        return FastHop::Direct;
    };
    let Some(route) = route_of(daddr) else {
        return FastHop::Direct;
    };
    let Some(route) = remote(route) else {
        return FastHop::Kernel;
    };
    let Some(hop) = cached_hop(route.node_addr, unsafe { bpf_ktime_get_ns() }) else {
        return FastHop::Kernel;
    };
    if hop.ifindex != ifindex || tot_len as u32 + overhead(cfg) > hop.mtu {
        return FastHop::Kernel;
    }
    FastHop::Tunnel(FastTunnel { cfg, route, hop })
}

/// Encapsulates the translated packet (its IPv4 header at `ETH_HLEN`, read again: the egress
/// rewrite changed it) for XDP_TX through `t`.
#[inline(always)]
pub fn fast_encap(p: &XdpPacket, t: &FastTunnel) -> Result<(), Reason> {
    let ip = p
        .read::<Ipv4Hdr>(ETH_HLEN)
        .ok_or(Reason::DropOverlayEncapFailed)?;
    let vxlan = t.cfg.mode == MODE_VXLAN;
    // Everything that reads the inner headers, before they move.
    let hash = if vxlan { tuple_hash(p, &ip) } else { 0 };
    let csum_kind = if vxlan && t.cfg.flags & OVL_F_UDP_CSUM != 0 {
        inner_csum(p, &ip)
    } else {
        InnerCsum::None
    };
    if unsafe { bpf_xdp_adjust_head(p.0.ctx, -(overhead(t.cfg) as i32)) } != 0 {
        return Err(Reason::DropOverlayEncapFailed);
    }
    let outer = Outer {
        eth: EthHdr::ipv4(t.hop.dmac, t.hop.smac),
        id: next_ip_id(1),
        hash,
        csum_kind,
    };
    write_outer(p, t.cfg, &t.route, &ip, &outer)
}
