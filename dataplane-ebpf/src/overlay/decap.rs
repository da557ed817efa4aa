//! VXLAN/IPIP decapsulation on the uplink: in XDP ([`decap_xdp`]) or at tc ingress
//! ([`decap_tc`]), with the same checks (see the module documentation).

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO},
    helpers::bpf_xdp_adjust_head,
};
use dataplane_common::{
    ip::{IPPROTO_IPIP, IPPROTO_UDP},
    overlay::{OverlayConfig, IPIP_OVERHEAD, MODE_VXLAN, VXLAN_OVERHEAD},
    Reason,
};

use core::mem::size_of;

use super::{check_inner, config, known_peer};
use crate::{
    net::{
        flow::Addr,
        hdr::{
            EthHdr, Ipv4Hdr, L4Ports, UdpHdr, VxlanHdr, ETH_HLEN, IPV4_HLEN, IPV4_VIHL_NO_OPTIONS,
        },
        Packet, TcPacket, XdpPacket,
    },
    stats::Recorder,
    verdict::{Step, Verdict},
};

/// A tunnel packet this node accepts.
struct Tunnel {
    /// The outer Ethernet header (its MACs go on the inner frame).
    eth: EthHdr,
    /// Bytes in front of the inner IPv4 header that the decapsulation removes (the outer IPv4
    /// header, and for VXLAN the UDP, VXLAN and inner Ethernet headers).
    overhead: u32,
    /// Total lengths of the outer and the inner IPv4 packet.
    outer_tot: u32,
    inner_tot: u32,
}

/// Whether the frame is a tunnel packet of the configured mode (`Ok(None)`: no), and if so
/// whether this node accepts it: for its tunnel address, from a known node, well-formed, the
/// inner packet for this node and from that node (`Err`: the reason it does not). Headers are
/// read in place where they are linear (they are, but for odd skbs).
#[inline(always)]
fn inspect<P: Packet>(p: &P, cfg: &OverlayConfig) -> Result<Option<Tunnel>, Reason> {
    let Some(eth) = p.read::<EthHdr>(0) else {
        return Ok(None);
    };
    if !eth.is_ipv4() {
        return Ok(None);
    }
    let Some(outer) = p.read::<Ipv4Hdr>(ETH_HLEN) else {
        return Ok(None);
    };
    if outer.version() != 4 {
        return Ok(None);
    }
    let vxlan = cfg.mode == MODE_VXLAN;
    if vxlan {
        if outer.proto != IPPROTO_UDP {
            return Ok(None);
        }
        let Some(ports) = p.read::<L4Ports>(ETH_HLEN + outer.hdr_len()) else {
            return Ok(None);
        };
        if ports.dest != cfg.vxlan_port {
            return Ok(None);
        }
    } else if outer.proto != IPPROTO_IPIP {
        return Ok(None);
    }

    // A tunnel packet: opened only if it is for this node, from a node we know.
    if outer.daddr != cfg.tunnel_addr {
        return Err(Reason::DropOverlayNotLocal);
    }
    opened(p, cfg, &eth, &outer).map_err(|reason| refused(outer.saddr, reason))
}

/// The reason a tunnel packet from `outer_saddr` is refused: an unknown node first, as it is
/// checked first in order. (Looked up here, on the refusal, because an accepted packet's inner
/// source already proved its node: see [`check_inner`].)
#[inline(always)]
fn refused(outer_saddr: Addr, reason: Reason) -> Reason {
    if reason != Reason::DropOverlayUnknownPeer && !known_peer(outer_saddr) {
        return Reason::DropOverlayUnknownPeer;
    }
    reason
}

