//! The service maps, written through [`MapStore`]: the kernel maps ([`KernelMaps`], opened with
//! `crate::maps`), or an in-memory model for tests without root ([`MemMaps`]).

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, MapData, MapError},
    sys::SyscallError,
    Pod,
};
use dataplane_common::{
    addr_bits::AddrBits,
    ct::{CtKey, CtValue, CT_F_REPLY, CT_MAX_ENTRIES},
    lb::{
        AffinityKey, AffinityValue, BackendKey, BackendValue, ServiceKey, ServiceValue,
        MAX_AFFINITY, MAX_BACKEND_SLOTS, MAX_FRONTENDS,
    },
    map_names,
    maps::{AFFINITY, BACKENDS, CT, LB_ADDRS, LB_ADDR_BITS, SERVICES},
};

use super::addr_bits::AddrBitmap;
use crate::maps::{
    batch::{BatchError, BatchMap},
    open_array, open_hash, Hash, KvMap as _,
};
pub use crate::maps::{read_config, write_config, MapSource};

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
    /// Every `SERVICES_V1` entry.
    fn dump_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>>;
    /// Every `BACKENDS_V1` entry.
    fn dump_backends(&self) -> Result<Vec<(BackendKey, BackendValue)>>;
    /// Creates or replaces a `SERVICES_V1` entry.
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()>;
    /// Deletes a `SERVICES_V1` entry.
    fn delete_service(&mut self, key: &ServiceKey) -> Result<()>;
    /// Creates or replaces a `BACKENDS_V1` slot.
    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<()>;
    /// Deletes a `BACKENDS_V1` slot.
    fn delete_backend(&mut self, key: &BackendKey) -> Result<()>;
    /// Deletes the `CT_V2` and `AFFINITY_V1` entries `stale` matches; returns how many of each.
    fn purge_flows(&mut self, stale: &StaleBackends) -> Result<(usize, usize)>;
    /// Entries `SERVICES_V1` and `BACKENDS_V1` can hold: what a sync must fit in.
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

    /// Creates or replaces `BACKENDS_V1` slots.
    fn put_backends(&mut self, entries: &[(BackendKey, BackendValue)]) -> Result<(), Partial> {
        each(entries, |(k, v)| self.put_backend(k, v))
    }
    /// Creates or replaces `SERVICES_V1` entries.
    fn put_services(&mut self, entries: &[(ServiceKey, ServiceValue)]) -> Result<(), Partial> {
        each(entries, |(k, v)| self.put_service(k, v))
    }
    /// Deletes `BACKENDS_V1` slots (absent ones are not an error).
    fn delete_backends(&mut self, keys: &[BackendKey]) -> Result<(), Partial> {
        each(keys, |k| self.delete_backend(k))
    }
    /// Creates or replaces `LB_ADDRS_V1` entries.
    fn put_addrs(&mut self, entries: &[(u32, u32)]) -> Result<(), Partial> {
        each(entries, |(a, f)| self.put_addr(*a, *f))
    }
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

/// The datapath's maps in the kernel.
pub struct KernelMaps {
    addrs: Hash<u32, u32>,
    /// `LB_ADDR_BITS_V1`, and what this writer knows it holds.
    bits_map: Array<MapData, AddrBits>,
    bits: AddrBitmap,
    services: Hash<ServiceKey, ServiceValue>,
    backends: Hash<BackendKey, BackendValue>,
    affinity: Hash<AffinityKey, AffinityValue>,
    ct: Hash<CtKey, CtValue>,
    /// The same three maps for batch calls; `None` once the kernel refused them (one write
    /// each from then on).
    batch: Option<[BatchMap; 3]>,
    /// `LB_ADDR_BITS_V1` for batch calls.
    bits_batch: BatchMap,
}

