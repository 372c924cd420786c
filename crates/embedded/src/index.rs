//! Derived indexes: an in-memory table of recent entries plus immutable sorted runs on disk,
//! each with a bloom filter and block fences in memory (a small LSM specialised for
//! fixed-size keys and log-offset values).
//!
//! Runs hold `(key, offset)` pairs sorted by key then offset; a key may appear with several
//! offsets (a hash prefix, or an `h_xy` shared by atoms that differ in `z, m`), so lookups
//! return candidates and the caller checks each against the log. Runs merge when the newest
//! grows to half the size of the one before it, so there are O(log n) of them.

use hart_store::StoreError;
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

const RUN_MAGIC: &[u8; 8] = b"HARTRUN1";
/// magic ‖ K u64 ‖ count u64 ‖ bloom words u64 ‖ CRC-32 (as u64) of everything after the header.
const RUN_HEADER: usize = 40;
/// Entries per fence block.
const BLOCK: usize = 128;
/// Bits per key of run blooms and of a freshly sized global bloom.
const BLOOM_BITS_PER_KEY: u64 = 10;
/// Probes per key, all inside one 512-bit block (one cache line).
const BLOOM_K: u32 = 6;
const BLOCK_WORDS: usize = 8;
/// Bytes read at a time when streaming a run (a merge, a bloom rebuild).
const STREAM_BLOCK: usize = 1 << 20;
/// Bytes gathered before a run writer checksums and writes them.
const WRITE_BLOCK: usize = 64 << 10;
/// Runs with more entries than this are written without a bloom filter.
const RUN_BLOOM_MAX_KEYS: usize = if cfg!(test) { 2000 } else { 4 << 20 };

/// One immutable sorted run.
pub struct Run<const K: usize> {
    pub id: u64,
    pub path: PathBuf,
    map: Mmap,
    /// For positioned reads: the writer's lookups read through it instead of the mapping,
    /// so probing the index does not grow the process's resident memory.
    file: File,
    count: usize,
    /// Where the bloom words start in the map, and how many blocks there are.
    bloom_at: usize,
    blocks: usize,
    /// The fences as [`ordinal`]s: a binary search over them compares integers.
    fences: Vec<u128>,
    /// Whether the file is known durable (fsynced since it was written).
    synced: bool,
}

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Two independent 64-bit hashes of a key.
#[inline]
pub fn key_hashes<const K: usize>(key: &[u8; K]) -> (u64, u64) {
    slice_hashes(key)
}

#[inline]
pub fn slice_hashes(key: &[u8]) -> (u64, u64) {
    let mut a = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in key.chunks(8) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        a = mix(a ^ u64::from_le_bytes(b));
    }
    (a, mix(a ^ 0x5851_f42d_4c95_7f2d))
}

fn blocks_for(keys: usize, bits_per_key: u64) -> usize {
    ((keys as u64 * bits_per_key).div_ceil(512)).max(1) as usize
}

/// Entries [`Run::lower_bound`] walks from its interpolated guess before it falls back to a
/// binary search.
const INTERPOLATION_STEPS: usize = 8;

/// A key of at most 16 bytes as an integer that orders like the bytes (big-endian, padded on
/// the right with zeros).
#[inline]
fn ordinal<const K: usize>(key: &[u8; K]) -> u128 {
    const { assert!(K <= 16, "index keys are at most 16 bytes") };
    let mut b = [0u8; 16];
    b[..K].copy_from_slice(key);
    u128::from_be_bytes(b)
}

/// One bloom block: a cache line (aligned in memory, so a probe touches exactly one).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u64; BLOCK_WORDS]);

#[inline]
fn block_of(blocks: usize, h1: u64) -> usize {
    ((u128::from(h1) * blocks as u128) >> 64) as usize
}

/// The block and the (word, mask) probes of a key in a blocked bloom of `blocks` blocks.
#[inline]
fn probes(blocks: usize, (h1, h2): (u64, u64)) -> (usize, [(usize, u64); BLOOM_K as usize]) {
    let b = block_of(blocks, h1);
    let mut out = [(0usize, 0u64); BLOOM_K as usize];
    for (i, o) in out.iter_mut().enumerate() {
        let bit = (h2 >> (9 * i)) & 511;
        *o = (b * BLOCK_WORDS + (bit >> 6) as usize, 1u64 << (bit & 63));
    }
    (b, out)
}

