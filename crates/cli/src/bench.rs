//! `hart bench`: performance figures beside baselines measured in the same run (issue 2
//! "Speed", DESIGN.md §9). Each row shows a figure, its baseline, the ratio, the target and
//! PASS/MISS; `--json` prints the same rows for scripts.
//!
//! Sections: ingest (warm cache), cat, point lookups, peak memory (a child process), and
//! stored bytes. Data is generated from fixed seeds, so two runs measure the same bytes.

use crate::stdio::{errln, outln};
use crate::Cli;
use anyhow::{bail, Context, Result};
use hart_core::features::leaf_identity;
use hart_core::tree::{NodeOut, TreeBuilder};
use hart_core::{Child, Hash, HilbertKey, Modality};
use hart_decode::LeafSink;
use hart_embedded::EmbeddedStore;
use hart_store::ingest::{collect_files, ingest_files, IngestOptions, Outcome, Progress};
use hart_store::{ObjectInfo, Store};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod pg;

/// One part of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Ingest throughput, warm cache: text and unique binary.
    Ingest,
    /// Reconstruction of the binary object.
    Cat,
    /// Point lookups by Hilbert key and by hash.
    Lookup,
    /// Peak memory of `hart ingest` on a large file (child process).
    Memory,
    /// Stored bytes ÷ input bytes and dedup ratios.
    Storage,
    /// PostgreSQL: bulk loading beside a raw binary COPY of the same rows.
    PgLoad,
    /// PostgreSQL: point lookups beside `pgbench -S` on the same server.
    PgLookup,
    /// PostgreSQL: reconstruction of a 1 MiB and the large object.
    PgCat,
    /// PostgreSQL: how the loaded atoms spread over the partitions.
    PgSpread,
}

impl Section {
    const ALL: [Section; 5] = [Section::Ingest, Section::Cat, Section::Lookup, Section::Memory, Section::Storage];
    /// The sections run with --database-url.
    const PG: [Section; 4] = [Section::PgLoad, Section::PgLookup, Section::PgCat, Section::PgSpread];

    fn title(self) -> &'static str {
        match self {
            Section::Ingest => "ingest, warm cache",
            Section::Cat => "cat (reconstruction)",
            Section::Lookup => "point lookups",
            Section::Memory => "peak memory",
            Section::Storage => "stored bytes",
            Section::PgLoad => "PostgreSQL bulk load",
            Section::PgLookup => "PostgreSQL point lookups",
            Section::PgCat => "PostgreSQL reconstruction",
            Section::PgSpread => "PostgreSQL partition spread (mixed corpus)",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Section::Ingest => "ingest",
            Section::Cat => "cat",
            Section::Lookup => "lookup",
            Section::Memory => "memory",
            Section::Storage => "storage",
            Section::PgLoad => "pg-load",
            Section::PgLookup => "pg-lookup",
            Section::PgCat => "pg-cat",
            Section::PgSpread => "pg-spread",
        }
    }
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Size of each main data set (unique binary, text), in MiB [default: 100; --quick: 16].
    #[arg(long, value_name = "N")]
    mib: Option<u64>,
    /// Size of the file ingested by a child process for peak memory, in GiB [default: 2;
    /// --quick: 0.25].
    #[arg(long, value_name = "G")]
    mem_gib: Option<f64>,
    /// Point lookups per measurement [default: 1000000; --quick: 200000].
    #[arg(long, value_name = "N")]
    lookups: Option<usize>,
    /// Small sizes for a smoke test (under a minute); figures then say so.
    #[arg(long)]
    quick: bool,
    /// Where to put the work directory (default: the system temp directory). A fresh
    /// `hart-bench-PID` directory is made inside and removed afterwards.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep the work directory (generated files and stores) instead of removing it.
    #[arg(long)]
    keep: bool,
    /// Run one section only.
    #[arg(long, value_enum)]
    only: Option<Section>,
    /// (internal) Run CMD, wait for it, print its peak RSS and wall time as JSON. Peak memory
    /// is read by this small process: a child of the large benchmark process would inherit
    /// the benchmark's own peak in `ru_maxrss` (Linux records the parent's high-water mark at
    /// exec after `vfork`).
    #[arg(long, hide = true, requires = "cmd")]
    measure: bool,
    /// (internal) With --measure: kill CMD after this many seconds.
    #[arg(long, hide = true, default_value_t = 3600)]
    measure_limit: u64,
    #[arg(last = true, hide = true, value_name = "CMD")]
    cmd: Vec<std::ffi::OsString>,
}

/// Sizes after applying `--quick` and the defaults.
#[derive(Clone, Copy, Debug)]
struct Settings {
    quick: bool,
    data_bytes: u64,
    mem_bytes: u64,
    lookups: usize,
    /// Repetitions of short measurements (the best is kept, for figure and baseline alike).
    runs: usize,
}

impl Settings {
    fn from(a: &BenchArgs) -> Result<Settings> {
        let mib = a.mib.unwrap_or(if a.quick { 16 } else { 100 });
        let gib = a.mem_gib.unwrap_or(if a.quick { 0.25 } else { 2.0 });
        if mib == 0 || gib.is_nan() || gib <= 0.0 {
            bail!("--mib and --mem-gib must be positive");
        }
        Ok(Settings {
            quick: a.quick,
            data_bytes: mib << 20,
            mem_bytes: (gib * (1u64 << 30) as f64) as u64,
            lookups: a.lookups.unwrap_or(if a.quick { 200_000 } else { 1_000_000 }).max(1),
            runs: 3,
        })
    }
}

/// A goal from issue 2, and which side of it passes.
#[derive(Clone, Copy, Debug)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtLeast(t) => v >= t,
            Target::AtMost(t) => v <= t,
        }
    }

    fn show(self, unit: &str) -> String {
        match self {
            Target::AtLeast(t) => format!("≥ {} {unit}", num(t)),
            Target::AtMost(t) => format!("≤ {} {unit}", num(t)),
        }
    }
}

/// One printed figure.
#[derive(Debug)]
struct Row {
    section: Section,
    name: String,
    value: f64,
    unit: &'static str,
    baseline: Option<f64>,
    baseline_name: String,
    target: Option<Target>,
}

impl Row {
    fn new(section: Section, name: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row { section, name: name.into(), value, unit, baseline: None, baseline_name: String::new(), target: None }
    }

    fn vs(&mut self, baseline_name: impl Into<String>, baseline: Option<f64>) -> &mut Row {
        self.baseline_name = baseline_name.into();
        self.baseline = baseline;
        self
    }

