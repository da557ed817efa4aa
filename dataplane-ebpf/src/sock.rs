//! Socket-level balancing for the node's own (host network namespace) sockets, as Cilium does:
//! the destination is rewritten once at connect()/sendmsg() time, so the kernel routes straight
//! to the backend and no packet of the connection needs NAT; recvmsg()/getpeername() report the
//! service address back. Sockets of other namespaces (pods: the tc path; other lab nodes) are
//! left alone by comparing the socket's netns cookie with the node's.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    programs::SockAddrContext,
};
use dataplane_common::{
    ip::{IPPROTO_TCP, IPPROTO_UDP},
    lb::{
        BackendValue, ServiceKey, SockAffinityKey, SockRevNatKey, SockRevNatValue,
        SVC_F_DROP_IF_EMPTY, SVC_F_EXTERNAL,
    },
    Reason,
};

use crate::{
    config, lb,
    maps::{SOCK_AFFINITY_V1, SOCK_REVNAT_V1},
    verdict::{Action, Verdict},
};

const ECONNREFUSED: i32 = 111;

#[inline(always)]
fn in_node_netns(ctx: &SockAddrContext) -> bool {
    let cookie = config::node().netns_cookie;
    cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } == cookie
}

#[inline(always)]
fn service_key(sa: &bpf_sock_addr) -> Option<ServiceKey> {
    let proto = sa.protocol as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    // user_port holds the port in network order in its low 16 bits.
    Some(ServiceKey {
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        proto,
        _pad: 0,
    })
}

/// connect4 and sendmsg4: rewrites a service destination to a backend. `Action::Drop` fails
/// the syscall (its error set with bpf_set_retval).
#[inline(always)]
pub fn balance(ctx: &SockAddrContext, sticky_per_socket: bool) -> Verdict {
    if !in_node_netns(ctx) {
        return Verdict::pass(Reason::SockPass);
    }
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(key) = service_key(sa) else {
        return Verdict::pass(Reason::SockPass);
    };
    let Some(svc) = (unsafe { crate::maps::SERVICES_V2.get(&key) }).copied() else {
        return Verdict::pass(Reason::SockPass);
    };
    if key.proto == IPPROTO_UDP && svc.flags & SVC_F_EXTERNAL == 0 && svc.count != 0 {
        // UDP to a ClusterIP is translated per packet at the uplink's egress instead
        // (conntrack::create_host): a connected socket's sends never reach sendmsg4 again, so
        // a backend chosen here would outlive its removal (resolvers keep their socket).
        // NodePorts are the node's own addresses, routed over loopback past every tc hook.
        return Verdict::pass(Reason::SockPass);
    }
    if svc.count == 0 && svc.flags & SVC_F_DROP_IF_EMPTY != 0 {
        // kube-proxy's DROP (a Local policy, endpoints on other nodes only) is a packet drop:
        // left untranslated, the packet meets the same rule at the uplink's egress.
        return Verdict::pass(Reason::SockPass);
    }
    if svc.count == 0 {
        // kube-proxy's REJECT, at the syscall: connect()/sendmsg() fail with ECONNREFUSED.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return Verdict::new(Reason::RejectNoEndpoints, Action::Drop);
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let backend = match pick(&key, &svc, cookie, sticky_per_socket) {
        Ok(b) => b,
        Err(reason) => return Verdict::drop(reason),
    };
    let rev = SockRevNatKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        _pad: 0,
    };
    let _ = SOCK_REVNAT_V1.insert(
        &rev,
        &SockRevNatValue {
            addr: key.addr,
            port: key.port,
            _pad: 0,
        },
        0,
    );
    sa.user_ip4 = backend.addr;
    sa.user_port = backend.port as u32;
    Verdict::pass(Reason::LbNewConnection)
}

/// Unconnected UDP sends to a service stay on one backend per socket (a flow, for the server).
#[inline(always)]
fn pick(
    key: &ServiceKey,
    svc: &dataplane_common::lb::ServiceValue,
    cookie: u64,
    sticky: bool,
) -> Result<BackendValue, Reason> {
    let akey = SockAffinityKey {
        cookie,
        service: *key,
    };
    if sticky {
        if let Some(b) = unsafe { SOCK_AFFINITY_V1.get(&akey) } {
            return Ok(*b);
        }
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let backend = lb::select_backend(svc, config::node().masq_addr, now)?;
    if sticky {
        let _ = SOCK_AFFINITY_V1.insert(&akey, &backend, 0);
    }
    Ok(backend)
}

/// recvmsg4 and getpeername4: reports the service address instead of the backend's.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> Verdict {
    if !in_node_netns(ctx) {
        return Verdict::pass(Reason::SockPass);
    }
    let sa = unsafe { &mut *ctx.sock_addr };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevNatKey {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        _pad: 0,
    };
    match unsafe { SOCK_REVNAT_V1.get(&key) } {
        Some(v) => {
            sa.user_ip4 = v.addr;
            sa.user_port = v.port as u32;
            Verdict::pass(Reason::SockRevNat)
        }
        None => Verdict::pass(Reason::SockPass),
    }
}
