//! The header cursor: walks a frame one header at a time, bounds-checked against `data_end`.
//!
//! Every read goes through [`Cursor::take`], which checks `pos + size_of::<T>() <= end` before
//! handing out a pointer: that comparison is what the verifier needs to see to allow the access.

use core::mem::size_of;

/// A position in the packet. The offset is kept as an integer built from constants and masked
/// header fields, never as a pointer difference: the verifier treats `ptr - ptr` as an unbounded
/// scalar and would then refuse any later `data + offset` access.
pub struct Cursor {
    pub start: usize,
    pub off: usize,
    pub end: usize,
}

impl Cursor {
    #[inline(always)]
    pub fn new(data: usize, data_end: usize) -> Self {
        Cursor {
            start: data,
            off: 0,
            end: data_end,
        }
    }

    /// A pointer to the `T` at the cursor, moving past it; `None` if the packet is too short.
    /// (A pointer, not a copy: the callers read only the fields they need, straight from the
    /// packet.)
    #[inline(always)]
    pub fn take<T>(&mut self) -> Option<*const T> {
        let at = self.start + self.off;
        if at + size_of::<T>() > self.end {
            return None;
        }
        self.off += size_of::<T>();
        Some(at as *const T)
    }

    /// Moves to `off` from the start of the frame (past IP options) if that is inside the
    /// linear data; the next [`take`](Self::take) re-checks its bound with the new offset.
    #[inline(always)]
    pub fn seek(&mut self, off: usize) -> bool {
        if self.start + off > self.end {
            return false;
        }
        self.off = off;
        true
    }

    /// Offset of the cursor from the start of the frame.
    #[inline(always)]
    pub fn offset(&self) -> usize {
        self.off
    }
}