    fn target(&mut self, t: Target) -> &mut Row {
        self.target = Some(t);
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| self.value / b)
    }

    fn verdict(&self) -> &'static str {
        match self.target {
            Some(t) if t.met(self.value) => "PASS",
            Some(_) => "MISS",
            None => "-",
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "section": self.section.name(),
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": self.ratio(),
            "target": self.target.map(|t| match t {
                Target::AtLeast(v) => json!({"at_least": v}),
                Target::AtMost(v) => json!({"at_most": v}),
            }),
            "result": self.verdict(),
        })
    }
}

/// What one section produced.
struct Report {
    section: Section,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn new(section: Section) -> Report {
        Report { section, rows: Vec::new(), notes: Vec::new() }
    }

    fn row(&mut self, name: impl Into<String>, value: f64, unit: &'static str) -> &mut Row {
        self.rows.push(Row::new(self.section, name, value, unit));
        self.rows.last_mut().expect("just pushed")
    }

    fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    fn print(&self) -> std::io::Result<()> {
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.name.clone(),
                    format!("{} {}", num(r.value), r.unit),
                    match r.baseline {
                        Some(b) => format!("{}: {} {}", r.baseline_name, num(b), r.unit),
                        None if r.baseline_name.is_empty() => "-".into(),
                        None => format!("{}: n/a", r.baseline_name),
                    },
                    r.ratio().map(|x| format!("{x:.3}×")).unwrap_or_else(|| "-".into()),
                    r.target.map(|t| t.show(r.unit)).unwrap_or_else(|| "-".into()),
                    r.verdict().to_string(),
                ]
            })
            .collect();
        let head = ["figure", "value", "baseline", "ratio", "target", "result"];
        let mut w = head.map(|h| h.chars().count());
        for c in &cells {
            for (i, s) in c.iter().enumerate() {
                w[i] = w[i].max(s.chars().count());
            }
        }
        let line = |c: &[String; 6]| {
            let pad = |s: &str, n: usize| format!("{s}{}", " ".repeat(n.saturating_sub(s.chars().count())));
            let lpad = |s: &str, n: usize| format!("{}{s}", " ".repeat(n.saturating_sub(s.chars().count())));
            format!(
                "  {}  {}  {}  {}  {}  {}",
                pad(&c[0], w[0]),
                lpad(&c[1], w[1]),
                pad(&c[2], w[2]),
                lpad(&c[3], w[3]),
                pad(&c[4], w[4]),
                c[5]
            )
        };
        outln!("\n== {} ==", self.section.title())?;
        outln!("{}", line(&head.map(String::from)))?;
        for c in &cells {
            outln!("{}", line(c))?;
        }
        for n in &self.notes {
            outln!("  note: {n}")?;
        }
        Ok(())
    }
}

/// `1,234,567` for large numbers, three significant-ish digits for small ones.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v.abs() >= 10_000.0 {
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const MB: f64 = 1e6;
const MIB: f64 = (1u64 << 20) as f64;

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MB / d.as_secs_f64().max(1e-9)
}

