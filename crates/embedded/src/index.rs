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
const BLOOM_BITS_PER_KEY: u64 = 10;
const BLOOM_K: u32 = 7;

/// One immutable sorted run.
pub struct Run<const K: usize> {
    pub id: u64,
    pub path: PathBuf,
    map: Option<Mmap>,
    count: usize,
    bloom: Vec<u64>,
    fences: Vec<[u8; K]>,
}

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn key_hashes<const K: usize>(key: &[u8; K]) -> (u64, u64) {
    let mut a = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in key.chunks(8) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        a = mix(a ^ u64::from_le_bytes(b));
    }
    (a, mix(a ^ 0x5851_f42d_4c95_7f2d) | 1)
}

fn bloom_bits(count: usize) -> u64 {
    ((count as u64 * BLOOM_BITS_PER_KEY).max(64) + 63) / 64 * 64
}

fn bloom_set<const K: usize>(bloom: &mut [u64], key: &[u8; K]) {
    let m = bloom.len() as u64 * 64;
    let (h1, h2) = key_hashes(key);
    for i in 0..u64::from(BLOOM_K) {
        let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
        bloom[(bit / 64) as usize] |= 1 << (bit % 64);
    }
}

#[inline]
fn bloom_has<const K: usize>(bloom: &[u64], key: &[u8; K]) -> bool {
    let m = bloom.len() as u64 * 64;
    let (h1, h2) = key_hashes(key);
    (0..u64::from(BLOOM_K)).all(|i| {
        let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
        bloom[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    })
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
        let mut bloom = vec![0u64; (bloom_bits(cap) / 64) as usize];
        let mut crc = crc32fast::Hasher::new();
        let mut count = 0u64;
        let mut entry = [0u8; 64];
        for (k, v) in entries {
            bloom_set(&mut bloom, &k);
            entry[..K].copy_from_slice(&k);
            entry[K..K + 8].copy_from_slice(&v.to_le_bytes());
            crc.update(&entry[..K + 8]);
            w.write_all(&entry[..K + 8]).map_err(io("write"))?;
            count += 1;
        }
        for word in &bloom {
            crc.update(&word.to_le_bytes());
            w.write_all(&word.to_le_bytes()).map_err(io("write"))?;
        }
        let mut header = [0u8; RUN_HEADER];
        header[..8].copy_from_slice(RUN_MAGIC);
        header[8..16].copy_from_slice(&(K as u64).to_le_bytes());
        header[16..24].copy_from_slice(&count.to_le_bytes());
        header[24..32].copy_from_slice(&(bloom.len() as u64).to_le_bytes());
        header[32..40].copy_from_slice(&u64::from(crc.finalize()).to_le_bytes());
        w.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
        w.write_all(&header).map_err(io("write"))?;
        let f = w
            .into_inner()
            .map_err(|e| StoreError::io("write", &tmp, e.into_error()))?;
        f.sync_all().map_err(io("sync"))?;
        std::fs::rename(&tmp, &path).map_err(io("rename"))?;
        Run::open(&path, id)
    }

    /// Open a run, checking its header and checksum, loading bloom and fences.
    pub fn open(path: &Path, id: u64) -> Result<Run<K>, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            what: what.to_string(),
        };
        let f = File::open(path).map_err(|e| StoreError::io("read", path, e))?;
        // SAFETY: runs are immutable once renamed into place; they are only ever deleted.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| StoreError::io("map", path, e))?;
        if map.len() < Self::HEADER || &map[..8] != RUN_MAGIC {
            return Err(corrupt("not an index run"));
        }
        let word = |i: usize| u64::from_le_bytes(map[8 * i..8 * i + 8].try_into().expect("8"));
        let (k, count, words, sum) = (word(1), word(2) as usize, word(3) as usize, word(4));
        let body = Self::HEADER + count * Self::ENTRY;
        if k as usize != K || map.len() != body + words * 8 {
            return Err(corrupt("index run has the wrong size"));
        }
        if u64::from(crc32fast::hash(&map[Self::HEADER..])) != sum {
            return Err(corrupt("index run checksum mismatch"));
        }
        let bloom = map[body..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        let mut run = Run {
            id,
            path: path.to_path_buf(),
            map: None,
            count,
            bloom,
            fences: Vec::new(),
        };
        run.fences = (0..count)
            .step_by(BLOCK)
            .map(|i| *Self::key_at(&map, i))
            .collect();
        run.map = Some(map);
        Ok(run)
    }

    #[inline]
    fn key_at(map: &[u8], i: usize) -> &[u8; K] {
        let p = Self::HEADER + i * Self::ENTRY;
        map[p..p + K].try_into().expect("K")
    }

    #[inline]
    fn entry(&self, i: usize) -> (&[u8; K], u64) {
        let map = self.map.as_deref().expect("mapped");
        let p = Self::HEADER + i * Self::ENTRY;
        (
            map[p..p + K].try_into().expect("K"),
            u64::from_le_bytes(map[p + K..p + K + 8].try_into().expect("8")),
        )
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// Index of the first entry whose key is ≥ `key`.
    fn lower_bound(&self, key: &[u8; K]) -> usize {
        // The last fence ≤ key bounds the block to search.
        let block = self.fences.partition_point(|f| f < key).saturating_sub(1);
        let lo = block * BLOCK;
        let hi = ((block + 2) * BLOCK).min(self.count);
        let mut a = lo;
        let mut b = hi;
        while a < b {
            let mid = (a + b) / 2;
            if self.entry(mid).0 < key {
                a = mid + 1;
            } else {
                b = mid;
            }
        }
        a
    }

    /// Append the offsets stored under `key` to `out`.
    #[inline]
    pub fn find(&self, key: &[u8; K], out: &mut Vec<u64>) {
        if self.count == 0 || !bloom_has(&self.bloom, key) {
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

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = ([u8; K], u64)> + '_ {
        (0..self.count).map(|i| {
            let (k, v) = self.entry(i);
            (*k, v)
        })
    }

    /// Bytes the bloom filter and fences take in memory.
    pub fn memory(&self) -> usize {
        self.bloom.len() * 8 + self.fences.len() * K
    }
}

/// The runs of one index, oldest first.
pub struct Runs<const K: usize> {
    pub prefix: &'static str,
    pub runs: Vec<Run<K>>,
}

impl<const K: usize> Runs<K> {
    #[cfg(test)]
    pub fn new(prefix: &'static str) -> Self {
        Runs {
            prefix,
            runs: Vec::new(),
        }
    }

    pub fn open(dir: &Path, prefix: &'static str, ids: &[u64]) -> Result<Self, StoreError> {
        let mut runs = Vec::new();
        for &id in ids {
            runs.push(Run::open(&dir.join(format!("{prefix}-{id:08}.run")), id)?);
        }
        Ok(Runs { prefix, runs })
    }

    pub fn ids(&self) -> Vec<u64> {
        self.runs.iter().map(|r| r.id).collect()
    }

    #[inline]
    pub fn find(&self, key: &[u8; K], out: &mut Vec<u64>) {
        for r in self.runs.iter().rev() {
            r.find(key, out);
        }
    }

    /// Add a run built from `entries` (sorted by key then value), then merge while the newest
    /// run is at least half the size of the one before it. `keep(offset)` says which entries
    /// survive a merge. Returns the paths of runs that were merged away (delete them once
    /// the manifest no longer lists them).
    pub fn add(
        &mut self,
        dir: &Path,
        next_id: &mut u64,
        entries: Vec<([u8; K], u64)>,
        keep: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let mut obsolete = Vec::new();
        if entries.is_empty() {
            return Ok(obsolete);
        }
        let id = *next_id;
        *next_id += 1;
        let n = entries.len();
        self.runs
            .push(Run::write(dir, id, self.prefix, n, entries.into_iter())?);
        while self.runs.len() >= 2 {
            let n = self.runs.len();
            if self.runs[n - 1].len() * 2 < self.runs[n - 2].len() {
                break;
            }
            let b = self.runs.pop().expect("two runs");
            let a = self.runs.pop().expect("two runs");
            let id = *next_id;
            *next_id += 1;
            let run = Run::write(
                dir,
                id,
                self.prefix,
                a.len() + b.len(),
                Merge {
                    a: a.iter().peekable(),
                    b: b.iter().peekable(),
                    keep,
                    last: None,
                },
            )?;
            obsolete.push(a.path.clone());
            obsolete.push(b.path.clone());
            self.runs.push(run);
        }
        Ok(obsolete)
    }

    pub fn memory(&self) -> usize {
        self.runs.iter().map(Run::memory).sum()
    }

    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.runs.iter().map(Run::len).sum()
    }
}

