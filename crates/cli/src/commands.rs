//! One function per `hart` subcommand, over the storage interface.

use crate::output::{self, bar, size, user};
use crate::stdio::{errln, outln};
use crate::{exit, Cli, Command};
use anyhow::{Context, Result};
use hart_core::{geom, Hash, HilbertKey};
use hart_embedded::{EmbeddedStore, OpenOptions};
use hart_store::ingest::{ingest_files, IngestOptions, Outcome, Progress};
use hart_store::{ObjectInfo, Status, Store};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub fn run(cli: &Cli) -> Result<u8> {
    match &cli.command {
        Command::Ingest { paths, modality, workers } => ingest(cli, paths, *modality, *workers),
        Command::Ls { all } => ls(cli, *all),
        Command::Cat { id, output } => cat(cli, id, output.as_ref()),
        Command::Show { id, all } => show(cli, id, *all),
        Command::Stats => stats(cli),
        Command::Rm { ids } => rm(cli, ids),
        Command::Gc => gc(cli),
        Command::Fsck { repair } => fsck(cli, *repair),
        Command::Repair { from } => repair(cli, from),
        Command::Bench(args) => crate::bench::run(cli, args),
        Command::Db(c) => db(cli, c),
        Command::Sync(args) => crate::sync::run(cli, args),
    }
}

/// The --database-url settings, if given.
pub(crate) fn database(cli: &Cli) -> Result<Option<hart_pg::ConnectionSettings>> {
    let Some(url) = &cli.database_url else { return Ok(None) };
    let settings = url.parse().map_err(|e| user(format!("--database-url: {e}"), exit::USAGE))?;
    Ok(Some(settings))
}

fn db(cli: &Cli, c: &crate::DbCommand) -> Result<u8> {
    let settings = database(cli)?
        .ok_or_else(|| user("`hart db` needs --database-url URL (or HART_DATABASE_URL)".to_string(), exit::USAGE))?;
    match c {
        crate::DbCommand::Migrate => {
            let r = hart_pg::PgStore::migrate(&settings)?;
            let keys = match r.native_hilbert {
                Some(true) => "Hilbert key in C (hart_native)",
                Some(false) => "Hilbert key in PL/pgSQL (hart_native is not installed on the server)",
                None => "",
            };
            if cli.json {
                outln!(
                    "{}",
                    serde_json::json!({ "applied": r.applied, "version": r.version, "native_hilbert": r.native_hilbert })
                )?;
            } else if r.applied.is_empty() {
                outln!("{settings}: up to date at version {}; {keys}", r.version)?;
            } else {
                outln!("{settings}: applied {:?}, now at version {}; {keys}", r.applied, r.version)?;
            }
        }
        crate::DbCommand::Status => {
            let rows = hart_pg::PgStore::migration_status(&settings)?;
            if cli.json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|m| serde_json::json!({ "version": m.version, "name": m.name, "state": format!("{:?}", m.state).to_lowercase() }))
                    .collect();
                outln!("{}", serde_json::Value::Array(v))?;
            } else {
                let mut out = crate::stdio::stdout();
                for m in &rows {
                    writeln!(out, "{:04} {:<28} {:?}", m.version, m.name, m.state)?;
                }
            }
        }
    }
    Ok(0)
}

