//! Reading objects back: the walk that streams an object's leaves in order, verifying the
//! Merkle tree on the way down.
//!
//! Trust flows from the root down. The hash asked for is the only trusted input. A composite
//! is *verified* when its children's hashes (a leaf's derived from its value, a composite's
//! read from its record) hash to the composite's trusted hash; its children's hashes are then
//! trusted in turn. A leaf's bytes are emitted only after its parent was verified, so no byte
//! reaches the caller unless it is part of the tree that hashes to the root (docs/FORMAT.md,
//! "Verification"). Leaves are hashed many at a time ([`hart_core::many`]): the composite
//! children of a composite are verified together, one batch of leaf messages and one batch of
//! node messages.

use crate::record::{self, Peek, Rec};
use crate::{corrupt, Inner};
use hart_core::many::Messages;
use hart_core::{Hash, Modality, TAG_LEAF, TAG_NODE};
use hart_store::StoreError;
use std::io::Write;

/// Depth-first walk writing leaf values in order, without verification (fsck's recount and
/// replay checks use it where the tree was checked some other way).
pub(crate) fn cat_at(inner: &Inner, off: u64, w: &mut dyn Write) -> Result<u64, StoreError> {
    let mut total = 0u64;
    let mut stack: Vec<record::Children<'_>> = Vec::new();
    let mut next = Some(off);
    loop {
        if let Some(o) = next.take() {
            match inner.rec(o)?.0 {
                Rec::Leaf { value, .. } => {
                    w.write_all(value).map_err(|e| StoreError::io("write", "output", e))?;
                    total += value.len() as u64;
                }
                Rec::Node { children, .. } => stack.push(children),
                _ => return Err(corrupt(&inner.dir, o, "offset does not hold an atom")),
            }
        }
        match stack.last_mut() {
            None => return Ok(total),
            Some(top) => match top.next() {
                Some(c) => next = Some(inner.redirect(c)),
                None => {
                    stack.pop();
                }
            },
        }
    }
}

pub(crate) struct HashWriter(pub(crate) blake3::Hasher);

impl Write for HashWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where a verified walk found damage: the atom whose bytes do not hash to what its parent
/// (or the caller) says they must.
#[derive(Debug, Clone)]
pub(crate) struct Damage {
    /// Log offset of the damaged atom's record.
    pub off: u64,
    /// The hash it must have.
    pub expected: Hash,
    /// What its record hashes to now (zero when the record does not decode as an atom).
    pub found: Hash,
    pub what: String,
    /// Bytes of the object emitted before the damaged subtree starts.
    pub byte: u64,
}

impl Damage {
    pub(crate) fn into_error(self, inner: &Inner) -> StoreError {
        let byte = Some(self.byte);
        self.into_error_at(inner, byte)
    }

    /// The error, with `byte` (where the damaged part starts in a stream) if there is one.
    pub(crate) fn into_error_at(self, inner: &Inner, byte: Option<u64>) -> StoreError {
        let (seg, pos) = crate::log::split(self.off);
        StoreError::Damaged {
            expected: self.expected.to_hex(),
            found: if self.found == Hash::default() {
                "nothing (not an atom record)".into()
            } else {
                self.found.to_hex()
            },
            location: format!("log segment {seg} ({}) offset {pos}", inner.log.segment_path(seg).display()),
            what: self.what,
            byte,
        }
    }
}

/// Reused buffers of a verified walk.
#[derive(Default)]
pub(crate) struct Verifier {
    leaves: Messages,
    nodes: Messages,
    leaf_hashes: Vec<Hash>,
    node_hashes: Vec<Hash>,
    /// Per composite being verified: where its children's hashes start in `kid_hashes`.
    kid_hashes: Vec<KidHash>,
}

/// A child's hash: known from its record, or the index of its leaf message.
#[derive(Clone, Copy)]
enum KidHash {
    Known(Hash),
    Leaf(usize),
}