fn per_s(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// The work directory, removed on drop unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(parent: Option<&Path>, keep: bool) -> Result<WorkDir> {
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        let path = parent.join(format!("hart-bench-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("cannot clear {}", path.display()))?;
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create the work directory {}", path.display()))?;
        Ok(WorkDir { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            errln!("work directory kept: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The two main data sets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Data {
    Binary,
    Text,
}

impl Data {
    fn label(self) -> &'static str {
        match self {
            Data::Binary => "unique binary",
            Data::Text => "text",
        }
    }
}

/// A store holding one data set, kept open across sections.
struct Fixture {
    store: EmbeddedStore,
    info: ObjectInfo,
}

impl Fixture {
    fn root(&self) -> Hash {
        self.info.root.expect("completed objects have a root")
    }
}

/// Generated files and stores, made on first use so that `--only` works for every section.
struct Ctx {
    set: Settings,
    dir: PathBuf,
    quiet: bool,
    keep: bool,
    files: HashMap<&'static str, PathBuf>,
    bin: Option<Fixture>,
    text: Option<Fixture>,
    /// With --database-url: the PostgreSQL benchmark's state.
    pg: Option<pg::PgCtx>,
}

impl Ctx {
    fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            errln!("… {}", msg.as_ref());
        }
    }

    fn file(&mut self, data: Data) -> Result<PathBuf> {
        let name = match data {
            Data::Binary => "binary.dat",
            Data::Text => "text.txt",
        };
        if let Some(p) = self.files.get(name) {
            return Ok(p.clone());
        }
        let path = self.dir.join(name);
        let mib = self.set.data_bytes >> 20;
        match data {
            Data::Binary => {
                self.say(format!("generating {mib} MiB of unique pseudo-random bytes"));
                write_random(&path, self.set.data_bytes, SEED_BINARY)?;
            }
            Data::Text => {
                self.say(format!("generating {mib} MiB of English-like text"));
                write_text(&path, self.set.data_bytes, SEED_TEXT)?;
            }
        }
        self.files.insert(name, path.clone());
        Ok(path)
    }

    fn fixture_slot(&mut self, data: Data) -> &mut Option<Fixture> {
        match data {
            Data::Binary => &mut self.bin,
            Data::Text => &mut self.text,
        }
    }

    /// Ingest `data` into a fresh store (replacing any earlier one); returns the time taken by
    /// `ingest_files` and `flush`.
    fn ingest_fixture(&mut self, data: Data) -> Result<Duration> {
        let path = self.file(data)?;
        *self.fixture_slot(data) = None;
        let dir = self.dir.join(format!("store-{}", if data == Data::Binary { "binary" } else { "text" }));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        self.say(format!("ingesting the {} file", data.label()));
        let (store, mut infos, took) = ingest_into(&dir, &[path])?;
        let info = infos.pop().context("the ingest produced no object")?;
        *self.fixture_slot(data) = Some(Fixture { store, info });
        Ok(took)
    }

    fn fixture(&mut self, data: Data) -> Result<&Fixture> {
        if self.fixture_slot(data).is_none() {
            self.ingest_fixture(data)?;
        }
        Ok(self.fixture_slot(data).as_ref().expect("just made"))
    }
}

/// Ingest `paths` through the library pipeline into a fresh store at `dir`, then flush.
fn ingest_into(dir: &Path, paths: &[PathBuf]) -> Result<(EmbeddedStore, Vec<ObjectInfo>, Duration)> {
    let store = EmbeddedStore::open(dir).with_context(|| format!("cannot open a store at {}", dir.display()))?;
    let (infos, took) = ingest_paths(&store, paths)?;
    Ok((store, infos, took))
}

/// Ingest `paths` into `store` as `hart ingest` does, then flush; the time of both.
fn ingest_paths(store: &dyn Store, paths: &[PathBuf]) -> Result<(Vec<ObjectInfo>, Duration)> {
    let (files, errors) = collect_files(paths);
    if let Some((p, e)) = errors.first() {
        bail!("{}: {e}", p.display());
    }
    let mut infos = Vec::new();
    let mut failed = Vec::new();
    let start = Instant::now();
    ingest_files(store, &files, &IngestOptions::default(), &Progress::default(), &mut |o| match o {
        Outcome::Stored { info, .. } => infos.push(info),
        Outcome::Failed { path, error } => failed.push(format!("{}: {error}", path.display())),
    })?;
    store.flush()?;
    let took = start.elapsed();
    if !failed.is_empty() {
        bail!("ingest failed: {}", failed.join("; "));
    }
    Ok((infos, took))
}

pub fn run(cli: &Cli, args: &BenchArgs) -> Result<u8> {
    if args.measure {
        return measure_child(&args.cmd, Duration::from_secs(args.measure_limit));
    }
    let set = Settings::from(args)?;
    let work = WorkDir::create(args.dir.as_deref(), args.keep)?;
    let machine = machine();
    let quiet = cli.quiet || cli.json;
    if !cli.json {
        outln!(
            "hart bench — {}",
            if set.quick { "QUICK mode (smoke test: sizes below the targets' conditions)" } else { "full run" }
        )?;
        outln!(
            "machine: {} cores, {:.1} GiB memory, {}",
            machine.cores,
            machine.mem_bytes as f64 / (1u64 << 30) as f64,
            machine.cpu
        )?;
        outln!("build:   {}; load average at start: {}", machine.profile, machine.load)?;
        outln!(
            "sizes:   {} MiB per data set, {:.2} GiB for peak memory, {} lookups; work dir {}",
            set.data_bytes >> 20,
            set.mem_bytes as f64 / (1u64 << 30) as f64,
            set.lookups,
            work.path.display()
        )?;
    }
    if cfg!(debug_assertions) {
        errln!("warning: this is a debug build; figures are meaningless. Build with `cargo build --release`.");
    }
    let database = crate::commands::database(cli)?;
    let sections: &[Section] = if database.is_some() { &Section::PG } else { &Section::ALL };
    if let Some(only) = args.only {
        if !sections.contains(&only) {
            bail!(
                "section {:?} {}",
                only.name(),
                if database.is_some() { "is not a PostgreSQL section" } else { "needs --database-url" }
            );
        }
    }
    if let Some(db) = &database {
        if !cli.json {
            outln!("server:  {db} (throwaway databases hart_bench_{}_* are created and dropped)", std::process::id())?;
        }
    }
    let mut ctx = Ctx {
        set,
        dir: work.path.clone(),
        quiet,
        keep: args.keep,
        files: HashMap::new(),
        bin: None,
        text: None,
        pg: database.map(pg::PgCtx::new),
    };
    let mut reports = Vec::new();
    for &s in sections {
        if args.only.is_some_and(|o| o != s) {
            continue;
        }
        let r = match s {
            Section::Ingest => ingest(&mut ctx),
            Section::Cat => cat(&mut ctx),
            Section::Lookup => lookup(&mut ctx),
            Section::Memory => memory(&mut ctx),
            Section::Storage => storage(&mut ctx),
            Section::PgLoad => pg::load(&mut ctx),
            Section::PgLookup => pg::lookup(&mut ctx),
            Section::PgCat => pg::cat(&mut ctx),
            Section::PgSpread => pg::spread(&mut ctx),
        }
        .with_context(|| format!("bench section {:?} failed", s.name()))?;
        if !cli.json {
            r.print()?;
        }
        reports.push(r);
    }
    let rows: Vec<&Row> = reports.iter().flat_map(|r| &r.rows).collect();
    let missed = rows.iter().filter(|r| r.verdict() == "MISS").count();
    let passed = rows.iter().filter(|r| r.verdict() == "PASS").count();
    if cli.json {
        let v = json!({
            "machine": {"cores": machine.cores, "memory_bytes": machine.mem_bytes, "cpu": machine.cpu, "load_average": machine.load},
            "profile": machine.profile,
            "quick": set.quick,
            "settings": {"data_bytes": set.data_bytes, "mem_bytes": set.mem_bytes, "lookups": set.lookups, "runs": set.runs},
            "rows": rows.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
            "notes": reports.iter().flat_map(|r| r.notes.iter().map(move |n| json!({"section": r.section.name(), "note": n}))).collect::<Vec<_>>(),
            "passed": passed,
            "missed": missed,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        outln!(
            "\n{passed} targets met, {missed} missed{}",
            if set.quick { " (quick mode: sizes are below the targets' conditions)" } else { "" }
        )?;
    }
    drop(ctx);
    drop(work);
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------------------------

/// a. Ingest throughput on a warm cache, text and unique binary, against `cat`, `b3sum`,
/// `sha256sum` and in-process BLAKE3 over the same file.
fn ingest(ctx: &mut Ctx) -> Result<Report> {
    let mut r = Report::new(Section::Ingest);
    for (data, target) in [(Data::Text, 100.0), (Data::Binary, 60.0)] {
        let path = ctx.file(data)?;
        let bytes = std::fs::metadata(&path)?.len();
        warm(&path)?;
        // Best of `runs` ingests, each into a fresh store, like the baselines (one run on a
        // shared 2-core machine moves by ±10 %).
        let runs = ctx.set.runs;
        let mut took = ctx.ingest_fixture(data)?;
        for _ in 1..runs {
            took = took.min(ctx.ingest_fixture(data)?);
        }
        let fx = ctx.fixture(data)?;
        let value = mb_per_s(bytes, took);
        let name = format!("ingest {} ({} MiB, {})", data.label(), bytes >> 20, fx.info.modality);
        for (bname, base) in baselines_hash(&path, runs)? {
            r.row(name.clone(), value, "MB/s")
                .vs(bname, base.map(|d| mb_per_s(bytes, d)))
                .target(Target::AtLeast(target));
        }
        r.note(format!(
            "{}: {} atoms written, {:.2} s incl. flush (best of {runs} ingests into fresh stores)",
            data.label(),
            fx.info.atoms_created,
            took.as_secs_f64()
        ));
    }
    if which("b3sum").is_none() {
        r.note("b3sum is not installed: its rows show n/a; the in-process BLAKE3 row is the hashing baseline");
    }
    r.note("b3sum runs as installed (multi-threaded, memory-mapped); in-process BLAKE3 is one thread over 1 MiB reads");
    Ok(r)
}

/// `cat`, `b3sum`, `sha256sum` and in-process BLAKE3 over `path`: best of `runs` each (None
/// for a tool that is not installed).
fn baselines_hash(path: &Path, runs: usize) -> Result<Vec<(String, Option<Duration>)>> {
    let null = || File::create("/dev/null").map(Stdio::from);
    let p = path.as_os_str();
    let mut out = vec![
        ("cat > /dev/null".to_string(), tool_best(runs, "cat", &[p], null)?),
        ("b3sum".to_string(), tool_best(runs, "b3sum", &[p], null)?),
        ("sha256sum".to_string(), tool_best(runs, "sha256sum", &[p], null)?),
    ];
    let blake = best(runs, || {
        let mut h = blake3::Hasher::new();
        read_blocks(path, |b| {
            h.update(b);
        })?;
        Ok(h.finalize())
    })?
    .0;
    out.push(("BLAKE3 in-process, 1 thread".to_string(), Some(blake)));
    Ok(out)
}

/// b. `cat` of the binary object into a sink and into a file, against `cat FILE`.
fn cat(ctx: &mut Ctx) -> Result<Report> {
    let mut r = Report::new(Section::Cat);
    let path = ctx.file(Data::Binary)?;
    let out_path = ctx.dir.join("cat-out.bin");
    let base_out = ctx.dir.join("cat-baseline.bin");
    let runs = ctx.set.runs;
    let fx = ctx.fixture(Data::Binary)?;
    let root = fx.root();
    let size = fx.info.size;
    warm(&path)?;
    fx.store.cat(&root, &mut std::io::sink())?; // warm the store's pages
    let (to_sink, n) = best(runs, || Ok(fx.store.cat(&root, &mut std::io::sink())?))?;
    if n != size {
        bail!("cat wrote {n} bytes, the object has {size}");
    }
    let (to_file, _) = best(runs, || {
        let mut f = File::create(&out_path)?;
        Ok(fx.store.cat(&root, &mut f)?)
    })?;
    if file_hash(&out_path)? != file_hash(&path)? {
        bail!("cat did not reproduce the input byte for byte");
    }
    // What verification costs: the same walk without checking the tree (never offered to
    // users), alternated with the verified one so that both see the same machine.
    let (mut verified, mut unverified) = (Duration::MAX, Duration::MAX);
    for _ in 0..runs.max(3) {
        verified = verified.min(best(1, || Ok(fx.store.cat(&root, &mut std::io::sink())?))?.0);
        unverified = unverified.min(best(1, || Ok(fx.store.cat_unverified(&root, &mut std::io::sink())?))?.0);
    }
    let to_sink = to_sink.min(verified);
    let p = path.as_os_str();
    let cat_null = tool_best(runs, "cat", &[p], || File::create("/dev/null").map(Stdio::from))?;
    let cat_file = tool_best(runs, "cat", &[p], || File::create(&base_out).map(Stdio::from))?;
    let b3sum = tool_best(runs, "b3sum", &[p], || Ok(Stdio::null()))?;
    let mib = size >> 20;
    r.row(format!("cat {mib} MiB object → io::sink"), mb_per_s(size, to_sink), "MB/s")
        .vs("cat FILE > /dev/null", cat_null.map(|d| mb_per_s(size, d)))
        .target(Target::AtLeast(300.0));
    r.row(format!("verified cat {mib} MiB → io::sink"), mb_per_s(size, verified), "MB/s")
        .vs("the same walk unverified", Some(mb_per_s(size, unverified)))
        .target(Target::AtLeast(0.5 * mb_per_s(size, unverified)));
    r.row(format!("verified cat {mib} MiB → io::sink "), mb_per_s(size, verified), "MB/s")
        .vs("b3sum FILE", b3sum.map(|d| mb_per_s(size, d)));
    r.note(format!(
        "every cat verifies the Merkle tree (leaves hashed with the {} kernel, on {} threads); \
         the target is half the unverified walk's speed in this run",
        hart_core::many::kernel_name(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    r.row(format!("cat {mib} MiB object → file"), mb_per_s(size, to_file), "MB/s")
        .vs("cat FILE > file", cat_file.map(|d| mb_per_s(size, d)))
        .target(Target::AtLeast(300.0));
    if ctx.set.quick {
        r.note(format!("quick mode: the object is {mib} MiB, the target is stated for 100 MiB"));
    }
    r.note("output verified byte for byte (BLAKE3 of the written file = BLAKE3 of the input)");
    for p in [&out_path, &base_out] {
        let _ = std::fs::remove_file(p);
    }
    Ok(r)
}

/// c. Point lookups by Hilbert key and by hash on the binary store, one and two threads,
/// against std `BTreeMap`/`HashMap` holding the same keys in memory.
fn lookup(ctx: &mut Ctx) -> Result<Report> {
    let mut r = Report::new(Section::Lookup);
    let path = ctx.file(Data::Binary)?;
    let n = ctx.set.lookups;
    let quiet = ctx.quiet;
    let fx = ctx.fixture(Data::Binary)?;
    if fx.info.modality != Modality::Binary {
        bail!("the binary data set was stored as {}, expected binary", fx.info.modality);
    }
    let store: &dyn Store = &fx.store;
    let stored_atoms = store.stats()?.atoms;
    let atoms = binary_atoms(&path)?;
    if atoms.len() as u64 != stored_atoms {
        bail!("re-deriving the atoms gave {} atoms, the store holds {stored_atoms}", atoms.len());
    }
    if stored_atoms < 1_000_000 {
        r.note(format!(
            "the store holds {stored_atoms} atoms, fewer than the 1M the target asks for (use --mib 50 or more)"
        ));
    }
    let mut rng = SplitMix(SEED_LOOKUP);
    let sample: Vec<usize> = (0..n).map(|_| rng.below(atoms.len())).collect();
    let keys: Vec<HilbertKey> = sample.iter().map(|&i| atoms[i].key).collect();
    let hashes: Vec<Hash> = sample.iter().map(|&i| atoms[i].hash).collect();
    let by_key = |i: usize| -> Result<bool> { Ok(store.get_by_key(&keys[i])?.is_some_and(|a| a.hash == hashes[i])) };
    let by_hash = |i: usize| -> Result<bool> { Ok(store.get(&hashes[i])?.is_some_and(|a| a.key == keys[i])) };
    let btree: BTreeMap<HilbertKey, u32> = atoms.iter().enumerate().map(|(i, a)| (a.key, i as u32)).collect();
    let hmap: HashMap<Hash, u32> = atoms.iter().enumerate().map(|(i, a)| (a.hash, i as u32)).collect();
    let mem_key =
        |i: usize| -> Result<bool> { Ok(btree.get(&keys[i]).is_some_and(|&j| atoms[j as usize].hash == hashes[i])) };
    let mem_hash =
        |i: usize| -> Result<bool> { Ok(hmap.get(&hashes[i]).is_some_and(|&j| atoms[j as usize].key == keys[i])) };
    if !quiet {
        errln!("… {n} lookups × 8 runs over {stored_atoms} atoms");
    }
    throughput(n.min(50_000), 1, &by_key)?; // warm-up
    for threads in [1, 2] {
        let (v, _) = throughput(n, threads, &by_key)?;
        let (b, _) = throughput(n, threads, &mem_key)?;
        r.row(format!("get_by_key, {threads} thread(s)"), v, "ops/s")
            .vs("std BTreeMap in memory", Some(b))
            .target(Target::AtLeast(1e6));
    }
    for threads in [1, 2] {
        let (v, _) = throughput(n, threads, &by_hash)?;
        let (b, _) = throughput(n, threads, &mem_hash)?;
        r.row(format!("get (by hash), {threads} thread(s)"), v, "ops/s")
            .vs("std HashMap in memory", Some(b))
            .target(Target::AtLeast(1e6));
    }
    let lat_n = n.min(200_000);
    let (p99, p50) = latency(lat_n, &by_key)?;
    let (bp99, _) = latency(lat_n, &mem_key)?;
    r.row("get_by_key p99 latency, 1 thread", p99, "µs")
        .vs("std BTreeMap p99", Some(bp99))
        .target(Target::AtMost(1000.0));
    r.note(format!("get_by_key median latency {} µs", num(p50)));
    lookup_breakdown(&mut r, store, &atoms, &path, n)?;
    Ok(r)
}

/// Where lookup time goes, from outside the engine: leaves against composites, and the cost of
/// the leaf identity (BLAKE3 + position) the engine recomputes when it reads a leaf.
fn lookup_breakdown(r: &mut Report, store: &dyn Store, atoms: &[AtomId], path: &Path, n: usize) -> Result<()> {
    let leaves: Vec<&AtomId> = atoms.iter().filter(|a| a.leaf).collect();
    let nodes: Vec<&AtomId> = atoms.iter().filter(|a| !a.leaf).collect();
    let mut rng = SplitMix(SEED_LOOKUP ^ 1);
    let m = n.min(200_000);
    let ls: Vec<&AtomId> = (0..m).map(|_| leaves[rng.below(leaves.len())]).collect();
    let (lv, _) = throughput(m, 1, &|i| Ok(store.get_by_key(&ls[i].key)?.is_some()))?;
    r.row("get_by_key, leaves only, 1 thread", lv, "ops/s");
    if !nodes.is_empty() {
        let ns: Vec<&AtomId> = (0..m).map(|_| nodes[rng.below(nodes.len())]).collect();
        let (nv, _) = throughput(m, 1, &|i| Ok(store.get_by_key(&ns[i].key)?.is_some()))?;
        r.row("get_by_key, composites only, 1 thread", nv, "ops/s");
    }
    let mut buf = vec![0u8; 8 << 20];
    let got = read_prefix(path, &mut buf)?;
    let span = got.saturating_sub(64).max(1);
    let (d, _) = best(3, || {
        let mut acc = 0u64;
        for i in 0..m {
            let o = (i * 45) % span;
            let (h, _) = leaf_identity(Modality::Binary, &buf[o..(o + 45).min(got)]);
            acc ^= h.0[0] as u64;
        }
        Ok(acc)
    })?;
    r.row("leaf_identity (BLAKE3 + position) alone", per_s(m, d), "ops/s");
    r.note(format!(
        "{} leaves and {} composites; a composite's record carries its children's hashes, \
         recomputed from each leaf child's value",
        leaves.len(),
        nodes.len()
    ));
    Ok(())
}

/// d. Peak RSS of `hart ingest` on a large file of unique random data, in a child process,
/// against `cat` and `b3sum` on the same file.
fn memory(ctx: &mut Ctx) -> Result<Report> {
    let mut r = Report::new(Section::Memory);
    let size = ctx.set.mem_bytes;
    let path = ctx.dir.join("memory.dat");
    let store_dir = ctx.dir.join("store-memory");
    ctx.say(format!("generating {:.2} GiB of unique pseudo-random bytes", size as f64 / (1u64 << 30) as f64));
    write_random(&path, size, SEED_MEMORY)?;
    warm(&path)?;
    let exe = std::env::current_exe().context("cannot find the hart executable")?;
    ctx.say("ingesting it with `hart ingest` in a child process");
    let (file, store) = (path.as_os_str(), store_dir.as_os_str());
    let args: [&OsStr; 5] = ["--store".as_ref(), store, "--quiet".as_ref(), "ingest".as_ref(), file];
    // Anything slower than 4 MB/s is a failure anyway; the limit only stops a hang.
    let limit = Duration::from_secs(300 + size / 4_000_000);
    let child = peak_of(exe.as_os_str(), &args, &ctx.dir, limit)?.context("cannot run the hart executable")?;
    let cat = peak_of("cat".as_ref(), &[file], &ctx.dir, limit)?;
    let b3 = peak_of("b3sum".as_ref(), &[file], &ctx.dir, limit)?;
    let label = format!("{:.2} GiB", size as f64 / (1u64 << 30) as f64);
    let name = format!("peak RSS, hart ingest {label} (child process)");
    let rss = child.max_rss as f64 / MIB;
    r.row(name.clone(), rss, "MiB")
        .vs("cat FILE > /dev/null", cat.as_ref().map(|c| c.max_rss as f64 / MIB))
        .target(Target::AtMost(256.0));
    r.row(name, rss, "MiB")
        .vs("b3sum (mmap)", b3.as_ref().map(|c| c.max_rss as f64 / MIB))
        .target(Target::AtMost(256.0));
    r.row(format!("peak anonymous memory, hart ingest {label}"), child.peak_anon as f64 / MIB, "MiB")
        .vs("b3sum", b3.as_ref().filter(|c| c.peak_anon > 0).map(|c| c.peak_anon as f64 / MIB));
    r.row(format!("hart ingest {label}, whole process"), mb_per_s(size, child.wall), "MB/s")
        .vs("cat FILE > /dev/null", cat.as_ref().map(|c| mb_per_s(size, c.wall)));
    if ctx.set.quick {
        r.note(format!("quick mode: {label} instead of the 2 GiB the target names"));
    }
    r.note(
        "peak RSS (ru_maxrss, read by a small launcher process) counts the pages of memory-mapped files the \
         process touched (b3sum maps its input whole); anonymous memory (heap, stacks) is sampled from \
         /proc/PID/smaps_rollup every 50 ms, so a peak shorter than that can be missed",
    );
    if !ctx.keep {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir_all(&store_dir);
    }
    Ok(r)
}

/// e. Stored bytes ÷ input bytes and the dedup ratio, for unique binary, text, and a corpus
/// with repeats (the text, an edited copy, and the binary file twice under two names).
fn storage(ctx: &mut Ctx) -> Result<Report> {
    let mut r = Report::new(Section::Storage);
    for data in [Data::Binary, Data::Text] {
        let fx = ctx.fixture(data)?;
        let s = fx.store.stats()?;
        storage_rows(&mut r, data.label(), s.logical_bytes, &s);
        r.note(format!("{}: {}", data.label(), breakdown(fx.store.dir(), &s)));
    }
    let text = ctx.file(Data::Text)?;
    let bin = ctx.file(Data::Binary)?;
    let edited = ctx.dir.join("text-edited.txt");
    let bin2 = ctx.dir.join("binary-copy.dat");
    write_edited(&text, &edited)?;
    if std::fs::hard_link(&bin, &bin2).is_err() {
        std::fs::copy(&bin, &bin2)?;
    }
    let corpus = vec![text, edited.clone(), bin, bin2.clone()];
    let input: u64 = corpus.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    let dir = ctx.dir.join("store-repeats");
    ctx.say("ingesting the corpus with repeats");
    let (store, infos, took) = ingest_into(&dir, &corpus)?;
    let s = store.stats()?;
    storage_rows(&mut r, "corpus with repeats", input, &s);
    r.note(format!("corpus with repeats: {}", breakdown(&dir, &s)));
    r.row("ingest, corpus with repeats", mb_per_s(input, took), "MB/s");
    r.note(format!(
        "corpus with repeats: text + a copy with 5 edits + the binary file under two names ({} objects, {} MiB); \
         the second binary copy wrote {} atoms",
        infos.len(),
        input >> 20,
        infos.last().map_or(0, |i| i.atoms_created)
    ));
    r.note("stored bytes = the store directory's size on disk (log, indexes, state) after flush");
    drop(store);
    if !ctx.keep {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&edited);
        let _ = std::fs::remove_file(&bin2);
    }
    Ok(r)
}

/// Where a store's bytes are: each top-level part of its directory, and the atom counts.
fn breakdown(dir: &Path, s: &hart_store::Stats) -> String {
    let mut parts: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), du(&e.path()))).collect())
        .unwrap_or_default();
    parts.sort_by_key(|p| std::cmp::Reverse(p.1));
    let leaves: u64 = s.per_modality.values().map(|m| m.leaves).sum();
    let composites: u64 = s.per_modality.values().map(|m| m.composites).sum();
    let list: Vec<String> =
        parts.iter().filter(|p| p.1 >= 50_000).map(|(n, b)| format!("{n} {} MB", num(*b as f64 / MB))).collect();
    format!(
        "{}; {leaves} leaves ({} MB of values), {composites} composites",
        list.join(", "),
        num(s.unique_bytes as f64 / MB)
    )
}

fn du(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| du(&e.path())).sum()).unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

fn storage_rows(r: &mut Report, label: &str, input: u64, s: &hart_store::Stats) {
    r.row(format!("stored bytes, {label}"), s.stored_bytes as f64 / MB, "MB")
        .vs("input bytes", Some(input as f64 / MB));
    r.row(format!("dedup ratio (stats), {label}"), s.dedup_ratio, "×");
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// Run `f` `runs` times; the shortest time and the last result.
fn best<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Duration, T)> {
    let mut min = Duration::MAX;
    let mut last = None;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let v = f()?;
        min = min.min(t.elapsed());
        last = Some(v);
    }
    Ok((min, last.expect("at least one run")))
}

/// Operations per second of `op(0..n)` split over `threads`; fails if any op misses.
fn throughput(n: usize, threads: usize, op: &(dyn Fn(usize) -> Result<bool> + Sync)) -> Result<(f64, Duration)> {
    let start = Instant::now();
    let missed = std::thread::scope(|s| -> Result<usize> {
        let per = n.div_ceil(threads);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<usize> {
                    let mut missed = 0;
                    for i in (t * per)..((t + 1) * per).min(n) {
                        if !op(i)? {
                            missed += 1;
                        }
                    }
                    Ok(missed)
                })
            })
            .collect();
        let mut missed = 0;
        for h in handles {
            missed += h.join().map_err(|_| anyhow::anyhow!("a lookup thread panicked"))??;
        }
        Ok(missed)
    })?;
    let took = start.elapsed();
    if missed > 0 {
        bail!("{missed} of {n} lookups did not find the atom they looked for");
    }
    Ok((per_s(n, took), took))
}

