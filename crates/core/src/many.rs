//! Many short BLAKE3 hashes at once, one message per SIMD lane.
//!
//! Atoms' canonical encodings are short (a leaf's is at most 66 bytes, a line of 30 tokens
//! 962, one BLAKE3 chunk), and BLAKE3 hashes a single chunk one 64-byte block after another:
//! its SIMD parallelism only starts at two chunks. Ingest (the composites of text lines) and
//! verified reads (every leaf and composite re-hashed) spend most of their hashing there.
//! Here several messages advance side by side instead, one per lane of a vector register, one
//! block each per step; a lane whose message is done takes the next one, so messages of
//! different lengths keep every lane busy. Messages longer than a chunk are split into
//! chunks, each hashed in a lane, and their chaining values merged with `blake3::hazmat`.
//!
//! The [`Kernel`] is chosen at run time: sixteen lanes with AVX-512F, eight with AVX2, four
//! with SSE2 (every x86_64 CPU), and `blake3::hash` one message at a time elsewhere (and for a
//! single message). The scheduler is written once (`lanes`) over a small vector trait that
//! each kernel implements. [`kernel_name`] says which kernel [`Messages::hash_all`] uses;
//! [`Messages::hash_all_with`] forces one. Figures: docs/decisions/0015.
//!
//! The result is exactly `blake3::hash` of each message: tests compare every kernel this CPU
//! runs with it over random lengths, and fail if one of them did not run. This changes how
//! hashes are computed, never what they are.

// Off x86_64 only the portable kernel exists: the lane scheduler still compiles (and stays
// type-checked) there, unused.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

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

/// A way of computing [`Messages::hash_all`]; every kernel gives the same hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Sixteen messages side by side in AVX-512 registers.
    Avx512,
    /// Eight messages side by side in AVX2 registers.
    Avx2,
    /// Four messages side by side in SSE2 registers (every x86_64 CPU).
    Sse2,
    /// `blake3::hash`, one message after another (which uses SIMD within a message of two
    /// chunks or more).
    Portable,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 4] = [Kernel::Avx512, Kernel::Avx2, Kernel::Sse2, Kernel::Portable];

    /// A short name, for reports (`hart bench`) and test output.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Sse2 => "sse2",
            Kernel::Portable => "portable",
        }
    }

    /// Whether this CPU runs the kernel (the CPU's features are read once by `std`, then
    /// cached).
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Sse2 => true,
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 | Kernel::Avx2 | Kernel::Sse2 => false,
            Kernel::Portable => true,
        }
    }

    /// The kernels this CPU runs, fastest first.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// The kernel [`Messages::hash_all`] uses on this CPU for more than a few messages.
    pub fn selected() -> Kernel {
        Kernel::ALL.into_iter().find(|k| k.is_available()).unwrap_or(Kernel::Portable)
    }
}

