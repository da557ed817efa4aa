//! Per-hook, per-verdict-reason counters (the `STATS_V2` per-CPU array).

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

/// Why a program returned the verdict it did: the one list of reasons. Each line gives the
/// variant, its column in the stats table (stable: part of the `STATS_V2` layout; new reasons
/// are appended), the name `dataplane stats` and the metrics print, and whether the packet is
/// dropped (`drop`) or handed on, possibly translated or answered (`pass`). The doc comment is
/// the help text (`Reason::help`, metrics HELP, bpf-maps.md).
macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $variant:ident = $value:literal, $name:literal, $verdict:ident; )*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $( $(#[doc = $doc])* $variant = $value, )*
        }

        /// Number of reasons defined (not the table's width, `MAX_REASONS`).
        pub const NUM_REASONS: usize = [$($value),*].len();

        impl Reason {
            pub const ALL: [Reason; NUM_REASONS] = [$(Reason::$variant),*];

            pub const fn name(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }

            pub const fn is_drop(self) -> bool {
                match self { $(Reason::$variant => reasons!(@drop $verdict),)* }
            }

            /// The reason's doc comment; every source line starts with a space, so the lines run
            /// together as one paragraph (trim it).
            pub const fn help(self) -> &'static str {
                match self { $(Reason::$variant => concat!($($doc),*),)* }
            }
        }
    };
    (@drop drop) => { true };
    (@drop pass) => { false };
}