/// The checks of a tunnel packet for this node: well-formed, the inner packet for a local
/// address and from the sending node.
#[inline(always)]
fn opened<P: Packet>(
    p: &P,
    cfg: &OverlayConfig,
    eth: &EthHdr,
    outer: &Ipv4Hdr,
) -> Result<Option<Tunnel>, Reason> {
    if outer.vihl != IPV4_VIHL_NO_OPTIONS || outer.is_fragment() {
        return Err(Reason::DropOverlayMalformed);
    }
    let inner_at = ETH_HLEN + IPV4_HLEN;
    let (overhead, inner) = if cfg.mode == MODE_VXLAN {
        // UDP (its ports were read above), VXLAN, the inner Ethernet and IPv4 headers.
        let vx_at = inner_at + size_of::<UdpHdr>();
        let eth_at = vx_at + size_of::<VxlanHdr>();
        let ip_at = eth_at + ETH_HLEN;
        let (Some(vx), Some(inner_eth), Some(ip)) = (
            p.read::<VxlanHdr>(vx_at),
            p.read::<EthHdr>(eth_at),
            p.read::<Ipv4Hdr>(ip_at),
        ) else {
            return Err(Reason::DropOverlayMalformed);
        };
        if !vx.vni_valid() || !inner_eth.is_ipv4() || ip.version() != 4 {
            return Err(Reason::DropOverlayMalformed);
        }
        if vx.vni() != cfg.vni {
            return Err(Reason::DropOverlayWrongVni);
        }
        (VXLAN_OVERHEAD, ip)
    } else {
        let ip = p
            .read::<Ipv4Hdr>(inner_at)
            .ok_or(Reason::DropOverlayMalformed)?;
        if ip.version() != 4 {
            return Err(Reason::DropOverlayMalformed);
        }
        (IPIP_OVERHEAD, ip)
    };
    check_inner(outer.saddr, inner.saddr, inner.daddr)?;
    Ok(Some(Tunnel {
        eth: *eth,
        overhead,
        outer_tot: outer.tot_len() as u32,
        inner_tot: inner.tot_len() as u32,
    }))
}

/// XDP on the uplink: opens tunnel packets for this node; the frame is then the inner packet
/// (counted `overlay-decap` here, its own verdict after).
#[inline(always)]
pub fn decap_xdp(p: &XdpPacket, rec: &Recorder) -> Step {
    let Some(cfg) = config() else {
        return Ok(());
    };
    let t = match inspect(p, &cfg) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(()),
        Err(reason) => return Err(Verdict::drop(reason)),
    };
    // The inner frame takes the outer MAC addresses: sent to this uplink's own MAC. Its
    // Ethernet header goes right in front of the inner IPv4 header, where the head moves to.
    let inner_off = t.overhead as usize;
    let eth = EthHdr::ipv4(t.eth.dst, t.eth.src);
    if p.store(inner_off, &eth).is_err()
        || unsafe { bpf_xdp_adjust_head(p.0.ctx, inner_off as i32) } != 0
    {
        return Err(Verdict::drop(Reason::DropOverlayMalformed));
    }
    rec.count(Reason::OverlayDecap);
    rec.shrunk_by(t.overhead);
    Ok(())
}

/// tc ingress of the uplink: opens tunnel packets for this node that XDP did not open (see the
/// module documentation), GSO packets included. The frame keeps its outer Ethernet header (sent
/// to this uplink's MAC) in front of the inner IPv4 header. `Ok(true)`: opened (and counted),
/// `Ok(false)`: not a tunnel packet, `Err`: the hook's verdict (a tunnel packet refused).
#[inline(always)]
pub fn decap_tc(p: &TcPacket, rec: &Recorder) -> Result<bool, Verdict> {
    let Some(cfg) = config() else {
        return Ok(false);
    };
    let t = match inspect(p, &cfg) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(false),
        Err(reason) => return Err(Verdict::drop(reason)),
    };
    // One inner packet exactly filling the outer one. A GSO packet built by a sender's
    // encapsulation (or by GRO of a tunnel the kernel knows, IPIP) is one inner TCP burst behind
    // one outer header, both lengths covering the whole burst; a UDP GRO train of tunnel packets
    // (rx-udp-gro-forwarding) is many, and popping the first header would corrupt it.
    if t.inner_tot + t.overhead != t.outer_tot || p.frame_len() < ETH_HLEN as u32 + t.outer_tot {
        return Err(Verdict::drop(Reason::DropOverlayMalformed));
    }
    // FIXED_GSO: gso_size already is the inner MSS (without it the kernel would raise it by the
    // header length popped). The kernel keeps skb->encapsulation and the tunnel GSO type on a
    // shrink (v6.18 has no BPF_F_ADJ_ROOM_DECAP_L4_UDP); segmentation of the result is driven
    // by its IP/TCP headers, so a decapsulated burst that must be segmented (a pod device
    // without TSO) still comes out right: tests/overlay_mtu.rs checks it. Without
    // BPF_F_ADJ_ROOM_NO_CSUM_RESET the kernel drops a CHECKSUM_UNNECESSARY verdict, which was
    // about the outer UDP checksum, not the inner packet's.
    if p.0
        .adjust_room(
            -(t.overhead as i32),
            BPF_ADJ_ROOM_MAC,
            BPF_F_ADJ_ROOM_FIXED_GSO as u64,
        )
        .is_err()
    {
        return Err(Verdict::drop(Reason::DropOverlayMalformed));
    }
    rec.count(Reason::OverlayDecap);
    rec.shrunk_by(t.overhead);
    Ok(true)
}
