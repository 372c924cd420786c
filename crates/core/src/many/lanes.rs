//! The lane scheduler shared by every SIMD kernel: BLAKE3's compression written once over a
//! vector of N 32-bit lanes, each lane hashing its own job, a finished lane taking the next.

use super::{Job, BLOCK_LEN, IV, MSG_SCHEDULE};

/// A vector of `N` 32-bit lanes and the few operations BLAKE3's compression needs.
///
/// Implementations are `#[inline(always)]` and call intrinsics, so each kernel instantiates
/// [`compress_jobs`] inside a `#[target_feature]` function: only there do the intrinsics
/// inline into straight-line vector code.
///
/// # Safety
/// Every method may use instructions of the implementation's CPU feature: call them only where
/// that feature is known to be present.
pub(super) unsafe trait Lanes<const N: usize>: Copy {
    unsafe fn splat(x: u32) -> Self;
    unsafe fn load(a: &[u32; N]) -> Self;
    unsafe fn store(self, a: &mut [u32; N]);
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn xor(self, b: Self) -> Self;
    unsafe fn ror16(self) -> Self;
    unsafe fn ror12(self) -> Self;
    unsafe fn ror8(self) -> Self;
    unsafe fn ror7(self) -> Self;
    /// `b` in the lanes whose bit is set in `mask`, `self` in the others.
    unsafe fn select(self, b: Self, mask: u32) -> Self;
    /// The 16 message words of every lane's block, word `w` of lane `l` in lane `l` of
    /// vector `w`. Lane `l`'s block is the 64 bytes at `base + 4 * word[l]`.
    ///
    /// # Safety
    /// Besides the CPU feature: each of those blocks must be readable.
    unsafe fn load_blocks(base: *const u8, word: &[u32; N]) -> [Self; 16];
    /// The chaining values in `cv` (word `i` of lane `l` in lane `l` of `cv[i]`) as each
    /// lane's 32 bytes, little-endian: the hash itself for a ROOT block.
    #[inline(always)]
    unsafe fn rows(cv: &[Self; 8]) -> [[u8; 32]; N] {
        let mut cols = [[0u32; N]; 8];
        for (c, v) in cols.iter_mut().zip(cv) {
            // SAFETY: the caller guarantees the CPU feature.
            unsafe { v.store(c) };
        }
        std::array::from_fn(|l| {
            let mut row = [0u8; 32];
            for (i, c) in cols.iter().enumerate() {
                row[4 * i..4 * i + 4].copy_from_slice(&c[l].to_le_bytes());
            }
            row
        })
    }
}

#[inline(always)]
unsafe fn g<V: Lanes<N>, const N: usize>(v: &mut [V; 16], a: usize, b: usize, c: usize, d: usize, x: V, y: V) {
    // SAFETY: the caller guarantees `V`'s CPU feature (see `compress_jobs`).
    unsafe {
        v[a] = v[a].add(v[b]).add(x);
        v[d] = v[d].xor(v[a]).ror16();
        v[c] = v[c].add(v[d]);
        v[b] = v[b].xor(v[c]).ror12();
        v[a] = v[a].add(v[b]).add(y);
        v[d] = v[d].xor(v[a]).ror8();
        v[c] = v[c].add(v[d]);
        v[b] = v[b].xor(v[c]).ror7();
    }
}

