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

/// In the kernel (root, no namespace needed): a standalone hash map of `SERVICES_V2`'s layout,
/// filled, read back and emptied through the batch calls, and a missing key's ENOENT position.
#[cfg(test)]
mod kernel_tests {
    use std::os::fd::FromRawFd as _;

    use aya::maps::{HashMap, Map, MapData};
    use dataplane_common::{
        lb::{ServiceKey, ServiceValue},
        maps::SERVICES,
    };

    use super::*;

    /// BPF_MAP_CREATE of a plain hash map (`union bpf_attr`'s first members).
    fn create_hash(key_size: u32, value_size: u32, max_entries: u32) -> OwnedFd {
        #[repr(C)]
        #[derive(Default)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        let mut attr = CreateAttr {
            map_type: 1,
            key_size,
            value_size,
            max_entries,
            ..Default::default()
        };
        // SAFETY: a valid attr prefix of its own size; the kernel zero-fills the rest.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                0,
                &mut attr as *mut CreateAttr,
                size_of::<CreateAttr>(),
            )
        };
        assert!(
            fd >= 0,
            "BPF_MAP_CREATE: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn key(i: u32) -> ServiceKey {
        ServiceKey::new(i, 80u16.to_be(), 6)
    }

    #[test]
    fn batch_update_and_delete_in_a_kernel_hash_map() {
        let n = 10_000u32;
        let fd = create_hash(SERVICES.key_size, SERVICES.value_size, n);
        let reader = fd.try_clone().unwrap();
        let map = BatchMap {
            fd,
            spec: &SERVICES,
        };
        let keys: Vec<ServiceKey> = (0..n).map(key).collect();
        let values: Vec<ServiceValue> = (0..n)
            .map(|i| ServiceValue {
                frontend_id: i,
                set_id: i + 1,
                count: 3,
                ..Default::default()
            })
            .collect();
        map.update(&keys, &values).expect("BPF_MAP_UPDATE_BATCH");
        let data = MapData::from_fd(reader).unwrap();
        let read: HashMap<MapData, ServiceKey, ServiceValue> =
            HashMap::try_from(Map::HashMap(data)).unwrap();
        let all: Vec<(ServiceKey, ServiceValue)> = read.iter().map(Result::unwrap).collect();
        assert_eq!(all.len(), n as usize);
        for (k, v) in &all {
            assert_eq!(v.frontend_id, k.addr);
            assert_eq!(v.set_id, k.addr + 1);
        }
        // A full map refuses the next new key: E2BIG, after the elements that fit.
        let more = [key(n), key(n + 1)];
        let err = map.update(&more, &values[..2]).unwrap_err();
        assert_eq!(err.error.raw_os_error(), Some(libc::E2BIG), "{err}");
        assert_eq!(err.done, 0, "{err}");
        // A missing key stops a delete batch where it stands.
        let mut doomed: Vec<ServiceKey> = keys[..100].to_vec();
        doomed.insert(50, key(n + 7));
        let err = map.delete(&doomed).unwrap_err();
        assert_eq!(err.error.raw_os_error(), Some(libc::ENOENT), "{err}");
        assert_eq!(err.done, 50, "{err}");
        map.delete(&keys[50..]).expect("BPF_MAP_DELETE_BATCH");
        assert_eq!(read.iter().count(), 0);
    }
}