impl Verifier {
    /// Verify the composites `batch` (offset, trusted hash) one level deep each: their
    /// children's hashes must hash to the trusted hash. `byte` is where their subtree starts
    /// in the output (for the report).
    fn verify(&mut self, inner: &Inner, batch: &[(u64, Hash, u64)]) -> Result<(), Damage> {
        self.leaves.clear();
        self.nodes.clear();
        self.kid_hashes.clear();
        let mut spans = Vec::with_capacity(batch.len());
        for &(off, want, byte) in batch {
            let damaged = |what: &str, found: Hash| Damage { off, expected: want, found, what: what.into(), byte };
            let (modality, hash, children) = match inner.node_unchecked(off) {
                Some(n) => n,
                None => match inner.rec(off) {
                    Ok((Rec::Leaf { modality, value }, _)) => {
                        let found = Modality::from_u8(modality)
                            .map(|m| hart_core::atom::leaf_hash(m, value))
                            .unwrap_or_default();
                        return Err(damaged("a composite's record is now a leaf", found));
                    }
                    _ => return Err(damaged("its record does not decode as an atom", Hash::default())),
                },
            };
            if hash != want {
                return Err(damaged("its record names another hash", hash));
            }
            let start = self.kid_hashes.len();
            for c in children {
                let c = inner.redirect(c);
                match inner.peek(c) {
                    Peek::Leaf { modality, value } => {
                        self.leaves.extend(&[TAG_LEAF, modality]);
                        self.leaves.extend(value);
                        self.kid_hashes.push(KidHash::Leaf(self.leaves.end()));
                    }
                    Peek::Node { hash } => self.kid_hashes.push(KidHash::Known(hash)),
                    Peek::Other => {
                        return Err(Damage {
                            off: c,
                            expected: want,
                            found: Hash::default(),
                            what: format!("a child of the composite at offset {off} does not decode as an atom"),
                            byte,
                        })
                    }
                }
            }
            spans.push((start, self.kid_hashes.len(), modality));
        }
        self.leaf_hashes.clear();
        self.leaves.hash_all(&mut self.leaf_hashes);
        for &(s, e, m) in &spans {
            self.nodes.extend(&[TAG_NODE, m]);
            for k in &self.kid_hashes[s..e] {
                let h = match *k {
                    KidHash::Known(h) => h,
                    KidHash::Leaf(i) => self.leaf_hashes[i],
                };
                self.nodes.extend(&h.0);
            }
            self.nodes.end();
        }
        self.node_hashes.clear();
        self.nodes.hash_all(&mut self.node_hashes);
        for (i, &(off, want, byte)) in batch.iter().enumerate() {
            if self.node_hashes[i] != want {
                return Err(Damage {
                    off,
                    expected: want,
                    found: self.node_hashes[i],
                    what: "its children (or a leaf among them) do not hash to it".into(),
                    byte,
                });
            }
        }
        Ok(())
    }
}

/// Bytes of leaves a job of [`cat_verified`] gathers before it is handed to a worker.
const JOB_BYTES: u64 = 1 << 20;
/// Jobs in flight at once (memory: this many times [`JOB_BYTES`] of leaf references).
const JOBS_IN_FLIGHT: usize = 6;

/// A stretch of the output: the composites first visited in it (with the hash each must have
/// and where its subtree starts in the output) and the leaf values it emits, in order.
#[derive(Default)]
struct Job<'a> {
    seq: usize,
    composites: Vec<(u64, Hash, u64)>,
    leaves: Vec<&'a [u8]>,
    bytes: u64,
    /// A record the walk could not read as an atom, reported after the job's own check.
    fail: Option<Damage>,
}

/// [`walk_verified`] on every core: the calling thread walks the tree in order (reading, not
/// hashing) and cuts the output into jobs of about [`JOB_BYTES`]; workers verify each job's
/// composites one level deep; the calling thread writes each job's leaves once that job and
/// every earlier one verified. An ancestor is always visited (so verified) in the same job as
/// its descendants or an earlier one, so what is written is what hashes to the root. Memory is
/// bounded by [`JOBS_IN_FLIGHT`] jobs.
pub(crate) fn cat_verified(inner: &Inner, off: u64, want: &Hash, out: &mut dyn Write) -> Result<u64, StoreError> {
    cat_checked(inner, off, want, out).map_err(|f| match f {
        Failure::Damage(d) => d.into_error(inner),
        Failure::Error(e) => e,
    })
}

/// Why a verified walk stopped.
pub(crate) enum Failure {
    /// Stored bytes that do not verify.
    Damage(Damage),
    /// Anything else (a write to the output failed, …).
    Error(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Error(e)
    }
}