/// A blocked bloom filter in memory (the writer's global filter over all runs of an index).
pub struct Bloom {
    blocks: Vec<Block>,
    keys: usize,
    capacity: usize,
}

impl Bloom {
    pub fn with_capacity(capacity: usize, bits_per_key: u64) -> Self {
        Bloom { blocks: vec![Block([0; BLOCK_WORDS]); blocks_for(capacity, bits_per_key)], keys: 0, capacity }
    }

    #[inline]
    pub fn insert(&mut self, h: (u64, u64)) {
        for (w, m) in probes(self.blocks.len(), h).1 {
            self.blocks[w / BLOCK_WORDS].0[w % BLOCK_WORDS] |= m;
        }
        self.keys += 1;
    }

    #[inline]
    pub fn contains(&self, h: (u64, u64)) -> bool {
        probes(self.blocks.len(), h).1.iter().all(|&(w, m)| self.blocks[w / BLOCK_WORDS].0[w % BLOCK_WORDS] & m != 0)
    }

    /// Start loading the block that [`Bloom::contains`] or [`Bloom::insert`] will read for `h`.
    #[inline]
    pub fn prefetch(&self, h: (u64, u64)) {
        if !self.blocks.is_empty() {
            hart_core::prefetch(&self.blocks[block_of(self.blocks.len(), h.0)]);
        }
    }

    pub fn is_full(&self) -> bool {
        self.keys > self.capacity
    }

    pub fn memory(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block>()
    }
}

impl<const K: usize> Run<K> {
    const ENTRY: usize = K + 8;
    const HEADER: usize = RUN_HEADER;