/// Make everything durable; a checkpoint that could not be saved is only a warning (the data
/// is durable, and the next writer checkpoints again).
pub(crate) fn flush(store: &dyn Store, quiet_json: bool) -> Result<()> {
    match store.flush() {
        Ok(()) => Ok(()),
        Err(hart_store::StoreError::CheckpointDeferred(m)) => {
            if !quiet_json {
                errln!("warning: {}", hart_store::StoreError::CheckpointDeferred(m));
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn store_dir(cli: &Cli) -> PathBuf {
    cli.store.clone().unwrap_or_else(|| {
        dirs::data_dir()
            .unwrap_or_else(|| dirs::home_dir().unwrap_or_else(|| PathBuf::from(".")).join(".local/share"))
            .join("hartonomous")
    })
}

/// What a command needs of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read a store that exists (`ls`, `cat`, `show`, `stats`, `fsck`, sync's source).
    Read,
    /// Write a store that exists (`rm`, `gc`): a missing store is an error, never created.
    Write,
    /// Write, creating the store if there is none (`ingest`).
    Create,
}

pub(crate) fn open(cli: &Cli, access: Access) -> Result<Box<dyn Store>> {
    if let Some(settings) = database(cli)? {
        let s = hart_pg::PgStore::connect(&settings).with_context(|| format!("cannot open the database {settings}"))?;
        return Ok(Box::new(s));
    }
    let dir = store_dir(cli);
    let context = || format!("cannot open the store at {}", dir.display());
    if access != Access::Read {
        before_writing(&dir, access).with_context(context)?;
    }
    let s = EmbeddedStore::open_with(&dir, OpenOptions { read_only: access == Access::Read, ..OpenOptions::default() })
        .with_context(context)?;
    for note in s.open_notes() {
        errln!("warning: {note}");
    }
    Ok(Box::new(s))
}

/// Before a writer opens `dir` (which creates it and its LOCK): only [`Access::Create`] may
/// start a new store, and a directory that is not a store is refused with nothing left in it.
/// A directory without a MANIFEST is looked at by a read-only open, which creates nothing
/// and tells "no store here" from "something else is here".
fn before_writing(dir: &Path, access: Access) -> Result<(), hart_store::StoreError> {
    if dir.join("MANIFEST").exists() {
        return Ok(());
    }
    match EmbeddedStore::open_with(dir, OpenOptions { read_only: true, ..OpenOptions::default() }) {
        // A store whose MANIFEST is gone (rebuilt from the log by the open), or one made by
        // another writer meanwhile.
        Ok(_) => Ok(()),
        Err(hart_store::StoreError::NoStore { .. }) if access == Access::Create => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resolve an atom id: `#N` (object N's root), a Hilbert key `a:b:c`, a full hash, or a
/// unique hash prefix of at least 4 hex digits.
fn resolve(store: &dyn Store, id: &str) -> Result<Hash> {
    if let Some(n) = id.strip_prefix('#') {
        let n: u64 =
            n.parse().map_err(|_| user(format!("{id:?}: an object id is # followed by a number"), exit::USAGE))?;
        let o = store
            .objects()?
            .into_iter()
            .find(|o| o.id == n)
            .ok_or_else(|| user(format!("no object #{n} in this store (see `hart ls --all`)"), exit::NOT_FOUND))?;
        return o.root.ok_or_else(|| user(format!("object #{n} is {:?} and has no root", o.status), exit::NOT_FOUND));
    }
    if id.contains(':') {
        let key: HilbertKey = id.parse().map_err(|e: String| user(e, exit::USAGE))?;
        return store
            .get_by_key(&key)?
            .map(|r| r.hash)
            .ok_or_else(|| user(format!("no atom has Hilbert key {key}"), exit::NOT_FOUND));
    }
    if id.len() == 64 {
        return id.parse().map_err(|e| user(format!("{id:?}: {e}"), exit::USAGE));
    }
    if id.len() < 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(user(format!("{id:?} is not an atom id: give a content hash (or a prefix of at least 4 hex digits), a Hilbert key h_xy:h_yz:h_zm, or #OBJECT_ID"), exit::USAGE));
    }
    let found = store.find_prefix(id, 2)?;
    match found.as_slice() {
        [] => Err(user(format!("no atom's hash starts with {id}"), exit::NOT_FOUND)),
        [one] => Ok(*one),
        _ => Err(user(
            format!(
                "{id} is ambiguous ({}…, {}…): give more digits",
                &found[0].to_hex()[..16],
                &found[1].to_hex()[..16]
            ),
            exit::USAGE,
        )),
    }
}

pub(crate) fn short(h: &Option<Hash>) -> String {
    h.map(|h| h.to_hex()[..16].to_string()).unwrap_or_else(|| "-".into())
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Pending => "pending",
        Status::Running => "running",
        Status::Completed => "completed",
        Status::Failed => "failed",
        Status::Unchanged => "unchanged",
        Status::Deleted => "deleted",
    }
}

fn ingest(cli: &Cli, paths: &[PathBuf], modality: Option<hart_core::Modality>, workers: usize) -> Result<u8> {
    let store = open(cli, Access::Create)?;
    // Never ingest the store itself (`hart ingest ~` with the default store under ~).
    let own = std::fs::canonicalize(store_dir(cli)).ok();
    let (files, walk_errors) = hart_store::ingest::collect_files_excluding(paths, own.as_deref());
    let total: u64 = files.iter().map(|f| f.1).sum();
    let progress = Progress::default();
    let pb = bar(total, "ingest", cli.quiet || cli.json);
    let start = Instant::now();
    let mut stored: Vec<ObjectInfo> = Vec::new();
    let mut failed: Vec<(PathBuf, String)> = walk_errors;
    for (p, e) in &failed {
        pb.suspend(|| errln!("skipped  {}: {e}", p.display()));
    }
    let opts = IngestOptions { modality, workers, ..IngestOptions::default() };
    // A stdout that fails (other than a reader that left: see `stdio`) stops the listing, not
    // the ingest: every file is still stored and committed, and the error is reported at the end.
    let mut unprinted: Option<std::io::Error> = None;
    let result = output::ticking(&pb, &progress.bytes_done, || {
        ingest_files(store.as_ref(), &files, &opts, &progress, &mut |o| match o {
            Outcome::Stored { path, info } => {
                if !cli.json && unprinted.is_none() {
                    let line = format!(
                        "{:<9} {}  {:>10}  {:<6}  {:>7} new {:>7} shared  {}",
                        status_name(info.status),
                        short(&info.root),
                        size(info.size),
                        info.modality,
                        info.atoms_created,
                        info.atoms_referenced,
                        path.display()
                    );
                    if let Err(e) = pb.suspend(|| outln!("{line}")) {
                        unprinted = Some(e);
                    }
                }
                stored.push(info);
            }
            Outcome::Failed { path, error } => {
                pb.suspend(|| errln!("failed   {}: {error}", path.display()));
                failed.push((path, error));
            }
        })
    });
    pb.finish_and_clear();
    let flushed = flush(store.as_ref(), cli.json);
    result.context("ingest stopped; objects committed before the error are stored and intact")?;
    flushed.context("could not make the ingested objects durable")?;
    let secs = start.elapsed().as_secs_f64();
    let bytes: u64 = stored.iter().map(|o| o.size).sum();
    let created: u64 = stored.iter().map(|o| o.atoms_created).sum();
    let referenced: u64 = stored.iter().map(|o| o.atoms_referenced).sum();
    let unchanged = stored.iter().filter(|o| o.status == Status::Unchanged).count();
    if cli.json {
        let v = json!({
            "objects": stored,
            "failed": failed.iter().map(|(p, e)| json!({"path": p, "error": e})).collect::<Vec<_>>(),
            "totals": {"files": stored.len(), "unchanged": unchanged, "failed": failed.len(), "bytes": bytes,
                       "atoms_created": created, "atoms_referenced": referenced, "seconds": secs,
                       "mb_per_s": bytes as f64 / 1e6 / secs.max(1e-9)}
        });
        if unprinted.is_none() {
            unprinted = outln!("{}", serde_json::to_string_pretty(&v)?).err();
        }
    } else {
        errln!(
            "{} objects ({} unchanged, {} failed), {} in {:.2}s ({:.1} MB/s); {} new atoms, {} references to atoms already stored",
            stored.len(),
            unchanged,
            failed.len(),
            size(bytes),
            secs,
            bytes as f64 / 1e6 / secs.max(1e-9),
            created,
            referenced
        );
    }
    if let Some(e) = unprinted {
        return Err(anyhow::Error::new(e).context(format!(
            "ingest finished ({} objects stored and durable, {} failed), but its report could not be written",
            stored.len(),
            failed.len()
        )));
    }
    if !failed.is_empty() && stored.is_empty() {
        // Every input failed: that is an error, not a partial success (README "Exit codes").
        errln!(
            "error: none of the {} inputs could be ingested (each is named above); nothing was stored",
            failed.len()
        );
        return Ok(exit::ERROR);
    }
    Ok(if failed.is_empty() { 0 } else { exit::PARTIAL })
}

fn ls(cli: &Cli, all: bool) -> Result<u8> {
    let store = open(cli, Access::Read)?;
    let objs: Vec<ObjectInfo> = store.objects()?.into_iter().filter(|o| all || o.status == Status::Completed).collect();
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&objs)?)?;
        return Ok(0);
    }
    let mut out = crate::stdio::stdout();
    writeln!(out, "{:>6}  {:<9}  {:<16}  {:>10}  {:<6}  uri", "id", "status", "root", "size", "kind")?;
    for o in &objs {
        writeln!(
            out,
            "{:>6}  {:<9}  {:<16}  {:>10}  {:<6}  {}",
            format!("#{}", o.id),
            status_name(o.status),
            short(&o.root),
            size(o.size),
            o.modality,
            o.uri
        )?;
    }
    Ok(0)
}

fn cat(cli: &Cli, id: &str, output: Option<&PathBuf>) -> Result<u8> {
    if cli.json && output.is_none() {
        return Err(user("`cat --json` needs -o FILE (the bytes go to the file, the summary to stdout)", exit::USAGE));
    }
    let store = open(cli, Access::Read)?;
    let root = resolve(store.as_ref(), id)?;
    // Whole or nothing for a regular file, through for devices, FIFOs and symlinks, and a
    // closed stdout is the reader's choice (see `outfile`).
    let n = match output {
        Some(path) => crate::outfile::write_to(path, |w| store.cat(&root, w))?,
        None => crate::outfile::write_to_stdout(|w| store.cat(&root, w))?,
    };
    if cli.json {
        outln!("{}", json!({"root": root, "bytes": n, "output": output}))?;
    }
    Ok(0)
}

fn show(cli: &Cli, id: &str, all: bool) -> Result<u8> {
    let store = open(cli, Access::Read)?;
    let hash = resolve(store.as_ref(), id)?;
    let rec = store.get(&hash)?.ok_or_else(|| user(format!("no atom {hash}"), exit::NOT_FOUND))?;
    let mut kids = Vec::with_capacity(rec.children.len());
    for c in &rec.children {
        kids.push(store.get(c)?.ok_or_else(|| anyhow::anyhow!("child {c} of {hash} is missing: run `hart fsck`"))?);
    }
    let positions: Vec<_> = kids.iter().map(|k| k.position).collect();
    let wkt = geom::wkt(&rec.position, &positions);
    if cli.json {
        let mut v = serde_json::to_value(&rec)?;
        v["geometry_wkt"] = json!(wkt);
        v["value_text"] = json!(rec.value.as_ref().and_then(|v| std::str::from_utf8(v).ok()));
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(0);
    }
    let p = rec.position;
    let mut out = crate::stdio::stdout();
    writeln!(out, "atom      {}", rec.hash)?;
    writeln!(out, "key       {}", rec.key)?;
    let kind = match rec.kind {
        hart_core::AtomKind::Leaf => "leaf",
        hart_core::AtomKind::Node => "composite",
    };
    writeln!(out, "modality  {}  ({kind})", rec.modality)?;
    writeln!(out, "position  x={} y={} z={} m={}", p.x, p.y, p.z, p.m)?;
    writeln!(out, "refs      {}", rec.ref_count)?;
    if let Some(v) = &rec.value {
        writeln!(out, "value     {} ({} bytes)", output::value_preview(v), v.len())?;
    }
    if !kids.is_empty() {
        writeln!(out, "children  {}", kids.len())?;
        let shown = if all { kids.len() } else { kids.len().min(16) };
        for (i, k) in kids.iter().take(shown).enumerate() {
            let what = match &k.value {
                Some(v) => output::value_preview(v),
                None => format!("composite of {}", k.children.len()),
            };
            writeln!(out, "  {i:>4}  {}  {what}", &k.hash.to_hex()[..16])?;
        }
        if shown < kids.len() {
            writeln!(out, "  … {} more (--all)", kids.len() - shown)?;
        }
    }
    writeln!(out, "geometry  {wkt}")?;
    Ok(0)
}

fn stats(cli: &Cli) -> Result<u8> {
    let store = open(cli, Access::Read)?;
    let s = store.stats()?;
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(0);
    }
    let mut out = crate::stdio::stdout();
    writeln!(out, "backend        {}", s.backend)?;
    writeln!(out, "objects        {}  ({} logical)", s.objects, size(s.logical_bytes))?;
    writeln!(out, "atoms          {}  ({} unique leaf bytes)", s.atoms, size(s.unique_bytes))?;
    writeln!(out, "dedup ratio    {:.2}x  (logical / unique)", s.dedup_ratio)?;
    writeln!(
        out,
        "stored bytes   {}  ({:.2}x of logical)",
        size(s.stored_bytes),
        s.stored_bytes as f64 / (s.logical_bytes.max(1)) as f64
    )?;
    writeln!(out, "garbage        {} atoms at zero references (hart gc)", s.garbage_atoms)?;
    writeln!(out, "{:<10} {:>12} {:>12} {:>12}", "modality", "leaves", "composites", "leaf bytes")?;
    for (m, c) in &s.per_modality {
        writeln!(out, "{:<10} {:>12} {:>12} {:>12}", m, c.leaves, c.composites, size(c.leaf_bytes))?;
    }
    Ok(0)
}