/// Errors of a kernel without BPF_MAP_*_BATCH (before 5.6) or a map kind without them.
fn batch_unsupported(e: &std::io::Error) -> bool {
    const ENOTSUPP: i32 = 524;
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

impl KernelMaps {
    /// Runs one batch call on map `which` (0 addrs, 1 services, 2 backends), falling back to
    /// `single` (one write each, from where the batch stopped) if the kernel refuses batches
    /// or a delete meets an absent key.
    fn batched<T>(
        &mut self,
        which: usize,
        items: &[T],
        call: impl Fn(&BatchMap, &[T]) -> Result<(), BatchError>,
        single: impl Fn(&mut Self, &T) -> Result<()>,
        deleting: bool,
    ) -> Result<(), Partial> {
        let mut from = 0;
        if let Some(maps) = &self.batch {
            let map = &maps[which];
            match call(map, items) {
                Ok(()) => return Ok(()),
                Err(BatchError { done, error }) if done == 0 && batch_unsupported(&error) => {
                    log::warn!(
                        "{}: the kernel refuses batch map operations ({error}): one syscall \
                         per entry from now on",
                        map.spec.name
                    );
                    self.batch = None;
                }
                Err(BatchError { done, error })
                    if deleting && error.raw_os_error() == Some(libc::ENOENT) =>
                {
                    from = done;
                }
                Err(BatchError { done, error }) => {
                    let name = map.spec.name;
                    let error = if error.raw_os_error() == Some(libc::E2BIG) {
                        anyhow!("{name} is full ({} entries)", map.spec.max_entries)
                    } else {
                        anyhow::Error::from(error).context(format!("batch update of {name}"))
                    };
                    return Err(Partial { done, error });
                }
            }
        }
        for (i, item) in items.iter().enumerate().skip(from) {
            single(self, item).map_err(|error| Partial { done: i, error })?;
        }
        Ok(())
    }
}

impl KernelMaps {
    /// Writes `LB_ADDR_BITS_V1` words (one batch; one write each if the kernel refuses it). A
    /// word named twice is written with its last value, which holds the earlier one's bits.
    fn put_bits(&mut self, words: &[(u32, AddrBits)]) -> Result<()> {
        if words.is_empty() {
            return Ok(());
        }
        let (k, v): (Vec<u32>, Vec<AddrBits>) = words.iter().copied().unzip();
        if self.bits_batch.update(&k, &v).is_ok() {
            return Ok(());
        }
        for (word, bits) in words {
            self.bits_map
                .set(*word, bits, 0)
                .with_context(|| format!("writing {}", map_names::LB_ADDR_BITS))?;
        }
        Ok(())
    }
}

impl KernelMaps {
    /// Opens `SERVICES_V1`, `BACKENDS_V1`, `AFFINITY_V1` and `CT_V2`, checking their layouts.
    pub fn open(source: &(impl MapSource + ?Sized)) -> Result<KernelMaps> {
        Ok(KernelMaps {
            addrs: open_hash(source, &LB_ADDRS)?,
            bits_map: open_array(source, &LB_ADDR_BITS)?,
            bits: AddrBitmap::default(),
            bits_batch: BatchMap::open(source, &LB_ADDR_BITS)?,
            services: open_hash(source, &SERVICES)?,
            backends: open_hash(source, &BACKENDS)?,
            affinity: open_hash(source, &AFFINITY)?,
            ct: open_hash(source, &CT)?,
            batch: Some([
                BatchMap::open(source, &LB_ADDRS)?,
                BatchMap::open(source, &SERVICES)?,
                BatchMap::open(source, &BACKENDS)?,
            ]),
        })
    }
}

impl MapStore for KernelMaps {
    fn dump_addrs(&self) -> Result<Vec<(u32, u32)>> {
        dump(&self.addrs, map_names::LB_ADDRS)
    }

    fn put_addr(&mut self, addr: u32, flags: u32) -> Result<()> {
        if let Some(word) = self.bits.add(addr, flags) {
            self.put_bits(&[word])?;
        }
        self.addrs
            .insert(addr, flags, 0)
            .with_context(|| format!("writing {}", map_names::LB_ADDRS))
    }

    fn delete_addr(&mut self, addr: u32) -> Result<()> {
        self.addrs
            .delete(&addr)
            .map(drop)
            .with_context(|| format!("deleting from {}", map_names::LB_ADDRS))?;
        match self.bits.remove(addr) {
            Some(word) => self.put_bits(&[word]),
            None => Ok(()),
        }
    }

    fn adopt_addr_bits(&mut self) -> Result<()> {
        let mut missing = Vec::new();
        for (addr, flags) in self.dump_addrs()? {
            let p = dataplane_common::addr_bits::probe(addr);
            let current = self
                .bits_map
                .get(&p.word, 0)
                .with_context(|| format!("reading {}", map_names::LB_ADDR_BITS))?;
            missing.extend(self.bits.adopt(addr, flags, current));
        }
        if !missing.is_empty() {
            log::info!(
                "{}: set the bits of {} words for adopted addresses",
                map_names::LB_ADDR_BITS,
                missing.len()
            );
        }
        self.put_bits(&missing)
    }

    fn dump_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        dump(&self.services, map_names::SERVICES)
    }

    fn dump_backends(&self) -> Result<Vec<(BackendKey, BackendValue)>> {
        dump(&self.backends, map_names::BACKENDS)
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(|e| full(e, map_names::SERVICES, MAX_FRONTENDS))
            .context("updating SERVICES_V1")
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.services
            .delete(key)
            .map(drop)
            .context("deleting from SERVICES_V1")
    }

    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<()> {
        self.backends
            .insert(key, value, 0)
            .map_err(|e| full(e, map_names::BACKENDS, MAX_BACKEND_SLOTS))
            .context("updating BACKENDS_V1")
    }

    fn delete_backend(&mut self, key: &BackendKey) -> Result<()> {
        self.backends
            .delete(key)
            .map(drop)
            .context("deleting from BACKENDS_V1")
    }

    fn batches(&self) -> bool {
        true
    }

    fn put_addrs(&mut self, entries: &[(u32, u32)]) -> Result<(), Partial> {
        // Every word first: a listed address's bits are set before the pod hooks can see it.
        let words: Vec<(u32, AddrBits)> = entries
            .iter()
            .filter_map(|(a, f)| self.bits.add(*a, *f))
            .collect();
        self.put_bits(&words)
            .map_err(|error| Partial { done: 0, error })?;
        self.batched(
            0,
            entries,
            |m, e| {
                let (k, v): (Vec<u32>, Vec<u32>) = e.iter().copied().unzip();
                m.update(&k, &v)
            },
            |s, (a, f)| s.put_addr(*a, *f),
            false,
        )
    }

    fn put_services(&mut self, entries: &[(ServiceKey, ServiceValue)]) -> Result<(), Partial> {
        self.batched(
            1,
            entries,
            |m, e| {
                let (k, v): (Vec<_>, Vec<_>) = e.iter().copied().unzip();
                m.update(&k, &v)
            },
            |s, (k, v)| s.put_service(k, v),
            false,
        )
    }

    fn put_backends(&mut self, entries: &[(BackendKey, BackendValue)]) -> Result<(), Partial> {
        self.batched(
            2,
            entries,
            |m, e| {
                let (k, v): (Vec<_>, Vec<_>) = e.iter().copied().unzip();
                m.update(&k, &v)
            },
            |s, (k, v)| s.put_backend(k, v),
            false,
        )
    }

    fn delete_backends(&mut self, keys: &[BackendKey]) -> Result<(), Partial> {
        self.batched(
            2,
            keys,
            |m, k| m.delete(k),
            |s, k| s.delete_backend(k),
            true,
        )
    }

    fn purge_flows(&mut self, stale: &StaleBackends) -> Result<(usize, usize)> {
        let ct = purge(&mut self.ct, CT_MAX_ENTRIES, |k, v| stale.matches_ct(k, v))
            .context("purging CT_V2")?;
        let affinity = purge(&mut self.affinity, MAX_AFFINITY, |k, v| {
            stale.matches_affinity(k, v)
        })
        .context("purging AFFINITY_V1")?;
        Ok((ct, affinity))
    }
}

