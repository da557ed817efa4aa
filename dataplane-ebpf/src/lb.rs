//! Service lookup and backend selection (what KUBE-SERVICES and KUBE-SVC-* do, in O(1)).

use aya_ebpf::{helpers::bpf_get_prandom_u32, maps::lpm_trie::Key};
use dataplane_common::{
    lb::{
        AffinityKey, AffinityValue, BackendValue, ServiceKey, ServiceValue, SourceRangeKey,
        SVC_F_AFFINITY, SVC_F_SOURCE_RANGES,
    },
    Reason,
};

use crate::{
    maps::{AFFINITY_V1, BACKENDS_V2, SERVICES_V2, SOURCE_RANGES_V1},
    net::Parsed,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The service frontend the packet is addressed to, if any.
#[inline(always)]
pub fn lookup_service(pkt: &Parsed) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: pkt.flow.daddr,
        port: pkt.flow.dport,
        proto: pkt.flow.proto,
        _pad: 0,
    };
    unsafe { SERVICES_V2.get(&key) }.copied()
}

/// loadBalancerSourceRanges (kube-proxy's KUBE-PROXY-FIREWALL): may a new connection from
/// `saddr` use `svc`? One LPM lookup, only for frontends the agent flagged.
#[inline(always)]
pub fn source_allowed(svc: &ServiceValue, saddr: u32) -> bool {
    if svc.flags & SVC_F_SOURCE_RANGES == 0 {
        return true;
    }
    let key = Key::new(
        64,
        SourceRangeKey {
            frontend_id: svc.frontend_id,
            addr: saddr,
        },
    );
    SOURCE_RANGES_V1.get(&key).is_some()
}

/// Picks a backend uniformly at random (kube-proxy's `statistic --mode random` chain, as one
/// draw), or the client's affine backend while its affinity is fresh. `svc.count` is non-zero.
#[inline(always)]
pub fn select_backend(svc: &ServiceValue, client: u32, now: u64) -> Result<BackendValue, Reason> {
    let affine = svc.flags & SVC_F_AFFINITY != 0;
    let akey = AffinityKey {
        client,
        frontend_id: svc.frontend_id,
    };
    if affine {
        if let Some(a) = AFFINITY_V1.get_ptr_mut(&akey) {
            let a = unsafe { &mut *a };
            if now.saturating_sub(a.last_used_ns) < svc.affinity_timeout_secs as u64 * NS_PER_SEC {
                a.last_used_ns = now;
                return Ok(a.backend);
            }
        }
    }
    let slot = unsafe { bpf_get_prandom_u32() } % svc.count;
    let backend = BACKENDS_V2
        .get(svc.set_id.wrapping_add(slot))
        .copied()
        .filter(|b| b.addr != 0)
        .ok_or(Reason::DropNoBackend)?;
    if affine {
        let _ = AFFINITY_V1.insert(
            &akey,
            &AffinityValue {
                backend,
                last_used_ns: now,
            },
            0,
        );
    }
    Ok(backend)
}
