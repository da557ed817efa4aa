//! `BACKENDS_V2` through memory: the array is created `BPF_F_MMAPABLE`, so the agent maps it and
//! writes a slot with one 8-byte store instead of one bpf(2) element (a full sync of 10,000
//! services writes ~110,000 slots). A slot is one `BackendValue` of 8 bytes at an 8-byte aligned
//! offset, so each store is atomic for the programs: they see the old slot or the new, never a
//! mix. The order the planner gives (slots before the service value that names them) holds
//! because the `SERVICES_V2` update that follows is a syscall, which orders the stores before it.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{bail, Context, Result};
use dataplane_common::{lb::BackendValue, maps::BACKENDS};

use super::MapSource;

/// `BACKENDS_V2`, mapped read-write.
pub struct BackendSlots {
    base: NonNull<AtomicU64>,
    slots: u32,
    len: usize,
    /// Keeps the map alive for as long as the mapping is used.
    _fd: OwnedFd,
}

// SAFETY: the mapping is shared kernel memory accessed only through atomics.
unsafe impl Send for BackendSlots {}
unsafe impl Sync for BackendSlots {}

const _: () = assert!(size_of::<BackendValue>() == 8 && align_of::<BackendValue>() <= 8);

impl BackendSlots {
    /// Maps `BACKENDS_V2` (its layout and `BPF_F_MMAPABLE` checked).
    pub fn open(source: &(impl MapSource + ?Sized)) -> Result<BackendSlots> {
        let map = super::open(source, &BACKENDS)?;
        let aya::maps::Map::Array(data) = &map else {
            bail!("{} is not an array", BACKENDS.name);
        };
        let info = data.info().context("reading map info")?;
        if info.map_flags() & BACKENDS.flags != BACKENDS.flags {
            bail!(
                "{} was created without BPF_F_MMAPABLE (flags {:#x}); run `dataplane cleanup` \
                 and start the agent again",
                BACKENDS.name,
                info.map_flags()
            );
        }
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("dup of BACKENDS_V2")?;
        let slots = info.max_entries();
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (slots as usize * 8).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's value area (the kernel checks size and flags);
        // it stays valid while `_fd` keeps the map open and until Drop unmaps it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mmap of {}", BACKENDS.name));
        }
        Ok(BackendSlots {
            base: NonNull::new(p.cast()).expect("mmap returned a mapping"),
            slots,
            len,
            _fd: fd,
        })
    }

    /// Slots in the map.
    pub fn len(&self) -> u32 {
        self.slots
    }

    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }

    fn cell(&self, index: u32) -> Result<&AtomicU64> {
        if index >= self.slots {
            bail!(
                "{} has no slot {index} ({} slots)",
                BACKENDS.name,
                self.slots
            );
        }
        // SAFETY: in bounds of the mapping, 8-byte aligned (page-aligned base).
        Ok(unsafe { &*self.base.as_ptr().add(index as usize) })
    }

    /// Writes slot `index`.
    pub fn set(&self, index: u32, value: &BackendValue) -> Result<()> {
        let bits = u64::from_ne_bytes(bytes(value));
        self.cell(index)?.store(bits, Ordering::Release);
        Ok(())
    }

    /// Clears slot `index` (a free slot is all zero).
    pub fn clear(&self, index: u32) -> Result<()> {
        self.cell(index)?.store(0, Ordering::Release);
        Ok(())
    }

    /// Slot `index`, `None` if free.
    pub fn get(&self, index: u32) -> Result<Option<BackendValue>> {
        Ok(value(self.cell(index)?.load(Ordering::Acquire)))
    }

    /// Every used slot, `(index, value)`.
    pub fn used(&self) -> Vec<(u32, BackendValue)> {
        (0..self.slots)
            .filter_map(|i| {
                let v = self.cell(i).ok()?.load(Ordering::Relaxed);
                value(v).map(|v| (i, v))
            })
            .collect()
    }
}

impl Drop for BackendSlots {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

fn bytes(v: &BackendValue) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&v.addr.to_ne_bytes());
    out[4..6].copy_from_slice(&v.port.to_ne_bytes());
    out[6..].copy_from_slice(&v.flags.to_ne_bytes());
    out
}

fn value(bits: u64) -> Option<BackendValue> {
    if bits == 0 {
        return None;
    }
    let b = bits.to_ne_bytes();
    Some(BackendValue {
        addr: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        port: u16::from_ne_bytes([b[4], b[5]]),
        flags: u16::from_ne_bytes([b[6], b[7]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_the_value_s_bytes_in_order() {
        let v = BackendValue {
            addr: 0x0a_f4_02_0f,
            port: 8080u16.to_be(),
            flags: 1,
        };
        // repr(C): addr, port, flags, no padding: the same bytes the program reads.
        let raw: [u8; 8] = unsafe { std::mem::transmute(v) };
        assert_eq!(bytes(&v), raw);
        assert_eq!(value(u64::from_ne_bytes(raw)), Some(v));
        assert_eq!(value(0), None);
    }
}
