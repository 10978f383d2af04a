//! A file mapped into every process that shares it, accessed only through atomics.
//!
//! The shared-memory fabric's regions and the channel between the planes are both such files:
//! other processes write them while we read, so no reference into the mapping is ever handed
//! out; bytes are moved with atomic loads and stores (whole words where aligned).

use std::fs::File;
use std::sync::atomic::{fence, AtomicU64, AtomicU8, Ordering};

use memmap2::MmapRaw;

/// A shared mapping of a whole file.
pub struct MappedFile {
    map: MmapRaw,
}

impl MappedFile {
    /// Maps all of `file`, shared and writable.
    pub fn map(file: &File) -> std::io::Result<MappedFile> {
        Ok(MappedFile {
            map: MmapRaw::map_raw(file)?,
        })
    }

    /// Maps all of `file`, shared and writable, with every page faulted in now
    /// (`MAP_POPULATE`): the first touch of a page on the fast path costs no fault (on tmpfs, a
    /// page fault that also clears the page).
    pub fn map_populated(file: &File) -> std::io::Result<MappedFile> {
        Ok(MappedFile {
            map: memmap2::MmapOptions::new().populate().map_raw(file)?,
        })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The aligned 8-byte word at `at`.
    pub fn word(&self, at: usize) -> &AtomicU64 {
        assert!(
            at.is_multiple_of(8) && at + 8 <= self.len(),
            "word {at} out of the mapping"
        );
        // SAFETY: `at` is 8-aligned (the mapping is page-aligned) and inside the mapping, which
        // lives as long as `self`; the memory is only ever accessed atomically, by every process.
        unsafe { &*(self.map.as_mut_ptr().add(at) as *const AtomicU64) }
    }

    /// The byte at `at`.
    pub fn byte(&self, at: usize) -> &AtomicU8 {
        assert!(at < self.len(), "byte {at} out of the mapping");
        // SAFETY: inside the mapping, which lives as long as `self`; accessed only atomically.
        unsafe { &*(self.map.as_mut_ptr().add(at) as *const AtomicU8) }
    }

    /// Copies `buf.len()` bytes from `at` with atomic loads (words where aligned), then an
    /// acquire fence.
    pub fn load(&self, at: usize, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            let a = at + i;
            if a.is_multiple_of(8) && buf.len() - i >= 8 {
                let w = self.word(a).load(Ordering::Relaxed);
                buf[i..i + 8].copy_from_slice(&w.to_le_bytes());
                i += 8;
            } else {
                buf[i] = self.byte(a).load(Ordering::Relaxed);
                i += 1;
            }
        }
        fence(Ordering::Acquire);
    }

    /// Copies `bytes` to `at` with atomic stores (words where aligned), in address order, then a
    /// release fence.
    pub fn store(&self, at: usize, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            let a = at + i;
            if a.is_multiple_of(8) && bytes.len() - i >= 8 {
                let w = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
                self.word(a).store(w, Ordering::Relaxed);
                i += 8;
            } else {
                self.byte(a).store(bytes[i], Ordering::Relaxed);
                i += 1;
            }
        }
        fence(Ordering::Release);
    }
}
