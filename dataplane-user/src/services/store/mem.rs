//! [`MemMaps`]: an in-memory model of the service maps, with injectable failures, for tests
//! without root.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};
use dataplane_common::{
    addr_bits::AddrBits,
    ct::{CtKey, CtValue},
    lb::{
        AffinityKey, AffinityValue, BackendKey, BackendValue, ServiceKey, ServiceValue,
        MAX_BACKEND_SLOTS, MAX_FRONTENDS,
    },
    map_names,
};

#[cfg(doc)]
use super::KernelMaps;
use super::{MapStore, StaleBackends};
use crate::services::addr_bits::AddrBitmap;

/// An in-memory model of the maps: for tests of code built on `ServiceTable` that run without
/// root, and for the table's own tests. Fields are public so tests can seed conntrack and
/// affinity entries and inspect the result.
#[derive(Clone, Debug, Default)]
pub struct MemMaps {
    /// `SERVICES_V2`.
    pub services: HashMap<ServiceKey, ServiceValue>,
    /// `BACKENDS_V2`'s used slots, by index (an array: a set's slot is at `set_id + slot`, so
    /// sets whose runs overlapped would overwrite each other here as in the kernel).
    pub backends: HashMap<u32, BackendValue>,
    /// `CT_V2` (seed flows here to test purges).
    pub ct: HashMap<CtKey, CtValue>,
    /// `AFFINITY_V1`.
    pub affinity: HashMap<AffinityKey, AffinityValue>,
    /// `LB_ADDRS_V1`.
    pub addrs: HashMap<u32, u32>,
    /// `LB_ADDR_BITS_V1` (word index -> bits; absent words are clear).
    pub addr_bits: HashMap<u32, AddrBits>,
    /// The writer's model of `addr_bits`, as in [`KernelMaps`].
    pub bitmap: AddrBitmap,
    /// When `Some(n)`, the `n+1`-th next service/backend write fails (error-path tests).
    pub writes_before_failure: Option<usize>,
    /// Writes of backend slots with these addresses (network order) fail: one broken service.
    pub poisoned_backends: HashSet<u32>,
    /// Writes of these `SERVICES_V2` keys fail.
    pub poisoned_frontends: HashSet<ServiceKey>,
    /// `(SERVICES_V2, BACKENDS_V2)` sizes: new keys beyond them fail as the kernel's E2BIG
    /// does, and [`MapStore::capacity`] reports them. `None`: the real maps' sizes, unenforced.
    pub capacity: Option<(usize, usize)>,
    /// Syncs take the batched path as with the kernel maps ([`MapStore::batches`]); each
    /// element of a batch still goes through the single writes above (and their failures).
    pub batch: bool,
}

impl MemMaps {
    fn write(&mut self) -> Result<()> {
        match self.writes_before_failure {
            Some(0) => bail!("injected map write failure"),
            Some(ref mut n) => *n -= 1,
            None => {}
        }
        Ok(())
    }
}

impl MapStore for MemMaps {
    fn dump_addrs(&self) -> Result<Vec<(u32, u32)>> {
        Ok(self.addrs.iter().map(|(k, v)| (*k, *v)).collect())
    }

    // Not counted by `writes_before_failure`: the failure tests aim at service writes.
    fn put_addr(&mut self, addr: u32, flags: u32) -> Result<()> {
        if let Some((word, bits)) = self.bitmap.add(addr, flags) {
            self.addr_bits.insert(word, bits);
        }
        self.addrs.insert(addr, flags);
        Ok(())
    }

    fn delete_addr(&mut self, addr: u32) -> Result<()> {
        self.addrs.remove(&addr);
        if let Some((word, bits)) = self.bitmap.remove(addr) {
            self.addr_bits.insert(word, bits);
        }
        Ok(())
    }

    fn adopt_addr_bits(&mut self) -> Result<()> {
        let addrs: Vec<(u32, u32)> = self.addrs.iter().map(|(a, f)| (*a, *f)).collect();
        for (addr, flags) in addrs {
            let word = dataplane_common::addr_bits::probe(addr).word;
            let current = self.addr_bits.get(&word).copied().unwrap_or_default();
            if let Some((word, bits)) = self.bitmap.adopt(addr, flags, current) {
                self.addr_bits.insert(word, bits);
            }
        }
        Ok(())
    }

    fn dump_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_backends(&self) -> Result<Vec<(BackendKey, BackendValue)>> {
        let services = self.dump_services()?;
        Ok(super::slots_by_set(
            &services,
            self.backends.iter().map(|(k, v)| (*k, *v)),
        ))
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.write()?;
        if self.poisoned_frontends.contains(key) {
            bail!("injected write failure of frontend {key:?}");
        }
        let max = self.capacity.map(|(services, _)| services);
        insert_bounded(&mut self.services, key, value, max, map_names::SERVICES)
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.write()?;
        self.services.remove(key);
        Ok(())
    }

    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<()> {
        self.write()?;
        if self.poisoned_backends.contains(&value.addr) {
            bail!(
                "injected write failure of backend {:?}",
                value.addr.to_ne_bytes()
            );
        }
        let slots = self.capacity().1;
        if key.index() as usize >= slots {
            bail!(
                "{} has no slot {} ({slots} slots)",
                map_names::BACKENDS,
                key.index()
            );
        }
        self.backends.insert(key.index(), *value);
        Ok(())
    }

    fn delete_backend(&mut self, key: &BackendKey) -> Result<()> {
        self.write()?;
        self.backends.remove(&key.index());
        Ok(())
    }

    fn purge_flows(&mut self, stale: &StaleBackends) -> Result<(usize, usize)> {
        let (ct, affinity) = (self.ct.len(), self.affinity.len());
        self.ct.retain(|k, v| !stale.matches_ct(k, v));
        self.affinity.retain(|k, v| !stale.matches_affinity(k, v));
        Ok((ct - self.ct.len(), affinity - self.affinity.len()))
    }

    fn capacity(&self) -> (usize, usize) {
        self.capacity
            .unwrap_or((MAX_FRONTENDS as usize, MAX_BACKEND_SLOTS as usize))
    }

    fn batches(&self) -> bool {
        self.batch
    }
}

/// Inserts into `map` (`name`) as the kernel's hash maps do: a new key beyond `max` entries
/// fails, in the words of `KernelMaps` for E2BIG.
fn insert_bounded<K: Eq + std::hash::Hash + Copy, V: Copy>(
    map: &mut HashMap<K, V>,
    key: &K,
    value: &V,
    max: Option<usize>,
    name: &str,
) -> Result<()> {
    if let Some(max) = max {
        if map.len() >= max && !map.contains_key(key) {
            bail!("{name} is full ({max} entries)");
        }
    }
    map.insert(*key, *value);
    Ok(())
}