/// A hash map refuses a new key with E2BIG when it holds max_entries: say so in words.
fn full(e: MapError, name: &str, limit: u32) -> anyhow::Error {
    match &e {
        MapError::SyscallError(SyscallError { io_error, .. })
            if io_error.raw_os_error() == Some(libc::E2BIG) =>
        {
            anyhow!("{name} is full ({limit} entries)")
        }
        _ => e.into(),
    }
}

/// Every entry of a map (entries deleted while iterating are skipped).
pub(crate) fn dump<K: Pod, V: Pod>(map: &Hash<K, V>, name: &str) -> Result<Vec<(K, V)>> {
    map.entries().with_context(|| format!("reading {name}"))
}

/// Deletes the entries `stale` matches. Keys are collected first and deleted after the scan:
/// deleting the key a get_next_key walk stands on would restart the walk. The walk is bounded
/// because concurrent datapath evictions can restart it too.
fn purge<K: Pod, V: Pod>(
    map: &mut Hash<K, V>,
    max_entries: u32,
    stale: impl Fn(&K, &V) -> bool,
) -> Result<usize> {
    let mut doomed = Vec::new();
    for entry in map.iter().take(2 * max_entries as usize) {
        let (k, v) = entry?;
        if stale(&k, &v) {
            doomed.push(k);
        }
    }
    let mut deleted = 0;
    for k in &doomed {
        deleted += usize::from(map.delete(k)?);
    }
    Ok(deleted)
}

