//! Shared helpers for the end-to-end tests of the `hart` binary: run it against a fresh
//! store, parse its `--json` output, build inputs (deterministic random bytes and text, real
//! files on the machine), and check that every completed object still `cat`s to its file.
//!
//! Every test drives the real binary (`CARGO_BIN_EXE_hart`) with `--store DIR` in its own
//! temporary directory. Nothing here skips: a missing prerequisite is a loud failure.

#![allow(dead_code)] // each test crate uses a different subset

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Exit codes documented in README "Exit codes" and `crates/cli/src/main.rs` (`mod exit`).
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const PARTIAL: i32 = 4;
    pub const FSCK: i32 = 5;
    pub const LOCKED: i32 = 6;
}

/// The unprivileged user the permission tests run `hart` as when the tests run as root.
pub const NOBODY: u32 = 65534;

pub fn hart_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hart"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What one `hart` run gave back.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub args: Vec<String>,
}

impl Run {
    fn from_output(args: Vec<String>, out: Output) -> Run {
        let code = match out.status.code() {
            Some(c) => c,
            None => panic!(
                "hart {args:?} was killed by a signal: {:?}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        };
        Run { code, stdout: out.stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned(), args }
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stdout parsed as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!("hart {:?}: stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.args, self.stdout_str(), self.stderr)
        })
    }

    /// Panic with everything useful unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "hart {:?} exited {} (expected {code})\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.code,
            self.stdout_str(),
            self.stderr
        );
        self
    }

    pub fn ok(&self) -> &Self {
        self.expect_code(exit::OK)
    }
}

/// How to run the child process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spawn {
    /// Run as this uid/gid (only possible when the tests run as root).
    pub as_uid: Option<u32>,
    /// RLIMIT_FSIZE for the child, with SIGXFSZ ignored so writes fail with EFBIG.
    pub fsize_limit: Option<u64>,
}

/// A store in its own temporary directory, and the `hart` binary to drive it with.
pub struct Store {
    /// The temporary directory holding the store (and whatever the test puts beside it).
    pub tmp: tempfile::TempDir,
    /// `--store` directory.
    pub dir: PathBuf,
    /// The binary to run (a world-readable copy when a test runs it as another user).
    pub bin: PathBuf,
}

impl Store {
    pub fn new() -> Store {
        let tmp = tempfile::Builder::new().prefix("hart-cli-test-").tempdir().expect("tempdir");
        let dir = tmp.path().join("store");
        Store { tmp, dir, bin: hart_bin() }
    }

