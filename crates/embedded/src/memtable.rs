//! The memtable: atoms indexed since the last spill, found by hash and by Hilbert key through
//! one table.
//!
//! A position's low bits are its hash's first eight bytes (decision 0003), and a key is an
//! exact function of modality and position; so every atom with a given key, and the atom with
//! a given hash, sit in the probe chain of those eight bytes. One open-addressing table of
//! 8-byte slots (a 32-bit tag of the prefix and an entry's index) over a dense list of entries
//! answers both lookups: a new atom's probe costs one cache line of the table, loaded ahead of
//! time ([`MemTable::prefetch`]), and its entry is appended, not hashed into place. (Two hash
//! maps, by hash and by key, each cost a cache miss per insert: ~8 % of a text ingest.)

use hart_core::{Hash, HilbertKey, Position};

/// One indexed atom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub hash: Hash,
    pub key: HilbertKey,
    pub off: u64,
}

pub struct MemTable {
    /// Linear probing; 0 is empty, otherwise `tag | (index + 1)` with the tag in the high 32
    /// bits.
    slots: Vec<u64>,
    /// Entries in insertion order; one per hash (a later insert of a hash replaces its entry).
    entries: Vec<Entry>,
    /// Mixed into the slot of a prefix, so that prefixes chosen to share a slot (eight bytes of
    /// BLAKE3 output can be matched with 2^32 tries) cannot be aimed at one.
    seed: u64,
}

const TAG: u64 = 0xffff_ffff_0000_0000;
/// Slots per entry at least: probe chains stay short (load ≤ 0.5; a spill's 400 K entries
/// fill 1 Mi slots to 0.38).
const SLOTS_PER_ENTRY: usize = 2;

/// The first eight bytes of the hash of an atom at `pos`, as [`Hash::prefix_u64`] reads them.
#[inline]
pub fn prefix_of_position(pos: &Position) -> u64 {
    let c = pos.coords();
    (0..4).fold(0u64, |acc, i| acc | (u64::from(c[i] & 0xffff) << (16 * i)))
}

