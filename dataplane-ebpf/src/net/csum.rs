//! Checksums: the incremental updates of `dataplane_common::csum` and the full sum of a header
//! built on the stack.

pub use dataplane_common::csum::{diff, fold, pseudo_seed, replace2, replace4, udp_fixup};

use super::hdr::bytes_of;

/// The Internet checksum of a header of `N` bytes (`N` even), as it is stored: native 16-bit
/// words summed, the complement stored back natively (no byte swapping either way).
#[inline(always)]
pub fn checksum<T: Copy, const N: usize>(hdr: &T) -> u16 {
    let bytes = bytes_of::<T, N>(hdr);
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    !fold(sum)
}