/// Name of the kernel [`Messages::hash_all`] uses on this CPU (`avx512`, `avx2`, …): cheap.
pub fn kernel_name() -> &'static str {
    Kernel::selected().name()
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

    /// BLAKE3 of every message, in order, appended to `out`, with the fastest kernel this
    /// CPU runs ([`Kernel::selected`]) unless there are only a few messages.
    pub fn hash_all(&self, out: &mut Vec<Hash>) {
        debug_assert!(self.open.is_none(), "a message is still open");
        self.hash_with(Self::kernel_for(self.spans.len()), out);
    }

    /// The kernel for `n` messages (measured, docs/decisions/0015).
    fn kernel_for(n: usize) -> Kernel {
        match Kernel::selected() {
            // Lanes mostly idle: `blake3::hash` is faster for two messages and as fast for
            // three, and spreads a long message over SIMD lanes of its own.
            _ if n < 4 => Kernel::Portable,
            // Eight lanes take as many steps as sixteen here, each step cheaper.
            Kernel::Avx512 if n <= 8 && Kernel::Avx2.is_available() => Kernel::Avx2,
            k => k,
        }
    }

    /// [`Messages::hash_all`] with the given kernel, whatever the number of messages: for
    /// tests and benchmarks, which compare the kernels. Panics if this CPU cannot run it.
    pub fn hash_all_with(&self, kernel: Kernel, out: &mut Vec<Hash>) {
        assert!(kernel.is_available(), "hash kernel {} is not available on this CPU", kernel.name());
        assert!(self.open.is_none(), "a message is still open");
        self.hash_with(kernel, out);
    }

    /// `kernel` must be available.
    fn hash_with(&self, kernel: Kernel, out: &mut Vec<Hash>) {
        #[cfg(target_arch = "x86_64")]
        let compress: Option<CompressFn> = match kernel {
            Kernel::Avx512 => Some(avx512::compress_jobs),
            Kernel::Avx2 => Some(avx2::compress_jobs),
            Kernel::Sse2 => Some(sse2::compress_jobs),
            Kernel::Portable => None,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let compress: Option<CompressFn> = {
            debug_assert_eq!(kernel, Kernel::Portable);
            None
        };
        match compress {
            // SAFETY: callers check that `kernel` is available, which is the CPU feature
            // `compress` needs.
            Some(compress) => unsafe { self.hash_lanes(compress, out) },
            None => {
                #[cfg(test)]
                tests::ran(Kernel::Portable);
                out.extend((0..self.spans.len()).map(|i| Hash(*blake3::hash(self.get(i)).as_bytes())));
            }
        }
    }

    /// # Safety
    /// The CPU must run `compress`.
    unsafe fn hash_lanes(&self, compress: CompressFn, out: &mut Vec<Hash>) {
        // Messages go through in batches of about `BATCH_JOBS` chunks. A batch's jobs and
        // chaining values stay in cache, and their buffers are small enough for the allocator
        // to reuse: buffers for a whole call of 8192 leaves were fresh pages every time (52k
        // page faults in a benchmark, a quarter of the AVX-512 kernel's time). The lanes
        // drain at the end of each batch: a few idle lane-steps per 512 jobs.
        let mut jobs = Vec::with_capacity(self.spans.len().min(BATCH_JOBS));
        let mut cvs = Vec::new();
        let mut first = 0;
        out.reserve(self.spans.len());
        while first < self.spans.len() {
            jobs.clear();
            let mut long = false;
            let mut end = first;
            while end < self.spans.len() && jobs.len() < BATCH_JOBS {
                let (start, len) = self.spans[end];
                end += 1;
                if len as usize <= CHUNK_LEN {
                    // The common case, kept short: one chunk, which is the whole message.
                    let blocks = len.max(1).div_ceil(BLOCK_LEN as u32);
                    jobs.push(Job {
                        word: start / 4,
                        blocks,
                        last_len: len - (blocks - 1) * BLOCK_LEN as u32,
                        counter: 0,
                        start_flags: CHUNK_START,
                        end_flags: CHUNK_END | ROOT,
                    });
                    continue;
                }
                long = true;
                let chunks = (len as usize).div_ceil(CHUNK_LEN);
                for c in 0..chunks {
                    let clen = (len as usize - c * CHUNK_LEN).min(CHUNK_LEN);
                    let blocks = clen.div_ceil(BLOCK_LEN);
                    jobs.push(Job {
                        word: (start as usize + c * CHUNK_LEN) as u32 / 4,
                        blocks: blocks as u32,
                        last_len: (clen - (blocks - 1) * BLOCK_LEN) as u32,
                        counter: c as u32,
                        start_flags: CHUNK_START,
                        end_flags: CHUNK_END,
                    });
                }
            }
            cvs.clear();
            cvs.resize(jobs.len(), [0u8; 32]);
            // SAFETY: the CPU runs `compress` (caller); every job's blocks lie inside `buf`
            // (padded to whole blocks by `end`).
            unsafe { compress(&self.buf, &jobs, &mut cvs) };
            if long {
                // SAFETY: as above.
                unsafe { finish_long(&self.spans[first..end], &cvs, compress, out) };
            } else {
                // One job per message, each a ROOT: the chaining values are the hashes.
                out.extend(cvs.iter().map(|&h| Hash(h)));
            }
            first = end;
        }
    }
}

/// Chunks of one batch's messages a lane hashes together, at most (a batch holds every chunk
/// of its last message, so a long message can make it longer).
const BATCH_JOBS: usize = 512;

/// The hashes of a batch of messages some of which are longer than a chunk, from the chaining
/// values of all their chunks in order.
///
/// # Safety
/// The CPU must run `compress`.
unsafe fn finish_long(spans: &[(u32, u32)], cvs: &[[u8; 32]], compress: CompressFn, out: &mut Vec<Hash>) {
    // Two-chunk messages (lines of 32..=63 tokens) end in one parent node: those are
    // compressed in lanes too, from a block of the two chaining values.
    let mut parents = Vec::new();
    let mut parent_jobs = Vec::new();
    let mut j = 0;
    for &(_, len) in spans {
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
            parents.extend_from_slice(&cvs[j]);
            parents.extend_from_slice(&cvs[j + 1]);
        }
        j += chunks;
    }
    let mut roots = vec![[0u8; 32]; parent_jobs.len()];
    if !parent_jobs.is_empty() {
        // SAFETY: the CPU runs `compress` (caller); each parent job is one whole block of
        // `parents`.
        unsafe { compress(&parents, &parent_jobs, &mut roots) };
    }
    let (mut j, mut p) = (0, 0);
    for &(_, len) in spans {
        let chunks = (len as usize).max(1).div_ceil(CHUNK_LEN);
        let h = match chunks {
            1 => cvs[j],
            2 => {
                p += 1;
                roots[p - 1]
            }
            _ => merge(&cvs[j..j + chunks], true),
        };
        out.push(Hash(h));
        j += chunks;
    }
}

/// A kernel's compression of a list of jobs (`lanes::compress_jobs` for one lane type).
///
/// # Safety
/// The CPU must run the kernel; every job's blocks must lie within the buffer.
type CompressFn = unsafe fn(&[u8], &[Job], &mut [[u8; 32]]);

/// Chaining value (or, at the root, the hash) of the subtree over these chunks' chaining
/// values: BLAKE3's tree puts the largest power of two of chunks that leaves at least one on
/// the right in the left subtree.
fn merge(cvs: &[[u8; 32]], root: bool) -> [u8; 32] {
    use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, Mode};
    if cvs.len() == 1 {
        return cvs[0];
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
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod lanes;
#[cfg(target_arch = "x86_64")]
mod sse2;
#[cfg(test)]
mod tests;
