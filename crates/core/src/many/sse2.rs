//! Four lanes: one `__m128i` holds a 32-bit word of four messages (SSE2, which every x86_64
//! CPU has).

use super::lanes::{self, Lanes};
use super::Job;
use std::arch::x86_64::*;

// SAFETY: every method uses SSE2 instructions only, part of the x86_64 baseline.
unsafe impl Lanes<4> for __m128i {
    #[inline(always)]
    unsafe fn splat(x: u32) -> Self {
        // SAFETY: SSE2 is present on x86_64.
        unsafe { _mm_set1_epi32(x as i32) }
    }
    #[inline(always)]
    unsafe fn load(a: &[u32; 4]) -> Self {
        // SAFETY: SSE2 is present; `a` is four readable u32 (an unaligned load).
        unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
    }
    #[inline(always)]
    unsafe fn store(self, a: &mut [u32; 4]) {
        // SAFETY: SSE2 is present; `a` is four writable u32 (an unaligned store).
        unsafe { _mm_storeu_si128(a.as_mut_ptr().cast(), self) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        // SAFETY: SSE2 is present.
        unsafe { _mm_add_epi32(self, b) }
    }
    #[inline(always)]
    unsafe fn xor(self, b: Self) -> Self {
        // SAFETY: SSE2 is present.
        unsafe { _mm_xor_si128(self, b) }
    }
    #[inline(always)]
    unsafe fn ror16(self) -> Self {
        // SAFETY: SSE2 is present.
        unsafe { _mm_or_si128(_mm_srli_epi32::<16>(self), _mm_slli_epi32::<16>(self)) }
    }
    #[inline(always)]
    unsafe fn ror12(self) -> Self {
        // SAFETY: SSE2 is present.
        unsafe { _mm_or_si128(_mm_srli_epi32::<12>(self), _mm_slli_epi32::<20>(self)) }
    }
    #[inline(always)]
    unsafe fn ror8(self) -> Self {
        // SAFETY: SSE2 is present.
        unsafe { _mm_or_si128(_mm_srli_epi32::<8>(self), _mm_slli_epi32::<24>(self)) }
    }
    #[inline(always)]
    unsafe fn ror7(self) -> Self {
        // SAFETY: SSE2 is present.
        unsafe { _mm_or_si128(_mm_srli_epi32::<7>(self), _mm_slli_epi32::<25>(self)) }
    }
    #[inline(always)]
    unsafe fn select(self, b: Self, mask: u32) -> Self {
        // SAFETY: SSE2 is present.
        unsafe {
            let bits = _mm_setr_epi32(1, 2, 4, 8);
            let m = _mm_cmpeq_epi32(_mm_and_si128(_mm_set1_epi32(mask as i32), bits), bits);
            _mm_or_si128(_mm_and_si128(m, b), _mm_andnot_si128(m, self))
        }
    }
    #[inline(always)]
    unsafe fn rows(cv: &[Self; 8]) -> [[u8; 32]; 4] {
        // Words 0..4 and 4..8 transposed back separately: each lane's row in two halves
        // (x86 is little-endian, so the bytes are the chaining value's).
        let (mut lo, mut hi) = ([cv[0], cv[1], cv[2], cv[3]], [cv[4], cv[5], cv[6], cv[7]]);
        // SAFETY: SSE2 is present; `[[u8; 32]; 4]` and `[[__m128i; 2]; 4]` have the same size
        // and every bit pattern is valid for both.
        unsafe {
            transpose(&mut lo);
            transpose(&mut hi);
            std::mem::transmute::<[[__m128i; 2]; 4], [[u8; 32]; 4]>([
                [lo[0], hi[0]],
                [lo[1], hi[1]],
                [lo[2], hi[2]],
                [lo[3], hi[3]],
            ])
        }
    }
    #[inline(always)]
    unsafe fn load_blocks(base: *const u8, word: &[u32; 4]) -> [Self; 16] {
        // SAFETY: SSE2 is present; each lane's 64-byte block is readable (caller).
        unsafe {
            let mut q = [[_mm_setzero_si128(); 4]; 4];
            for (l, &w) in word.iter().enumerate() {
                let p = base.add(4 * w as usize);
                for (k, qk) in q.iter_mut().enumerate() {
                    qk[l] = _mm_loadu_si128(p.add(16 * k).cast());
                }
            }
            for qk in &mut q {
                transpose(qk);
            }
            std::mem::transmute::<[[__m128i; 4]; 4], [__m128i; 16]>(q)
        }
    }
}

/// A 4×4 transpose of 32-bit words: row `l` (four words of lane `l`) becomes column `l`.
#[inline(always)]
unsafe fn transpose(r: &mut [__m128i; 4]) {
    // SAFETY: SSE2 is present; register operations only.
    unsafe {
        let ab01 = _mm_unpacklo_epi32(r[0], r[1]);
        let ab23 = _mm_unpackhi_epi32(r[0], r[1]);
        let cd01 = _mm_unpacklo_epi32(r[2], r[3]);
        let cd23 = _mm_unpackhi_epi32(r[2], r[3]);
        r[0] = _mm_unpacklo_epi64(ab01, cd01);
        r[1] = _mm_unpackhi_epi64(ab01, cd01);
        r[2] = _mm_unpacklo_epi64(ab23, cd23);
        r[3] = _mm_unpackhi_epi64(ab23, cd23);
    }
}

/// [`lanes::compress_jobs`] four lanes at a time.
///
/// # Safety
/// Every job's blocks must lie within `buf`.
pub(super) unsafe fn compress_jobs(buf: &[u8], jobs: &[Job], cvs: &mut [[u8; 32]]) {
    #[cfg(test)]
    super::tests::ran(super::Kernel::Sse2);
    // SAFETY: SSE2 is part of x86_64; the jobs lie within `buf` (caller).
    unsafe { lanes::compress_jobs::<__m128i, 4>(buf, jobs, cvs) }
}
