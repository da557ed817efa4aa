//! The service maps, written through [`MapStore`]: the kernel maps ([`KernelMaps`], opened with
//! `crate::maps`, in `store/kernel.rs`), or an in-memory model for tests without root
//! ([`MemMaps`], `store/mem.rs`). This file: the trait and what both share.

use std::collections::HashSet;

use anyhow::Result;
use dataplane_common::{
    ct::{CtKey, CtValue, CT_F_REPLY},
    lb::{
        AffinityKey, AffinityValue, BackendKey, BackendValue, ServiceKey, ServiceValue,
        MAX_BACKEND_SLOTS, MAX_FRONTENDS,
    },
};

pub use crate::maps::{read_config, write_config, MapSource};
pub(crate) use kernel::dump;
pub use kernel::KernelMaps;
pub use mem::MemMaps;

mod kernel;
mod mem;

/// Backends that left a frontend: `(frontend_id, address, port)`, network order. Flows the
/// datapath tracks towards them are what an update purges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaleBackends(HashSet<(u32, u32, u16)>);

impl StaleBackends {
    /// Marks `addr:port` (network order) as gone from `frontend_id`.
    pub fn insert(&mut self, frontend_id: u32, addr: u32, port: u16) {
        self.0.insert((frontend_id, addr, port));
    }

    /// Whether nothing is to be purged.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of (frontend, backend) pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether a conntrack entry is a UDP flow of a stale backend, in either direction: the
    /// original direction by its rewrite target, the reply direction by its wire source. TCP
    /// entries never match: established connections drain, as under kube-proxy. A UDP flow has
    /// no end, so its entry would keep sending the client's datagrams to a backend that is gone
    /// (kube-proxy's stale-UDP-conntrack bug); without it the next datagram is balanced anew.
    pub fn matches_ct(&self, key: &CtKey, value: &CtValue) -> bool {
        if key.proto != 17 {
            return false;
        }
        let (addr, port) = if value.flags & CT_F_REPLY != 0 {
            (key.saddr, key.sport)
        } else {
            (value.nat_daddr, value.nat_dport)
        };
        self.0.contains(&(value.frontend_id, addr, port))
    }

    /// Whether a sessionAffinity entry sends its client to a stale backend.
    pub fn matches_affinity(&self, key: &AffinityKey, value: &AffinityValue) -> bool {
        self.0
            .contains(&(key.frontend_id, value.backend.addr, value.backend.port))
    }
}

impl Extend<(u32, u32, u16)> for StaleBackends {
    fn extend<I: IntoIterator<Item = (u32, u32, u16)>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// The maps a `ServiceTable` writes. Deleting an absent entry is not an error (the LRU maps
/// evict on their own, and an interrupted update may have deleted it already).
pub trait MapStore {
    /// Every `SERVICES_V2` entry.
    fn dump_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>>;
    /// Every used `BACKENDS_V2` slot, as the set and slot the services say it is
    /// ([`slots_by_set`]).
    fn dump_backends(&self) -> Result<Vec<(BackendKey, BackendValue)>>;
    /// Creates or replaces a `SERVICES_V2` entry.
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()>;
    /// Deletes a `SERVICES_V2` entry.
    fn delete_service(&mut self, key: &ServiceKey) -> Result<()>;
    /// Writes `BACKENDS_V2` slot `key.index()`.
    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<()>;
    /// Clears `BACKENDS_V2` slot `key.index()`.
    fn delete_backend(&mut self, key: &BackendKey) -> Result<()>;
    /// Deletes the `CT_V2` and `AFFINITY_V1` entries `stale` matches; returns how many of each.
    fn purge_flows(&mut self, stale: &StaleBackends) -> Result<(usize, usize)>;
    /// Entries `SERVICES_V2` and `BACKENDS_V2` can hold: what a sync must fit in.
    fn capacity(&self) -> (usize, usize) {
        (MAX_FRONTENDS as usize, MAX_BACKEND_SLOTS as usize)
    }
    /// Every `LB_ADDRS_V1` entry (address, `ADDR_F_*`).
    fn dump_addrs(&self) -> Result<Vec<(u32, u32)>>;
    /// Creates or replaces an `LB_ADDRS_V1` entry, after setting its bits in `LB_ADDR_BITS_V1`.
    fn put_addr(&mut self, addr: u32, flags: u32) -> Result<()>;
    /// Deletes an `LB_ADDRS_V1` entry, then clears the bits no listed address needs any more.
    fn delete_addr(&mut self, addr: u32) -> Result<()>;
    /// Sets the `LB_ADDR_BITS_V1` bits of every `LB_ADDRS_V1` entry that lacks them (a map an
    /// older agent kept, or a new bitmap beside adopted addresses); called once when a table
    /// adopts the maps, before the agent trusts the bitmap (`CFG_F_ADDR_BITS`).
    fn adopt_addr_bits(&mut self) -> Result<()>;

    // Many writes at once (BPF_MAP_*_BATCH in the kernel), applied in order; an error says how
    // many from the start were applied. By default one write each.

    /// Whether a sync should write all service ports' steps in batches (the kernel maps) or
    /// one service port after the other (the in-memory model, unless told otherwise).
    fn batches(&self) -> bool {
        false
    }

