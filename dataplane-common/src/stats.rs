//! Per-hook, per-verdict-reason counters (the `STATS_V1` per-CPU array).

/// The attach point a packet was seen on. The value is the row of the stats table.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP on the node's uplink (underlay) interface: first look at every received frame.
    XdpUplink = 0,
    /// tc ingress on the uplink: received frames the XDP program passed up.
    TcUplinkIngress = 1,
    /// tc egress on the uplink: frames the node sends to the underlay.
    TcUplinkEgress = 2,
    /// tc ingress on a pod-facing host device: frames sent by a pod.
    TcPodIngress = 3,
    /// tc egress on a pod-facing host device: frames delivered to a pod.
    TcPodEgress = 4,
    /// cgroup connect4: host-network sockets connecting (socket-level balancing).
    SockConnect4 = 5,
    /// cgroup sendmsg4: unconnected host-network UDP sends.
    SockSendmsg4 = 6,
    /// cgroup recvmsg4: host-network UDP receives (source rewritten back to the service).
    SockRecvmsg4 = 7,
    /// cgroup getpeername4: the peer a balanced host socket reports.
    SockGetpeername4 = 8,
}

/// Number of hooks (rows of the stats table).
pub const NUM_HOOKS: u32 = 9;

impl Hook {
    pub const ALL: [Hook; NUM_HOOKS as usize] = [
        Hook::XdpUplink,
        Hook::TcUplinkIngress,
        Hook::TcUplinkEgress,
        Hook::TcPodIngress,
        Hook::TcPodEgress,
        Hook::SockConnect4,
        Hook::SockSendmsg4,
        Hook::SockRecvmsg4,
        Hook::SockGetpeername4,
    ];

    /// The hooks that see packets (the others see socket syscalls).
    pub const PACKET: [Hook; 5] = [
        Hook::XdpUplink,
        Hook::TcUplinkIngress,
        Hook::TcUplinkEgress,
        Hook::TcPodIngress,
        Hook::TcPodEgress,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::XdpUplink => "xdp-uplink",
            Hook::TcUplinkIngress => "tc-uplink-ingress",
            Hook::TcUplinkEgress => "tc-uplink-egress",
            Hook::TcPodIngress => "tc-pod-ingress",
            Hook::TcPodEgress => "tc-pod-egress",
            Hook::SockConnect4 => "sock-connect4",
            Hook::SockSendmsg4 => "sock-sendmsg4",
            Hook::SockRecvmsg4 => "sock-recvmsg4",
            Hook::SockGetpeername4 => "sock-getpeername4",
        }
    }
}

