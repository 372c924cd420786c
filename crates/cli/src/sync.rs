//! `hart sync`: copy every live object of one store into another (embedded ↔ PostgreSQL, or
//! any pair of backends) and prove the copy equal.
//!
//! Atoms are a deterministic function of an object's bytes and modality, so an object is
//! copied by streaming the source's `cat` into the destination's ingest pipeline under the
//! same URI and modality. The copy is then checked: the destination's root must equal the
//! source's (Merkle: equal roots mean every atom is equal) and the BLAKE3 of the bytes read
//! must equal the source's recorded source hash; with verification on (the default) the
//! object is read back from the destination and hashed once more. Memory stays bounded
//! whatever the object sizes: the bytes move through a bounded channel of 1 MiB pieces.

use crate::commands::{database, flush, open, short, store_dir, Access};
use crate::exit;
use crate::output::{bar, size, ticking, user};
use crate::stdio::{errln, outln};
use anyhow::{Context, Result};
use hart_core::Hash;
use hart_embedded::{EmbeddedStore, OpenOptions};
use hart_store::ingest::{ingest_reader, Progress};
use hart_store::{ObjectInfo, SourceInfo, Status, Store, StoreError};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

/// What `hart sync --help` adds below the options.
pub const HELP: &str = "\
The source is the store the global options select (--store DIR, or --database-url URL);
the destination is --to: a store directory (created if missing) or a PostgreSQL database
given as a postgres:// or postgresql:// URL or a key=value string such as
'host=db dbname=hart' (prepare it first with `hart --database-url URL db migrate`).

Every completed object of the source is copied, oldest first, under its URI and modality.
Objects the destination already holds (same URI, same root, live) are skipped, so a second
sync copies nothing. Removed and failed objects are not copied; nothing is ever deleted from
the destination.

Each copy is checked: the destination's root must equal the source's and the bytes must hash
to the source's recorded BLAKE3. Unless --no-verify, each copied object is then read back from
the destination and hashed again. A mismatch stops the sync with exit code 1 and removes the
unequal copy (its atoms are collected by `hart gc`).

Exit codes: 0 all copied or present, 1 error, mismatch, or no source object could be read,
2 usage, 3 no source store, 4 some source objects could not be read (the others were copied),
6 destination locked.";

#[derive(clap::Args)]
pub struct SyncArgs {
    /// Destination: a store directory, or a PostgreSQL database as a postgres:// or
    /// postgresql:// URL or a key=value connection string starting with host=, hostaddr=,
    /// port=, dbname= or user=.
    #[arg(long, value_name = "DEST")]
    to: String,
    /// Do not read copied objects back from the destination (roots and hashes of the bytes
    /// read are still compared).
    #[arg(long)]
    no_verify: bool,
}

/// Bytes per piece handed from the source's `cat` to the destination's pipeline.
const PIECE: usize = 1 << 20;
/// Pieces in flight per object.
const PIECES_IN_FLIGHT: usize = 4;

/// Where the copies go.
enum Dest {
    Dir(PathBuf),
    Pg(hart_pg::ConnectionSettings),
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Dir(d) => write!(f, "the store at {}", d.display()),
            Dest::Pg(s) => write!(f, "the database {s}"),
        }
    }
}

/// Keys that start a key=value connection string (`host=… dbname=…`) rather than a path.
const CONNINFO_KEYS: [&str; 5] = ["host=", "hostaddr=", "port=", "dbname=", "user="];

fn parse_dest(to: &str) -> Result<Dest> {
    let conninfo = CONNINFO_KEYS.iter().any(|k| to.starts_with(k));
    if to.starts_with("postgres://") || to.starts_with("postgresql://") || conninfo {
        let settings = to.parse().map_err(|e| user(format!("--to {to:?}: {e}"), exit::USAGE))?;
        return Ok(Dest::Pg(settings));
    }
    if to.is_empty() {
        return Err(user("--to needs a store directory or a postgres:// URL", exit::USAGE));
    }
    Ok(Dest::Dir(PathBuf::from(to)))
}