    /// Write a run from entries sorted by key then offset (streamed: memory stays flat).
    /// `cap` bounds the entry count and sizes the bloom filter.
    pub fn write(
        dir: &Path,
        id: u64,
        prefix: &str,
        cap: usize,
        entries: impl Iterator<Item = ([u8; K], u64)>,
    ) -> Result<Run<K>, StoreError> {
        use std::io::{Seek, SeekFrom};
        let path = dir.join(format!("{prefix}-{id:08}.run"));
        let tmp = path.with_extension("tmp");
        let io = |op: &'static str| {
            let tmp = tmp.clone();
            move |e: std::io::Error| StoreError::io(op, &tmp, e)
        };
        let f = File::create(&tmp).map_err(io("create"))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(&[0u8; RUN_HEADER]).map_err(io("write"))?;
        // Big runs (the few oldest) get no bloom: its memory while writing would grow with the
        // store, and a lookup there costs a fence search and one page anyway.
        let blocks = if cap > RUN_BLOOM_MAX_KEYS { 0 } else { blocks_for(cap, BLOOM_BITS_PER_KEY) };
        let mut bloom = vec![0u64; blocks * BLOCK_WORDS];
        let mut crc = crc32fast::Hasher::new();
        let mut count = 0u64;
        let mut fences: Vec<[u8; K]> = Vec::with_capacity(cap.div_ceil(BLOCK));
        // Entries are gathered a block at a time, so the checksum and the writer see large
        // slices rather than one call per 24-byte entry.
        let mut block: Vec<u8> = Vec::with_capacity(WRITE_BLOCK + 64);
        let mut flush = |block: &mut Vec<u8>, w: &mut BufWriter<File>| {
            crc.update(block);
            let r = w.write_all(block);
            block.clear();
            r
        };
        for (k, v) in entries {
            if (count as usize).is_multiple_of(BLOCK) {
                fences.push(k);
            }
            if blocks > 0 {
                for (w, m) in probes(blocks, key_hashes(&k)).1 {
                    bloom[w] |= m;
                }
            }
            block.extend_from_slice(&k);
            block.extend_from_slice(&v.to_le_bytes());
            count += 1;
            if block.len() >= WRITE_BLOCK {
                flush(&mut block, &mut w).map_err(io("write"))?;
            }
        }
        for word in &bloom {
            block.extend_from_slice(&word.to_le_bytes());
            if block.len() >= WRITE_BLOCK {
                flush(&mut block, &mut w).map_err(io("write"))?;
            }
        }
        for f in &fences {
            block.extend_from_slice(f);
            if block.len() >= WRITE_BLOCK {
                flush(&mut block, &mut w).map_err(io("write"))?;
            }
        }
        flush(&mut block, &mut w).map_err(io("write"))?;
        let mut header = [0u8; RUN_HEADER];
        header[..8].copy_from_slice(RUN_MAGIC);
        header[8..16].copy_from_slice(&(K as u64).to_le_bytes());
        header[16..24].copy_from_slice(&count.to_le_bytes());
        header[24..32].copy_from_slice(&(bloom.len() as u64).to_le_bytes());
        header[32..40].copy_from_slice(&u64::from(crc.finalize()).to_le_bytes());
        w.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
        w.write_all(&header).map_err(io("write"))?;
        w.into_inner().map_err(|e| StoreError::io("write", &tmp, e.into_error()))?;
        // Not fsynced here: no manifest names the run yet. A checkpoint syncs every run before
        // the manifest that names it (`Runs::sync`); a crash before that leaves an orphan
        // that the next open deletes.
        std::fs::rename(&tmp, &path).map_err(io("rename"))?;
        let mut run = Run::open(&path, id)?;
        run.synced = false;
        Ok(run)
    }

    /// Open a run: check its header and size and load its fences. The checksum is checked
    /// by [`Run::verify`] (fsck), not here: reading the whole run would make every open cost
    /// the size of the index.
    pub fn open(path: &Path, id: u64) -> Result<Run<K>, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt { path: path.to_path_buf(), offset: 0, what: what.to_string() };
        let f = File::open(path).map_err(|e| StoreError::io("read", path, e))?;
        // SAFETY: runs are immutable once renamed into place; they are only ever deleted.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| StoreError::io("map", path, e))?;
        if map.len() < Self::HEADER || &map[..8] != RUN_MAGIC {
            return Err(corrupt("not an index run"));
        }
        let word = |i: usize| u64::from_le_bytes(map[8 * i..8 * i + 8].try_into().expect("8"));
        let (k, count, words) = (word(1), word(2), word(3));
        // The sizes are read from the file: checked arithmetic, so that no count can wrap
        // around to a size that matches the file.
        let layout = || -> Option<(usize, usize, usize)> {
            let count = usize::try_from(count).ok()?;
            let words = usize::try_from(words).ok()?;
            let body = count.checked_mul(Self::ENTRY)?.checked_add(Self::HEADER)?;
            let fences_at = words.checked_mul(8)?.checked_add(body)?;
            let end = count.div_ceil(BLOCK).checked_mul(K)?.checked_add(fences_at)?;
            Some((count, words, end))
        };
        let (count, words, end) = layout().ok_or_else(|| corrupt("index run has the wrong size"))?;
        let body = Self::HEADER + count * Self::ENTRY;
        let fences_at = body + words * 8;
        if k != K as u64 || map.len() != end {
            return Err(corrupt("index run has the wrong size"));
        }
        if words % BLOCK_WORDS != 0 {
            return Err(corrupt("index run has a malformed bloom filter"));
        }
        let fences = map[fences_at..].chunks_exact(K).map(|c| ordinal::<K>(c.try_into().expect("K"))).collect();
        Ok(Run {
            id,
            path: path.to_path_buf(),
            map,
            file: f,
            count,
            bloom_at: body,
            blocks: words / BLOCK_WORDS,
            fences,
            synced: true,
        })
    }

    /// Drop this process's references to the run's mapped pages (see `Log::release_pages`).
    pub fn release_pages(&self) {
        // SAFETY: a shared, read-only file mapping; the page cache keeps the data.
        let _ = unsafe { self.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    }

    /// Check the run's checksum and order (reads it all).
    pub fn verify(&self) -> Result<(), String> {
        let sum = u64::from_le_bytes(self.map[32..40].try_into().expect("8"));
        if u64::from(crc32fast::hash(&self.map[Self::HEADER..])) != sum {
            return Err(format!("{}: checksum mismatch", self.path.display()));
        }
        let mut prev: Option<([u8; K], u64)> = None;
        for i in 0..self.count {
            let (k, v) = self.entry(i);
            if prev.is_some_and(|p| p >= (*k, v)) {
                return Err(format!("{}: entries out of order at {i}", self.path.display()));
            }
            prev = Some((*k, v));
        }
        Ok(())
    }

    /// Every entry in order, read through a buffer rather than the mapping, so a full pass
    /// (a merge, a bloom rebuild) does not charge the whole file to the process's memory.
    pub fn stream(&self) -> Result<impl Iterator<Item = ([u8; K], u64)> + '_, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = File::open(&self.path).map_err(|e| StoreError::io("read", &self.path, e))?;
        f.seek(SeekFrom::Start(Self::HEADER as u64)).map_err(|e| StoreError::io("read", &self.path, e))?;
        // Whole entries are read a block at a time and parsed from the block (a buffered
        // reader's call per 24-byte entry was most of a merge's time).
        let block_entries = (STREAM_BLOCK / Self::ENTRY).max(1);
        let mut buf = Vec::new();
        let mut pos = 0;
        let mut unread = self.count;
        Ok(std::iter::from_fn(move || {
            if pos == buf.len() {
                if unread == 0 {
                    return None;
                }
                let n = unread.min(block_entries);
                buf.resize(n * Self::ENTRY, 0);
                // A read error mid-merge ends the stream early; the merged run's count then
                // disagrees with its sources and `verify` reports it. Reads from a local file
                // that was just written do not fail short of a hardware fault.
                f.read_exact(&mut buf).ok()?;
                unread -= n;
                pos = 0;
            }
            let e = &buf[pos..pos + Self::ENTRY];
            pos += Self::ENTRY;
            Some((e[..K].try_into().expect("K"), u64::from_le_bytes(e[K..K + 8].try_into().expect("8"))))
        }))
    }

    #[inline]
    fn entry(&self, i: usize) -> (&[u8; K], u64) {
        let map = &self.map[..];
        let p = Self::HEADER + i * Self::ENTRY;
        (map[p..p + K].try_into().expect("K"), u64::from_le_bytes(map[p + K..p + K + 8].try_into().expect("8")))
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// The fences' keys, in file order (the fuzzing harness looks them up).
    pub(crate) fn fence_keys(&self) -> Vec<[u8; K]> {
        self.fences.iter().map(|f| f.to_be_bytes()[..K].try_into().expect("K")).collect()
    }

    /// Index of the first entry whose key is ≥ `key`.
    fn lower_bound(&self, key: &[u8; K]) -> usize {
        // The last fence ≤ key bounds the block to search.
        let key = ordinal(key);
        let next = self.fences.partition_point(|&f| f < key);
        let block = next.saturating_sub(1);
        let lo = block * BLOCK;
        let hi = ((block + 2) * BLOCK).min(self.count);
        let mut a = lo;
        let mut b = hi;
        // Keys (hash prefixes, Hilbert keys) spread evenly between two fences: guess the
        // place from where the key falls between them and walk a few entries from there (one
        // or two cache lines), instead of a binary search's eight scattered reads.
        if next > 0 && next < self.fences.len() {
            let (f0, f1) = (self.fences[block], self.fences[next]);
            if f0 < key && key <= f1 {
                let span = ((key - f0) as f64 / (f1 - f0) as f64 * BLOCK as f64) as usize;
                let mut i = (lo + span).clamp(lo + 1, lo + BLOCK);
                for _ in 0..INTERPOLATION_STEPS {
                    // In a well-formed run entry(lo) is the fence f0 < key, so i never falls
                    // to lo; in a corrupt one (fences that are not its entries' keys) the
                    // walk must not step below the block.
                    if i > lo + 1 && ordinal(self.entry(i - 1).0) >= key {
                        i -= 1; // the answer is at or before i - 1
                    } else if i < self.count && ordinal(self.entry(i).0) < key {
                        i += 1;
                    } else {
                        return i; // entry(i - 1) < key ≤ entry(i)
                    }
                }
                // Far from the guess (keys bunched up): search the block.
                a = lo + 1;
                b = lo + BLOCK;
            }
        }
        while a < b {
            let mid = (a + b) / 2;
            if ordinal(self.entry(mid).0) < key {
                a = mid + 1;
            } else {
                b = mid;
            }
        }
        a
    }

    #[inline]
    fn may_contain(&self, h: (u64, u64)) -> bool {
        if self.blocks == 0 {
            return true;
        }
        let word = |w: usize| {
            u64::from_le_bytes(self.map[self.bloom_at + 8 * w..self.bloom_at + 8 * w + 8].try_into().expect("8"))
        };
        probes(self.blocks, h).1.iter().all(|&(w, m)| word(w) & m != 0)
    }

    /// Append the offsets stored under `key` to `out`.
    #[inline]
    pub fn find(&self, key: &[u8; K], out: &mut Vec<u64>) {
        if self.count == 0 || !self.may_contain(key_hashes(key)) {
            return;
        }
        let mut i = self.lower_bound(key);
        while i < self.count {
            let (k, v) = self.entry(i);
            if k != key {
                break;
            }
            out.push(v);
            i += 1;
        }
    }

    /// Offsets of entries whose key starts with `prefix`, read with positioned reads.
    pub fn find_prefix_pread(&self, prefix: &[u8], out: &mut Vec<u64>) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        if self.count == 0 {
            return Ok(());
        }
        let mut lo = [0u8; K];
        lo[..prefix.len()].copy_from_slice(prefix);
        let lo = ordinal(&lo);
        let mut block = self.fences.partition_point(|&f| f < lo).saturating_sub(1);
        let mut buf = [0u8; BLOCK * 32];
        debug_assert!(Self::ENTRY <= 32);
        while block * BLOCK < self.count {
            let first = block * BLOCK;
            let n = BLOCK.min(self.count - first);
            let at = (Self::HEADER + first * Self::ENTRY) as u64;
            self.file
                .read_exact_at(&mut buf[..n * Self::ENTRY], at)
                .map_err(|e| StoreError::io("read", &self.path, e))?;
            for e in buf[..n * Self::ENTRY].chunks_exact(Self::ENTRY) {
                match e[..prefix.len()].cmp(prefix) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => out.push(u64::from_le_bytes(e[K..K + 8].try_into().expect("8"))),
                    std::cmp::Ordering::Greater => return Ok(()),
                }
            }
            block += 1;
        }
        Ok(())
    }

    /// Entries with `lo ≤ key ≤ hi`, at most `limit`.
    pub fn range(&self, lo: &[u8; K], hi: &[u8; K], limit: usize, out: &mut Vec<([u8; K], u64)>) {
        let mut i = self.lower_bound(lo);
        while i < self.count && out.len() < limit {
            let (k, v) = self.entry(i);
            if k > hi {
                break;
            }
            out.push((*k, v));
            i += 1;
        }
    }

    /// Bytes the fences take in memory (the bloom stays in the mapped file).
    pub fn memory(&self) -> usize {
        self.fences.len() * std::mem::size_of::<u128>()
    }
}