#[inline(always)]
unsafe fn round<V: Lanes<N>, const N: usize>(v: &mut [V; 16], m: &[V; 16], r: usize) {
    let s = &MSG_SCHEDULE[r];
    // SAFETY: as in `g`.
    unsafe {
        g(v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
        g(v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
        g(v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
        g(v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
        g(v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
        g(v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
        g(v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
        g(v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
}

/// Compress every job's blocks, N lanes at a time, leaving each job's final chaining value
/// (the hash itself for a ROOT job) in `cvs`.
///
/// Each step compresses one block in every lane. A lane whose job ends takes the next job at
/// the following step (its chaining value restarts from the IV), so jobs of different
/// lengths keep every lane busy until the last ones; idle lanes at the end hash the first
/// block again and their result is dropped. The per-lane bookkeeping is written as loops
/// over small arrays without branches, which the compiler turns into a few vector
/// instructions; only lanes whose job ended are visited one by one (jobs of mixed lengths
/// end at unpredictable steps, and a branch per lane and step mispredicted often).
///
/// # Safety
/// The CPU must support `V`'s feature; every job's blocks must lie within `buf`.
#[inline(always)]
pub(super) unsafe fn compress_jobs<V: Lanes<N>, const N: usize>(buf: &[u8], jobs: &[Job], cvs: &mut [[u8; 32]]) {
    debug_assert!(jobs.iter().all(|j| (j.word as usize * 4 + j.blocks as usize * BLOCK_LEN) <= buf.len()));
    debug_assert!(cvs.len() >= jobs.len());
    debug_assert!(jobs.iter().all(|j| j.blocks > 0));
    let base = buf.as_ptr();
    // Per lane: its job, the blocks of that job still to compress (0: idle), the word at
    // which its next block starts, the job's chunk counter, flags and last block's length.
    let mut lane_job = [0u32; N];
    let mut left = [0u32; N];
    let mut word = [0u32; N];
    let mut ctr = [0u32; N];
    let mut start = [0u32; N];
    let mut end = [0u32; N];
    let mut last_len = [0u32; N];
    let mut blen = [0u32; N];
    let mut flags = [0u32; N];
    // SAFETY: the caller guarantees `V`'s CPU feature, which is all `splat` needs.
    let mut cv = [unsafe { V::splat(0) }; 8];
    let mut next = 0usize;
    // Lanes to give a job before the next step: all of them at first.
    let mut free: u32 = if N == 32 { u32::MAX } else { (1 << N) - 1 };
    let mut active = 0usize;
    loop {
        let fresh = free;
        while free != 0 {
            let l = free.trailing_zeros() as usize;
            free &= free - 1;
            if let Some(job) = jobs.get(next) {
                lane_job[l] = next as u32;
                next += 1;
                (left[l], word[l], ctr[l]) = (job.blocks, job.word, job.counter);
                (start[l], end[l], last_len[l]) = (job.start_flags, job.end_flags, job.last_len);
                active += 1;
            } else {
                // Idle from now on: no blocks left, reading the first block (which exists,
                // since there are jobs) with flags that cannot finish anything.
                (left[l], word[l]) = (0, 0);
            }
        }
        if active == 0 {
            break;
        }
        for l in 0..N {
            let last = left[l] == 1;
            blen[l] = if last { last_len[l] } else { BLOCK_LEN as u32 };
            flags[l] = start[l] | if last { end[l] } else { 0 };
        }
        // SAFETY: `V`'s feature is present (caller); every lane's block lies within `buf`
        // (busy lanes: a block of their job; idle lanes: the first block).
        unsafe {
            if fresh != 0 {
                for (i, c) in cv.iter_mut().enumerate() {
                    *c = c.select(V::splat(IV[i]), fresh);
                }
            }
            let m = V::load_blocks(base, &word);
            let mut v = [
                cv[0],
                cv[1],
                cv[2],
                cv[3],
                cv[4],
                cv[5],
                cv[6],
                cv[7],
                V::splat(IV[0]),
                V::splat(IV[1]),
                V::splat(IV[2]),
                V::splat(IV[3]),
                V::load(&ctr),
                V::splat(0),
                V::load(&blen),
                V::load(&flags),
            ];
            round(&mut v, &m, 0);
            round(&mut v, &m, 1);
            round(&mut v, &m, 2);
            round(&mut v, &m, 3);
            round(&mut v, &m, 4);
            round(&mut v, &m, 5);
            round(&mut v, &m, 6);
            for i in 0..8 {
                cv[i] = v[i].xor(v[i + 8]);
            }
        }
        let mut done = 0u32;
        for l in 0..N {
            done |= ((left[l] == 1) as u32) << l;
            word[l] += if left[l] != 0 { BLOCK_LEN as u32 / 4 } else { 0 };
            left[l] = left[l].saturating_sub(1);
            start[l] = 0;
        }
        if done != 0 {
            // SAFETY: as above.
            let rows = unsafe { V::rows(&cv) };
            let mut d = done;
            while d != 0 {
                let l = d.trailing_zeros() as usize;
                d &= d - 1;
                cvs[lane_job[l] as usize] = rows[l];
            }
            active -= done.count_ones() as usize;
        }
        free = done;
    }
}
