//! Many short BLAKE3 hashes at once, one message per SIMD lane.
//!
//! A composite's canonical encoding is short (a line of 30 tokens is 962 bytes, one BLAKE3
//! chunk), and BLAKE3 hashes a single chunk one 64-byte block after another: its SIMD
//! parallelism only starts at two chunks. Hashing text spends most of its time there. Here
//! sixteen messages (AVX-512) advance side by side instead, one block each per step; a lane
//! whose message is done takes the next one, so messages of different lengths keep every lane
//! busy. Messages longer than a chunk are split into chunks, each hashed in a lane, and their
//! chaining values merged with `blake3::hazmat`.
//!
//! The result is exactly `blake3::hash` of each message (tests compare the two over random
//! lengths): this changes how hashes are computed, never what they are. Without AVX-512 each
//! message goes through `blake3::hash`.

use crate::Hash;

const BLOCK_LEN: usize = 64;
const CHUNK_LEN: usize = 1024;
const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
const PARENT: u32 = 4;
const ROOT: u32 = 8;

const IV: [u32; 8] = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19];

const MSG_SCHEDULE: [[usize; 16]; 7] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8],
    [3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1],
    [10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6],
    [12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4],
    [9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7],
    [11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13],
];

/// Messages laid out for hashing together: each starts on a 64-byte boundary and is followed
/// by zeros up to the next one, so every block can be read whole.
#[derive(Debug, Default, Clone)]
pub struct Messages {
    buf: Vec<u8>,
    /// Start and length of each message in `buf`.
    spans: Vec<(u32, u32)>,
    /// Start of the message being written.
    open: Option<usize>,
}

/// One chunk of one message: what a lane hashes.
#[derive(Clone, Copy, Debug)]
struct Job {
    /// Start of the chunk in `buf`, in 4-byte words.
    word: u32,
    blocks: u32,
    /// Length of the last block (0..=64).
    last_len: u32,
    counter: u32,
    /// Flags of the first block: CHUNK_START (PARENT for a parent node).
    start_flags: u32,
    /// Flags of the last block: CHUNK_END, and ROOT for a one-chunk message.
    end_flags: u32,
}

