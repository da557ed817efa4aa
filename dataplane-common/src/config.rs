//! The node's datapath configuration (`CONFIG_V2`, a single-entry array): the masquerade
//! address and port range, conntrack idle timeouts, flags, the node's network namespace.

use crate::ct::CtState;
use crate::ip::IPPROTO_UDP;

/// `CONFIG_V2` (single-entry array): node-wide settings written by the agent at start.
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
    pub timeout_tcp_half_closed: u32,
    pub timeout_tcp_closed: u32,
    pub timeout_tcp_reset: u32,
    pub timeout_udp: u32,
    pub timeout_other: u32,
    /// Flags: [`CFG_F_POD_FILTER`], [`CFG_F_ADDR_BITS`].
    pub flags: u32,
    /// Cookie of the node's network namespace: socket-level balancing applies only to sockets
    /// of this namespace (0 = socket-level balancing off). Lets several nodes share a kernel
    /// (the lab) and leaves pods, which have their own namespaces and the tc path, alone.
    pub netns_cookie: u64,
}

/// `Config::flags`: `LB_ADDRS_V1` is kept by the agent (service addresses by `ServiceTable`,
/// the node's own at start), so pod hooks may pass packets whose addresses it does not list.
pub const CFG_F_POD_FILTER: u32 = 1 << 0;
/// `Config::flags`: `LB_ADDR_BITS_V1` holds the bits of every `LB_ADDRS_V1` address, so pod hooks
/// may pass a packet whose addresses' bits are clear without looking `LB_ADDRS_V1` up. Set by the
/// agent once it built the bitmap, cleared at its start (a bitmap a new map version or another
/// writer left incomplete is never trusted).
pub const CFG_F_ADDR_BITS: u32 = 1 << 1;

impl Config {
    /// Defaults as kube-proxy sets the kernel's conntrack (`--conntrack-tcp-timeout-established`
    /// 24 h, `--conntrack-tcp-timeout-close-wait` 1 h) and the kernel's own for the rest:
    /// SYN_SENT 120 s, TIME_WAIT 120 s (after both FINs), CLOSE 10 s (after an RST; a new SYN
    /// on a closed tuple reuses it at once, as netfilter does), UDP 120 s (nf_conntrack_udp_timeout_stream: a
    /// resolver's connected socket must keep its backend between queries).
    pub const fn with_masq_addr(masq_addr: u32) -> Config {
        Config {
            masq_addr,
            // Below the kernel's ephemeral range (32768-60999): a masquerade port can then never
            // be the port of one of the node's own connections to the same backend. 31,744
            // ports per backend address:port, like kube-proxy's --random-fully draws widely.
            snat_port_min: 1_024,
            snat_port_max: 32_767,
            timeout_tcp_syn: 120,
            timeout_tcp_established: 86_400,
            timeout_tcp_half_closed: 3_600,
            timeout_tcp_closed: 120,
            timeout_tcp_reset: 10,
            timeout_udp: 120,
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
            CtState::HalfClosed => self.timeout_tcp_half_closed,
            CtState::Closed => self.timeout_tcp_closed,
            CtState::Reset => self.timeout_tcp_reset,
            CtState::Stateless if proto == IPPROTO_UDP => self.timeout_udp,
            CtState::Stateless => self.timeout_other,
        }
    }
}

user_pod!(Config);