fn rm(cli: &Cli, ids: &[String]) -> Result<u8> {
    let store = open(cli, Access::Write)?;
    let mut removed = Vec::new();
    for id in ids {
        let targets: Vec<u64> = if let Some(n) = id.strip_prefix('#') {
            vec![n.parse().map_err(|_| user(format!("{id:?}: an object id is # followed by a number"), exit::USAGE))?]
        } else {
            let root = resolve(store.as_ref(), id)?;
            let t: Vec<u64> = store
                .objects()?
                .into_iter()
                .filter(|o| o.root == Some(root) && matches!(o.status, Status::Completed | Status::Unchanged))
                .map(|o| o.id)
                .collect();
            if t.is_empty() {
                return Err(user(format!("no live object has root {root}"), exit::NOT_FOUND));
            }
            t
        };
        for t in targets {
            let info = store.delete_object(t)?;
            if !cli.json {
                outln!("removed  #{}  {}  {}", info.id, short(&info.root), info.uri)?;
            }
            removed.push(info);
        }
    }
    flush(store.as_ref(), cli.json)?;
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&json!({"removed": removed}))?)?;
    } else {
        errln!("{} object(s) removed; run `hart gc` to collect atoms nothing else uses", removed.len());
    }
    Ok(0)
}

fn gc(cli: &Cli) -> Result<u8> {
    let store = open(cli, Access::Write)?;
    let start = Instant::now();
    let r = store.gc()?;
    flush(store.as_ref(), cli.json)?;
    if cli.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"atoms_removed": r.atoms_removed, "bytes_removed": r.bytes_removed, "seconds": start.elapsed().as_secs_f64()})
            )?
        )?;
    } else {
        outln!(
            "removed {} atoms ({} of records) in {:.2}s",
            r.atoms_removed,
            size(r.bytes_removed),
            start.elapsed().as_secs_f64()
        )?;
    }
    Ok(0)
}

