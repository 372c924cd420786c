//! Decoder throughput: `cargo run --release -p hart-decode --example throughput [MiB]`.
//!
//! Prints MB/s for each decoder beside baselines measured in the same run on the same bytes
//! (a memcpy and `std::str::from_utf8`), and the ratio to the memcpy. Input is fed in 1 MiB
//! blocks, as an ingest pipeline reading a file would. Text: licence texts and docs found on
//! the machine (or this crate's sources), repeated; binary: pseudo-random bytes and real
//! executables.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use hart_core::Modality;
use rustc_hash::FxHashMap;

use hart_decode::{decoder_for, BinaryChunker, LeafSink, TextTokenizer, Utf8Validator};

const BLOCK: usize = 1 << 20;

#[derive(Default)]
struct Count {
    leaves: u64,
    bytes: u64,
    groups: u64,
}

impl LeafSink for Count {
    #[inline]
    fn leaf(&mut self, value: &[u8]) {
        self.leaves += 1;
        self.bytes += value.len() as u64;
    }
    #[inline]
    fn end_group(&mut self) {
        self.groups += 1;
    }
}

/// What downstream adds per leaf: the content hash and the position.
struct Identity {
    modality: Modality,
    acc: u64,
}

impl LeafSink for Identity {
    #[inline]
    fn leaf(&mut self, value: &[u8]) {
        let (h, p) = hart_core::features::leaf_identity(self.modality, value);
        self.acc ^= u64::from(h.0[0]) ^ u64::from(p.x);
    }
    fn end_group(&mut self) {}
}

/// The same, memoised per distinct leaf value: text tokens repeat a lot.
struct MemoIdentity {
    modality: Modality,
    memo: FxHashMap<Box<[u8]>, (hart_core::Hash, hart_core::Position)>,
    acc: u64,
}

impl LeafSink for MemoIdentity {
    #[inline]
    fn leaf(&mut self, value: &[u8]) {
        let (h, p) = match self.memo.get(value) {
            Some(id) => *id,
            None => {
                let id = hart_core::features::leaf_identity(self.modality, value);
                self.memo.insert(value.into(), id);
                id
            }
        };
        self.acc ^= u64::from(h.0[0]) ^ u64::from(p.x);
    }
    fn end_group(&mut self) {}
}

/// Best of three runs, in MB/s.
fn measure(len: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    len as f64 / best / 1e6
}

fn report(name: &str, mbs: f64, base: f64) {
    println!("  {name:<44} {mbs:>8.0} MB/s   {:>5.3}× memcpy", mbs / base);
}

fn gather(dirs: &[&str], want_text: bool, out: &mut Vec<u8>, limit: usize) {
    for d in dirs {
        let mut paths: Vec<_> =
            std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        paths.sort();
        for p in paths {
            if out.len() >= limit {
                return;
            }
            if let Ok(bytes) = std::fs::read(&p) {
                let is_text = std::str::from_utf8(&bytes).is_ok() && !bytes.contains(&0);
                if is_text == want_text {
                    out.extend_from_slice(&bytes);
                }
            }
        }
    }
}

fn repeat_to(mut seed: Vec<u8>, size: usize) -> Vec<u8> {
    let n = seed.len();
    while seed.len() < size {
        seed.extend_from_within(..n.min(size - seed.len()));
    }
    seed
}

fn random(size: usize) -> Vec<u8> {
    let mut state = 1u64;
    let mut v = Vec::with_capacity(size + 8);
    while v.len() < size {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v.truncate(size);
    v
}

fn bench(name: &str, data: &[u8], modality: Modality) {
    let len = data.len();
    let mut dst = vec![0u8; BLOCK];
    let base = measure(len, || {
        for b in data.chunks(BLOCK) {
            dst[..b.len()].copy_from_slice(b);
            black_box(&mut dst);
        }
    });
    let mut counts = Count::default();
    let generic = measure(len, || {
        counts = Count::default();
        match modality {
            Modality::Text => {
                let mut t = TextTokenizer::new();
                for b in data.chunks(BLOCK) {
                    t.feed_with(b, &mut counts);
                }
                t.finish_with(&mut counts);
            }
            _ => {
                let mut c = BinaryChunker::new();
                for b in data.chunks(BLOCK) {
                    c.feed_with(b, &mut counts);
                }
                c.finish_with(&mut counts);
            }
        }
    });
    let dynamic = measure(len, || {
        let mut sink = Count::default();
        let mut d = decoder_for(modality);
        for b in data.chunks(BLOCK) {
            d.feed(b, &mut sink);
        }
        d.finish(&mut sink);
        black_box(sink.leaves);
    });
    let identity = measure(len, || {
        let mut sink = Identity { modality, acc: 0 };
        let mut d = decoder_for(modality);
        for b in data.chunks(BLOCK) {
            d.feed(b, &mut sink);
        }
        d.finish(&mut sink);
        black_box(sink.acc);
    });
    let mut distinct = 0;
    let memo = measure(len, || {
        let mut sink = MemoIdentity { modality, memo: FxHashMap::default(), acc: 0 };
        let mut d = decoder_for(modality);
        for b in data.chunks(BLOCK) {
            d.feed(b, &mut sink);
        }
        d.finish(&mut sink);
        distinct = sink.memo.len();
        black_box(sink.acc);
    });
    println!(
        "{name}: {:.1} MiB, {} leaves ({distinct} distinct, {:.2} bytes each), {} groups",
        len as f64 / (1 << 20) as f64,
        counts.leaves,
        counts.bytes as f64 / counts.leaves as f64,
        counts.groups
    );
    assert_eq!(counts.bytes, len as u64);
    report("memcpy (baseline)", base, base);
    if modality == Modality::Text {
        let std_utf8 = measure(len, || {
            for b in data.chunks(BLOCK) {
                black_box(std::str::from_utf8(b).is_ok());
            }
        });
        report("std::str::from_utf8 (baseline)", std_utf8, base);
        let validator = measure(len, || {
            let mut v = Utf8Validator::new();
            for b in data.chunks(BLOCK) {
                v.feed(b);
            }
            assert!(v.finish());
        });
        report("Utf8Validator", validator, base);
    }
    report("decoder, generic sink (feed_with)", generic, base);
    report("decoder, dyn Decoder + dyn sink", dynamic, base);
    report("decoder + leaf hash and position (BLAKE3)", identity, base);
    report("decoder + memoised leaf hash and position", memo, base);
}

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let size = mib << 20;

    let mut text = Vec::new();
    gather(&["/usr/share/common-licenses", "/usr/share/doc/bash", "/usr/share/doc/git"], true, &mut text, 16 << 20);
    if text.is_empty() {
        text = include_bytes!("../src/text.rs").to_vec();
    }
    let seed_len = text.len();
    bench(&format!("text ({} KiB of real text, repeated)", seed_len >> 10), &repeat_to(text, size), Modality::Text);

    bench("binary (pseudo-random)", &random(size), Modality::Binary);

    let mut exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    gather(&["/usr/bin"], false, &mut exe, size);
    exe.truncate(size);
    let exe_len = exe.len();
    if Path::new("/usr/bin").exists() {
        bench(
            &format!("binary (executables, {} MiB, repeated)", exe_len >> 20),
            &repeat_to(exe, size),
            Modality::Binary,
        );
    }
}
