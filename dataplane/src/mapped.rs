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

    /// The atomic words covering `[at, at + 8 * n)`, `at` 8-aligned (bounds checked once).
    fn words(&self, at: usize, n: usize) -> &[AtomicU64] {
        if n == 0 {
            return &[];
        }
        assert!(
            at.is_multiple_of(8) && at + 8 * n <= self.len(),
            "words {at}+{n} out of the mapping"
        );
        // SAFETY: `at` is 8-aligned (the mapping is page-aligned) and the `n` words lie inside
        // the mapping, which lives as long as `self`; the memory is only accessed atomically.
        unsafe { std::slice::from_raw_parts(self.map.as_mut_ptr().add(at) as *const AtomicU64, n) }
    }

    /// Copies `buf.len()` bytes from `at` with atomic loads (words where aligned), then an
    /// acquire fence.
    pub fn load(&self, at: usize, buf: &mut [u8]) {
        let head = ((8 - at % 8) % 8).min(buf.len());
        for (i, b) in buf[..head].iter_mut().enumerate() {
            *b = self.byte(at + i).load(Ordering::Relaxed);
        }
        let body = (buf.len() - head) / 8;
        let words = self.words(at + head, body);
        for (chunk, w) in buf[head..head + 8 * body].chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        let tail = head + 8 * body;
        for (i, b) in buf[tail..].iter_mut().enumerate() {
            *b = self.byte(at + tail + i).load(Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
    }

    /// Copies `bytes` to `at` with atomic stores (words where aligned), in address order, then a
    /// release fence.
    pub fn store(&self, at: usize, bytes: &[u8]) {
        let head = ((8 - at % 8) % 8).min(bytes.len());
        for (i, &b) in bytes[..head].iter().enumerate() {
            self.byte(at + i).store(b, Ordering::Relaxed);
        }
        let body = (bytes.len() - head) / 8;
        let words = self.words(at + head, body);
        for (chunk, w) in bytes[head..head + 8 * body].chunks_exact(8).zip(words) {
            w.store(
                u64::from_le_bytes(chunk.try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
        }
        let tail = head + 8 * body;
        for (i, &b) in bytes[tail..].iter().enumerate() {
            self.byte(at + tail + i).store(b, Ordering::Relaxed);
        }
        fence(Ordering::Release);
    }

    /// Asks the processor to bring the cache lines of `[at, at + len)` close (a hint: nothing
    /// is read or written, and it is a no-op off x86-64). A writer that knows where its next
    /// write goes takes the lines' misses now, while it waits anyway, and not on its next copy.
    pub fn prefetch(&self, at: usize, len: usize) {
        let end = (at + len).min(self.len());
        #[cfg(target_arch = "x86_64")]
        for line in (at & !63..end).step_by(64) {
            // SAFETY: `line` lies inside the mapping, which lives as long as `self`; a
            // prefetch reads nothing into the program and cannot fault.
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    self.map.as_mut_ptr().add(line) as *const i8,
                    std::arch::x86_64::_MM_HINT_T0,
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = end;
    }
}

#[cfg(test)]
mod tests {
    use super::MappedFile;

    #[test]
    fn copies_round_trip_at_every_alignment_and_length() {
        let path = std::env::temp_dir().join(format!("rapax-mapped-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(4096).unwrap();
        let map = MappedFile::map(&file).unwrap();
        std::fs::remove_file(&path).unwrap();
        for at in 0..16 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200] {
                let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + at + 1) as u8).collect();
                map.store(0, &[0u8; 512]);
                map.store(at, &bytes);
                let mut back = vec![0u8; len];
                map.load(at, &mut back);
                assert_eq!(back, bytes, "at {at}, {len} bytes");
                let mut around = vec![0u8; 512];
                map.load(0, &mut around);
                assert!(around[..at].iter().all(|&b| b == 0), "before {at}");
                assert!(
                    around[at + len..].iter().all(|&b| b == 0),
                    "after {at}+{len}"
                );
                map.prefetch(at, len);
            }
        }
        map.prefetch(4000, 4096); // clamped to the mapping
    }
}