    /// Creates or replaces `BACKENDS_V2` slots.
    fn put_backends(&mut self, entries: &[(BackendKey, BackendValue)]) -> Result<(), Partial> {
        each(entries, |(k, v)| self.put_backend(k, v))
    }
    /// Creates or replaces `SERVICES_V2` entries.
    fn put_services(&mut self, entries: &[(ServiceKey, ServiceValue)]) -> Result<(), Partial> {
        each(entries, |(k, v)| self.put_service(k, v))
    }
    /// Deletes `BACKENDS_V2` slots (absent ones are not an error).
    fn delete_backends(&mut self, keys: &[BackendKey]) -> Result<(), Partial> {
        each(keys, |k| self.delete_backend(k))
    }
    /// Creates or replaces `LB_ADDRS_V1` entries.
    fn put_addrs(&mut self, entries: &[(u32, u32)]) -> Result<(), Partial> {
        each(entries, |(a, f)| self.put_addr(*a, *f))
    }
}

/// `BACKENDS_V2`'s used slots (`(index, value)`, the non-zero ones) as the sets `services` name:
/// a slot inside a service's run is `(set_id, slot)` of that set; one outside every run (left by
/// an interrupted writer) is a set of its own, `(index, 0)`, which no service references: an
/// orphan the table deletes.
pub(crate) fn slots_by_set(
    services: &[(ServiceKey, ServiceValue)],
    used: impl IntoIterator<Item = (u32, BackendValue)>,
) -> Vec<(BackendKey, BackendValue)> {
    let mut runs: Vec<(u32, u32)> = services
        .iter()
        .filter(|(_, v)| v.count > 0)
        .map(|(_, v)| (v.set_id, v.count))
        .collect();
    runs.sort_unstable();
    used.into_iter()
        .map(|(index, value)| {
            // The run starting last at or before `index`.
            let i = runs.partition_point(|&(first, _)| first <= index);
            let key = match i.checked_sub(1).map(|i| runs[i]) {
                Some((first, count)) if index - first < count => BackendKey {
                    set_id: first,
                    slot: index - first,
                },
                _ => BackendKey {
                    set_id: index,
                    slot: 0,
                },
            };
            (key, value)
        })
        .collect()
}

/// A batch that stopped: the first `done` elements were applied, then `error`.
#[derive(Debug)]
pub struct Partial {
    pub done: usize,
    pub error: anyhow::Error,
}

fn each<T>(items: &[T], mut f: impl FnMut(&T) -> Result<()>) -> Result<(), Partial> {
    for (done, item) in items.iter().enumerate() {
        f(item).map_err(|error| Partial { done, error })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FE: u32 = 7;
    const GONE: (u32, u16) = (u32::from_ne_bytes([10, 244, 2, 15]), 8080u16.to_be());
    const KEPT: (u32, u16) = (u32::from_ne_bytes([10, 244, 1, 19]), 8080u16.to_be());

    fn stale() -> StaleBackends {
        let mut s = StaleBackends::default();
        s.insert(FE, GONE.0, GONE.1);
        s
    }

    fn forward(proto: u8, backend: (u32, u16), frontend_id: u32) -> (CtKey, CtValue) {
        let key = CtKey::new(1, 3, 2, 4, proto, 0);
        let value = CtValue {
            nat_daddr: backend.0,
            nat_dport: backend.1,
            frontend_id,
            ..Default::default()
        };
        (key, value)
    }

    fn reply(proto: u8, backend: (u32, u16), frontend_id: u32) -> (CtKey, CtValue) {
        let key = CtKey::new(backend.0, backend.1, 1, 3, proto, 1);
        let value = CtValue {
            frontend_id,
            flags: CT_F_REPLY,
            ..Default::default()
        };
        (key, value)
    }

    #[test]
    fn only_udp_flows_of_removed_backends_of_that_frontend_match() {
        let s = stale();
        for (entry, want) in [
            (forward(17, GONE, FE), true),
            (reply(17, GONE, FE), true),
            (forward(6, GONE, FE), false), // TCP drains
            (reply(6, GONE, FE), false),
            (forward(17, KEPT, FE), false), // remaining backend
            (reply(17, KEPT, FE), false),
            (forward(17, GONE, FE + 1), false), // same backend behind another frontend
            (reply(17, GONE, FE + 1), false),
        ] {
            assert_eq!(s.matches_ct(&entry.0, &entry.1), want, "{entry:?}");
        }
    }

    #[test]
    fn affinity_entries_to_removed_backends_match() {
        let s = stale();
        let entry = |fe, (addr, port)| {
            let backend = BackendValue {
                addr,
                port,
                flags: 0,
            };
            (
                AffinityKey {
                    client: 9,
                    frontend_id: fe,
                },
                AffinityValue {
                    backend,
                    last_used_ns: 1,
                },
            )
        };
        assert!(s.matches_affinity(&entry(FE, GONE).0, &entry(FE, GONE).1));
        assert!(!s.matches_affinity(&entry(FE, KEPT).0, &entry(FE, KEPT).1));
        assert!(!s.matches_affinity(&entry(FE + 1, GONE).0, &entry(FE + 1, GONE).1));
    }

    #[test]
    fn mem_maps_purge_counts() {
        let mut m = MemMaps::default();
        m.ct.extend([
            forward(17, GONE, FE),
            reply(17, GONE, FE),
            forward(6, GONE, FE),
        ]);
        assert_eq!(m.purge_flows(&stale()).unwrap(), (2, 0));
        assert_eq!(m.ct.len(), 1);
    }
}