impl Messages {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.spans.clear();
        self.open = None;
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Append bytes to the message being written (starting one if none is open).
    #[inline]
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.open.is_none() {
            self.open = Some(self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Close the message being written (an empty one if none is open); returns its index.
    pub fn end(&mut self) -> usize {
        let start = self.open.take().unwrap_or(self.buf.len());
        let len = self.buf.len() - start;
        // Pad to the next block boundary; an empty message still has one (zero) block.
        let padded = len.max(1).next_multiple_of(BLOCK_LEN);
        self.buf.resize(start + padded, 0);
        assert!(self.buf.len() <= u32::MAX as usize, "message arena over 4 GiB");
        self.spans.push((start as u32, len as u32));
        self.spans.len() - 1
    }

    /// The bytes of message `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let (s, n) = self.spans[i];
        &self.buf[s as usize..(s + n) as usize]
    }

    /// BLAKE3 of every message, in order, appended to `out`.
    pub fn hash_all(&self, out: &mut Vec<Hash>) {
        debug_assert!(self.open.is_none(), "a message is still open");
        #[cfg(target_arch = "x86_64")]
        if self.spans.len() > 1 && std::arch::is_x86_feature_detected!("avx512f") {
            self.hash_lanes(out);
            return;
        }
        out.extend((0..self.spans.len()).map(|i| Hash(*blake3::hash(self.get(i)).as_bytes())));
    }

    #[cfg(target_arch = "x86_64")]
    fn hash_lanes(&self, out: &mut Vec<Hash>) {
        let mut jobs = Vec::with_capacity(self.spans.len());
        for &(start, len) in &self.spans {
            let chunks = (len as usize).max(1).div_ceil(CHUNK_LEN);
            for c in 0..chunks {
                let clen = (len as usize - c * CHUNK_LEN).min(CHUNK_LEN);
                let blocks = clen.max(1).div_ceil(BLOCK_LEN);
                jobs.push(Job {
                    word: (start as usize + c * CHUNK_LEN) as u32 / 4,
                    blocks: blocks as u32,
                    last_len: (clen - (blocks - 1) * BLOCK_LEN) as u32,
                    counter: c as u32,
                    start_flags: CHUNK_START,
                    end_flags: CHUNK_END | if chunks == 1 { ROOT } else { 0 },
                });
            }
        }
        let mut cvs = vec![[0u32; 8]; jobs.len()];
        // SAFETY: AVX-512F was detected by the caller; every job's blocks lie inside `buf`
        // (padded to whole blocks by `end`).
        unsafe { avx512::compress_jobs(&self.buf, &jobs, &mut cvs) };
        // Two-chunk messages (lines of 32..=63 tokens) end in one parent node: those are
        // compressed in lanes too, from a block of the two chaining values.
        let mut parents = Vec::new();
        let mut parent_jobs = Vec::new();
        let mut j = 0;
        for &(_, len) in &self.spans {
            let chunks = (len as usize).max(1).div_ceil(CHUNK_LEN);
            if chunks == 2 {
                parent_jobs.push(Job {
                    word: parents.len() as u32 / 4,
                    blocks: 1,
                    last_len: BLOCK_LEN as u32,
                    counter: 0,
                    start_flags: PARENT,
                    end_flags: ROOT,
                });
                parents.extend_from_slice(&cv_bytes(&cvs[j]));
                parents.extend_from_slice(&cv_bytes(&cvs[j + 1]));
            }
            j += chunks;
        }
        let mut roots = vec![[0u32; 8]; parent_jobs.len()];
        if !parent_jobs.is_empty() {
            // SAFETY: as above; each parent job is one whole block of `parents`.
            unsafe { avx512::compress_jobs(&parents, &parent_jobs, &mut roots) };
        }
        let (mut j, mut p) = (0, 0);
        for &(_, len) in &self.spans {
            let chunks = (len as usize).max(1).div_ceil(CHUNK_LEN);
            let h = match chunks {
                1 => cv_bytes(&cvs[j]),
                2 => {
                    p += 1;
                    cv_bytes(&roots[p - 1])
                }
                _ => merge(&cvs[j..j + chunks], true),
            };
            out.push(Hash(h));
            j += chunks;
        }
    }
}

fn cv_bytes(cv: &[u32; 8]) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, w) in cv.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    b
}

