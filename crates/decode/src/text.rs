//! Text decoder: a streaming, lossless UTF-8 tokenizer whose groups are lines.
//!
//! # Token rules (part of the on-disk format)
//!
//! Every byte belongs to exactly one token; a token is the longest run of one class:
//!
//! | class | bytes | run |
//! |---|---|---|
//! | word | ASCII letters `A–Z a–z` and every non-ASCII character (including non-ASCII spaces and punctuation) | any mix of them |
//! | number | ASCII digits `0–9` | digits only (`3.14` is `3`, `.`, `14`) |
//! | space | space, tab, vertical tab, form feed, and a carriage return not followed by a line feed | any mix of them |
//! | newline | `\n`, or `\r\n` as one token | one newline per token |
//! | punctuation | every other ASCII byte: punctuation, symbols, `_`, control characters, NUL | runs of the *same* byte (`...`, `==`, `--`), a different byte starts a new token |
//!
//! `_` is punctuation, so `snake_case` is three tokens; this matches the class that
//! `hart_core::features::token_class` gives a token from its first byte. Source code proper
//! goes to the code decoder, not here.
//!
//! No token exceeds [`LEAF_MAX`] (64) bytes: a longer run is cut greedily from its start, each
//! piece ending at the last character boundary at or before 64 bytes (ASCII runs: exactly 64).
//! A UTF-8 character is never split, also when it arrives split across calls to `feed`.
//!
//! After each newline token the line ends ([`LeafSink::end_group`]); at the end of the stream
//! the last line ends too if it holds any token. An empty stream has no lines.
//!
//! The tokenizer is meant for valid UTF-8 ([`crate::choose_modality`] sends everything else to
//! the binary chunker). On invalid input it stays lossless, split-invariant and never panics:
//! bytes ≥ 0x80 are word bytes, and a long run with no character boundary among its bytes
//! 61..=64 is cut at 64.
//!
//! # Speed
//!
//! One table lookup per byte (the run key), tokens handed out as borrowed slices of the input; only the
//! token that crosses the end of a piece is copied (into a fixed 64-byte carry), and no call
//! allocates. Where the CPU has AVX-512BW, boundaries are found 64 bytes at a time
//! ([`Kernel::Avx512`]); [`TextTokenizer::with_kernel`] lets tests run each [`Kernel`] the CPU
//! has and hold it to the scalar kernel's tokens.

use crate::{Decoder, LeafSink};
use hart_core::{Modality, LEAF_MAX};

/// Run keys: two bytes belong to the same token (when adjacent) iff they have the same key.
/// Words `b'a'`, numbers `b'0'`, spaces (with `\r`) `b' '`, newline `b'\n'` (never a run),
/// and every punctuation byte is its own key.
const WORD: u8 = b'a';
const NUMBER: u8 = b'0';
const SPACE: u8 = b' ';
const NEWLINE: u8 = b'\n';

const fn key_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphabetic() || c >= 0x80 {
            WORD
        } else if c.is_ascii_digit() {
            NUMBER
        } else if c == b' ' || c == b'\t' || c == 0x0b || c == 0x0c || c == b'\r' {
            SPACE
        } else {
            c // newline, punctuation, control characters: their own key
        };
        b += 1;
    }
    t
}

static KEY: [u8; 256] = key_table();

#[inline(always)]
fn key(b: u8) -> u8 {
    KEY[b as usize]
}

/// Length of the first piece of a run longer than [`LEAF_MAX`]: up to the last character
/// boundary at or before 64 bytes (64 if there is none, which only invalid UTF-8 can cause).
#[inline]
fn cut(run: &[u8]) -> usize {
    debug_assert!(run.len() > LEAF_MAX);
    (LEAF_MAX - 3..=LEAF_MAX).rev().find(|&j| run[j] & 0xC0 != 0x80).unwrap_or(LEAF_MAX)
}