    /// A scratch directory beside the store, for input files.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    pub fn command(&self, args: &[&OsStr], spawn: Spawn) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--store").arg(&self.dir).arg("--quiet").args(args);
        c.current_dir(self.tmp.path());
        c.env_remove("HART_STORE");
        apply_spawn(&mut c, spawn);
        c
    }

    pub fn run_with(&self, args: &[&OsStr], spawn: Spawn) -> Run {
        let mut c = self.command(args, spawn);
        c.stdin(Stdio::null());
        let out = retry_busy(|| c.output()).unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        Run::from_output(args.iter().map(|a| a.to_string_lossy().into_owned()).collect(), out)
    }

    /// Run `hart --store DIR --quiet ARGS…`.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        let a: Vec<&OsStr> = args.iter().map(|s| s.as_ref()).collect();
        self.run_with(&a, Spawn::default())
    }

    /// Spawn without waiting (stdout piped, stderr piped).
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S], spawn: Spawn) -> Child {
        let a: Vec<&OsStr> = args.iter().map(|s| s.as_ref()).collect();
        let mut c = self.command(&a, spawn);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        retry_busy(|| c.spawn()).unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()))
    }

    /// `hart --json ingest PATHS…`, expecting exit 0; returns the report.
    pub fn ingest(&self, paths: &[&Path]) -> IngestReport {
        self.ingest_args(paths, &[]).0
    }

    /// `hart --json ingest [EXTRA…] PATHS…`; returns the report (when exit is 0 or 4) and the run.
    pub fn ingest_args(&self, paths: &[&Path], extra: &[&str]) -> (IngestReport, Run) {
        let mut args: Vec<&OsStr> = vec![OsStr::new("--json"), OsStr::new("ingest")];
        args.extend(extra.iter().map(OsStr::new));
        args.extend(paths.iter().map(|p| p.as_os_str()));
        let r = self.run_with(&args, Spawn::default());
        if r.code != exit::PARTIAL {
            r.ok();
        }
        let rep: IngestReport = serde_json::from_value(r.json()).expect("ingest --json report");
        (rep, r)
    }

    /// `hart ls --json` (completed objects), or `ls --all --json`.
    pub fn ls(&self, all: bool) -> Vec<Obj> {
        let r = if all { self.run(&["--json", "ls", "--all"]) } else { self.run(&["--json", "ls"]) };
        r.ok();
        serde_json::from_value(r.json()).expect("ls --json")
    }

    pub fn stats(&self) -> StatsJson {
        let r = self.run(&["--json", "stats"]);
        r.ok();
        serde_json::from_value(r.json()).expect("stats --json")
    }

    /// `hart fsck --json`: panics unless it exits 0 with `ok: true` and no problems.
    pub fn fsck_ok(&self, when: &str) -> Value {
        self.fsck_ok_with(when, Spawn::default())
    }

    pub fn fsck_ok_with(&self, when: &str, spawn: Spawn) -> Value {
        let r = self.run_with(&[OsStr::new("--json"), OsStr::new("fsck")], spawn);
        let v = if r.code == exit::OK || r.code == exit::FSCK { Some(r.json()) } else { None };
        assert!(
            r.code == exit::OK && v.as_ref().is_some_and(|v| v["ok"] == Value::Bool(true)),
            "fsck {when}: exit {} (expected 0)\nstdout:\n{}\nstderr:\n{}",
            r.code,
            r.stdout_str(),
            r.stderr
        );
        let v = v.expect("checked");
        assert_eq!(v["report"]["problems"], serde_json::json!([]), "fsck {when}: problems");
        v
    }

    /// `hart cat ROOT` to stdout, expecting exit 0.
    pub fn cat(&self, root: &str) -> Vec<u8> {
        self.cat_with(root, Spawn::default())
    }

    pub fn cat_with(&self, root: &str, spawn: Spawn) -> Vec<u8> {
        let r = self.run_with(&[OsStr::new("cat"), OsStr::new(root)], spawn);
        r.ok();
        r.stdout
    }

    /// Every completed object `cat`s to the bytes of the file its URI names; returns how many
    /// objects and bytes were checked.
    pub fn assert_all_intact(&self, when: &str) -> (usize, u64) {
        self.assert_all_intact_with(when, Spawn::default())
    }

    pub fn assert_all_intact_with(&self, when: &str, spawn: Spawn) -> (usize, u64) {
        let r = self.run_with(&[OsStr::new("--json"), OsStr::new("ls")], spawn);
        r.ok();
        let objs: Vec<Obj> = serde_json::from_value(r.json()).expect("ls --json");
        let check = |o: &Obj| -> u64 {
            assert_eq!(o.status, "completed", "{when}: ls lists only completed objects: {o:?}");
            let root = o.root.as_deref().unwrap_or_else(|| panic!("{when}: completed object without root: {o:?}"));
            let want = std::fs::read(o.path()).unwrap_or_else(|e| panic!("{when}: read {}: {e}", o.path().display()));
            let got = self.cat_with(root, spawn);
            assert_eq!(o.size, want.len() as u64, "{when}: size of #{} ({})", o.id, o.uri);
            assert_bytes_eq(&got, &want, &format!("{when}: cat #{} {}", o.id, o.uri));
            want.len() as u64
        };
        // A few `cat` processes at a time (each opens the store on its own).
        let next = std::sync::atomic::AtomicUsize::new(0);
        let bytes: u64 = std::thread::scope(|s| {
            let workers: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        let mut b = 0;
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(o) = objs.get(i) else { return b };
                            b += check(o);
                        }
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).sum()
        });
        (objs.len(), bytes)
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

/// Run `f` again while exec fails with ETXTBSY: a binary just copied (see [`unprivileged`])
/// can be briefly held open for writing by a child another test thread forked meanwhile.
fn retry_busy<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut tries = 0;
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