/// Chaining value (or, at the root, the hash) of the subtree over these chunks' chaining
/// values: BLAKE3's tree puts the largest power of two of chunks that leaves at least one on
/// the right in the left subtree.
fn merge(cvs: &[[u32; 8]], root: bool) -> [u8; 32] {
    use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, Mode};
    if cvs.len() == 1 {
        return cv_bytes(&cvs[0]);
    }
    let left_len = 1usize << (usize::BITS - 1 - (cvs.len() - 1).leading_zeros());
    let l = merge(&cvs[..left_len], false);
    let r = merge(&cvs[left_len..], false);
    if root {
        *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Job, BLOCK_LEN, IV, MSG_SCHEDULE};
    use std::arch::x86_64::*;

    const LANES: usize = 16;
    const IDLE: u32 = u32::MAX;

    #[inline(always)]
    fn g(v: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize, x: __m512i, y: __m512i) {
        // SAFETY (all intrinsics below): only called from `compress_jobs`, which requires
        // AVX-512F; these operate on registers only.
        unsafe {
            v[a] = _mm512_add_epi32(_mm512_add_epi32(v[a], v[b]), x);
            v[d] = _mm512_ror_epi32::<16>(_mm512_xor_si512(v[d], v[a]));
            v[c] = _mm512_add_epi32(v[c], v[d]);
            v[b] = _mm512_ror_epi32::<12>(_mm512_xor_si512(v[b], v[c]));
            v[a] = _mm512_add_epi32(_mm512_add_epi32(v[a], v[b]), y);
            v[d] = _mm512_ror_epi32::<8>(_mm512_xor_si512(v[d], v[a]));
            v[c] = _mm512_add_epi32(v[c], v[d]);
            v[b] = _mm512_ror_epi32::<7>(_mm512_xor_si512(v[b], v[c]));
        }
    }

    #[inline(always)]
    fn round(v: &mut [__m512i; 16], m: &[__m512i; 16], r: usize) {
        let s = &MSG_SCHEDULE[r];
        g(v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
        g(v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
        g(v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
        g(v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
        g(v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
        g(v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
        g(v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
        g(v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
    }

    /// Rows (one lane's block each) to columns (one message word for every lane).
    #[inline(always)]
    fn transpose(r: &mut [__m512i; 16]) {
        // SAFETY: as in `g`.
        unsafe {
            let mut a = [_mm512_setzero_si512(); 16];
            for i in 0..8 {
                a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
                a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
            }
            // Quarter q (rows 4q..4q+4), j in 0..4: its 128-bit lane k holds column 4k+j.
            let mut b = [_mm512_setzero_si512(); 16];
            for q in 0..4 {
                let (lo, hi) = (a[4 * q], a[4 * q + 2]);
                let (lo2, hi2) = (a[4 * q + 1], a[4 * q + 3]);
                b[4 * q] = _mm512_unpacklo_epi64(lo, hi);
                b[4 * q + 1] = _mm512_unpackhi_epi64(lo, hi);
                b[4 * q + 2] = _mm512_unpacklo_epi64(lo2, hi2);
                b[4 * q + 3] = _mm512_unpackhi_epi64(lo2, hi2);
            }
            // Halves: rows 0..8 and 8..16; c[h][j] holds columns j and 8+j (j < 4) or
            // 4+j' and 12+j' (j = 4+j').
            let mut c = [[_mm512_setzero_si512(); 8]; 2];
            for h in 0..2 {
                for j in 0..4 {
                    let (x, y) = (b[8 * h + j], b[8 * h + 4 + j]);
                    c[h][j] = _mm512_shuffle_i32x4::<0x88>(x, y);
                    c[h][4 + j] = _mm512_shuffle_i32x4::<0xdd>(x, y);
                }
            }
            for j in 0..8 {
                r[j] = _mm512_shuffle_i32x4::<0x88>(c[0][j], c[1][j]);
                r[8 + j] = _mm512_shuffle_i32x4::<0xdd>(c[0][j], c[1][j]);
            }
        }
    }

    /// Compress every job's blocks, sixteen lanes at a time, leaving each job's final chaining
    /// value (the hash itself for a ROOT job) in `cvs`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, and every job's blocks must lie within `buf`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn compress_jobs(buf: &[u8], jobs: &[Job], cvs: &mut [[u32; 8]]) {
        debug_assert!(jobs.iter().all(|j| (j.word as usize * 4 + j.blocks as usize * BLOCK_LEN) <= buf.len()));
        let base = buf.as_ptr() as *const i32;
        let mut lane_job = [IDLE; LANES];
        let mut lane_blk = [0u32; LANES];
        let mut word = [0u32; LANES];
        let mut blen = [0u32; LANES];
        let mut flags = [0u32; LANES];
        let mut ctr = [0u32; LANES];
        let mut out = [[0u32; LANES]; 8];
        let mut cv = [_mm512_setzero_si512(); 8];
        let mut next = 0usize;
        loop {
            let mut fresh: u16 = 0;
            let mut busy = false;
            for l in 0..LANES {
                if lane_job[l] == IDLE && next < jobs.len() {
                    lane_job[l] = next as u32;
                    lane_blk[l] = 0;
                    next += 1;
                    fresh |= 1 << l;
                }
                let j = lane_job[l];
                if j == IDLE {
                    word[l] = 0;
                    blen[l] = 0;
                    flags[l] = 0;
                    ctr[l] = 0;
                    continue;
                }
                busy = true;
                let job = &jobs[j as usize];
                let b = lane_blk[l];
                let last = b + 1 == job.blocks;
                word[l] = job.word + b * (BLOCK_LEN as u32 / 4);
                blen[l] = if last { job.last_len } else { BLOCK_LEN as u32 };
                flags[l] = if b == 0 { job.start_flags } else { 0 } | if last { job.end_flags } else { 0 };
                ctr[l] = job.counter;
            }
            if !busy {
                break;
            }
            // SAFETY: AVX-512F is enabled for this function; the gathers read words inside
            // `buf` (idle lanes read its first block, which exists when there are jobs).
            unsafe {
                for (i, c) in cv.iter_mut().enumerate() {
                    *c = _mm512_mask_blend_epi32(fresh, *c, _mm512_set1_epi32(IV[i] as i32));
                }
                let mut m = [_mm512_setzero_si512(); 16];
                for (l, ml) in m.iter_mut().enumerate() {
                    *ml = _mm512_loadu_si512(base.add(word[l] as usize) as *const __m512i);
                }
                transpose(&mut m);
                let mut v = [
                    cv[0],
                    cv[1],
                    cv[2],
                    cv[3],
                    cv[4],
                    cv[5],
                    cv[6],
                    cv[7],
                    _mm512_set1_epi32(IV[0] as i32),
                    _mm512_set1_epi32(IV[1] as i32),
                    _mm512_set1_epi32(IV[2] as i32),
                    _mm512_set1_epi32(IV[3] as i32),
                    _mm512_loadu_si512(ctr.as_ptr() as *const __m512i),
                    _mm512_setzero_si512(),
                    _mm512_loadu_si512(blen.as_ptr() as *const __m512i),
                    _mm512_loadu_si512(flags.as_ptr() as *const __m512i),
                ];
                round(&mut v, &m, 0);
                round(&mut v, &m, 1);
                round(&mut v, &m, 2);
                round(&mut v, &m, 3);
                round(&mut v, &m, 4);
                round(&mut v, &m, 5);
                round(&mut v, &m, 6);
                for i in 0..8 {
                    cv[i] = _mm512_xor_si512(v[i], v[i + 8]);
                }
            }
            let mut stored = false;
            for l in 0..LANES {
                let j = lane_job[l];
                if j == IDLE {
                    continue;
                }
                lane_blk[l] += 1;
                if lane_blk[l] == jobs[j as usize].blocks {
                    if !stored {
                        for (i, o) in out.iter_mut().enumerate() {
                            // SAFETY: AVX-512F is enabled; `o` holds sixteen u32.
                            unsafe { _mm512_storeu_si512(o.as_mut_ptr() as *mut __m512i, cv[i]) };
                        }
                        stored = true;
                    }
                    for (i, o) in out.iter().enumerate() {
                        cvs[j as usize][i] = o[l];
                    }
                    lane_job[l] = IDLE;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(msgs: &[Vec<u8>]) {
        let mut m = Messages::new();
        for v in msgs {
            m.extend(v);
            m.end();
        }
        let mut out = Vec::new();
        m.hash_all(&mut out);
        assert_eq!(out.len(), msgs.len());
        for (v, h) in msgs.iter().zip(&out) {
            assert_eq!(*h, Hash(*blake3::hash(v).as_bytes()), "length {}", v.len());
        }
    }

    #[test]
    fn boundary_lengths_match_blake3() {
        let lens = [0, 1, 2, 34, 63, 64, 65, 127, 128, 962, 1023, 1024, 1025, 2048, 2050, 3072, 3073, 4097, 9000];
        let msgs: Vec<Vec<u8>> = lens.iter().map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect()).collect();
        check(&msgs);
        // Empty and single-message sets.
        check(&[]);
        check(&[b"abc".to_vec()]);
        check(&[Vec::new(), Vec::new()]);
    }

    #[test]
    fn an_empty_message_between_others() {
        let mut m = Messages::new();
        m.extend(b"x");
        m.end();
        m.end();
        m.extend(b"yz");
        m.extend(b"w");
        m.end();
        let mut out = Vec::new();
        m.hash_all(&mut out);
        assert_eq!(out[1], Hash(*blake3::hash(b"").as_bytes()));
        assert_eq!(out[2], Hash(*blake3::hash(b"yzw").as_bytes()));
        assert_eq!(m.get(2), b"yzw");
    }

    proptest! {
        #[test]
        fn random_messages_match_blake3(lens in proptest::collection::vec(0usize..2200, 0..80), seed in any::<u8>()) {
            let msgs: Vec<Vec<u8>> = lens
                .iter()
                .enumerate()
                .map(|(k, &n)| (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ k as u8)).collect())
                .collect();
            check(&msgs);
        }
    }
}