impl MemTable {
    pub fn with_capacity(entries: usize) -> Self {
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x6861_7274);
            h.finish()
        };
        MemTable { slots: vec![0; Self::slots_for(entries)], entries: Vec::with_capacity(entries), seed }
    }

    fn slots_for(entries: usize) -> usize {
        (entries * SLOTS_PER_ENTRY).next_power_of_two().max(1024)
    }

    #[inline]
    fn home(&self, prefix: u64) -> usize {
        let shift = 64 - self.slots.len().trailing_zeros();
        ((prefix ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as usize
    }

    /// Start loading the slot where `hash`'s chain begins.
    #[inline]
    pub fn prefetch(&self, hash: &Hash) {
        hart_core::prefetch(&self.slots[self.home(hash.prefix_u64())]);
    }

    /// Entries whose hash starts with the eight bytes `prefix`, in probe order.
    #[inline]
    pub fn with_prefix(&self, prefix: u64) -> impl Iterator<Item = &Entry> + '_ {
        let mask = self.slots.len() - 1;
        let tag = prefix & TAG;
        let mut i = self.home(prefix);
        // Empty (after a spill, which is how queries mostly find it): no slot to load.
        let mut done = self.entries.is_empty();
        std::iter::from_fn(move || loop {
            if done {
                return None;
            }
            let s = self.slots[i];
            if s == 0 {
                done = true;
                return None;
            }
            i = (i + 1) & mask;
            if s & TAG == tag {
                let e = &self.entries[(s as u32 - 1) as usize];
                if e.hash.prefix_u64() == prefix {
                    return Some(e);
                }
            }
        })
    }

    /// The offset indexed under `hash` (live or not: the caller asks the state).
    #[inline]
    pub fn get(&self, hash: &Hash) -> Option<u64> {
        self.with_prefix(hash.prefix_u64()).find(|e| e.hash == *hash).map(|e| e.off)
    }

    /// The offset of an atom indexed under `key` for which `live` holds.
    pub fn get_key(&self, key: &HilbertKey, live: impl Fn(u64) -> bool) -> Option<u64> {
        let (_, pos) = key.decode()?;
        self.with_prefix(prefix_of_position(&pos)).find(|e| e.key == *key && live(e.off)).map(|e| e.off)
    }

    /// Index an atom; an entry for the same hash (an atom removed, then stored again) is
    /// replaced.
    #[inline]
    pub fn insert(&mut self, hash: Hash, key: HilbertKey, off: u64) {
        if (self.entries.len() + 1) * SLOTS_PER_ENTRY > self.slots.len() {
            self.grow();
        }
        let prefix = hash.prefix_u64();
        let mask = self.slots.len() - 1;
        let mut i = self.home(prefix);
        loop {
            let s = self.slots[i];
            if s == 0 {
                self.entries.push(Entry { hash, key, off });
                self.slots[i] = (prefix & TAG) | self.entries.len() as u64;
                return;
            }
            if s & TAG == prefix & TAG {
                let e = &mut self.entries[(s as u32 - 1) as usize];
                if e.hash == hash {
                    *e = Entry { hash, key, off };
                    return;
                }
            }
            i = (i + 1) & mask;
        }
    }

    #[cold]
    fn grow(&mut self) {
        self.rebuild(self.entries.len() * 2);
    }

    /// Re-index every entry in a table sized for `n` entries (at least as many as it holds).
    fn rebuild(&mut self, n: usize) {
        let entries = std::mem::take(&mut self.entries);
        self.slots = vec![0; Self::slots_for(n)];
        self.entries = Vec::with_capacity(n.max(entries.len()));
        for e in entries {
            self.insert(e.hash, e.key, e.off);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Empty the table, keeping its memory.
    pub fn clear(&mut self) {
        self.slots.fill(0);
        self.entries.clear();
    }

    /// Make room for `n` entries without growing.
    pub fn reserve(&mut self, n: usize) {
        if Self::slots_for(n) > self.slots.len() {
            self.rebuild(n);
        } else {
            self.entries.reserve(n.saturating_sub(self.entries.len()));
        }
    }

    /// Bytes held.
    pub fn memory(&self) -> usize {
        self.slots.len() * 8 + self.entries.capacity() * std::mem::size_of::<Entry>()
    }
}

impl Default for MemTable {
    fn default() -> Self {
        MemTable::with_capacity(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hart_core::Modality;

    fn atom(i: u64, features: [u16; 4]) -> (Hash, HilbertKey) {
        let hash = Hash(*blake3::hash(&i.to_le_bytes()).as_bytes());
        let pos = Position::from_features(features, &hash);
        (hash, HilbertKey::new(Modality::Text, &pos))
    }

    #[test]
    fn position_bits_give_back_the_hash_prefix() {
        for i in 0..1000 {
            let (hash, key) = atom(i, [i as u16, 7, 4095, 0]);
            let (_, pos) = key.decode().unwrap();
            assert_eq!(prefix_of_position(&pos), hash.prefix_u64());
        }
    }

    /// Against a HashMap model: finds by hash and by key, replaces a re-inserted hash, keeps
    /// apart atoms that share their eight-byte prefix (and so their position's low bits), and
    /// survives growing from nothing.
    #[test]
    fn finds_by_hash_and_key_like_two_maps() {
        let mut t = MemTable::default();
        let mut by_hash = std::collections::HashMap::new();
        let mut by_key = std::collections::HashMap::new();
        let mut all = Vec::new();
        for i in 0..20_000u64 {
            let (hash, key) = atom(i, [(i % 4096) as u16, 1, 2, 3]);
            t.insert(hash, key, i);
            by_hash.insert(hash, i);
            by_key.insert(key, i);
            all.push((hash, key));
            if i % 7 == 0 {
                // The same hash again at a new offset: replaced.
                t.insert(hash, key, i + 1_000_000);
                by_hash.insert(hash, i + 1_000_000);
                by_key.insert(key, i + 1_000_000);
            }
        }
        // Same eight-byte prefix, different rest (crafted, as an adversary could): both kept,
        // each found by its own hash and key.
        let (h0, _) = atom(5, [0; 4]);
        let mut twin = h0;
        twin.0[31] ^= 1;
        let twin_key = HilbertKey::new(Modality::Text, &Position::from_features([9, 9, 9, 9], &twin));
        t.insert(twin, twin_key, 42);
        by_hash.insert(twin, 42);
        by_key.insert(twin_key, 42);
        assert_eq!(t.len(), by_hash.len());
        for (hash, key) in all.iter().chain([(twin, twin_key)].iter()) {
            assert_eq!(t.get(hash), by_hash.get(hash).copied());
            assert_eq!(t.get_key(key, |_| true), by_key.get(key).copied());
        }
        assert_eq!(t.get(&Hash([3; 32])), None);
        // A dead atom's key is skipped.
        let (hash, key) = all[3];
        let off = t.get(&hash).unwrap();
        assert_eq!(t.get_key(&key, |o| o != off), None);
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.get(&all[0].0), None);
    }
}