/// [`cat_verified`], telling damage apart from other failures.
pub(crate) fn cat_checked(inner: &Inner, off: u64, want: &Hash, out: &mut dyn Write) -> Result<u64, Failure> {
    let write = |out: &mut dyn Write, v: &[u8]| out.write_all(v).map_err(|e| StoreError::io("write", "output", e));
    // A leaf, or an object of one job: no threads.
    let mut walk = Walk::start(inner, off, *want)?;
    let first = walk.next_job();
    if walk.done() {
        let mut v = Verifier::default();
        let mut total = 0;
        finish(inner, &mut v, &first)?;
        for l in &first.leaves {
            write(out, l)?;
            total += l.len() as u64;
        }
        return Ok(total);
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    std::thread::scope(|s| {
        let (job_tx, job_rx) = crossbeam_channel::bounded::<Job<'_>>(JOBS_IN_FLIGHT);
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<(Job<'_>, Result<(), Failure>)>();
        for _ in 0..workers {
            let (job_rx, res_tx) = (job_rx.clone(), res_tx.clone());
            s.spawn(move || {
                let mut v = Verifier::default();
                for job in job_rx {
                    let r = finish(inner, &mut v, &job);
                    if res_tx.send((job, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((job_rx, res_tx));
        let mut in_flight = 1;
        let mut next_to_write = 0;
        let mut ready: std::collections::BTreeMap<usize, (Job<'_>, Result<(), Failure>)> = Default::default();
        let mut total = 0u64;
        let mut job_tx = Some(job_tx);
        if let Some(tx) = &job_tx {
            tx.send(first).expect("workers are running");
        }
        let result = loop {
            // Keep the workers fed.
            while in_flight < JOBS_IN_FLIGHT && !walk.done() {
                let job = walk.next_job();
                job_tx.as_ref().expect("open while walking").send(job).expect("workers are running");
                in_flight += 1;
            }
            if walk.done() {
                job_tx = None;
            }
            if in_flight == 0 {
                break Ok(total);
            }
            let Ok((job, r)) = res_rx.recv() else {
                break Err(Failure::Error(StoreError::Backend("cat workers stopped".into())));
            };
            ready.insert(job.seq, (job, r));
            let mut stop = None;
            while let Some((job, r)) = ready.remove(&next_to_write) {
                in_flight -= 1;
                next_to_write += 1;
                if let Err(e) = r {
                    stop = Some(e);
                    break;
                }
                for l in &job.leaves {
                    if let Err(e) = write(out, l) {
                        stop = Some(Failure::Error(e));
                        break;
                    }
                    total += l.len() as u64;
                }
                if stop.is_some() {
                    break;
                }
            }
            if let Some(e) = stop {
                break Err(e);
            }
        };
        // On an error the walk stops feeding; dropping the sender ends the workers.
        drop(job_tx);
        result
    })
}

/// Check a job: its composites verify, and the walk found no unreadable record in it.
fn finish(inner: &Inner, v: &mut Verifier, job: &Job<'_>) -> Result<(), Failure> {
    for chunk in job.composites.chunks(256) {
        v.verify(inner, chunk).map_err(Failure::Damage)?;
    }
    match &job.fail {
        Some(d) => Err(Failure::Damage(d.clone())),
        None => Ok(()),
    }
}

/// The in-order walk of [`cat_verified`], cut into jobs.
struct Walk<'a> {
    inner: &'a Inner,
    stack: Vec<record::Children<'a>>,
    total: u64,
    seq: usize,
    done: bool,
    /// A leaf root: emitted by the first job after its own check.
    leaf_root: Option<(&'a [u8], Option<Damage>)>,
    root: Option<(u64, Hash)>,
}

impl<'a> Walk<'a> {
    fn start(inner: &'a Inner, off: u64, want: Hash) -> Result<Self, StoreError> {
        let mut w = Walk { inner, stack: Vec::new(), total: 0, seq: 0, done: false, leaf_root: None, root: None };
        match inner.peek(off) {
            Peek::Leaf { modality, value } => {
                let found =
                    Modality::from_u8(modality).map(|m| hart_core::atom::leaf_hash(m, value)).unwrap_or_default();
                let fail = (found != want).then(|| Damage {
                    off,
                    expected: want,
                    found,
                    what: "the leaf's value does not hash to it".into(),
                    byte: 0,
                });
                w.leaf_root = Some((value, fail));
            }
            _ => w.root = Some((off, want)),
        }
        Ok(w)
    }

    fn done(&self) -> bool {
        self.done
    }

    /// Visit a composite that must hash to `hash`: into the job, and onto the stack.
    fn enter(&mut self, job: &mut Job<'a>, off: u64, hash: Hash) {
        job.composites.push((off, hash, self.total));
        // Not a composite (or not decodable): the job's check reports it.
        if let Some((_, _, children)) = self.inner.node_unchecked(off) {
            self.stack.push(children);
        }
    }

    fn next_job(&mut self) -> Job<'a> {
        let mut job = Job { seq: self.seq, ..Job::default() };
        self.seq += 1;
        if let Some((value, fail)) = self.leaf_root.take() {
            job.fail = fail;
            if job.fail.is_none() {
                job.leaves.push(value);
                job.bytes = value.len() as u64;
            }
            self.done = true;
            return job;
        }
        if let Some((off, hash)) = self.root.take() {
            self.enter(&mut job, off, hash);
        }
        while job.bytes < JOB_BYTES {
            let Some(top) = self.stack.last_mut() else {
                self.done = true;
                break;
            };
            let Some(c) = top.next() else {
                self.stack.pop();
                continue;
            };
            let c = self.inner.redirect(c);
            match self.inner.peek(c) {
                Peek::Leaf { value, .. } => {
                    job.leaves.push(value);
                    job.bytes += value.len() as u64;
                    self.total += value.len() as u64;
                }
                Peek::Node { hash } => self.enter(&mut job, c, hash),
                Peek::Other => {
                    // The parent's check (in this job or an earlier one) fails first if the
                    // parent is damaged; otherwise this is what is reported.
                    job.fail = Some(Damage {
                        off: c,
                        expected: Hash::default(),
                        found: Hash::default(),
                        what: "a child's record does not decode as an atom".into(),
                        byte: self.total,
                    });
                    self.done = true;
                    break;
                }
            }
        }
        job.bytes = job.leaves.iter().map(|l| l.len() as u64).sum();
        job
    }
}