/// An in-memory model of the maps: for tests of code built on `ServiceTable` that run without
/// root, and for the table's own tests. Fields are public so tests can seed conntrack and
/// affinity entries and inspect the result.
#[derive(Clone, Debug, Default)]
pub struct MemMaps {
    /// `SERVICES_V1`.
    pub services: HashMap<ServiceKey, ServiceValue>,
    /// `BACKENDS_V1`.
    pub backends: HashMap<BackendKey, BackendValue>,
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
    /// Writes of these `SERVICES_V1` keys fail.
    pub poisoned_frontends: HashSet<ServiceKey>,
    /// `(SERVICES_V1, BACKENDS_V1)` sizes: new keys beyond them fail as the kernel's E2BIG
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
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.write()?;
        if self.poisoned_frontends.contains(key) {
            bail!("injected write failure of frontend {key:?}");
        }
        if let Some((max, _)) = self.capacity {
            if self.services.len() >= max && !self.services.contains_key(key) {
                bail!("{} is full ({max} entries)", map_names::SERVICES);
            }
        }
        self.services.insert(*key, *value);
        Ok(())
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
        if let Some((_, max)) = self.capacity {
            if self.backends.len() >= max && !self.backends.contains_key(key) {
                bail!("{} is full ({max} entries)", map_names::BACKENDS);
            }
        }
        self.backends.insert(*key, *value);
        Ok(())
    }

    fn delete_backend(&mut self, key: &BackendKey) -> Result<()> {
        self.write()?;
        self.backends.remove(key);
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
        let key = CtKey {
            saddr: 1,
            daddr: 2,
            sport: 3,
            dport: 4,
            proto,
            phase: 0,
            _pad: [0; 2],
        };
        let value = CtValue {
            nat_daddr: backend.0,
            nat_dport: backend.1,
            frontend_id,
            ..Default::default()
        };
        (key, value)
    }

    fn reply(proto: u8, backend: (u32, u16), frontend_id: u32) -> (CtKey, CtValue) {
        let key = CtKey {
            saddr: backend.0,
            sport: backend.1,
            daddr: 1,
            dport: 3,
            proto,
            phase: 1,
            _pad: [0; 2],
        };
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
