//! One typed key/value interface over a kernel hash map and an in-memory stand-in, so a table
//! written against [`KvMap`] runs in tests without root.

use std::{collections::HashMap, hash::Hash as StdHash};

use anyhow::{Context, Result};
use aya::{
    maps::{MapData, MapError},
    sys::SyscallError,
    Pod,
};

use super::Hash;

/// A typed map: the kernel's ([`super::Hash`]) or [`MemMap`].
pub trait KvMap<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>>;
    /// Creates or replaces.
    fn put(&mut self, key: &K, value: &V) -> Result<()>;
    /// Deletes; `false` if the key was not there (not an error: LRU maps evict on their own).
    fn delete(&mut self, key: &K) -> Result<bool>;
    /// Every entry (entries deleted meanwhile are skipped).
    fn entries(&self) -> Result<Vec<(K, V)>>;
}

fn is_errno(e: &MapError, errno: i32) -> bool {
    matches!(e, MapError::SyscallError(SyscallError { io_error, .. })
        if io_error.raw_os_error() == Some(errno))
}

impl<K: Pod, V: Pod> KvMap<K, V> for Hash<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>> {
        match aya::maps::HashMap::<MapData, K, V>::get(self, key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) if is_errno(&e, libc::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn put(&mut self, key: &K, value: &V) -> Result<()> {
        Ok(self.insert(key, value, 0)?)
    }

    fn delete(&mut self, key: &K) -> Result<bool> {
        match self.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn entries(&self) -> Result<Vec<(K, V)>> {
        self.iter()
            .collect::<Result<_, _>>()
            .context("reading the map")
    }
}

/// An in-memory map with the kernel map's semantics (no size limit).
#[derive(Clone, Debug, Default)]
pub struct MemMap<K, V>(pub HashMap<K, V>);

impl<K: StdHash + Eq + Copy, V: Copy> KvMap<K, V> for MemMap<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(self.0.get(key).copied())
    }

    fn put(&mut self, key: &K, value: &V) -> Result<()> {
        self.0.insert(*key, *value);
        Ok(())
    }

    fn delete(&mut self, key: &K) -> Result<bool> {
        Ok(self.0.remove(key).is_some())
    }

    fn entries(&self) -> Result<Vec<(K, V)>> {
        Ok(self.0.iter().map(|(k, v)| (*k, *v)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_map_deletes_report_presence() {
        let mut m = MemMap::<u32, u32>::default();
        m.put(&1, &10).unwrap();
        assert_eq!(m.get(&1).unwrap(), Some(10));
        assert!(m.delete(&1).unwrap());
        assert!(!m.delete(&1).unwrap());
        assert_eq!(m.entries().unwrap(), vec![]);
    }
}