reasons! {
    /// Not IPv4 (ARP, IPv6, LLDP, ...): not ours, passed to the kernel untouched.
    PassNotIpv4 = 0, "pass-not-ipv4", pass;
    /// IPv4 TCP that no rule applies to.
    PassTcp = 1, "pass-tcp", pass;
    /// IPv4 UDP that no rule applies to.
    PassUdp = 2, "pass-udp", pass;
    /// IPv4 ICMP that no rule applies to.
    PassIcmp = 3, "pass-icmp", pass;
    /// IPv4 with another protocol (GRE, SCTP, IPIP not addressed to us, ...).
    PassOtherL4 = 4, "pass-other-l4", pass;
    /// A non-first IPv4 fragment: it carries no L4 header, so no port-based rule can match it.
    PassFragment = 5, "pass-fragment", pass;
    /// Frame shorter than its Ethernet or VLAN header.
    DropTruncatedL2 = 6, "drop-truncated-l2", drop;
    /// Frame shorter than the IPv4 header its IHL announces.
    DropTruncatedIpv4 = 7, "drop-truncated-ipv4", drop;
    /// IPv4 header invalid: version != 4, IHL < 5, or total length < header length or > frame.
    DropBadIpv4 = 8, "drop-bad-ipv4", drop;
    /// First fragment or unfragmented packet too short for its TCP/UDP/ICMP header.
    DropTruncatedL4 = 9, "drop-truncated-l4", drop;
    /// More VLAN tags than the parser follows (two).
    PassTooManyVlans = 10, "pass-too-many-vlans", pass;
    /// Original-direction packet of a tracked connection: translated to its backend.
    NatForward = 11, "nat-forward", pass;
    /// Reply-direction packet of a tracked connection: translated back to the frontend.
    NatReply = 12, "nat-reply", pass;
    /// First packet of a connection to a service: backend chosen, tracked and translated.
    LbNewConnection = 13, "lb-new-connection", pass;
    /// Service without endpoints: answered with ICMP port unreachable (kube-proxy's REJECT).
    RejectNoEndpoints = 14, "reject-no-endpoints", pass;
    /// The chosen backend slot was missing (should not happen: sets are written before use).
    DropNoBackend = 15, "drop-no-backend", drop;
    /// The conntrack table refused the new entries.
    DropCtInsertFailed = 16, "drop-ct-insert-failed", drop;
    /// No free masquerade source port for this backend.
    DropSnatPortsExhausted = 17, "drop-snat-ports-exhausted", drop;
    /// A packet rewrite helper failed.
    DropRewriteFailed = 18, "drop-rewrite-failed", drop;
    /// An ICMP error about a NATed connection, translated so the client matches it.
    IcmpErrorTranslated = 19, "icmp-error-translated", pass;
    /// A reject could not be built (IP options, resize failure): dropped instead.
    DropRejectFailed = 20, "drop-reject-failed", drop;
    /// Socket hook: not a service address, or a socket of another network namespace.
    SockPass = 21, "sock-pass", pass;
    /// Socket hook: the address was rewritten back from a backend to its service.
    SockRevNat = 22, "sock-revnat", pass;
    /// A frontend under a Local traffic policy (external or internal) with no endpoint on this
    /// node while the service has endpoints elsewhere: dropped, as kube-proxy does (a reject
    /// would tell a load balancer the node is healthy). With no endpoint anywhere it rejects.
    DropNoLocalEndpoints = 23, "drop-no-local-endpoints", drop;
    /// Overlay (tc egress of the uplink): a packet for a remote node's pod CIDR, encapsulated
    /// (VXLAN or IPIP) toward that node. On `xdp-uplink`: the XDP fast path encapsulated a
    /// translated NodePort packet for a backend behind the overlay (the same headers, the next
    /// hop from `OVERLAY_NEXTHOP_V1`) before its XDP_TX, counted with its `xdp-forward`.
    OverlayEncap = 24, "overlay-encap", pass;
    /// Overlay (XDP on the uplink): a tunnel packet from a known node to this node's tunnel
    /// address, decapsulated; the inner packet then goes through the service pipeline and is
    /// counted again with its own reason.
    OverlayDecap = 25, "overlay-decap", pass;
    /// Overlay: a tunnel packet (VXLAN port / IPIP) from an address that is not a known node.
    DropOverlayUnknownPeer = 26, "drop-overlay-unknown-peer", drop;
    /// Overlay: a tunnel packet whose outer destination is not this node's tunnel address, or
    /// whose inner destination is not on this node (the node is never a relay).
    DropOverlayNotLocal = 27, "drop-overlay-not-local", drop;
    /// Overlay: a tunnel packet with wrong VXLAN flags, outer IP options or fragments,
    /// or an inner frame that is not IPv4 or is truncated.
    DropOverlayMalformed = 28, "drop-overlay-malformed", drop;
    /// Overlay: a packet that would exceed the underlay MTU once encapsulated and cannot be
    /// segmented (the kernel routes carry the tunnel MTU, so the stack normally answers such
    /// packets with ICMP fragmentation needed before they get here).
    DropOverlayTooBig = 29, "drop-overlay-too-big", drop;
    /// Overlay: encapsulation failed (no underlay route to the node, a helper refused).
    DropOverlayEncapFailed = 30, "drop-overlay-encap-failed", drop;
    /// The node's own packet to a service, translated at the uplink's egress, has no route to
    /// its backend from here (a host-network backend on this node itself, or no route).
    DropNoRoute = 31, "drop-no-route", drop;
    /// A new connection to a frontend with loadBalancerSourceRanges from a client outside them
    /// (kube-proxy's KUBE-PROXY-FIREWALL drop).
    DropSourceRange = 32, "drop-source-range", drop;
    /// Overlay: a tunnel packet from a known node whose inner source is neither in that node's
    /// pod CIDRs nor the node's own address: spoofed (anyone on the underlay can forge a node's
    /// outer address), dropped before it can reach a pod "from" any address.
    DropOverlaySpoofedSource = 33, "drop-overlay-spoofed-source", drop;
    /// Overlay: a VXLAN packet from a known node with a VNI other than this node's.
    DropOverlayWrongVni = 34, "drop-overlay-wrong-vni", drop;
    /// Service without endpoints, but this CPU's REJECT token bucket (1000/s, burst 50, like
    /// the kernel's ICMP limit) is empty: dropped instead of answered, so forged sources cannot
    /// turn the node into an ICMP reflector.
    DropRejectRateLimited = 35, "drop-reject-rate-limited", drop;
    /// XDP fast path: a packet to a service whose backend is on another node (NodePort,
    /// external IP), translated completely in XDP (DNAT, and the masquerade tc egress would
    /// apply), routed with the FIB (for a backend behind the overlay: encapsulated,
    /// `overlay-encap` on this hook), its MACs rewritten and sent back out of the uplink with
    /// XDP_TX: the kernel's stack, netfilter and tc never see it (nor does tcpdump on the
    /// node). Its translation is counted too (`nat-forward` / `lb-new-connection`).
    XdpForward = 36, "xdp-forward", pass;
    /// XDP fast path: a remote backend's reply to a masqueraded connection, reverse-translated
    /// completely in XDP and sent back out of the uplink to the client with XDP_TX (its
    /// translation is counted too, as `nat-reply`).
    XdpForwardReply = 37, "xdp-forward-reply", pass;
    /// XDP: a TCP/UDP packet to a service or the node whose transport checksum field holds only
    /// the pseudo-header sum (a CHECKSUM_PARTIAL packet from a veth peer with tx offload: XDP
    /// cannot see the skb's checksum state, and XDP_TX would lose it). Left untouched for tc
    /// ingress, whose helpers keep partial checksums right; no real NIC delivers such frames.
    PassPartialChecksum = 38, "pass-partial-checksum", pass;
    /// XDP: a packet of a connection the fast path translates whole (`CT_F_FULL`: a
    /// masqueraded connection of two entries) that XDP cannot finish now (next hop not
    /// resolved, too big for the route, a fragment, TTL 1, an ICMP error about it): left
    /// untouched for tc ingress, which translates it and sends it out itself. The kernel
    /// could not forward it translated: its new source is a node address.
    PassFullNatToTc = 39, "pass-full-nat-to-tc", pass;
    /// tc ingress: a packet of a connection translated whole at ingress (`CT_F_FULL`) with TTL
    /// <= 1: it is not routed by the kernel, which would have answered with ICMP time exceeded.
    DropTtlExceeded = 40, "drop-ttl-exceeded", drop;
    /// tc egress: a packet a tc ingress hook of this node already translated, whose connection
    /// has nothing for egress (not masqueraded, or translated whole): passed without a parse
    /// or a conntrack lookup (`TC_INDEX_EGRESS_DONE`). The overlay stage still runs.
    PassTranslatedAtIngress = 41, "pass-translated-at-ingress", pass;
}