fn open_dest(dest: &Dest) -> Result<Box<dyn Store>> {
    Ok(match dest {
        Dest::Dir(dir) => Box::new(
            EmbeddedStore::open_with(dir, OpenOptions::default())
                .with_context(|| format!("cannot open the destination store at {}", dir.display()))?,
        ),
        Dest::Pg(settings) => Box::new(hart_pg::PgStore::connect(settings).with_context(|| {
            format!(
                "cannot open the destination database {settings} (check that the server runs and that \
                 `hart --database-url URL db migrate` was run on it)"
            )
        })?),
    })
}

/// One object's fate, as `--json` prints it.
#[derive(Serialize)]
struct Copied {
    /// `copied`, `skipped` (already in the destination) or `failed` (unreadable in the source).
    action: &'static str,
    uri: String,
    modality: hart_core::Modality,
    size: u64,
    root: Option<Hash>,
    /// The object's id in the source.
    source_id: u64,
    /// Its id in the destination.
    id: Option<u64>,
    atoms_created: u64,
    atoms_referenced: u64,
    /// Read back from the destination and hashed equal to the source's BLAKE3.
    verified: bool,
    error: Option<String>,
}

/// Why one object could not be copied.
enum CopyError {
    /// The source could not produce the object's bytes: reported, and the sync goes on.
    Source(StoreError),
    /// The destination failed: the sync stops.
    Dest(anyhow::Error),
    /// The copy is not equal to the source: the sync stops.
    Mismatch(String),
}