/// The code that finds token boundaries. Every kernel gives exactly the scalar kernel's
/// tokens (tests/text.rs runs each one this CPU has against it); [`TextTokenizer::new`]
/// takes the fastest this CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// A byte at a time: every CPU. The other kernels hand it `\r\n`, the ends of pieces and
    /// short pieces.
    Scalar,
    /// 64 bytes at a time with AVX-512BW (x86-64), on pieces of 256 bytes or more without
    /// `\r`.
    Avx512,
}

impl Kernel {
    /// Every kernel, available on this CPU or not.
    pub const ALL: [Kernel; 2] = [Kernel::Scalar, Kernel::Avx512];

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => simd::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 => false,
        }
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Kernel {
        if Kernel::Avx512.available() {
            Kernel::Avx512
        } else {
            Kernel::Scalar
        }
    }
}

/// Streaming tokenizer for UTF-8 text (modality [`Modality::Text`]); groups are lines.
/// See the module documentation for the token rules.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    /// The token open at the end of the last piece: `carry[..carry_len]`, of run key
    /// `open`. A space run may end in a `\r` whose fate (space, or part of `\r\n`) the next
    /// byte decides.
    carry: [u8; LEAF_MAX + 1],
    carry_len: usize,
    open: u8,
    /// Some token has been emitted since the last line end.
    line_open: bool,
    /// Finds token boundaries; only ever a kernel this CPU has (see `with_kernel`).
    kernel: Kernel,
    /// Bytes whose token boundaries a vector kernel found.
    vector_bytes: u64,
}

impl Default for TextTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl TextTokenizer {
    /// A tokenizer on the fastest kernel this CPU has.
    pub fn new() -> Self {
        TextTokenizer {
            carry: [0; LEAF_MAX + 1],
            carry_len: 0,
            open: WORD,
            line_open: false,
            kernel: Kernel::best(),
            vector_bytes: 0,
        }
    }

    /// A tokenizer on `kernel`, or `None` when this CPU cannot run it. The tokens are the
    /// same whatever the kernel; this is for tests and measurements.
    pub fn with_kernel(kernel: Kernel) -> Option<Self> {
        kernel.available().then(|| TextTokenizer { kernel, ..TextTokenizer::new() })
    }

    /// The kernel this tokenizer runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// How many bytes so far had their token boundaries found by a vector kernel (0 on the
    /// scalar kernel): what shows that the vector path ran.
    pub fn vector_bytes(&self) -> u64 {
        self.vector_bytes
    }

    /// [`Decoder::feed`], monomorphised over the sink.
    #[inline]
    pub fn feed_with<S: LeafSink + ?Sized>(&mut self, data: &[u8], sink: &mut S) {
        let i = if self.carry_len > 0 { self.continue_carry(data, sink) } else { 0 };
        if i < data.len() {
            self.tokenize(data, i, sink);
        }
    }

    /// [`Decoder::finish`], monomorphised over the sink. The tokenizer is then ready for a new
    /// stream.
    pub fn finish_with<S: LeafSink + ?Sized>(&mut self, sink: &mut S) {
        if self.carry_len > 0 {
            sink.leaf(&self.carry[..self.carry_len]);
            self.carry_len = 0;
            self.line_open = true;
        }
        if self.line_open {
            sink.end_group();
            self.line_open = false;
        }
    }

    /// Extend the carried token with the first bytes of `data`, byte by byte, until it ends
    /// or can be handed over to the fast path. Returns where the fast path resumes; the carry
    /// is then empty unless all of `data` was taken.
    #[inline(never)]
    fn continue_carry<S: LeafSink + ?Sized>(&mut self, data: &[u8], sink: &mut S) -> usize {
        let mut i = 0;
        let mut len = self.carry_len;
        while len > 0 && i < data.len() {
            let b = data[i];
            if b == b'\n' && self.open == SPACE && self.carry[len - 1] == b'\r' {
                if len > 1 {
                    sink.leaf(&self.carry[..len - 1]);
                }
                sink.leaf(b"\r\n");
                sink.end_group();
                self.line_open = false;
                len = 0;
                i += 1;
                break;
            }
            if key(b) != self.open {
                sink.leaf(&self.carry[..len]);
                self.line_open = true;
                len = 0;
                break;
            }
            self.carry[len] = b;
            len += 1;
            i += 1;
            if len > LEAF_MAX {
                let j = cut(&self.carry[..len]);
                sink.leaf(&self.carry[..j]);
                self.line_open = true;
                self.carry.copy_within(j..len, 0);
                len -= j;
                if len <= i {
                    // The rest of the run lies in `data`: let the fast path restart it there.
                    i -= len;
                    len = 0;
                }
            }
        }
        self.carry_len = len;
        i
    }

