//! BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH (kernel 5.6+): many elements per bpf(2) call.
//! aya 0.14 has no API for them, so this is a small raw-syscall wrapper. A full sync of 10,000
//! services writes ~110,000 entries; one syscall per entry was most of its time.
//!
//! Per element the kernel does what BPF_MAP_UPDATE_ELEM / BPF_MAP_DELETE_ELEM do (each element is
//! atomic for the programs, the batch as a whole is not): callers order batches as they would
//! order single writes. Map kinds whose `map_ops` have no batch callbacks (LPM tries, ring
//! buffers) refuse with EOPNOTSUPP/EINVAL; [`BatchMap::supported`] says so once and callers fall
//! back to single writes.

use std::os::fd::{AsRawFd as _, OwnedFd};

use anyhow::{bail, Context, Result};
use aya::Pod;
use dataplane_common::maps::MapSpec;

use super::MapSource;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: elements given; out: elements processed (also on error).
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Elements per syscall: the kernel copies keys and values in with one allocation per element;
/// big batches only lengthen the time other writers wait on the syscall, not the throughput.
pub const CHUNK: usize = 4096;

/// A failed batch: how many elements (from the start) the kernel did apply, and why it stopped.
#[derive(Debug)]
pub struct BatchError {
    pub done: usize,
    pub error: std::io::Error,
}

/// A map opened for batch operations (a descriptor of its own).
pub struct BatchMap {
    fd: OwnedFd,
    pub spec: &'static MapSpec,
}

impl BatchMap {
    /// Opens the map of `spec` (its layout checked by [`super::open`]) for batch calls.
    pub fn open(source: &(impl MapSource + ?Sized), spec: &'static MapSpec) -> Result<BatchMap> {
        let map = super::open(source, spec)?;
        let data = match &map {
            aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::Array(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::LpmTrie(d) => d,
            _ => bail!("{} is not a key/value map", spec.name),
        };
        use std::os::fd::AsFd as _;
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("dup of {}", spec.name))?;
        Ok(BatchMap { fd, spec })
    }

    /// Whether the kernel takes batch calls on this map kind at all (no syscall: by kind).
    pub fn supported(&self) -> bool {
        self.spec.kind.batch_ops()
    }

    /// Creates or replaces `keys[i] -> values[i]`, in order, [`CHUNK`] per syscall.
    pub fn update<K: Pod, V: Pod>(&self, keys: &[K], values: &[V]) -> Result<(), BatchError> {
        assert_eq!(keys.len(), values.len(), "one value per key");
        self.check_sizes::<K>(Some(size_of::<V>()));
        let mut done = 0;
        for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
            let mut attr = self.attr(k.as_ptr() as u64, k.len());
            attr.values = v.as_ptr() as u64;
            self.call(BPF_MAP_UPDATE_BATCH, &mut attr, &mut done)?;
        }
        Ok(())
    }

    /// Deletes `keys`, in order, [`CHUNK`] per syscall. A key that is not there stops the batch
    /// with ENOENT (`done` says where): callers delete only keys they know are present.
    pub fn delete<K: Pod>(&self, keys: &[K]) -> Result<(), BatchError> {
        self.check_sizes::<K>(None);
        let mut done = 0;
        for k in keys.chunks(CHUNK) {
            let mut attr = self.attr(k.as_ptr() as u64, k.len());
            self.call(BPF_MAP_DELETE_BATCH, &mut attr, &mut done)?;
        }
        Ok(())
    }

    fn check_sizes<K>(&self, value: Option<usize>) {
        assert_eq!(
            size_of::<K>(),
            self.spec.key_size as usize,
            "{}",
            self.spec.name
        );
        if let Some(v) = value {
            assert_eq!(v, self.spec.value_size as usize, "{}", self.spec.name);
        }
    }

    fn attr(&self, keys: u64, count: usize) -> BatchAttr {
        BatchAttr {
            keys,
            count: count as u32,
            map_fd: self.fd.as_raw_fd() as u32,
            ..Default::default()
        }
    }

    fn call(
        &self,
        cmd: libc::c_long,
        attr: &mut BatchAttr,
        done: &mut usize,
    ) -> Result<(), BatchError> {
        let given = attr.count as usize;
        // SAFETY: attr is a valid bpf_attr prefix for the batch commands (the kernel zero-checks
        // the rest of the size it is given); keys/values point at live slices of `count`
        // elements of the map's key and value sizes, checked above.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            return Err(BatchError {
                done: *done + (attr.count as usize).min(given),
                error,
            });
        }
        *done += given;
        Ok(())
    }
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch stopped after {} elements: {}",
            self.done, self.error
        )
    }
}

impl std::error::Error for BatchError {}
