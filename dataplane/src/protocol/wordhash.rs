//! A hasher for maps keyed by integers the node itself assigns (work-request ids, (client,
//! sequence) pairs): one multiply per word instead of SipHash's rounds. Not for keys an attacker
//! chooses freely in bulk; the maps that use it are bounded.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing's multiplier (2^64 / golden ratio), odd.
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// Hashes integer words by rotate, xor and multiply; the multiply leaves the high bits (which
/// the map's probing uses) depending on every input bit.
#[derive(Clone, Copy, Debug, Default)]
pub struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(K);
    }

    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

/// A `HashMap` hashed by [`WordHasher`].
pub type WordMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_keys_spread_over_the_high_bits() {
        let b = BuildHasherDefault::<WordHasher>::default();
        let mut tops = std::collections::HashSet::new();
        for k in 0u64..1024 {
            tops.insert(b.hash_one(k) >> 57);
        }
        // 7 high bits: 128 buckets, all of them hit by 1024 consecutive keys.
        assert_eq!(tops.len(), 128);
    }

    #[test]
    fn pairs_differ_by_order() {
        let b = BuildHasherDefault::<WordHasher>::default();
        assert_ne!(b.hash_one((1u64, 2u64)), b.hash_one((2u64, 1u64)));
        let mut m: WordMap<(u64, u64), u32> = WordMap::default();
        for c in 0..100 {
            for s in 0..100 {
                m.insert((c, s), (c * 100 + s) as u32);
            }
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m[&(42, 7)], 4207);
    }
}
