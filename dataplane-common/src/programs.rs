//! Every program in the eBPF object, one per [`Hook`]: its name in the object, how it is
//! attached and where. The loader, `dataplane cleanup`, the bench and the tests read this table
//! (and a test checks it against the built object), so a program is added in one place.

use crate::stats::Hook;

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// XDP on a device (native, or generic where the driver has none).
    Xdp,
    /// tcx ingress of a device.
    TcIngress,
    /// tcx egress of a device.
    TcEgress,
    /// A cgroup v2 socket-address hook; the value is the kernel's `enum bpf_attach_type`.
    Cgroup(u32),
}

/// What a program is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The node's uplink (underlay) device.
    Uplink,
    /// Every host-side pod device (veth, cali*).
    PodDevices,
    /// The cgroup v2 root: the node's own sockets.
    CgroupRoot,
}

/// The XDP metadata word `xdp_uplink` leaves in front of a frame it deferred to tc ingress
/// ("dpcf", native byte order; read through `__sk_buff.data_meta`, which generic and veth XDP
/// hand on). A test run's output frame starts with it too. Only where the kernel lets XDP
/// programs call `bpf_xdp_adjust_meta` (the loader probes it: `XDP_META` in the object).
pub const XDP_DEFER_MAGIC: u32 = 0x6463_7066;

/// The `skb->tc_index` a tc ingress hook leaves on a packet it translated whose connection has
/// no egress entry (the original direction of a connection that is not masqueraded, or one
/// translated whole): the egress hooks of this node then skip their pipeline for it
/// (`pass-translated-at-ingress`) instead of parsing it and missing in `CT_V2`. tcx sets
/// `tc_index` from `__sk_buff.tc_classid` on every `TC_ACT_OK`, so the value is the last
/// ingress hook's: each ingress hook of the dataplane writes it (0 unless noted), and an
/// egress hook that finds the note resets it to 0.
pub const TC_INDEX_EGRESS_DONE: u16 = 0xd9e5;

/// `enum bpf_attach_type` values of the socket-address hooks (include/uapi/linux/bpf.h).
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
pub const BPF_CGROUP_UDP4_RECVMSG: u32 = 19;
pub const BPF_CGROUP_INET4_GETPEERNAME: u32 = 29;

impl Hook {
    /// The program's function (and object symbol) name.
    pub const fn program(self) -> &'static str {
        match self {
            Hook::XdpUplink => "xdp_uplink",
            Hook::TcUplinkIngress => "tc_uplink_ingress",
            Hook::TcUplinkEgress => "tc_uplink_egress",
            Hook::TcPodIngress => "tc_pod_ingress",
            Hook::TcPodEgress => "tc_pod_egress",
            Hook::SockConnect4 => "sock_connect4",
            Hook::SockSendmsg4 => "sock_sendmsg4",
            Hook::SockRecvmsg4 => "sock_recvmsg4",
            Hook::SockGetpeername4 => "sock_getpeername4",
        }
    }

    pub const fn attach(self) -> Attach {
        match self {
            Hook::XdpUplink => Attach::Xdp,
            Hook::TcUplinkIngress | Hook::TcPodIngress => Attach::TcIngress,
            Hook::TcUplinkEgress | Hook::TcPodEgress => Attach::TcEgress,
            Hook::SockConnect4 => Attach::Cgroup(BPF_CGROUP_INET4_CONNECT),
            Hook::SockSendmsg4 => Attach::Cgroup(BPF_CGROUP_UDP4_SENDMSG),
            Hook::SockRecvmsg4 => Attach::Cgroup(BPF_CGROUP_UDP4_RECVMSG),
            Hook::SockGetpeername4 => Attach::Cgroup(BPF_CGROUP_INET4_GETPEERNAME),
        }
    }

    pub const fn target(self) -> Target {
        match self {
            Hook::XdpUplink | Hook::TcUplinkIngress | Hook::TcUplinkEgress => Target::Uplink,
            Hook::TcPodIngress | Hook::TcPodEgress => Target::PodDevices,
            _ => Target::CgroupRoot,
        }
    }

    /// The hook whose program has this name.
    pub fn of_program(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.program() == name)
    }
}

/// Program names of one attach kind, in table order.
pub fn programs_where(keep: impl Fn(Attach) -> bool) -> impl Iterator<Item = &'static str> {
    Hook::ALL
        .into_iter()
        .filter(move |h| keep(h.attach()))
        .map(Hook::program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_has_one_program() {
        for h in Hook::ALL {
            assert_eq!(Hook::of_program(h.program()), Some(h));
            assert_eq!(
                h.program().replace('_', "-"),
                h.name(),
                "stats name follows the program"
            );
        }
        assert_eq!(
            programs_where(|a| matches!(a, Attach::Cgroup(_))).count(),
            4
        );
    }
}