/// Rebuild an embedded store's derived files from its log, reading past damage (`fsck
/// --repair`, `repair`), and say what it could not keep.
fn repair_store(cli: &Cli) -> Result<EmbeddedStore> {
    if database(cli)?.is_some() {
        return Err(user(
            "`fsck --repair` rebuilds an embedded store's derived files; PostgreSQL keeps no derived \
             files of its own (use its own tools: REINDEX, pg_amcheck)",
            exit::USAGE,
        ));
    }
    let dir = store_dir(cli);
    let context = || format!("cannot repair the store at {}", dir.display());
    before_writing(&dir, Access::Write).with_context(context)?;
    // What the store held before, to name what the rebuild could not keep.
    let before: Vec<ObjectInfo> =
        EmbeddedStore::open_with(&dir, OpenOptions { read_only: true, ..OpenOptions::default() })
            .and_then(|s| s.objects())
            .unwrap_or_default();
    let start = Instant::now();
    let s = EmbeddedStore::open_with(&dir, OpenOptions { rebuild: true, ..OpenOptions::default() })
        .with_context(context)?;
    for note in s.open_notes() {
        errln!("repair: {note} ({:.2}s)", start.elapsed().as_secs_f64());
    }
    let after = s.objects()?;
    for o in before.iter().filter(|o| o.status == Status::Completed) {
        if !after.iter().any(|a| a.id == o.id && a.status == Status::Completed) {
            errln!(
                "repair: object #{} ({}) is damaged beyond what the log still holds: ingest the file again \
                 (`hart repair --from PATH`) to heal it",
                o.id,
                o.uri
            );
        }
    }
    Ok(s)
}