/// Why a program returned the verdict it did. `Pass*` reasons hand the packet on unchanged,
/// `Drop*` reasons drop it. The value is the column of the stats table; values are stable
/// (they are part of the `STATS_V1` layout), new reasons are appended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4 (ARP, IPv6, LLDP, ...): not ours, passed to the kernel untouched.
    PassNotIpv4 = 0,
    /// IPv4 TCP that no rule applies to.
    PassTcp = 1,
    /// IPv4 UDP that no rule applies to.
    PassUdp = 2,
    /// IPv4 ICMP that no rule applies to.
    PassIcmp = 3,
    /// IPv4 with another protocol (GRE, SCTP, IPIP not addressed to us, ...).
    PassOtherL4 = 4,
    /// A non-first IPv4 fragment: it carries no L4 header, so no port-based rule can match it.
    PassFragment = 5,
    /// Frame shorter than its Ethernet or VLAN header.
    DropTruncatedL2 = 6,
    /// Frame shorter than the IPv4 header its IHL announces.
    DropTruncatedIpv4 = 7,
    /// IPv4 header invalid: version != 4, IHL < 5, or total length < header length or > frame.
    DropBadIpv4 = 8,
    /// First fragment or unfragmented packet too short for its TCP/UDP/ICMP header.
    DropTruncatedL4 = 9,
    /// More VLAN tags than the parser follows (two).
    PassTooManyVlans = 10,
    /// Original-direction packet of a tracked connection: translated to its backend.
    NatForward = 11,
    /// Reply-direction packet of a tracked connection: translated back to the frontend.
    NatReply = 12,
    /// First packet of a connection to a service: backend chosen, tracked and translated.
    LbNewConnection = 13,
    /// Service without endpoints: answered with ICMP port unreachable (kube-proxy's REJECT).
    RejectNoEndpoints = 14,
    /// The chosen backend slot was missing (should not happen: sets are written before use).
    DropNoBackend = 15,
    /// The conntrack table refused the new entries.
    DropCtInsertFailed = 16,
    /// No free masquerade source port for this backend.
    DropSnatPortsExhausted = 17,
    /// A packet rewrite helper failed.
    DropRewriteFailed = 18,
    /// An ICMP error about a NATed connection, translated so the client matches it.
    IcmpErrorTranslated = 19,
    /// A reject could not be built (IP options, resize failure): dropped instead.
    DropRejectFailed = 20,
    /// Socket hook: not a service address, or a socket of another network namespace.
    SockPass = 21,
    /// Socket hook: the address was rewritten back from a backend to its service.
    SockRevNat = 22,
    /// External traffic to a frontend with externalTrafficPolicy Local and no local endpoint:
    /// dropped, as kube-proxy does (a reject would tell a load balancer the node is healthy).
    DropNoLocalEndpoints = 23,
    /// Overlay (tc egress of the uplink): a packet for a remote node's pod CIDR, encapsulated
    /// (VXLAN or IPIP) toward that node.
    OverlayEncap = 24,
    /// Overlay (XDP on the uplink): a tunnel packet from a known node to this node's tunnel
    /// address, decapsulated; the inner packet then goes through the service pipeline and is
    /// counted again with its own reason.
    OverlayDecap = 25,
    /// Overlay: a tunnel packet (VXLAN port / IPIP) from an address that is not a known node.
    DropOverlayUnknownPeer = 26,
    /// Overlay: a tunnel packet whose outer destination is not this node's tunnel address, or
    /// whose inner destination is not on this node (the node is never a relay).
    DropOverlayNotLocal = 27,
    /// Overlay: a tunnel packet with a wrong VNI or VXLAN flags, outer IP options or fragments,
    /// or an inner frame that is not IPv4 or is truncated.
    DropOverlayMalformed = 28,
    /// Overlay: a packet that would exceed the underlay MTU once encapsulated and cannot be
    /// segmented (the kernel routes carry the tunnel MTU, so the stack normally answers such
    /// packets with ICMP fragmentation needed before they get here).
    DropOverlayTooBig = 29,
    /// Overlay: encapsulation failed (no underlay route to the node, a helper refused).
    DropOverlayEncapFailed = 30,
    /// The node's own packet to a service, translated at the uplink's egress, has no route to
    /// its backend from here (a host-network backend on this node itself, or no route).
    DropNoRoute = 31,
}

/// Number of columns reserved per hook in the stats table (room for reasons added later).
pub const MAX_REASONS: u32 = 32;

/// Entries in `STATS_V1`.
pub const STATS_ENTRIES: u32 = NUM_HOOKS * MAX_REASONS;