/// Runs below this size share the lowest merge level.
const LEVEL_BASE: usize = 1 << 18;
/// Runs of one level merged together.
const FANOUT: usize = 4;
/// Runs at which a lazy [`Runs::add`] merges anyway, so that checkpoints alone (many small
/// ingests) never pile up runs.
pub const LAZY_RUNS: usize = 3 * FANOUT;
/// Bits per key of the global bloom when it is (re)built.
const GLOBAL_BITS_PER_KEY: u64 = 8;
/// The global bloom knows keys by their first bytes: for the hash index these are the
/// content-hash bytes that also fill positions' low bits, so one probe answers both "may
/// this atom exist?" and "may an atom hold this position?".
pub const GLOBAL_PREFIX: usize = 8;

fn level(count: usize, fanout: usize) -> u32 {
    let mut l = 0;
    let mut c = count / LEVEL_BASE;
    while c >= fanout {
        c /= fanout;
        l += 1;
    }
    l
}

/// The runs of one index, oldest first, and (for a writer) one bloom filter over all of
/// them, so that a lookup of an absent key costs one cache miss however many runs there are.
pub struct Runs<const K: usize> {
    pub prefix: &'static str,
    pub runs: Vec<Run<K>>,
    /// Indexes of `runs`, largest first: the order lookups that stop at their first match ask
    /// them in (an atom is most likely in the largest run).
    by_size: Vec<usize>,
    global: Option<Bloom>,
    /// Runs of one level merged together: more means fewer rewrites and more runs to probe.
    fanout: usize,
}

