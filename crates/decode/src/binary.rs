//! Binary decoder: content-defined chunking of any byte stream with a gear rolling hash.
//!
//! # The chunking rule (part of the on-disk format)
//!
//! The gear hash of a byte sequence `b_1 … b_n` is `h = Σ GEAR[b_k] << (n − k)` (wrapping,
//! 64-bit), i.e. `h ← (h << 1) + GEAR[b]` per byte. [`GEAR`] holds 256 constants: the first
//! 256 outputs of splitmix64 seeded with [`GEAR_SEED`].
//!
//! A chunk that starts at byte `s` ends after the first byte `e` such that its length
//! `L = e − s + 1` satisfies either
//! - `L ≥ MIN_CHUNK` (32) and `gear(b_{e−15} … b_e) & BOUNDARY_MASK == 0`, or
//! - `L == MAX_CHUNK` (64): a forced cut.
//!
//! The last chunk of the stream may be shorter than [`MIN_CHUNK`].
//!
//! [`BOUNDARY_MASK`] selects bits 12..=15 of the hash. Bit `k` of a gear hash depends only on
//! the last `k + 1` bytes, so the mask sees exactly the [`WINDOW`] = 16 bytes ending at the
//! candidate cut, and it does not matter whether the hash runs over the whole stream or
//! restarts at each chunk. Whether a byte is a candidate cut therefore depends on those 16
//! bytes only, not on where the chunk started; that is what makes boundaries resynchronise
//! after an edit (the cut chains of the old and new stream meet again within a few chunks).
//! A candidate occurs once in 16 bytes on average, so chunks are 32..=64 bytes, 45 on average
//! on random data.
//!
//! Why bits 12..=15 (a 16-byte window) and not the top bits (a 64-byte window): measured on
//! 2000 one-byte changes in 1 MiB of random data, a change creates 1.95 new chunks on average
//! with bits 12..=15 (60 % of changes touch one chunk), 2.80 with bits 28..=31 and 3.78 with
//! bits 60..=63; the tail (worst case 15–20 chunks) is the same for all, set by how fast the
//! cut chains meet. A narrower window (bits 0..=3 sees only 4 bytes, bit 0 only the last one)
//! would resynchronise faster still but lets short repeated patterns decide the cuts. The
//! window being shorter than [`MIN_CHUNK`] also lets the chunker skip hashing the first 16
//! bytes of every chunk.

use crate::{Decoder, LeafSink};
use hart_core::Modality;

/// Smallest chunk, except the last one of a stream.
pub const MIN_CHUNK: usize = 32;
/// Largest chunk: a leaf holds at most [`hart_core::LEAF_MAX`] bytes.
pub const MAX_CHUNK: usize = hart_core::LEAF_MAX;
/// The bits of the gear hash that must be zero at a content-defined cut (bits 12..=15).
pub const BOUNDARY_MASK: u64 = 0xF << 12;
/// How many trailing bytes decide a cut: those that reach the highest bit of the mask.
pub const WINDOW: usize = 16;
/// Seed of the splitmix64 sequence that fills [`GEAR`] (the ASCII bytes `HARTGEAR`).
pub const GEAR_SEED: u64 = u64::from_be_bytes(*b"HARTGEAR");

/// One step of splitmix64 (Steele, Lea, Flood 2014): returns the next state and its output.
const fn splitmix64(state: u64) -> (u64, u64) {
    let s = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (s, z ^ (z >> 31))
}

const fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut state = GEAR_SEED;
    let mut i = 0;
    while i < 256 {
        let (s, v) = splitmix64(state);
        state = s;
        t[i] = v;
        i += 1;
    }
    t
}

/// The gear table: `GEAR[i]` is the `i + 1`-th output of splitmix64 from [`GEAR_SEED`].
pub static GEAR: [u64; 256] = gear_table();

/// Streaming content-defined chunker (modality [`Modality::Binary`]). Never ends a group.
///
/// Memory: one pending partial chunk (< 64 bytes) between calls to `feed`.
#[derive(Clone, Debug)]
pub struct BinaryChunker {
    /// Gear hash of the current chunk's bytes from offset `MIN_CHUNK - WINDOW` on.
    hash: u64,
    /// Bytes of the current chunk received in earlier calls (`len` of them).
    carry: [u8; MAX_CHUNK],
    len: usize,
}