/// Number of columns reserved per hook in the stats table (room for reasons added later).
/// `STATS_V1` had 32; the layout version carries the width.
pub const MAX_REASONS: u32 = 64;

/// Columns per hook in the retired `STATS_V1` (same reason values, narrower rows): still
/// readable by `dataplane stats` against an agent that has not been upgraded yet.
pub const MAX_REASONS_V1: u32 = 32;

/// Entries in `STATS_V2`.
pub const STATS_ENTRIES: u32 = NUM_HOOKS * MAX_REASONS;

impl Reason {
    pub fn from_u32(v: u32) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| *r as u32 == v)
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.name() == name)
    }
}

/// Index of the (hook, reason) counter in `STATS_V2`.
#[inline(always)]
pub const fn stats_index(hook: Hook, reason: Reason) -> u32 {
    hook as u32 * MAX_REASONS + reason as u32
}

/// Value of one `STATS_V2` slot, per CPU. Layout: two native-endian u64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsValue {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (length of the frame as the hook saw it).
    pub bytes: u64,
}

user_pod!(StatsValue);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_and_fits() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_u32(r as u32), Some(r));
            assert!((r as u32) < MAX_REASONS);
        }
        assert_eq!(stats_index(Hook::TcPodEgress, Reason::PassTcp), 4 * 64 + 1);
        assert_eq!(Hook::ALL.len() as u32, NUM_HOOKS);
    }

    #[test]
    fn reasons_are_dense_named_and_documented() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(
                *r as usize, i,
                "{r:?}: values are columns, appended in order"
            );
            assert_eq!(Reason::from_name(r.name()), Some(*r));
            assert!(!r.help().trim().is_empty(), "{r:?} has no help text");
            let drop_named = r.name().starts_with("drop-");
            assert_eq!(
                r.is_drop(),
                drop_named,
                "{}: verdict and name disagree",
                r.name()
            );
        }
    }
}