/// p99 and median latency of `op(0..n)`, in µs.
fn latency(n: usize, op: &(dyn Fn(usize) -> Result<bool> + Sync)) -> Result<(f64, f64)> {
    let mut t = Vec::with_capacity(n);
    for i in 0..n {
        let s = Instant::now();
        if !op(i)? {
            bail!("lookup {i} did not find its atom");
        }
        t.push(s.elapsed());
    }
    t.sort_unstable();
    let at = |q: f64| t[((t.len() as f64 * q) as usize).min(t.len() - 1)].as_secs_f64() * 1e6;
    Ok((at(0.99), at(0.5)))
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(prog)).find(|p| p.is_file())
}

fn tool(prog: &str, args: &[&OsStr]) -> Command {
    let mut c = Command::new(prog);
    c.args(args);
    c
}

/// Best wall time of a peer tool over `runs` runs, stdout to `out()`; None if not installed.
fn tool_best(
    runs: usize,
    prog: &str,
    args: &[&OsStr],
    out: impl Fn() -> std::io::Result<Stdio>,
) -> Result<Option<Duration>> {
    if which(prog).is_none() {
        return Ok(None);
    }
    let mut min = Duration::MAX;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let st = tool(prog, args).stdout(out()?).stderr(Stdio::null()).status()?;
        let d = t.elapsed();
        if !st.success() {
            bail!("{prog} failed ({st})");
        }
        min = min.min(d);
    }
    Ok(Some(min))
}