impl<const K: usize> Runs<K> {
    #[cfg(test)]
    pub fn new(prefix: &'static str) -> Self {
        Runs { prefix, runs: Vec::new(), by_size: Vec::new(), global: None, fanout: FANOUT }
    }

    pub fn open(dir: &Path, prefix: &'static str, ids: &[u64]) -> Result<Self, StoreError> {
        let mut runs = Vec::new();
        for &id in ids {
            runs.push(Run::open(&dir.join(format!("{prefix}-{id:08}.run")), id)?);
        }
        let mut r = Runs { prefix, runs, by_size: Vec::new(), global: None, fanout: FANOUT };
        r.sort_by_size();
        Ok(r)
    }

    /// Build the global bloom (writers) over the first [`GLOBAL_PREFIX`] bytes of every key:
    /// one pass over every run.
    pub fn build_global(&mut self) -> Result<(), StoreError> {
        // Free the old filter first: holding both would double the peak.
        self.global = None;
        let n: usize = self.runs.iter().map(Run::len).sum();
        let mut g = Bloom::with_capacity((n + n / 2).max(1 << 20), GLOBAL_BITS_PER_KEY);
        for r in &self.runs {
            for (k, _) in r.stream()? {
                g.insert(slice_hashes(&k[..GLOBAL_PREFIX]));
            }
        }
        self.global = Some(g);
        Ok(())
    }