    /// The fast path: tokenize `data[i..]` with an empty carry, keeping the last (open)
    /// token in the carry.
    #[inline(always)]
    fn tokenize<S: LeafSink + ?Sized>(&mut self, data: &[u8], mut i: usize, sink: &mut S) {
        let n = data.len();
        #[cfg(target_arch = "x86_64")]
        if self.kernel == Kernel::Avx512 && n - i >= 256 && !data[i..].contains(&b'\r') {
            // SAFETY: the kernel is Avx512 only where the CPU has AVX-512BW (`with_kernel`,
            // `Kernel::best`).
            let j = unsafe { simd::tokenize(self, data, i, sink) };
            self.vector_bytes += (j - i) as u64;
            i = j;
        }
        while i < n {
            let start = i;
            let k = key(data[i]);
            i += 1;
            if k == NEWLINE {
                sink.leaf_at(data, start, i);
                sink.end_group();
                self.line_open = false;
                continue;
            }
            while i < n && key(data[i]) == k {
                i += 1;
            }
            // A space run stops before a `\r` that starts a `\r\n`; a `\r` at the very end
            // stays in the open run and the next byte decides (see `continue_carry`).
            if k == SPACE && i < n && data[i] == b'\n' && data[i - 1] == b'\r' {
                i -= 1;
                if i == start {
                    sink.leaf(&data[i..i + 2]);
                    sink.end_group();
                    self.line_open = false;
                    i += 2;
                    continue;
                }
            }
            let mut s = start;
            while i - s > LEAF_MAX {
                let j = cut(&data[s..i]);
                sink.leaf(&data[s..s + j]);
                s += j;
            }
            self.line_open = true;
            if i == n {
                // The run may go on in the next piece.
                self.carry[..n - s].copy_from_slice(&data[s..n]);
                self.carry_len = n - s;
                self.open = k;
                return;
            }
            sink.leaf_at(data, s, i);
        }
    }
}

/// Emit the token `data[s..e]` (complete, of one run key, no `\r`) as the scalar path does.
#[inline(always)]
fn emit<S: LeafSink + ?Sized>(t: &mut TextTokenizer, data: &[u8], mut s: usize, e: usize, sink: &mut S) {
    if data[s] == b'\n' {
        sink.leaf_at(data, s, e);
        sink.end_group();
        t.line_open = false;
        return;
    }
    while e - s > LEAF_MAX {
        let j = cut(&data[s..e]);
        sink.leaf(&data[s..s + j]);
        s += j;
    }
    t.line_open = true;
    sink.leaf_at(data, s, e);
}