pub fn apply_spawn(c: &mut Command, spawn: Spawn) {
    let Spawn { as_uid, fsize_limit } = spawn;
    if as_uid.is_none() && fsize_limit.is_none() {
        return;
    }
    // SAFETY: the hook runs in the forked child before exec and calls only async-signal-safe
    // functions (signal, setrlimit, setgroups, setgid, setuid); it allocates nothing.
    unsafe {
        c.pre_exec(move || {
            if let Some(limit) = fsize_limit {
                if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                let rl = libc::rlimit { rlim_cur: limit as libc::rlim_t, rlim_max: limit as libc::rlim_t };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(uid) = as_uid {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid as libc::gid_t) != 0
                    || libc::setuid(uid as libc::uid_t) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Fail with the first differing offset rather than dumping megabytes.
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: bytes differ: got {} bytes, want {} bytes, first difference at offset {first} (got {:?}, want {:?})",
        got.len(),
        want.len(),
        got.get(first..(first + 16).min(got.len())),
        want.get(first..(first + 16).min(want.len())),
    );
}

/// One object as `ls --json` prints it.
#[derive(Debug, Clone, Deserialize)]
pub struct Obj {
    pub id: u64,
    pub uri: String,
    pub modality: String,
    pub status: String,
    pub root: Option<String>,
    pub size: u64,
    pub atoms_created: u64,
    pub atoms_referenced: u64,
    pub atoms_skipped: u64,
    pub error: Option<String>,
}

impl Obj {
    /// The file the URI names: the path as written, or percent-decoded when that is what
    /// names an existing file (URIs may percent-encode bytes that are not URI characters).
    pub fn path(&self) -> PathBuf {
        uri_path(&self.uri)
    }
}

/// What `ingest --json` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct IngestReport {
    pub objects: Vec<Obj>,
    pub failed: Vec<Failed>,
    pub totals: Totals,
}

impl IngestReport {
    /// Objects by canonical file path.
    pub fn by_path(&self) -> BTreeMap<PathBuf, Obj> {
        self.objects.iter().map(|o| (o.path(), o.clone())).collect()
    }

    pub fn for_file(&self, p: &Path) -> &Obj {
        let c = canon(p);
        self.objects
            .iter()
            .find(|o| o.path() == c)
            .unwrap_or_else(|| panic!("no object for {} in {:?}", c.display(), self.objects))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Failed {
    pub path: PathBuf,
    pub error: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Totals {
    pub files: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub bytes: u64,
    pub atoms_created: u64,
    pub atoms_referenced: u64,
}

/// What `stats --json` prints (the fields the tests use).
#[derive(Debug, Clone, Deserialize)]
pub struct StatsJson {
    pub atoms: u64,
    pub objects: u64,
    pub logical_bytes: u64,
    pub garbage_atoms: u64,
}

/// The path a `file://` URI names (see [`Obj::path`]).
pub fn uri_path(uri: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let raw = uri.strip_prefix("file://").unwrap_or_else(|| panic!("uri {uri:?} is not file://"));
    let plain = PathBuf::from(raw);
    if !raw.contains('%') || plain.exists() {
        return plain;
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match (b[i], b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

pub fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|e| panic!("canonicalize {}: {e}", p.display()))
}

/// Deterministic pseudo-random bytes (SplitMix64), the same on every machine.
pub fn rand_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic English-like text of about `len` bytes: words from a small vocabulary, with
/// punctuation, numbers and lines of varying length.
pub fn rand_text(seed: u64, len: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "atom",
        "store",
        "of",
        "and",
        "a",
        "to",
        "geometry",
        "hash",
        "content",
        "in",
        "is",
        "file",
        "that",
        "for",
        "with",
        "Hilbert",
        "curve",
        "position",
        "space",
        "tree",
        "node",
        "leaf",
        "value",
        "byte",
        "every",
        "object",
        "once",
        "deduplicated",
        "reference",
        "count",
        "collect",
        "garbage",
        "log",
        "index",
        "merge",
        "über",
        "naïve",
        "café",
        "日本語",
        "данные",
        "λ",
        "→",
        "fn",
        "let",
        "mut",
        "impl",
        "struct",
        "enum",
        "match",
    ];
    let r = rand_bytes(seed, len / 2 + 64);
    let mut out = String::with_capacity(len + 80);
    let mut i = 0;
    let mut line = 0usize;
    while out.len() < len {
        let b = r[i % r.len()] as usize ^ (i / r.len());
        i += 1;
        match b % 23 {
            0 => out.push_str(", "),
            1 => out.push_str(". "),
            2 => out.push_str(&format!("{} ", b * 37 + i)),
            _ => {
                out.push_str(WORDS[(b + i * 7) % WORDS.len()]);
                out.push(' ');
            }
        }
        line += 1;
        if line > 4 + (b % 13) {
            out.push('\n');
            line = 0;
        }
    }
    out.push('\n');
    out
}

pub fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_path_buf()
}

/// `/usr/share/common-licenses` (Debian's base-files): required, never skipped.
pub fn licenses_dir() -> PathBuf {
    let p = PathBuf::from("/usr/share/common-licenses");
    assert!(
        p.join("GPL-2").is_file() && p.join("GPL-3").is_file() && p.join("LGPL-2").is_file() && p.join("LGPL-2.1").is_file(),
        "these tests read /usr/share/common-licenses (GPL-2, GPL-3, LGPL-2, LGPL-2.1) from Debian's base-files; install base-files"
    );
    p
}

pub fn license(name: &str) -> PathBuf {
    licenses_dir().join(name)
}

/// Regular files under `root` in sorted order (symlinks not followed), up to `max_files` files
/// and `max_bytes` bytes in total, skipping single files above `max_file`.
pub fn sample_files(root: &Path, max_files: usize, max_bytes: u64, max_file: u64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    // Depth-first in name order.
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        let mut entries: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        let mut dirs = Vec::new();
        for e in entries {
            let Ok(m) = std::fs::symlink_metadata(&e) else { continue };
            if m.is_dir() {
                dirs.push(e);
            } else if m.is_file() && m.len() <= max_file && (m.permissions().mode() & 0o444) == 0o444 {
                if out.len() >= max_files || total + m.len() > max_bytes {
                    return out;
                }
                total += m.len();
                out.push(e);
            }
        }
        stack.extend(dirs.into_iter().rev());
    }
    out
}

/// A bounded sample of real source files already on the machine: the crate sources in the
/// cargo registry (`$CARGO_HOME/registry/src/*/`), or, where there is none, this repository's
/// own sources and a sample of `/usr/share/doc`. Never empty.
pub fn real_corpus(max_files: usize, max_bytes: u64) -> Vec<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let mut files = Vec::new();
    if let Ok(rd) = std::fs::read_dir(cargo_home.join("registry/src")) {
        let mut regs: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        regs.sort();
        for r in regs {
            let left = max_files - files.len();
            let used: u64 = files.iter().map(|f: &PathBuf| f.metadata().map(|m| m.len()).unwrap_or(0)).sum();
            files.extend(sample_files(&r, left, max_bytes - used, 2 << 20));
            if files.len() >= max_files {
                break;
            }
        }
    }
    if files.len() < max_files / 2 {
        eprintln!(
            "cargo registry sources not found under {}: using this repository and /usr/share/doc",
            cargo_home.display()
        );
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for sub in ["crates", "docs"] {
            files.extend(sample_files(&repo.join(sub), max_files / 2, max_bytes / 2, 2 << 20));
        }
        files.extend(sample_files(Path::new("/usr/share/doc"), max_files / 2, max_bytes / 2, 2 << 20));
    }
    assert!(files.len() >= 20, "found only {} real files to ingest", files.len());
    files
}

/// Make `path` (recursively) readable, and directories enterable, by every user.
pub fn open_up(path: &Path) {
    let m = std::fs::symlink_metadata(path).expect("stat");
    if m.file_type().is_symlink() {
        return;
    }
    if m.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for e in std::fs::read_dir(path).expect("readdir") {
            open_up(&e.expect("entry").path());
        }
    } else {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
}

/// Make `path` (recursively) read-only for everyone (0555 dirs, 0444 files).
pub fn close_down(path: &Path) {
    let m = std::fs::symlink_metadata(path).expect("stat");
    if m.file_type().is_symlink() {
        return;
    }
    if m.is_dir() {
        for e in std::fs::read_dir(path).expect("readdir") {
            close_down(&e.expect("entry").path());
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    } else {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    }
}

pub fn chown_r(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).expect("chown");
    if std::fs::symlink_metadata(path).expect("stat").is_dir() {
        for e in std::fs::read_dir(path).expect("readdir") {
            chown_r(&e.expect("entry").path(), uid);
        }
    }
}

/// The user a permission test runs `hart` as: `nobody` when the tests run as root (root
/// reads everything regardless of mode bits), the current user otherwise. When it is
/// `nobody`, the store's temporary directory is opened up to it and the binary copied where
/// it can execute it.
pub fn unprivileged(store: &mut Store) -> Spawn {
    if !is_root() {
        return Spawn::default();
    }
    std::fs::set_permissions(store.tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod tmp");
    let bin = store.tmp.path().join("hart-bin");
    std::fs::copy(hart_bin(), &bin).expect("copy hart");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod hart");
    store.bin = bin;
    Spawn { as_uid: Some(NOBODY), ..Spawn::default() }
}

/// Send a signal to a child.
pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid; it has not been waited for, so the pid is ours.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig}): {}", child.id(), std::io::Error::last_os_error());
}