    /// Merge `fanout` runs of a level at a time (default [`FANOUT`]).
    pub fn with_fanout(mut self, fanout: usize) -> Self {
        self.fanout = fanout.max(2);
        self
    }

    /// fsync every run written since the last call (before a manifest names them).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        for r in self.runs.iter_mut().filter(|r| !r.synced) {
            r.file.sync_all().map_err(|e| StoreError::io("sync", &r.path, e))?;
            r.synced = true;
        }
        Ok(())
    }

    pub fn release_pages(&self) {
        self.runs.iter().for_each(Run::release_pages);
    }

    pub fn has_global(&self) -> bool {
        self.global.is_some()
    }

    /// False when no run can hold a key starting with `prefix` (the global bloom says so,
    /// or there are no runs).
    #[inline]
    pub fn may_contain(&self, prefix: &[u8; GLOBAL_PREFIX]) -> bool {
        self.may_contain_hashed(slice_hashes(prefix))
    }

    /// [`Runs::may_contain`] with the prefix's [`slice_hashes`] already computed.
    #[inline]
    pub fn may_contain_hashed(&self, h: (u64, u64)) -> bool {
        !self.runs.is_empty() && self.global.as_ref().is_none_or(|g| g.contains(h))
    }

    /// Start loading what [`Runs::may_contain_hashed`] will read for `h`.
    #[inline]
    pub fn prefetch_hashed(&self, h: (u64, u64)) {
        if let Some(g) = &self.global {
            g.prefetch(h);
        }
    }

    /// Offsets of every entry whose key starts with `prefix` ([`GLOBAL_PREFIX`] bytes),
    /// asking the global bloom first (writers).
    pub fn candidates(&self, prefix: &[u8; GLOBAL_PREFIX], out: &mut Vec<u64>) -> Result<(), StoreError> {
        if !self.may_contain(prefix) {
            return Ok(());
        }
        for r in self.runs.iter().rev() {
            r.find_prefix_pread(prefix, out)?;
        }
        Ok(())
    }

    pub fn ids(&self) -> Vec<u64> {
        self.runs.iter().map(|r| r.id).collect()
    }

    /// Offsets stored under exactly `key` (each run's own bloom filters it).
    #[cfg(test)]
    pub fn find(&self, key: &[u8; K], out: &mut Vec<u64>) {
        for r in self.runs.iter().rev() {
            r.find(key, out);
        }
    }

    /// The runs, largest first.
    pub fn largest_first(&self) -> impl Iterator<Item = &Run<K>> + '_ {
        self.by_size.iter().map(|&i| &self.runs[i])
    }

    fn sort_by_size(&mut self) {
        self.by_size = (0..self.runs.len()).collect();
        // Equal sizes: newest first.
        self.by_size.sort_by_key(|&i| (std::cmp::Reverse(self.runs[i].len()), std::cmp::Reverse(i)));
    }

    /// Add a run built from `entries` (sorted by key then value), then merge runs level by
    /// level, [`FANOUT`] at a time. `keep(offset)` says which entries survive a merge.
    /// Returns the paths of runs merged away (delete them once the manifest no longer lists
    /// them).
    ///
    /// With `lazy`, merges wait for a later call unless [`LAZY_RUNS`] runs are there: a
    /// checkpoint, which ends every ingest, then does not pay for a merge that the next spill
    /// can do as well.
    pub fn add(
        &mut self,
        dir: &Path,
        next_id: &mut u64,
        entries: Vec<([u8; K], u64)>,
        keep: &dyn Fn(u64) -> bool,
        lazy: bool,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let mut obsolete = Vec::new();
        if entries.is_empty() {
            return Ok(obsolete);
        }
        if let Some(g) = &mut self.global {
            for (k, _) in &entries {
                g.insert(slice_hashes(&k[..GLOBAL_PREFIX]));
            }
        }
        let id = *next_id;
        *next_id += 1;
        let n = entries.len();
        self.runs.push(Run::write(dir, id, self.prefix, n, entries.into_iter())?);
        self.sort_by_size();
        if lazy && self.runs.len() < LAZY_RUNS {
            return Ok(obsolete);
        }
        loop {
            let n = self.runs.len();
            let fanout = self.fanout;
            if n < fanout {
                break;
            }
            let top = level(self.runs[n - 1].len(), fanout);
            if !self.runs[n - fanout..].iter().all(|r| level(r.len(), fanout) == top) {
                break;
            }
            let group: Vec<Run<K>> = self.runs.drain(n - fanout..).collect();
            let cap = group.iter().map(Run::len).sum();
            let id = *next_id;
            *next_id += 1;
            let sources = group.iter().map(|r| r.stream().map(Iterator::peekable)).collect::<Result<Vec<_>, _>>()?;
            let merged = Merge { sources, keep, last: None };
            let run = Run::write(dir, id, self.prefix, cap, merged)?;
            obsolete.extend(group.iter().map(|r| r.path.clone()));
            self.runs.push(run);
            self.sort_by_size();
        }
        if self.global.as_ref().is_some_and(Bloom::is_full) {
            self.build_global()?;
        }
        Ok(obsolete)
    }

    /// Check every run (fsck).
    pub fn verify(&self) -> Vec<String> {
        self.runs.iter().filter_map(|r| r.verify().err()).collect()
    }

    pub fn memory(&self) -> usize {
        self.runs.iter().map(Run::memory).sum::<usize>() + self.global.as_ref().map_or(0, Bloom::memory)
    }

    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.runs.iter().map(Run::len).sum()
    }
}