/// Token boundaries 64 bytes at a time (AVX-512BW): each byte's run key is computed in a
/// vector, and a token starts where the key differs from the byte before's, or after a
/// newline. Used on pieces without `\r` (whose `\r\n` rule needs the scalar path); the
/// tokens are exactly the scalar path's (tests compare both on random and real text).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{emit, TextTokenizer, NEWLINE, NUMBER, SPACE, WORD};
    use crate::LeafSink;
    use std::arch::x86_64::*;

    #[inline]
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512bw")
    }

    /// Run keys of the 64 bytes at `p` (see `key_table`; no `\r` among them).
    ///
    /// # Safety
    /// `p..p + 64` must be readable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn keys(p: *const u8) -> __m512i {
        // SAFETY: the caller guarantees 64 readable bytes at `p`.
        let b = unsafe { _mm512_loadu_si512(p.cast()) };
        let lower = _mm512_or_si512(b, _mm512_set1_epi8(0x20));
        let letter = _mm512_cmplt_epu8_mask(_mm512_sub_epi8(lower, _mm512_set1_epi8(b'a' as i8)), _mm512_set1_epi8(26));
        let high = _mm512_movepi8_mask(b);
        let digit = _mm512_cmplt_epu8_mask(_mm512_sub_epi8(b, _mm512_set1_epi8(b'0' as i8)), _mm512_set1_epi8(10));
        // Space, tab, vertical tab, form feed (`\r` is absent).
        let space = _mm512_cmpeq_epi8_mask(b, _mm512_set1_epi8(b' ' as i8))
            | _mm512_cmplt_epu8_mask(_mm512_sub_epi8(b, _mm512_set1_epi8(0x09)), _mm512_set1_epi8(4))
                & !_mm512_cmpeq_epi8_mask(b, _mm512_set1_epi8(b'\n' as i8));
        let k = _mm512_mask_mov_epi8(b, letter | high, _mm512_set1_epi8(WORD as i8));
        let k = _mm512_mask_mov_epi8(k, digit, _mm512_set1_epi8(NUMBER as i8));
        _mm512_mask_mov_epi8(k, space, _mm512_set1_epi8(SPACE as i8))
    }

    /// Tokenize `data` from `i` (a token starts there; the carry is empty) while whole
    /// 64-byte blocks remain, emitting every token that ends inside them. Returns where the
    /// token left open starts, for the scalar path to go on from.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512BW, and `data[i..]` no `\r`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn tokenize<S: LeafSink + ?Sized>(t: &mut TextTokenizer, data: &[u8], i: usize, sink: &mut S) -> usize {
        let n = data.len();
        let mut start = i;
        // Blocks cover positions b..b + 64, each compared with the byte before it.
        let mut b = i + 1;
        let newline = _mm512_set1_epi8(NEWLINE as i8);
        while b + 64 <= n {
            // SAFETY: b - 1 >= i >= 0 and b + 64 <= n: both blocks lie inside `data`.
            let (k, before) = unsafe {
                let p = data.as_ptr().add(b);
                (keys(p), keys(p.sub(1)))
            };
            let mut starts = _mm512_cmpneq_epi8_mask(k, before) | _mm512_cmpeq_epi8_mask(before, newline);
            while starts != 0 {
                let at = b + starts.trailing_zeros() as usize;
                starts &= starts - 1;
                emit(t, data, start, at, sink);
                start = at;
            }
            b += 64;
        }
        start
    }
}

impl Decoder for TextTokenizer {
    fn modality(&self) -> Modality {
        Modality::Text
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

    fn tokens(s: &str) -> Vec<String> {
        let mut t = TextTokenizer::new();
        let mut out = Collected::default();
        t.feed_with(s.as_bytes(), &mut out);
        t.finish_with(&mut out);
        out.leaves.iter().map(|l| String::from_utf8(l.clone()).unwrap()).collect()
    }

    #[test]
    fn token_classes() {
        assert_eq!(
            tokens("Héllo, wörld_42...  3.14\tx\r\n\ry \r \r\r\n"),
            [
                "Héllo", ",", " ", "wörld", "_", "42", "...", "  ", "3", ".", "14", "\t", "x", "\r\n", "\r", "y",
                " \r \r", "\r\n"
            ]
        );
    }

    #[test]
    fn long_runs_are_cut_at_char_boundaries() {
        let s = format!("{}{}", "a".repeat(62), "中".repeat(3));
        let t = tokens(&s);
        assert_eq!(t.iter().map(String::len).collect::<Vec<_>>(), [62, 9]);
        let s = format!("{}{}", "a".repeat(63), "中".repeat(3));
        let t = tokens(&s);
        assert_eq!(t.iter().map(String::len).collect::<Vec<_>>(), [63, 9]);
        let s = format!("{}{}", "a".repeat(61), "中".repeat(3));
        let t = tokens(&s);
        assert_eq!(t.iter().map(String::len).collect::<Vec<_>>(), [64, 6]);
        assert_eq!(tokens(&"-".repeat(130)).iter().map(String::len).collect::<Vec<_>>(), [64, 64, 2]);
    }
}
