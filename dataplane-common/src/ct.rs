//! Connection tracking (`CT_V1`, an LRU hash) and the datapath configuration (`CONFIG_V1`).
//!
//! Entries are keyed by the 5-tuple *as it is on the wire* when a packet reaches a hook, and hold
//! the rewrite to apply to such packets. As in netfilter, destination rewrites happen at ingress
//! (before the kernel routes the packet) and source rewrites at egress (after routing). A
//! balanced connection (client C, frontend F, backend B) has two entries:
//! - ingress, original `C -> F`: rewrite to `C -> B` (DNAT);
//! - egress (`CT_F_EGRESS`), reply `B -> C`: rewrite to `F -> C` (un-DNAT).
//! A masqueraded connection (node address:port M) has two more:
//! - egress, original `C -> B`: rewrite to `M -> B` (SNAT);
//! - ingress, reply `B -> M`: rewrite to `B -> C` (un-SNAT).
//! Addresses and ports are in network byte order.

/// `CT_V1` key: a 5-tuple as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// `CT_V1` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// Source address/port the packet leaves with.
    pub nat_saddr: u32,
    /// Destination address/port the packet leaves with.
    pub nat_daddr: u32,
    pub nat_sport: u16,
    pub nat_dport: u16,
    /// The service frontend this connection was balanced for.
    pub frontend_id: u32,
    /// bpf_ktime_get_ns() at creation.
    pub created_ns: u64,
    /// bpf_ktime_get_ns() of the last packet in this direction.
    pub last_seen_ns: u64,
    /// Packets and bytes in this direction.
    pub packets: u64,
    pub bytes: u64,
    /// `CT_F_*` flags.
    pub flags: u8,
    /// TCP flags seen in this direction (OR of every segment's flags byte).
    pub tcp_flags_seen: u8,
    pub _pad: [u8; 6],
}

/// This entry is the reply direction of its connection.
pub const CT_F_REPLY: u8 = 1 << 0;
/// The connection is source-NATed (masquerade).
pub const CT_F_SNAT: u8 = 1 << 1;
/// The entry applies at egress hooks (tc egress of the uplink and pod devices), after the
/// kernel routed the packet; entries without it apply at ingress hooks (XDP, tc pod ingress).
///
/// Like netfilter (DNAT in PREROUTING, SNAT in POSTROUTING), source rewrites happen after
/// routing: done at ingress, a source that is one of the node's own addresses (masquerade, a
/// NodePort reply) makes the stack drop the packet as a martian.
pub const CT_F_EGRESS: u8 = 1 << 2;

/// TCP flag bits as in the header's flags byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Entries of `CT_V1` (two per NATed connection).
pub const CT_MAX_ENTRIES: u32 = 262_144;

/// Connection state as derived from the TCP flags seen, for timeouts and display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    /// Only a SYN so far in this direction.
    SynSent,
    Established,
    /// FIN or RST seen.
    Closing,
    /// UDP, ICMP: no states.
    Stateless,
}

/// What a CT entry's flags say about the connection. Pure, shared by datapath and `dataplane
/// conntrack`.
pub const fn ct_state(proto: u8, tcp_flags_seen: u8) -> CtState {
    if proto != 6 {
        return CtState::Stateless;
    }
    if tcp_flags_seen & (TCP_FIN | TCP_RST) != 0 {
        CtState::Closing
    } else if tcp_flags_seen & TCP_ACK != 0 {
        CtState::Established
    } else {
        CtState::SynSent
    }
}

/// `CONFIG_V1` (single-entry array): node-wide settings written by the loader at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Address masqueraded connections leave with (the node's underlay address), network order.
    pub masq_addr: u32,
    /// Masquerade source ports are allocated in [snat_port_min, snat_port_max] (host order).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Idle timeouts in seconds, by state.
    pub timeout_tcp_syn: u32,
    pub timeout_tcp_established: u32,
    pub timeout_tcp_closing: u32,
    pub timeout_udp: u32,
    pub timeout_other: u32,
    /// `CFG_F_*` flags.
    pub flags: u32,
    /// Cookie of the node's network namespace: socket-level balancing applies only to sockets
    /// of this namespace (0 = socket-level balancing off). Lets several nodes share a kernel
    /// (the lab) and leaves pods, which have their own namespaces and the tc path, alone.
    pub netns_cookie: u64,
}

impl Config {
    /// Defaults modelled on the kernel's and Cilium's: SYN 60 s, established 6 h, closing 10 s,
    /// UDP 60 s (nf_conntrack_udp_timeout_stream is 120 s, plain 30 s).
    pub const fn with_masq_addr(masq_addr: u32) -> Config {
        Config {
            masq_addr,
            // Below the kernel's ephemeral range (32768-60999): a masquerade port can then never
            // be the port of one of the node's own connections to the same backend. 31,744
            // ports per backend address:port, like kube-proxy's --random-fully draws widely.
            snat_port_min: 1_024,
            snat_port_max: 32_767,
            timeout_tcp_syn: 60,
            timeout_tcp_established: 21_600,
            timeout_tcp_closing: 10,
            timeout_udp: 60,
            timeout_other: 30,
            flags: 0,
            netns_cookie: 0,
        }
    }

    /// Idle timeout in seconds for an entry in `state`.
    pub const fn timeout_secs(&self, state: CtState, proto: u8) -> u32 {
        match state {
            CtState::SynSent => self.timeout_tcp_syn,
            CtState::Established => self.timeout_tcp_established,
            CtState::Closing => self.timeout_tcp_closing,
            CtState::Stateless if proto == 17 => self.timeout_udp,
            CtState::Stateless => self.timeout_other,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for Config {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<CtKey>(), 16);
        assert_eq!(core::mem::size_of::<CtValue>(), 56);
        assert_eq!(core::mem::size_of::<Config>(), 40);
    }

    #[test]
    fn tcp_states_follow_flags() {
        assert_eq!(ct_state(6, TCP_SYN), CtState::SynSent);
        assert_eq!(ct_state(6, TCP_SYN | TCP_ACK), CtState::Established);
        assert_eq!(ct_state(6, TCP_SYN | TCP_ACK | TCP_FIN), CtState::Closing);
        assert_eq!(ct_state(6, TCP_RST), CtState::Closing);
        assert_eq!(ct_state(17, 0), CtState::Stateless);
    }
}