impl Reason {
    pub const ALL: [Reason; 32] = [
        Reason::PassNotIpv4,
        Reason::PassTcp,
        Reason::PassUdp,
        Reason::PassIcmp,
        Reason::PassOtherL4,
        Reason::PassFragment,
        Reason::DropTruncatedL2,
        Reason::DropTruncatedIpv4,
        Reason::DropBadIpv4,
        Reason::DropTruncatedL4,
        Reason::PassTooManyVlans,
        Reason::NatForward,
        Reason::NatReply,
        Reason::LbNewConnection,
        Reason::RejectNoEndpoints,
        Reason::DropNoBackend,
        Reason::DropCtInsertFailed,
        Reason::DropSnatPortsExhausted,
        Reason::DropRewriteFailed,
        Reason::IcmpErrorTranslated,
        Reason::DropRejectFailed,
        Reason::SockPass,
        Reason::SockRevNat,
        Reason::DropNoLocalEndpoints,
        Reason::OverlayEncap,
        Reason::OverlayDecap,
        Reason::DropOverlayUnknownPeer,
        Reason::DropOverlayNotLocal,
        Reason::DropOverlayMalformed,
        Reason::DropOverlayTooBig,
        Reason::DropOverlayEncapFailed,
        Reason::DropNoRoute,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIpv4 => "pass-not-ipv4",
            Reason::PassTcp => "pass-tcp",
            Reason::PassUdp => "pass-udp",
            Reason::PassIcmp => "pass-icmp",
            Reason::PassOtherL4 => "pass-other-l4",
            Reason::PassFragment => "pass-fragment",
            Reason::DropTruncatedL2 => "drop-truncated-l2",
            Reason::DropTruncatedIpv4 => "drop-truncated-ipv4",
            Reason::DropBadIpv4 => "drop-bad-ipv4",
            Reason::DropTruncatedL4 => "drop-truncated-l4",
            Reason::PassTooManyVlans => "pass-too-many-vlans",
            Reason::NatForward => "nat-forward",
            Reason::NatReply => "nat-reply",
            Reason::LbNewConnection => "lb-new-connection",
            Reason::RejectNoEndpoints => "reject-no-endpoints",
            Reason::DropNoBackend => "drop-no-backend",
            Reason::DropCtInsertFailed => "drop-ct-insert-failed",
            Reason::DropSnatPortsExhausted => "drop-snat-ports-exhausted",
            Reason::DropRewriteFailed => "drop-rewrite-failed",
            Reason::IcmpErrorTranslated => "icmp-error-translated",
            Reason::DropRejectFailed => "drop-reject-failed",
            Reason::SockPass => "sock-pass",
            Reason::SockRevNat => "sock-revnat",
            Reason::DropNoLocalEndpoints => "drop-no-local-endpoints",
            Reason::OverlayEncap => "overlay-encap",
            Reason::OverlayDecap => "overlay-decap",
            Reason::DropOverlayUnknownPeer => "drop-overlay-unknown-peer",
            Reason::DropOverlayNotLocal => "drop-overlay-not-local",
            Reason::DropOverlayMalformed => "drop-overlay-malformed",
            Reason::DropOverlayTooBig => "drop-overlay-too-big",
            Reason::DropOverlayEncapFailed => "drop-overlay-encap-failed",
            Reason::DropNoRoute => "drop-no-route",
        }
    }

    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropTruncatedL2
                | Reason::DropTruncatedIpv4
                | Reason::DropBadIpv4
                | Reason::DropTruncatedL4
                | Reason::DropNoBackend
                | Reason::DropCtInsertFailed
                | Reason::DropSnatPortsExhausted
                | Reason::DropRewriteFailed
                | Reason::DropRejectFailed
                | Reason::DropNoLocalEndpoints
                | Reason::DropOverlayUnknownPeer
                | Reason::DropOverlayNotLocal
                | Reason::DropOverlayMalformed
                | Reason::DropOverlayTooBig
                | Reason::DropOverlayEncapFailed
                | Reason::DropNoRoute
        )
    }

    pub fn from_u32(v: u32) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| *r as u32 == v)
    }
}

/// Index of the (hook, reason) counter in `STATS_V1`.
#[inline(always)]
pub const fn stats_index(hook: Hook, reason: Reason) -> u32 {
    hook as u32 * MAX_REASONS + reason as u32
}

/// Value of one `STATS_V1` slot, per CPU. Layout: two native-endian u64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsValue {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (length of the frame as the hook saw it).
    pub bytes: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for StatsValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_and_fits() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_u32(r as u32), Some(r));
            assert!((r as u32) < MAX_REASONS);
        }
        assert_eq!(stats_index(Hook::TcPodEgress, Reason::PassTcp), 4 * 32 + 1);
        assert_eq!(Hook::ALL.len() as u32, NUM_HOOKS);
    }
}