/// K-way merge of sorted entry streams, dropping exact duplicates and entries `keep`
/// rejects.
struct Merge<'a, I: Iterator, const K: usize> {
    sources: Vec<std::iter::Peekable<I>>,
    keep: &'a dyn Fn(u64) -> bool,
    last: Option<([u8; K], u64)>,
}

impl<I, const K: usize> Iterator for Merge<'_, I, K>
where
    I: Iterator<Item = ([u8; K], u64)>,
{
    type Item = ([u8; K], u64);
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let mut best: Option<(usize, ([u8; K], u64))> = None;
            for (i, s) in self.sources.iter_mut().enumerate() {
                if let Some(&e) = s.peek() {
                    if best.is_none_or(|(_, b)| e < b) {
                        best = Some((i, e));
                    }
                }
            }
            let (i, e) = best?;
            self.sources[i].next();
            if (self.keep)(e.1) && self.last != Some(e) {
                self.last = Some(e);
                return Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_find_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs: Runs<8> = Runs::new("t");
        let mut next = 1;
        let mut all = Vec::new();
        for round in 0..9u64 {
            let mut entries: Vec<([u8; 8], u64)> =
                (0..1000u64).map(|i| (((i * 7919 + round) % 5000).to_be_bytes(), round * 1000 + i)).collect();
            entries.sort();
            all.extend(entries.clone());
            for p in runs.add(dir.path(), &mut next, entries, &|_| true, false).unwrap() {
                std::fs::remove_file(p).unwrap();
            }
        }
        assert!(runs.runs.len() <= 6, "{} runs", runs.runs.len());
        runs.build_global().unwrap();
        for (k, v) in all.iter().step_by(37) {
            let mut out = Vec::new();
            runs.find(k, &mut out);
            assert!(out.contains(v), "{k:?}");
        }
        let mut out = Vec::new();
        runs.find(&999_999u64.to_be_bytes(), &mut out);
        assert!(out.is_empty());
        let reopened: Runs<8> = Runs::open(dir.path(), "t", &runs.ids()).unwrap();
        assert_eq!(reopened.entries(), runs.entries());
    }

    /// Lazy adds (checkpoints) leave merging to a later add, but never hold more than
    /// LAZY_RUNS runs; an eager add then merges what waited.
    #[test]
    fn lazy_adds_merge_later_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs: Runs<8> = Runs::new("t");
        let mut next = 1;
        let batch = |round: u64| -> Vec<([u8; 8], u64)> {
            let mut e: Vec<([u8; 8], u64)> =
                (0..100u64).map(|i| ((i * 31 + round).to_be_bytes(), round * 100 + i)).collect();
            e.sort();
            e
        };
        for round in 0..(LAZY_RUNS as u64 + 5) {
            for p in runs.add(dir.path(), &mut next, batch(round), &|_| true, true).unwrap() {
                std::fs::remove_file(p).unwrap();
            }
            assert!(runs.runs.len() <= LAZY_RUNS, "{} runs after lazy add {round}", runs.runs.len());
            if round < LAZY_RUNS as u64 - 1 {
                assert_eq!(runs.runs.len(), round as usize + 1, "a lazy add merged early");
            }
        }
        let before = runs.entries();
        runs.add(dir.path(), &mut next, batch(999), &|_| true, false).unwrap();
        assert!(runs.runs.len() < FANOUT, "{} runs after an eager add", runs.runs.len());
        assert_eq!(runs.entries(), before + 100);
    }

    /// Fuzzing regression: a header whose bloom size wraps `words * 8` around to the real
    /// size opened (and lookups then read bloom words far past the file); it is rejected.
    #[test]
    fn open_rejects_sizes_that_wrap_around() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<([u8; 8], u64)> = (0..300u64).map(|i| (i.to_be_bytes(), i)).collect();
        let run = Run::<8>::write(dir.path(), 1, "t", entries.len(), entries.into_iter()).unwrap();
        let path = run.path.clone();
        drop(run);
        let mut bytes = std::fs::read(&path).unwrap();
        let words = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
        assert!(words > 0);
        bytes[24..32].copy_from_slice(&(words + (1 << 61)).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(Run::<8>::open(&path, 1).is_err());
        // A count whose entries' bytes wrap around.
        bytes[24..32].copy_from_slice(&words.to_le_bytes());
        bytes[16..24].copy_from_slice(&(300u64 + (1 << 60)).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(Run::<8>::open(&path, 1).is_err());
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(Run::<8>::open(&path, 1).is_err());
    }

    /// Fuzzing regression: fences that are not the keys of their entries (a corrupt run;
    /// open reads only the header and fences) sent the interpolated walk below entry 0.
    #[test]
    fn lower_bound_survives_fences_that_are_not_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<([u8; 8], u64)> = (0..300u64).map(|i| ((1000 + i).to_be_bytes(), i)).collect();
        // No bloom (cap above the bloom limit), so lookups reach the search.
        let run = Run::<8>::write(dir.path(), 1, "t", 5000, entries.into_iter()).unwrap();
        let path = run.path.clone();
        drop(run);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        for (i, f) in [0u64, 100, 200].into_iter().enumerate() {
            bytes[n - 24 + 8 * i..n - 16 + 8 * i].copy_from_slice(&f.to_be_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        let run = Run::<8>::open(&path, 1).unwrap();
        for key in [1u64, 2, 50, 99, 100, 101, 150, 199, 5000] {
            assert!(run.lower_bound(&key.to_be_bytes()) <= run.len());
            let mut out = Vec::new();
            run.find(&key.to_be_bytes(), &mut out);
            let mut range = Vec::new();
            run.range(&key.to_be_bytes(), &[0xff; 8], 10, &mut range);
        }
    }

    /// The interpolated search agrees with a binary search over the sorted entries, for keys
    /// present and absent, on uneven data: even stretches, tight clusters, long runs of one
    /// key, a huge gap.
    #[test]
    fn lower_bound_matches_a_plain_binary_search() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys: Vec<u64> = (0..3000u64).map(|i| i * 1_000_003).collect();
        keys.extend((0..2000u64).map(|i| 5_000_000_000 + (i * i) % 977));
        keys.extend(std::iter::repeat_n(7_000_000_000u64, 700));
        keys.extend((0..1500u64).map(|i| u64::MAX / 2 + (i << 40)));
        keys.sort_unstable();
        let entries: Vec<([u8; 8], u64)> = keys.iter().enumerate().map(|(i, &k)| (k.to_be_bytes(), i as u64)).collect();
        let run = Run::<8>::write(dir.path(), 1, "t", entries.len(), entries.iter().copied()).unwrap();
        let mut probes: Vec<u64> = keys.iter().step_by(3).copied().collect();
        probes.extend(keys.iter().step_by(5).map(|k| k.wrapping_add(1)));
        probes.extend(keys.iter().step_by(7).map(|k| k.wrapping_sub(1)));
        probes.extend([0, 1, u64::MAX, 7_000_000_000, 6_999_999_999]);
        for p in probes {
            let want = keys.partition_point(|&k| k < p);
            assert_eq!(run.lower_bound(&p.to_be_bytes()), want, "key {p}");
        }
    }
}
