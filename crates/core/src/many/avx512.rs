//! Sixteen lanes: one `__m512i` holds a 32-bit word of sixteen messages (AVX-512F).

use super::lanes::{self, Lanes};
use super::Job;
use std::arch::x86_64::*;

// SAFETY: every method uses AVX-512F instructions only; `Lanes` callers guarantee AVX-512F.
unsafe impl Lanes<16> for __m512i {
    #[inline(always)]
    unsafe fn splat(x: u32) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe { _mm512_set1_epi32(x as i32) }
    }
    #[inline(always)]
    unsafe fn load(a: &[u32; 16]) -> Self {
        // SAFETY: AVX-512F is present; `a` is sixteen readable u32 (an unaligned load).
        unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
    }
    #[inline(always)]
    unsafe fn store(self, a: &mut [u32; 16]) {
        // SAFETY: AVX-512F is present; `a` is sixteen writable u32 (an unaligned store).
        unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), self) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_add_epi32(self, b) }
    }
    #[inline(always)]
    unsafe fn xor(self, b: Self) -> Self {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_xor_si512(self, b) }
    }
    #[inline(always)]
    unsafe fn ror16(self) -> Self {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_ror_epi32::<16>(self) }
    }
    #[inline(always)]
    unsafe fn ror12(self) -> Self {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_ror_epi32::<12>(self) }
    }
    #[inline(always)]
    unsafe fn ror8(self) -> Self {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_ror_epi32::<8>(self) }
    }
    #[inline(always)]
    unsafe fn ror7(self) -> Self {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_ror_epi32::<7>(self) }
    }
    #[inline(always)]
    unsafe fn select(self, b: Self, mask: u32) -> Self {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_mask_blend_epi32(mask as u16, self, b) }
    }
    #[inline(always)]
    unsafe fn load_blocks(base: *const u8, word: &[u32; 16]) -> [Self; 16] {
        // SAFETY: AVX-512F is present; each lane's 64-byte block is readable (caller).
        unsafe {
            let mut m = [_mm512_setzero_si512(); 16];
            for (ml, &w) in m.iter_mut().zip(word) {
                *ml = _mm512_loadu_si512(base.add(4 * w as usize).cast());
            }
            transpose(&mut m);
            m
        }
    }
}

/// Rows (one lane's block each) to columns (one message word for every lane).
#[inline(always)]
unsafe fn transpose(r: &mut [__m512i; 16]) {
    // SAFETY: AVX-512F is present (caller); register operations only.
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

/// [`lanes::compress_jobs`] sixteen lanes at a time.
///
/// # Safety
/// The CPU must support AVX-512F, and every job's blocks must lie within `buf`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn compress_jobs(buf: &[u8], jobs: &[Job], cvs: &mut [[u8; 32]]) {
    #[cfg(test)]
    super::tests::ran(super::Kernel::Avx512);
    // SAFETY: AVX-512F is enabled here; the jobs lie within `buf` (caller).
    unsafe { lanes::compress_jobs::<__m512i, 16>(buf, jobs, cvs) }
}
