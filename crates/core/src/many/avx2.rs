//! Eight lanes: one `__m256i` holds a 32-bit word of eight messages (AVX2), for CPUs without
//! AVX-512 (AMD before Zen 4, many Intel client parts).

use super::lanes::{self, Lanes};
use super::Job;
use std::arch::x86_64::*;

// SAFETY: every method uses AVX2 (and AVX) instructions only; `Lanes` callers guarantee AVX2.
unsafe impl Lanes<8> for __m256i {
    #[inline(always)]
    unsafe fn splat(x: u32) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        unsafe { _mm256_set1_epi32(x as i32) }
    }
    #[inline(always)]
    unsafe fn load(a: &[u32; 8]) -> Self {
        // SAFETY: AVX2 is present; `a` is eight readable u32 (an unaligned load).
        unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
    }
    #[inline(always)]
    unsafe fn store(self, a: &mut [u32; 8]) {
        // SAFETY: AVX2 is present; `a` is eight writable u32 (an unaligned store).
        unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), self) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        // SAFETY: AVX2 is present.
        unsafe { _mm256_add_epi32(self, b) }
    }
    #[inline(always)]
    unsafe fn xor(self, b: Self) -> Self {
        // SAFETY: AVX2 is present.
        unsafe { _mm256_xor_si256(self, b) }
    }
    #[inline(always)]
    unsafe fn ror16(self) -> Self {
        // Written as shifts, like the others: LLVM emits one byte shuffle for rotations by 16
        // and 8 itself (the same code as `_mm256_shuffle_epi8` written out, decision 0015).
        // SAFETY: AVX2 is present.
        unsafe { _mm256_or_si256(_mm256_srli_epi32::<16>(self), _mm256_slli_epi32::<16>(self)) }
    }
    #[inline(always)]
    unsafe fn ror12(self) -> Self {
        // SAFETY: AVX2 is present.
        unsafe { _mm256_or_si256(_mm256_srli_epi32::<12>(self), _mm256_slli_epi32::<20>(self)) }
    }
    #[inline(always)]
    unsafe fn ror8(self) -> Self {
        // SAFETY: AVX2 is present.
        unsafe { _mm256_or_si256(_mm256_srli_epi32::<8>(self), _mm256_slli_epi32::<24>(self)) }
    }
    #[inline(always)]
    unsafe fn ror7(self) -> Self {
        // SAFETY: AVX2 is present.
        unsafe { _mm256_or_si256(_mm256_srli_epi32::<7>(self), _mm256_slli_epi32::<25>(self)) }
    }
    #[inline(always)]
    unsafe fn select(self, b: Self, mask: u32) -> Self {
        // SAFETY: AVX2 is present.
        unsafe {
            // Lane l's mask is all ones where bit l of `mask` is set.
            let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
            let m = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(mask as i32), bits), bits);
            _mm256_blendv_epi8(self, b, m)
        }
    }
    #[inline(always)]
    unsafe fn rows(cv: &[Self; 8]) -> [[u8; 32]; 8] {
        // Transposed back, each lane's eight words are its row; x86 is little-endian, so the
        // row's bytes are the chaining value's.
        let mut r = *cv;
        // SAFETY: AVX2 is present; `[[u8; 32]; 8]` and `[__m256i; 8]` have the same size and
        // every bit pattern is valid for both.
        unsafe {
            transpose(&mut r);
            std::mem::transmute::<[__m256i; 8], [[u8; 32]; 8]>(r)
        }
    }
    #[inline(always)]
    unsafe fn load_blocks(base: *const u8, word: &[u32; 8]) -> [Self; 16] {
        // SAFETY: AVX2 is present; each lane's 64-byte block is readable (caller).
        unsafe {
            let mut lo = [_mm256_setzero_si256(); 8];
            let mut hi = [_mm256_setzero_si256(); 8];
            for l in 0..8 {
                let p = base.add(4 * word[l] as usize);
                lo[l] = _mm256_loadu_si256(p.cast());
                hi[l] = _mm256_loadu_si256(p.add(32).cast());
            }
            transpose(&mut lo);
            transpose(&mut hi);
            [
                lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3], hi[4], hi[5],
                hi[6], hi[7],
            ]
        }
    }
}

/// An 8×8 transpose of 32-bit words: row `l` (eight words of lane `l`) becomes column `l`.
#[inline(always)]
unsafe fn transpose(r: &mut [__m256i; 8]) {
    // SAFETY: AVX2 is present (caller); register operations only.
    unsafe {
        // 32-bit interleave: rows (2i, 2i+1) give words 0,1,4,5 (lo) and 2,3,6,7 (hi) paired.
        let ab0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let ab2 = _mm256_unpackhi_epi32(r[0], r[1]);
        let cd0 = _mm256_unpacklo_epi32(r[2], r[3]);
        let cd2 = _mm256_unpackhi_epi32(r[2], r[3]);
        let ef0 = _mm256_unpacklo_epi32(r[4], r[5]);
        let ef2 = _mm256_unpackhi_epi32(r[4], r[5]);
        let gh0 = _mm256_unpacklo_epi32(r[6], r[7]);
        let gh2 = _mm256_unpackhi_epi32(r[6], r[7]);
        // 64-bit interleave: four rows of word w (low half) and w+4 (high half).
        let abcd04 = _mm256_unpacklo_epi64(ab0, cd0);
        let abcd15 = _mm256_unpackhi_epi64(ab0, cd0);
        let abcd26 = _mm256_unpacklo_epi64(ab2, cd2);
        let abcd37 = _mm256_unpackhi_epi64(ab2, cd2);
        let efgh04 = _mm256_unpacklo_epi64(ef0, gh0);
        let efgh15 = _mm256_unpackhi_epi64(ef0, gh0);
        let efgh26 = _mm256_unpacklo_epi64(ef2, gh2);
        let efgh37 = _mm256_unpackhi_epi64(ef2, gh2);
        // 128-bit interleave: all eight rows of one word.
        r[0] = _mm256_permute2x128_si256::<0x20>(abcd04, efgh04);
        r[4] = _mm256_permute2x128_si256::<0x31>(abcd04, efgh04);
        r[1] = _mm256_permute2x128_si256::<0x20>(abcd15, efgh15);
        r[5] = _mm256_permute2x128_si256::<0x31>(abcd15, efgh15);
        r[2] = _mm256_permute2x128_si256::<0x20>(abcd26, efgh26);
        r[6] = _mm256_permute2x128_si256::<0x31>(abcd26, efgh26);
        r[3] = _mm256_permute2x128_si256::<0x20>(abcd37, efgh37);
        r[7] = _mm256_permute2x128_si256::<0x31>(abcd37, efgh37);
    }
}

/// [`lanes::compress_jobs`] eight lanes at a time.
///
/// # Safety
/// The CPU must support AVX2, and every job's blocks must lie within `buf`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn compress_jobs(buf: &[u8], jobs: &[Job], cvs: &mut [[u8; 32]]) {
    #[cfg(test)]
    super::tests::ran(super::Kernel::Avx2);
    // SAFETY: AVX2 is enabled here; the jobs lie within `buf` (caller).
    unsafe { lanes::compress_jobs::<__m256i, 8>(buf, jobs, cvs) }
}