pub fn run(cli: &crate::Cli, args: &SyncArgs) -> Result<u8> {
    let dest = parse_dest(&args.to)?;
    let same = match (&dest, database(cli)?) {
        (Dest::Pg(d), Some(s)) => d.to_string() == s.to_string(),
        (Dest::Dir(d), None) => {
            let canon = |p: &std::path::Path| std::fs::canonicalize(p).ok();
            canon(d).is_some() && canon(d) == canon(&store_dir(cli))
        }
        _ => false,
    };
    if same {
        return Err(user(format!("--to names the source itself ({dest}): give another store"), exit::USAGE));
    }
    let source = open(cli, Access::Read)?;
    let target = open_dest(&dest)?;
    let start = Instant::now();

    // Live objects of the destination, by URI and root: their ids.
    let present: HashMap<(String, Hash), u64> = target
        .objects()
        .context("cannot list the destination's objects")?
        .into_iter()
        .filter(|o| o.status == Status::Completed)
        .filter_map(|o| Some(((o.uri, o.root?), o.id)))
        .collect();
    let objects: Vec<ObjectInfo> = source
        .objects()
        .context("cannot list the source's objects")?
        .into_iter()
        .filter(|o| o.status == Status::Completed)
        .collect();
    let present_id = |o: &ObjectInfo| o.root.and_then(|r| present.get(&(o.uri.clone(), r)).copied());
    let total: u64 = objects.iter().filter(|o| present_id(o).is_none()).map(|o| o.size).sum();

    let progress = Progress::default();
    let pb = bar(total, "sync", cli.quiet || cli.json);
    let verify = !args.no_verify;
    let mut report: Vec<Copied> = Vec::new();
    let result = ticking(&pb, &progress.bytes_done, || -> Result<()> {
        for o in &objects {
            let mut line = Copied {
                action: "skipped",
                uri: o.uri.clone(),
                modality: o.modality,
                size: o.size,
                root: o.root,
                source_id: o.id,
                id: present_id(o),
                atoms_created: 0,
                atoms_referenced: 0,
                verified: false,
                error: None,
            };
            if line.id.is_none() {
                match copy_one(source.as_ref(), target.as_ref(), o, verify, &progress) {
                    Ok((info, verified)) => {
                        // Unchanged: another writer stored the same object meanwhile.
                        line.action = if info.status == Status::Completed { "copied" } else { "skipped" };
                        line.id = Some(info.id);
                        line.atoms_created = info.atoms_created;
                        line.atoms_referenced = info.atoms_referenced;
                        line.verified = verified;
                    }
                    Err(CopyError::Source(e)) => {
                        line.action = "failed";
                        line.error = Some(format!("cannot read it from the source: {e}"));
                    }
                    Err(CopyError::Dest(e)) => return Err(e),
                    Err(CopyError::Mismatch(m)) => return Err(anyhow::anyhow!(m)),
                }
            }
            if !cli.json {
                let what = match (line.action, &line.error) {
                    ("copied", _) => format!(
                        "{:>7} new {:>7} shared{}",
                        line.atoms_created,
                        line.atoms_referenced,
                        if line.verified { "  verified" } else { "" }
                    ),
                    (_, Some(e)) => e.clone(),
                    _ => "already in the destination".to_string(),
                };
                let text = format!(
                    "{:<8} {}  {:>10}  {:<6}  {what}  {}",
                    line.action,
                    short(&line.root),
                    size(line.size),
                    line.modality,
                    line.uri
                );
                if line.error.is_some() {
                    pb.suspend(|| errln!("{text}"));
                } else {
                    pb.suspend(|| outln!("{text}"))?;
                }
            }
            report.push(line);
        }
        Ok(())
    });
    pb.finish_and_clear();
    let flushed = flush(target.as_ref(), cli.json);
    let copied = report.iter().filter(|c| c.action == "copied").count();
    result.with_context(|| {
        format!("sync stopped; the {copied} object(s) copied before the error are stored and intact in {dest}")
    })?;
    flushed.with_context(|| format!("could not make the copied objects durable in {dest}"))?;

    let secs = start.elapsed().as_secs_f64();
    let of = |a: &'static str| report.iter().filter(move |c| c.action == a);
    let bytes: u64 = of("copied").map(|c| c.size).sum();
    let created: u64 = of("copied").map(|c| c.atoms_created).sum();
    let referenced: u64 = of("copied").map(|c| c.atoms_referenced).sum();
    let verified = report.iter().filter(|c| c.verified).count();
    let (skipped, failed) = (of("skipped").count(), of("failed").count());
    if cli.json {
        let v = serde_json::json!({
            "source": source.backend(),
            "destination": dest.to_string(),
            "objects": report,
            "totals": {"objects": report.len(), "copied": copied, "skipped": skipped, "failed": failed,
                       "verified": verified, "bytes": bytes, "atoms_created": created,
                       "atoms_referenced": referenced, "seconds": secs,
                       "mb_per_s": bytes as f64 / 1e6 / secs.max(1e-9)}
        });
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        errln!(
            "{copied} objects copied ({skipped} already there, {failed} unreadable), {} in {secs:.2}s ({:.1} MB/s); \
             {created} new atoms; {verified} read back and verified; roots equal",
            size(bytes),
            bytes as f64 / 1e6 / secs.max(1e-9),
        );
    }
    if failed > 0 && copied + skipped == 0 {
        // Every object failed: an error, not a partial success (README "Exit codes").
        errln!("error: none of the {failed} objects could be read from the source; nothing was copied");
        return Ok(exit::ERROR);
    }
    Ok(if failed == 0 { 0 } else { exit::PARTIAL })
}