impl Default for BinaryChunker {
    fn default() -> Self {
        Self::new()
    }
}

impl BinaryChunker {
    pub fn new() -> Self {
        BinaryChunker { hash: 0, carry: [0; MAX_CHUNK], len: 0 }
    }

    /// Advance over `rest`, the continuation of a chunk that already holds `len` bytes.
    /// Returns how many bytes of `rest` complete the chunk, or `None` if all of `rest`
    /// belongs to it and it is still open.
    #[inline(always)]
    fn scan(&mut self, len: usize, rest: &[u8]) -> Option<usize> {
        const SKIP: usize = MIN_CHUNK - WINDOW;
        let limit = (MAX_CHUNK - len).min(rest.len());
        // Bytes before the window of the first candidate cut: they cannot affect any cut.
        let skip = SKIP.saturating_sub(len).min(limit);
        // Bytes that bring the chunk to MIN_CHUNK - 1: hashed, but no cut is possible there.
        let pre = (MIN_CHUNK - 1).saturating_sub(len).min(limit);
        let mut h = self.hash;
        for &b in &rest[skip..pre] {
            h = (h << 1).wrapping_add(GEAR[b as usize]);
        }
        for (i, &b) in rest[pre..limit].iter().enumerate() {
            h = (h << 1).wrapping_add(GEAR[b as usize]);
            if h & BOUNDARY_MASK == 0 {
                self.hash = 0;
                return Some(pre + i + 1);
            }
        }
        if len + limit == MAX_CHUNK {
            self.hash = 0;
            Some(limit)
        } else {
            self.hash = h;
            None
        }
    }

    /// [`Decoder::feed`], monomorphised over the sink.
    #[inline]
    pub fn feed_with<S: LeafSink + ?Sized>(&mut self, data: &[u8], sink: &mut S) {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            let len = self.len;
            match self.scan(len, rest) {
                Some(k) => {
                    if len == 0 {
                        sink.leaf(&rest[..k]);
                    } else {
                        self.carry[len..len + k].copy_from_slice(&rest[..k]);
                        sink.leaf(&self.carry[..len + k]);
                        self.len = 0;
                    }
                    pos += k;
                }
                None => {
                    self.carry[len..len + rest.len()].copy_from_slice(rest);
                    self.len = len + rest.len();
                    return;
                }
            }
        }
    }

    /// [`Decoder::finish`], monomorphised over the sink. The chunker is then ready for a new
    /// stream.
    pub fn finish_with<S: LeafSink + ?Sized>(&mut self, sink: &mut S) {
        if self.len > 0 {
            sink.leaf(&self.carry[..self.len]);
        }
        self.len = 0;
        self.hash = 0;
    }
}

impl Decoder for BinaryChunker {
    fn modality(&self) -> Modality {
        Modality::Binary
    }
    fn feed(&mut self, data: &[u8], sink: &mut dyn LeafSink) {
        self.feed_with(data, sink)
    }
    fn finish(&mut self, sink: &mut dyn LeafSink) {
        self.finish_with(sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Collected;

    #[test]
    fn gear_table_is_splitmix64_from_the_seed() {
        // Reference outputs of splitmix64 seeded with 0 (from the reference C implementation).
        assert_eq!(splitmix64(0).1, 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(splitmix64(0).0).1, 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(GEAR[0], splitmix64(GEAR_SEED).1);
        assert_eq!(GEAR[0], 0x495b_52a2_b1b9_3273, "gear table drifted: format change");
    }

    #[test]
    fn short_stream_is_one_chunk_and_empty_stream_none() {
        let mut c = BinaryChunker::new();
        let mut out = Collected::default();
        c.finish_with(&mut out);
        assert!(out.leaves.is_empty());
        c.feed_with(b"hello", &mut out);
        c.feed_with(b"", &mut out);
        c.finish_with(&mut out);
        assert_eq!(out.leaves, vec![b"hello".to_vec()]);
        assert!(out.group_ends.is_empty());
    }

    #[test]
    fn constant_input_cuts_at_a_fixed_stride() {
        let data = vec![0u8; 1000];
        let mut c = BinaryChunker::new();
        let mut out = Collected::default();
        c.feed_with(&data, &mut out);
        c.finish_with(&mut out);
        assert!(out.leaves.iter().all(|l| (1..=64).contains(&l.len())));
        assert_eq!(out.concat(), data);
    }
}