/// A finished child process: wall time and peak resident set.
struct Measured {
    wall: Duration,
    /// Peak resident set (`ru_maxrss`), including pages of memory-mapped files.
    max_rss: u64,
    /// Peak anonymous memory (heap, stacks), sampled from /proc every 50 ms.
    peak_anon: u64,
}

/// Run `prog args` (stdout discarded) through `hart bench --measure`, a small launcher that
/// reads the child's own peak RSS and kills it after `limit`; None if `prog` is not installed.
fn peak_of(prog: &OsStr, args: &[&OsStr], dir: &Path, limit: Duration) -> Result<Option<Measured>> {
    let name = prog.to_string_lossy().into_owned();
    if !name.contains('/') && which(&name).is_none() {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("cannot find the hart executable")?;
    let err_path = dir.join("child-stderr.txt");
    let out = Command::new(exe)
        .args(["bench", "--measure", "--measure-limit", &limit.as_secs().to_string(), "--"])
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .stderr(File::create(&err_path)?)
        .output()
        .with_context(|| format!("cannot start {name}"))?;
    if !out.status.success() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        bail!("{name} failed: {}", err.trim());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("unreadable --measure output")?;
    let get = |k: &str| v[k].as_u64().with_context(|| format!("--measure output lacks {k}"));
    Ok(Some(Measured {
        wall: Duration::from_nanos(get("wall_ns")?),
        max_rss: get("max_rss")?,
        peak_anon: get("peak_anon")?,
    }))
}

/// The launcher side of [`peak_of`]: run `cmd` with stdout discarded, reap it with `wait4`,
/// sampling its anonymous memory meanwhile; print `{"max_rss", "peak_anon", "wall_ns"}`.
fn measure_child(cmd: &[std::ffi::OsString], limit: Duration) -> Result<u8> {
    let (prog, args) = cmd.split_first().context("--measure needs a command after --")?;
    let name = prog.to_string_lossy().into_owned();
    let t = Instant::now();
    let child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rollup = format!("/proc/{pid}/smaps_rollup");
    let mut peak_anon = 0u64;
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (std's `Child` reaps only in
        // `wait`/`try_wait`, never called on it); the pointers are to live locals.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if rc == pid {
            break;
        }
        if rc == 0 {
            peak_anon = peak_anon.max(anon_bytes(&rollup));
            if t.elapsed() > limit {
                // SAFETY: `pid` is our own unreaped child, so the id cannot have been reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                bail!("{name} did not finish within {} s: killed (a hang?)", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).with_context(|| format!("waiting for {name}"));
        }
    }
    let wall = t.elapsed();
    drop(child);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{name} failed (wait status {status})");
    }
    // Linux reports ru_maxrss in KiB.
    let max_rss = ru.ru_maxrss.max(0) as u64 * 1024;
    outln!("{}", json!({"max_rss": max_rss, "peak_anon": peak_anon, "wall_ns": wall.as_nanos() as u64}))?;
    Ok(0)
}