/// Copy one object and check it; returns the destination's object and whether it was read
/// back and verified.
fn copy_one(
    source: &dyn Store,
    target: &dyn Store,
    o: &ObjectInfo,
    verify: bool,
    progress: &Progress,
) -> Result<(ObjectInfo, bool), CopyError> {
    let root = o.root.ok_or_else(|| CopyError::Mismatch(format!("object #{} ({}) has no root", o.id, o.uri)))?;
    let (tx, rx) = sync_channel(PIECES_IN_FLIGHT);
    let (copied, read) = std::thread::scope(|s| {
        let cat = s.spawn(move || {
            let mut w = PipeWriter { tx, buf: Vec::with_capacity(PIECE), closed: false };
            let r = source.cat(&root, &mut w).and_then(|n| {
                w.send().map_err(|e| StoreError::io("write", "the pipe to the destination", e))?;
                Ok(n)
            });
            let _ = w.tx.send(match &r {
                Ok(_) => Piece::End,
                Err(e) => Piece::Failed(e.to_string()),
            });
            (r, w.closed)
        });
        let info = SourceInfo { uri: o.uri.clone(), modality: o.modality, size: Some(o.size) };
        let copied = ingest_reader(target, info, PipeReader { rx, cur: Vec::new(), pos: 0, ended: false }, progress);
        let read = cat.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (copied, read)
    });
    let info = match (copied, read) {
        // The source failed first; the destination saw its read fail and aborted the object.
        (Err(_), (Err(e), false)) => return Err(CopyError::Source(e)),
        // The destination failed (and so closed the pipe under the source).
        (Err(e), _) => {
            return Err(CopyError::Dest(
                anyhow::Error::new(e).context(format!("cannot store object #{} ({}) in the destination", o.id, o.uri)),
            ))
        }
        (Ok(info), _) => info,
    };
    let mut wrong = Vec::new();
    if info.root != Some(root) {
        wrong.push(format!("its root is {} in the destination, {root} in the source", short(&info.root)));
    }
    if let (Some(want), Some(got)) = (o.source_hash, info.source_hash) {
        if want != got {
            wrong.push(format!("its bytes hash to {got} but were ingested as {want}"));
        }
    }
    if info.size != o.size {
        wrong.push(format!("{} bytes came out of the source, which recorded {} bytes", info.size, o.size));
    }
    if !wrong.is_empty() {
        let removed = match target.delete_object(info.id) {
            Ok(_) => "the unequal copy was removed from the destination (`hart gc` collects its atoms)".to_string(),
            Err(e) => format!("the unequal copy #{} could not be removed from the destination: {e}", info.id),
        };
        return Err(CopyError::Mismatch(format!(
            "object #{} ({}) did not copy equal: {}; {removed}. The stores were probably written by different \
             format versions, or the source is damaged: run `hart fsck` on the source",
            o.id,
            o.uri,
            wrong.join("; ")
        )));
    }
    if !verify {
        return Ok((info, false));
    }
    let mut h = HashWriter { hasher: blake3::Hasher::new(), n: 0 };
    target.cat(&root, &mut h).map_err(|e| {
        CopyError::Dest(anyhow::Error::new(e).context(format!("cannot read {} back from the destination", o.uri)))
    })?;
    let got = Hash(*h.hasher.finalize().as_bytes());
    let want = o.source_hash.or(info.source_hash).unwrap_or(got);
    if got != want || h.n != o.size {
        return Err(CopyError::Mismatch(format!(
            "object #{} ({}) reads back from the destination as {} bytes with BLAKE3 {got}, not {} bytes with \
             {want}: run `hart fsck` on the destination",
            o.id, o.uri, h.n, o.size
        )));
    }
    Ok((info, true))
}

/// What moves from the source's `cat` to the destination's pipeline.
enum Piece {
    Data(Vec<u8>),
    End,
    Failed(String),
}

/// The source's side of the pipe: gathers writes into pieces.
struct PipeWriter {
    tx: SyncSender<Piece>,
    buf: Vec<u8>,
    /// The destination stopped reading (it failed).
    closed: bool,
}

impl PipeWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.tx.send(Piece::Data(piece)).map_err(|_| {
            self.closed = true;
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the destination stopped reading")
        })
    }
}

impl Write for PipeWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(()) // pieces go when full, and the last one at the end
    }
}

/// The destination's side: the bytes end only at an explicit end, never because the writer
/// went away (a source that stopped half-way must not commit a truncated object).
struct PipeReader {
    rx: Receiver<Piece>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Piece::Data(v)) => (self.cur, self.pos) = (v, 0),
                Ok(Piece::End) => self.ended = true,
                Ok(Piece::Failed(e)) => return Err(std::io::Error::other(format!("the source failed: {e}"))),
                Err(_) => return Err(std::io::Error::other("the source stopped before the end of the object")),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Hashes and counts what is written to it.
struct HashWriter {
    hasher: blake3::Hasher,
    n: u64,
}

impl Write for HashWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(b);
        self.n += b.len() as u64;
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