/// Merge of two sorted entry streams, dropping exact duplicates and entries `keep` rejects.
struct Merge<'a, A: Iterator, B: Iterator, const K: usize> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
    keep: &'a dyn Fn(u64) -> bool,
    last: Option<([u8; K], u64)>,
}

impl<A, B, const K: usize> Iterator for Merge<'_, A, B, K>
where
    A: Iterator<Item = ([u8; K], u64)>,
    B: Iterator<Item = ([u8; K], u64)>,
{
    type Item = ([u8; K], u64);
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let next = match (self.a.peek(), self.b.peek()) {
                (None, None) => return None,
                (Some(_), None) => self.a.next(),
                (None, Some(_)) => self.b.next(),
                (Some(x), Some(y)) => {
                    if x <= y {
                        self.a.next()
                    } else {
                        self.b.next()
                    }
                }
            }?;
            if (self.keep)(next.1) && self.last != Some(next) {
                self.last = Some(next);
                return Some(next);
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
        for round in 0..5u64 {
            let mut entries: Vec<([u8; 8], u64)> = (0..1000u64)
                .map(|i| (((i * 7919 + round) % 5000).to_be_bytes(), round * 1000 + i))
                .collect();
            entries.sort();
            all.extend(entries.clone());
            for p in runs.add(dir.path(), &mut next, entries, &|_| true).unwrap() {
                std::fs::remove_file(p).unwrap();
            }
        }
        assert!(runs.runs.len() <= 3, "{} runs", runs.runs.len());
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
}