/// `hart repair [--from PATH…]`: rebuild around damage, ingest good copies (which heals what
/// they hold), then check.
fn repair(cli: &Cli, from: &[PathBuf]) -> Result<u8> {
    drop(repair_store(cli)?);
    let mut code = 0;
    if !from.is_empty() {
        code = ingest(cli, from, None, 0)?;
    }
    let f = fsck(cli, false)?;
    Ok(if f != 0 { f } else { code })
}

fn fsck(cli: &Cli, repair: bool) -> Result<u8> {
    let store: Box<dyn Store> = if repair { Box::new(repair_store(cli)?) } else { open(cli, Access::Read)? };
    let pb = bar(0, "fsck", cli.quiet || cli.json);
    let start = Instant::now();
    let r = store.fsck(&|done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })?;
    pb.finish_and_clear();
    if cli.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"ok": r.ok(), "report": r, "seconds": start.elapsed().as_secs_f64()})
            )?
        )?;
    } else {
        outln!(
            "checked {} atoms, {} references, {} objects ({} rebuilt) in {:.2}s",
            r.atoms_checked,
            r.references_counted,
            r.objects_checked,
            size(r.bytes_reconstructed),
            start.elapsed().as_secs_f64()
        )?;
        for n in &r.notes {
            outln!("note: {n}")?;
        }
        if r.ok() {
            outln!("ok: reference counts, hashes, indexes and objects all agree")?;
        } else {
            for p in &r.problems {
                outln!("problem: {p}")?;
            }
        }
    }
    Ok(if r.ok() { 0 } else { exit::FSCK })
}
