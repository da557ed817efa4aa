//! [`KernelMaps`]: the service maps in the kernel, opened with `crate::maps`, written one
//! entry at a time or in batch calls; `BACKENDS_V2` through its memory (`maps::slots`).

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, MapData, MapError},
    sys::SyscallError,
    Pod,
};
use dataplane_common::{
    addr_bits::AddrBits,
    ct::{CtKey, CtValue, CT_MAX_ENTRIES},
    lb::{
        AffinityKey, AffinityValue, BackendKey, BackendValue, ServiceKey, ServiceValue,
        MAX_AFFINITY, MAX_FRONTENDS,
    },
    map_names,
    maps::{AFFINITY, CT, LB_ADDRS, LB_ADDR_BITS, SERVICES},
};

use super::{MapSource, MapStore, Partial, StaleBackends};
use crate::{
    maps::{
        batch::{BatchError, BatchMap},
        open_array, open_hash,
        slots::BackendSlots,
        Hash, KvMap as _,
    },
    services::addr_bits::AddrBitmap,
};

/// The datapath's maps in the kernel.
pub struct KernelMaps {
    addrs: Hash<u32, u32>,
    /// `LB_ADDR_BITS_V1`, and what this writer knows it holds.
    bits_map: Array<MapData, AddrBits>,
    bits: AddrBitmap,
    services: Hash<ServiceKey, ServiceValue>,
    backends: BackendSlots,
    affinity: Hash<AffinityKey, AffinityValue>,
    ct: Hash<CtKey, CtValue>,
    /// `LB_ADDRS_V1` and `SERVICES_V2` for batch calls; `None` once the kernel refused them
    /// (one write each from then on).
    batch: Option<[BatchMap; 2]>,
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
    /// Runs one batch call on map `which` (0 addrs, 1 services), falling back to
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
    /// Creates or replaces `entries` of map `which` in one batch call (see [`Self::batched`]).
    fn put_batched<K: Pod, V: Pod>(
        &mut self,
        which: usize,
        entries: &[(K, V)],
        single: impl Fn(&mut Self, &(K, V)) -> Result<()>,
    ) -> Result<(), Partial> {
        let call = |m: &BatchMap, e: &[(K, V)]| {
            let (k, v): (Vec<K>, Vec<V>) = e.iter().copied().unzip();
            m.update(&k, &v)
        };
        self.batched(which, entries, call, single, false)
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
    /// Opens `SERVICES_V2`, `BACKENDS_V2`, `AFFINITY_V1` and `CT_V2`, checking their layouts.
    pub fn open(source: &(impl MapSource + ?Sized)) -> Result<KernelMaps> {
        Ok(KernelMaps {
            addrs: open_hash(source, &LB_ADDRS)?,
            bits_map: open_array(source, &LB_ADDR_BITS)?,
            bits: AddrBitmap::default(),
            bits_batch: BatchMap::open(source, &LB_ADDR_BITS)?,
            services: open_hash(source, &SERVICES)?,
            backends: BackendSlots::open(source)?,
            affinity: open_hash(source, &AFFINITY)?,
            ct: open_hash(source, &CT)?,
            batch: Some([
                BatchMap::open(source, &LB_ADDRS)?,
                BatchMap::open(source, &SERVICES)?,
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
        let services = self.dump_services()?;
        Ok(super::slots_by_set(&services, self.backends.used()))
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        put(
            &mut self.services,
            key,
            value,
            map_names::SERVICES,
            MAX_FRONTENDS,
        )
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        delete(&mut self.services, key, map_names::SERVICES)
    }

    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<()> {
        self.backends.set(key.index(), value)
    }

    fn delete_backend(&mut self, key: &BackendKey) -> Result<()> {
        self.backends.clear(key.index())
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
        self.put_batched(0, entries, |s, (a, f)| s.put_addr(*a, *f))
    }

    fn put_services(&mut self, entries: &[(ServiceKey, ServiceValue)]) -> Result<(), Partial> {
        self.put_batched(1, entries, |s, (k, v)| s.put_service(k, v))
    }

    fn capacity(&self) -> (usize, usize) {
        (MAX_FRONTENDS as usize, self.backends.len() as usize)
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

/// Creates or replaces an entry of `map` (`name`, `limit` entries).
fn put<K: Pod, V: Pod>(
    map: &mut Hash<K, V>,
    key: &K,
    value: &V,
    name: &str,
    limit: u32,
) -> Result<()> {
    map.insert(key, value, 0)
        .map_err(|e| full(e, name, limit))
        .with_context(|| format!("updating {name}"))
}

/// Deletes an entry of `map` (`name`); an absent one is not an error.
fn delete<K: Pod, V: Pod>(map: &mut Hash<K, V>, key: &K, name: &str) -> Result<()> {
    map.delete(key)
        .map(drop)
        .with_context(|| format!("deleting from {name}"))
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