/// `Anonymous:` of a process's smaps_rollup, in bytes (0 if unreadable).
fn anon_bytes(rollup: &str) -> u64 {
    std::fs::read_to_string(rollup)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Anonymous:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

const SEED_BINARY: u64 = 0x4841_5254_4249_4e31; // "HARTBIN1"
const SEED_TEXT: u64 = 0x4841_5254_5445_5831; // "HARTTEX1"
const SEED_MEMORY: u64 = 0x4841_5254_4d45_4d31; // "HARTMEM1"
const SEED_LOOKUP: u64 = 0x4841_5254_4c4b_5031; // "HARTLKP1"

/// splitmix64: fast, deterministic, good enough for test data (not for secrets).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn write_random(path: &Path, bytes: u64, seed: u64) -> Result<()> {
    let mut rng = SplitMix(seed);
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            w.copy_from_slice(&rng.next().to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// English-like text: the licenses in /usr/share/common-licenses (real prose), then words from
/// a 4000-word vocabulary drawn with a Zipf distribution, in sentences with punctuation and
/// numbers, wrapped at 60–100 columns, in paragraphs.
fn write_text(path: &Path, bytes: u64, seed: u64) -> Result<()> {
    let mut w = BufWriter::with_capacity(
        1 << 20,
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let mut written = 0u64;
    let licenses = real_text(bytes / 4);
    w.write_all(&licenses)?;
    written += licenses.len() as u64;
    let mut g = TextGen::new(seed);
    let mut line = String::with_capacity(128);
    while written < bytes {
        g.line(&mut line);
        w.write_all(line.as_bytes())?;
        written += line.len() as u64;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// Up to `max` bytes of real UTF-8 prose from /usr/share/common-licenses (empty if absent).
fn real_text(max: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/usr/share/common-licenses") else { return out };
    let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    paths.sort();
    for p in paths {
        if let Ok(b) = std::fs::read(&p) {
            if std::str::from_utf8(&b).is_ok() && (out.len() + b.len()) as u64 <= max {
                out.extend_from_slice(&b);
                if !out.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
        }
    }
    out
}

/// The most frequent English words, most frequent first: the head of the vocabulary.
const COMMON_WORDS: &str =
    "the of and to a in is that for it as was with be by on not he this are or his from at which but have \
     an had they you were their one all we can her has there been if more when will would who so no she \
     other its may these about than into them only some time could what such new two first any then also \
     our made after like over between many those did most me out system each under where should because \
     while data work file through being how same before state both people year way day man thing woman \
     life child world school family group country problem hand part place case week company number point \
     government water room mother area money story fact month lot right study book eye job word business \
     issue side kind head house service friend father power hour game line end member law";

/// A deterministic generator of English-like lines.
struct TextGen {
    rng: SplitMix,
    vocab: Vec<String>,
    cdf: Vec<f64>,
    lines_left_in_paragraph: usize,
    words_left_in_sentence: usize,
    carry: Option<String>,
}

impl TextGen {
    fn new(seed: u64) -> TextGen {
        let mut rng = SplitMix(seed);
        let mut vocab: Vec<String> = COMMON_WORDS.split_whitespace().map(str::to_string).collect();
        let mut seen: std::collections::HashSet<String> = vocab.iter().cloned().collect();
        const ONSETS: &[&str] = &[
            "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl",
            "gr", "ch", "sh", "th", "br", "cl", "",
        ];
        const NUCLEI: &[&str] = &["a", "e", "i", "o", "u", "ea", "ou", "io", "ai", "ee"];
        const CODAS: &[&str] =
            &["", "", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "m", "ck", "tion", "ment", "ly"];
        while vocab.len() < 4000 {
            // Rarer words are longer, as in English.
            let syl = 1 + rng.below(2) + vocab.len() / 1500;
            let mut w = String::new();
            for _ in 0..syl {
                w.push_str(ONSETS[rng.below(ONSETS.len())]);
                w.push_str(NUCLEI[rng.below(NUCLEI.len())]);
            }
            w.push_str(CODAS[rng.below(CODAS.len())]);
            if seen.insert(w.clone()) {
                vocab.push(w);
            }
        }
        let mut cdf = Vec::with_capacity(vocab.len());
        let mut acc = 0.0;
        for r in 0..vocab.len() {
            acc += 1.0 / (r as f64 + 2.7).powf(1.07);
            cdf.push(acc);
        }
        TextGen { rng, vocab, cdf, lines_left_in_paragraph: 8, words_left_in_sentence: 0, carry: None }
    }

    /// The next word with its punctuation.
    fn word(&mut self) -> String {
        let start = self.words_left_in_sentence == 0;
        if start {
            self.words_left_in_sentence = 5 + self.rng.below(20);
        }
        self.words_left_in_sentence -= 1;
        let mut w = if self.rng.unit() < 0.02 {
            match self.rng.below(3) {
                0 => format!("{}", 1900 + self.rng.below(130)),
                1 => format!("{}", self.rng.below(1000)),
                _ => format!("{}.{}", self.rng.below(100), self.rng.below(100)),
            }
        } else {
            let u = self.rng.unit() * self.cdf.last().copied().unwrap_or(1.0);
            let i = self.cdf.partition_point(|&c| c < u).min(self.vocab.len() - 1);
            self.vocab[i].clone()
        };
        if start {
            if let Some(f) = w.get(..1) {
                w = f.to_ascii_uppercase() + &w[1..];
            }
        }
        if self.words_left_in_sentence == 0 {
            w.push(match self.rng.below(50) {
                0..=2 => '?',
                3 => '!',
                4 => ';',
                _ => '.',
            });
        } else if self.rng.unit() < 0.07 {
            w.push(',');
        }
        w
    }

    /// The next line, with its newline (and a blank line after a paragraph).
    fn line(&mut self, out: &mut String) {
        out.clear();
        let width = 60 + self.rng.below(41);
        loop {
            let w = self.carry.take().unwrap_or_else(|| self.word());
            if !out.is_empty() && out.len() + 1 + w.len() > width {
                self.carry = Some(w);
                break;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&w);
        }
        out.push('\n');
        self.lines_left_in_paragraph = self.lines_left_in_paragraph.saturating_sub(1);
        if self.lines_left_in_paragraph == 0 {
            out.push('\n');
            self.lines_left_in_paragraph = 4 + self.rng.below(12);
        }
    }
}

/// A copy of the text file with five small edits spread through it (insertions, a deletion,
/// a replacement), as from a person editing a document.
fn write_edited(src: &Path, dst: &Path) -> Result<()> {
    let mut t = std::fs::read(src)?;
    let n = t.len();
    let at = |k: usize| {
        let mut p = n * k / 6;
        while p < n && t[p] != b' ' {
            p += 1;
        }
        p.min(n)
    };
    let edits = [at(5), at(4), at(3), at(2), at(1)];
    t.splice(edits[0]..edits[0], b" (revised)".iter().copied());
    t.splice(edits[1]..(edits[1] + 12).min(n), std::iter::empty());
    t.splice(edits[2]..edits[2], b" and this sentence was added later.".iter().copied());
    t.splice(edits[3]..(edits[3] + 4).min(n), b" the".iter().copied());
    t.splice(edits[4]..edits[4], b" Note:".iter().copied());
    std::fs::write(dst, &t)?;
    Ok(())
}

/// Read a file once so later reads come from the page cache.
fn warm(path: &Path) -> Result<()> {
    read_blocks(path, |_| {})
}

fn read_blocks(path: &Path, mut f: impl FnMut(&[u8])) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => f(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn read_prefix(path: &Path, buf: &mut [u8]) -> Result<usize> {
    let mut f = File::open(path)?;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn file_hash(path: &Path) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    read_blocks(path, |b| {
        h.update(b);
    })?;
    Ok(h.finalize())
}

/// An atom of the binary store as the lookups need it.
#[derive(Clone, Copy)]
struct AtomId {
    hash: Hash,
    key: HilbertKey,
    leaf: bool,
}

/// Every distinct atom of a file ingested as binary, re-derived with the decoder and the tree
/// builder (the same code the ingest runs), without touching the store.
fn binary_atoms(path: &Path) -> Result<Vec<AtomId>> {
    struct Collect {
        tree: Option<TreeBuilder>,
        out: Vec<AtomId>,
    }
    impl Collect {
        fn node(out: &mut Vec<AtomId>) -> impl FnMut(&NodeOut<'_>) + '_ {
            move |n: &NodeOut<'_>| {
                out.push(AtomId { hash: n.hash, key: HilbertKey::new(n.modality, &n.pos), leaf: false })
            }
        }
    }
    impl LeafSink for Collect {
        fn leaf(&mut self, value: &[u8]) {
            let (hash, pos) = leaf_identity(Modality::Binary, value);
            self.out.push(AtomId { hash, key: HilbertKey::new(Modality::Binary, &pos), leaf: true });
            let Collect { tree, out } = self;
            tree.as_mut().expect("open").push(Child { hash, pos }, &mut Collect::node(out));
        }
        fn end_group(&mut self) {}
    }
    let mut c = Collect { tree: Some(TreeBuilder::new(Modality::Binary)), out: Vec::new() };
    let mut dec = hart_decode::decoder_for(Modality::Binary);
    read_blocks(path, |b| dec.feed(b, &mut c))?;
    dec.finish(&mut c);
    let tree = c.tree.take().expect("open");
    tree.finish(&mut Collect::node(&mut c.out));
    c.out.sort_unstable_by_key(|a| a.hash);
    c.out.dedup_by_key(|a| a.hash);
    Ok(c.out)
}

/// The machine the figures come from.
struct Machine {
    cores: usize,
    mem_bytes: u64,
    cpu: String,
    profile: &'static str,
    /// /proc/loadavg's 1, 5 and 15 minute figures: other work on a shared machine skews results.
    load: String,
}

fn machine() -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    Machine {
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        mem_bytes: mem_kib * 1024,
        cpu,
        profile: if cfg!(debug_assertions) { "debug (NOT release: figures are meaningless)" } else { "release" },
        load: load_average(),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
