//! Bad input through the real `hart` binary: missing paths, dangling symlinks, empty files,
//! unreadable files and directories, a read-only store, a full disk, a second writer. Each
//! case asserts a clear message (what and where), the documented exit code, and that objects
//! stored before are intact (`fsck` ok, every `cat` byte-exact).

mod common;

use common::*;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// stderr names every needle and shows no panic.
fn assert_clear(r: &Run, needles: &[&str]) {
    for n in needles {
        assert!(r.stderr.contains(n), "hart {:?}: stderr does not mention {n:?}:\n{}", r.args, r.stderr);
    }
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"),
        "hart {:?} panicked:\n{}",
        r.args,
        r.stderr
    );
}

/// Objects stored before the bad input: a text, a binary, and a shared license.
fn seed(store: &Store, spawn: Spawn) -> Vec<PathBuf> {
    let d = store.scratch("seed");
    let files = vec![
        write(&d.join("notes.txt"), rand_text(101, 50_000).as_bytes()),
        write(&d.join("blob.bin"), &rand_bytes(102, 200_000)),
        write(&d.join("gpl2"), &std::fs::read(license("GPL-2")).unwrap()),
    ];
    if spawn.as_uid.is_some() {
        open_up(&d);
    }
    let mut args: Vec<&std::ffi::OsStr> = vec!["ingest".as_ref()];
    args.extend(files.iter().map(|p| p.as_os_str()));
    store.run_with(&args, spawn).ok();
    assert_eq!(store.ls(false).len(), 3);
    files
}

/// `fsck` ok and every completed object byte-exact.
fn intact(store: &Store, when: &str, spawn: Spawn) {
    store.fsck_ok_with(when, spawn);
    store.assert_all_intact_with(when, spawn);
}

fn ingest_paths(store: &Store, paths: &[&Path], spawn: Spawn) -> Run {
    let mut args: Vec<&std::ffi::OsStr> = vec!["ingest".as_ref()];
    args.extend(paths.iter().map(|p| p.as_os_str()));
    store.run_with(&args, spawn)
}

#[test]
fn missing_paths_and_broken_symlinks_are_reported_and_skipped() {
    let store = Store::new();
    seed(&store, Spawn::default());
    let d = store.scratch("in");
    let good = write(&d.join("good.txt"), b"a good file\n");
    let missing = d.join("does-not-exist");

    // A nonexistent path beside a good one: the good one is stored, exit 4.
    let r = ingest_paths(&store, &[&missing, &good], Spawn::default());
    r.expect_code(exit::PARTIAL);
    assert_clear(&r, &[missing.to_str().unwrap(), "No such file"]);
    assert!(store.ls(false).iter().any(|o| o.path() == canon(&good)), "the good file was stored");
    // Only a nonexistent path: nothing stored, exit 1 (every input failed: issue 12), and the
    // JSON names it.
    let before = store.stats();
    let r = store.run(&["--json", "ingest", missing.to_str().unwrap()]);
    r.expect_code(exit::ERROR);
    let v = r.json();
    assert_eq!(v["failed"][0]["path"], missing.to_str().unwrap());
    assert!(v["failed"][0]["error"].as_str().unwrap().contains("No such file"), "{v}");
    assert_eq!(v["objects"], serde_json::json!([]));
    assert_eq!(store.stats().atoms, before.atoms);

    // Dangling symlinks and a symlink loop, given directly and found inside a directory; a
    // symlink to a parent directory is not followed (no endless walk).
    let links = store.scratch("links");
    let dangling = links.join("dangling");
    std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
    std::os::unix::fs::symlink(links.join("loop-b"), links.join("loop-a")).unwrap();
    std::os::unix::fs::symlink(links.join("loop-a"), links.join("loop-b")).unwrap();
    std::os::unix::fs::symlink(&links, links.join("parent")).unwrap();
    std::os::unix::fs::symlink(&good, links.join("to-good")).unwrap();
    write(&links.join("real.bin"), &rand_bytes(103, 5000));
    let r = store.run(&["--json", "ingest", links.to_str().unwrap()]);
    r.expect_code(exit::PARTIAL);
    let direct = store.run(&["ingest", dangling.to_str().unwrap()]);
    direct.expect_code(exit::ERROR);
    assert_clear(&direct, &[dangling.to_str().unwrap(), "No such file", "none of the 1 inputs could be ingested"]);
    let v = r.json();
    let failed: Vec<String> =
        v["failed"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_string()).collect();
    let names = |v: &[&str]| v.iter().map(|n| links.join(n).to_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(failed, names(&["dangling", "loop-a", "loop-b"]), "{v}");
    for f in v["failed"].as_array().unwrap() {
        let e = f["error"].as_str().unwrap();
        assert!(e.contains("No such file") || e.contains("symbolic links"), "unclear: {e}");
    }
    let stored: Vec<PathBuf> =
        v["objects"].as_array().unwrap().iter().map(|o| uri_path(o["uri"].as_str().unwrap())).collect();
    assert_eq!(stored.len(), 2, "real.bin and the link to good.txt: {v}");
    assert!(stored.contains(&canon(&links.join("real.bin"))));
    intact(&store, "after missing paths and broken links", Spawn::default());
}

#[test]
fn empty_files_are_stored_and_cat_to_nothing() {
    let store = Store::new();
    seed(&store, Spawn::default());
    let d = store.scratch("in");
    let e1 = write(&d.join("empty-1"), b"");
    let e2 = write(&d.join("sub/empty-2.txt"), b"");
    let rep = store.ingest(&[&e1, &e2]);
    assert_eq!(rep.objects.len(), 2);
    for o in &rep.objects {
        assert_eq!((o.status.as_str(), o.size), ("completed", 0), "{o:?}");
    }
    assert_eq!(rep.objects[0].root, rep.objects[1].root, "empty files share one root");
    let root = rep.objects[0].root.clone().unwrap();
    let r = store.run(&["cat", &root]);
    r.ok();
    assert!(r.stdout.is_empty(), "cat of an empty object printed {} bytes", r.stdout.len());
    let r = store.run(&["--json", "show", &root]);
    r.ok();
    assert_eq!(r.json()["ref_count"], 2);
    intact(&store, "after empty files", Spawn::default());
}

/// Give modes back on drop so the temporary directory can be removed by a non-root user.
struct Restore(Vec<(PathBuf, u32)>);

impl Drop for Restore {
    fn drop(&mut self) {
        for (p, mode) in &self.0 {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(*mode));
        }
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn unreadable_files_and_directory_entries_are_reported_and_skipped() {
    let mut store = Store::new();
    let user = unprivileged(&mut store);
    if user.as_uid.is_some() {
        std::fs::create_dir_all(&store.dir).unwrap();
        chown_r(&store.dir, NOBODY);
    }
    seed(&store, user);
    let t = store.scratch("tree");
    write(&t.join("a-ok.txt"), rand_text(111, 10_000).as_bytes());
    write(&t.join("locked-dir/secret.txt"), b"secret\n");
    write(&t.join("no-search-dir/inside.txt"), b"listed but not reachable\n");
    write(&t.join("sub/ok.bin"), &rand_bytes(112, 30_000));
    write(&t.join("sub/unreadable.bin"), &rand_bytes(113, 30_000));
    write(&t.join("unreadable.txt"), b"cannot read me\n");
    write(&t.join("z-ok.txt"), b"last\n");
    open_up(&t);
    chmod(&t.join("locked-dir"), 0o000);
    chmod(&t.join("no-search-dir"), 0o444); // listable, entries not reachable
    chmod(&t.join("sub/unreadable.bin"), 0o000);
    chmod(&t.join("unreadable.txt"), 0o000);
    let _restore = Restore(vec![(t.join("locked-dir"), 0o755), (t.join("no-search-dir"), 0o755)]);

    let before = store.ls(false).len();
    let r = store.run_with(&["--json".as_ref(), "ingest".as_ref(), t.as_os_str()], user);
    r.expect_code(exit::PARTIAL);
    let v = r.json();
    let mut failed: Vec<(String, String)> = v["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().to_string(), f["error"].as_str().unwrap().to_string()))
        .collect();
    failed.sort();
    let want: Vec<String> = ["locked-dir", "no-search-dir/inside.txt", "sub/unreadable.bin", "unreadable.txt"]
        .iter()
        .map(|n| t.join(n).to_str().unwrap().to_string())
        .collect();
    assert_eq!(failed.iter().map(|f| f.0.clone()).collect::<Vec<_>>(), want, "failed inputs: {failed:?}");
    for (p, e) in &failed {
        assert!(e.contains("Permission denied"), "{p}: unclear error {e:?}");
    }
    // The readable files are stored, in order, around the unreadable ones.
    let stored: Vec<String> =
        v["objects"].as_array().unwrap().iter().map(|o| o["uri"].as_str().unwrap().to_string()).collect();
    let canon_t = canon(&t);
    let want_stored: Vec<String> = ["a-ok.txt", "sub/ok.bin", "z-ok.txt"]
        .iter()
        .map(|n| format!("file://{}", canon_t.join(n).display()))
        .collect();
    assert_eq!(stored, want_stored);
    assert_eq!(store.ls(false).len(), before + 3);
    // The human output says the same on stderr.
    let r = store.run_with(&["ingest".as_ref(), t.as_os_str()], user);
    r.expect_code(exit::PARTIAL);
    assert_clear(
        &r,
        &[t.join("locked-dir").to_str().unwrap(), t.join("unreadable.txt").to_str().unwrap(), "Permission denied"],
    );
    intact(&store, "after unreadable inputs", user);
}

#[test]
fn read_only_store_refuses_writes_and_serves_reads() {
    let mut store = Store::new();
    seed(&store, Spawn::default());
    let id = format!("#{}", store.ls(false)[0].id);
    let extra = write(&store.scratch("more").join("x.txt"), b"one more\n");
    // A reader that cannot write: nobody over a root-owned store, or the owner after chmod a-w.
    open_up(store.tmp.path());
    let user = unprivileged(&mut store);
    let _restore = if user.as_uid.is_none() {
        close_down(&store.dir);
        Some(Restore(vec![(store.dir.clone(), 0o755)]))
    } else {
        None
    };
    let dir = store.dir.to_str().unwrap().to_string();
    for args in [vec!["ingest", extra.to_str().unwrap()], vec!["rm", id.as_str()], vec!["gc"]] {
        let a: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_ref()).collect();
        let r = store.run_with(&a, user);
        r.expect_code(exit::ERROR);
        assert_clear(&r, &["read-only", &dir, "writable --store"]);
    }
    // Reads still work, and nothing changed.
    let r = store.run_with(&["--json".as_ref(), "stats".as_ref()], user);
    r.ok();
    assert_eq!(r.json()["objects"], 3);
    intact(&store, "read-only store", user);
    // Back in the owner's hands (writable again), writes work and the store is whole.
    if user.as_uid.is_none() {
        open_up(&store.dir);
    }
    store.bin = hart_bin();
    store.ingest(&[&extra]);
    intact(&store, "after writing again", Spawn::default());

    // A store on a read-only file system (where we can mount one): the same.
    if let Some(m) = Mount::tmpfs(&store.tmp.path().join("ro-mnt"), 16 << 20) {
        let ro = Store { tmp: tempfile::tempdir().unwrap(), dir: m.path.join("store"), bin: hart_bin() };
        seed(&ro, Spawn::default());
        m.remount("ro");
        let r = ro.run(&["ingest", extra.to_str().unwrap()]);
        r.expect_code(exit::ERROR);
        assert_clear(&r, &["read-only", ro.dir.to_str().unwrap()]);
        intact(&ro, "read-only file system", Spawn::default());
        eprintln!("read-only store: checked by permissions and on a read-only tmpfs");
    } else {
        eprintln!("read-only store: checked by permissions (this machine cannot mount a tmpfs)");
    }
}

/// A tmpfs mounted for one test (root with CAP_SYS_ADMIN only), unmounted on drop.
struct Mount {
    path: PathBuf,
}

impl Mount {
    fn tmpfs(path: &Path, size: u64) -> Option<Mount> {
        if !is_root() {
            return None;
        }
        std::fs::create_dir_all(path).unwrap();
        let target = CString::new(path.to_str().unwrap()).unwrap();
        let opts = CString::new(format!("size={size}")).unwrap();
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, opts.as_ptr().cast()) };
        if rc != 0 {
            return None;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Some(Mount { path: path.to_path_buf() })
    }

    fn remount(&self, opts: &str) {
        let target = CString::new(self.path.to_str().unwrap()).unwrap();
        let mut flags = libc::MS_REMOUNT;
        if opts == "ro" {
            flags |= libc::MS_RDONLY;
        }
        let o = CString::new(if opts == "ro" { "" } else { opts }).unwrap();
        // SAFETY: as in `tmpfs`.
        let rc =
            unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), flags, o.as_ptr().cast()) };
        assert_eq!(rc, 0, "remount {opts}: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = CString::new(self.path.to_str().unwrap()).unwrap();
        // SAFETY: as in `tmpfs`.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A disk that fills up: a small tmpfs where one can be mounted (writes fail with ENOSPC),
/// otherwise a file-size limit on the `hart` process (writes fail with EFBIG).
enum Disk {
    Tmpfs(Mount),
    Limit(u64),
}

impl Disk {
    fn new(store: &mut Store, bytes: u64) -> Disk {
        match Mount::tmpfs(&store.tmp.path().join("mnt"), bytes) {
            Some(m) => {
                store.dir = m.path.join("store");
                Disk::Tmpfs(m)
            }
            None => Disk::Limit(bytes),
        }
    }

    /// How to run `hart` on the small disk.
    fn spawn(&self) -> Spawn {
        match self {
            Disk::Tmpfs(_) => Spawn::default(),
            Disk::Limit(n) => Spawn { fsize_limit: Some(*n), ..Spawn::default() },
        }
    }

    /// Words a clear message about this failure contains.
    fn words(&self) -> &'static [&'static str] {
        match self {
            Disk::Tmpfs(_) => &["full", "free space"],
            Disk::Limit(_) => &["too large"],
        }
    }

    /// Free space: a bigger tmpfs, or no limit.
    fn grow(&mut self) {
        match self {
            Disk::Tmpfs(m) => m.remount("size=256m"),
            Disk::Limit(n) => *n = u64::MAX,
        }
    }

    /// Use up what space is left: a filler file on the tmpfs, or a limit at the log's size.
    fn fill(&mut self, store: &Store) {
        match self {
            Disk::Tmpfs(m) => {
                use std::io::Write;
                let mut f = std::fs::File::create(m.path.join("filler")).unwrap();
                let block = vec![0u8; 64 << 10];
                while f.write_all(&block).is_ok() {}
                let small = [0u8; 512];
                while f.write_all(&small).is_ok() {}
            }
            Disk::Limit(n) => {
                *n = std::fs::read_dir(store.dir.join("log"))
                    .unwrap()
                    .map(|e| e.unwrap().metadata().unwrap().len())
                    .max()
                    .unwrap();
            }
        }
    }

    /// Undo [`Disk::fill`].
    fn unfill(&mut self) {
        match self {
            Disk::Tmpfs(m) => std::fs::remove_file(m.path.join("filler")).unwrap(),
            Disk::Limit(n) => *n = u64::MAX,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Disk::Tmpfs(_) => "tmpfs (ENOSPC)",
            Disk::Limit(_) => "RLIMIT_FSIZE (EFBIG)",
        }
    }
}

/// The full-disk corpus: licenses, a text file and a random file.
fn disk_corpus(store: &Store) -> PathBuf {
    let c = store.scratch("corpus");
    for n in ["GPL-2", "GPL-3", "LGPL-2.1", "Apache-2.0", "MPL-2.0"] {
        std::fs::copy(license(n), c.join(n)).unwrap();
    }
    write(&c.join("t.txt"), rand_text(121, 256 << 10).as_bytes());
    write(&c.join("r.bin"), &rand_bytes(122, 1 << 20));
    c
}

#[test]
fn full_disk_stops_with_a_clear_error_and_harms_nothing() {
    let mut store = Store::new();
    let corpus = disk_corpus(&store);
    let big = write(&store.scratch("big").join("big.bin"), &rand_bytes(123, 12 << 20));
    let small = write(&store.scratch("small").join("small.txt"), rand_text(124, 20_000).as_bytes());
    let mut disk = Disk::new(&mut store, 8 << 20);
    eprintln!("full disk: {}", disk.name());
    // Before: the corpus fits.
    let r = ingest_paths(&store, &[&corpus], disk.spawn());
    r.ok();
    intact(&store, "before the disk fills", Spawn::default());
    let before = store.ls(false);

    // A small file, then one too big for the space left: the small one is committed, the big
    // one stops the run with a clear message and exit 1.
    let r = ingest_paths(&store, &[&small, &big], disk.spawn());
    r.expect_code(exit::ERROR);
    let mut words = vec![store.dir.to_str().unwrap()];
    words.extend(disk.words());
    assert_clear(&r, &words);
    intact(&store, "after the disk filled", Spawn::default());
    let after = store.ls(false);
    assert_eq!(after.len(), before.len() + 1, "the small file committed before the error is stored");
    assert!(after.iter().any(|o| o.path() == canon(&small)));
    // Again while still full: the same clear error, nothing harmed.
    let r = ingest_paths(&store, &[&big], disk.spawn());
    r.expect_code(exit::ERROR);
    assert_clear(&r, &words);
    intact(&store, "after a second attempt on a full disk", Spawn::default());
    // Space freed: the same command now succeeds.
    disk.grow();
    ingest_paths(&store, &[&big], disk.spawn()).ok();
    intact(&store, "after space was freed", Spawn::default());
    assert_eq!(store.ls(false).len(), before.len() + 2);
}

#[test]
fn full_disk_at_any_point_leaves_a_store_that_reopens_intact() {
    // Fill the disk at different moments: in the log, in the index runs and state of the
    // final checkpoint. Every time: exit 0 or a clear exit 1, a store that passes fsck, and
    // once space is freed, the same ingest completes.
    // (Sizes chosen from a sweep of this corpus on tmpfs: the log, the hash run, the key run.)
    for (i, size) in [64u64 << 10, 1536 << 10, 2560 << 10, 3584 << 10].into_iter().enumerate() {
        let mut store = Store::new();
        let corpus = disk_corpus(&store);
        let mut disk = Disk::new(&mut store, size);
        // Each store starts with one committed object so there is something to harm.
        let first = write(&store.scratch("first").join("first.txt"), format!("object {i}\n").as_bytes());
        ingest_paths(&store, &[&first], Spawn::default()).ok();
        let r = ingest_paths(&store, &[&corpus], disk.spawn());
        eprintln!(
            "full disk ({}) at {} KiB: exit {} {}",
            disk.name(),
            size >> 10,
            r.code,
            r.stderr.lines().last().unwrap_or("")
        );
        if r.code != exit::OK {
            r.expect_code(exit::ERROR);
            let mut words = vec![store.dir.to_str().unwrap()];
            words.extend(disk.words());
            assert_clear(&r, &words);
        }
        intact(&store, &format!("after a full disk at {size} bytes"), Spawn::default());
        // Whatever the run reported as committed is stored.
        let live: Vec<PathBuf> = store.ls(false).iter().map(|o| o.path()).collect();
        for l in r.stdout_str().lines().filter(|l| l.starts_with("completed")) {
            let p = PathBuf::from(l.split_whitespace().last().unwrap());
            assert!(live.contains(&canon(&p)), "{} was reported committed but is not stored", p.display());
        }
        disk.grow();
        ingest_paths(&store, &[&corpus], disk.spawn()).ok();
        intact(&store, &format!("after freeing space ({size} bytes)"), Spawn::default());
        assert_eq!(store.ls(false).len(), 8, "first + 7 corpus files");
    }
}

/// Regression: a store whose creation ran out of space (or was killed) between creating its
/// subdirectories and writing its first MANIFEST could never be opened again ("it has files
/// but no MANIFEST"), although the message said "free space and run the command again".
#[test]
fn full_disk_while_creating_the_store_leaves_a_store_that_opens() {
    let store = Store::new();
    let f = write(&store.scratch("in").join("f.txt"), b"hello\n");
    // No byte can be written: creating the store fails.
    let r = ingest_paths(&store, &[&f], Spawn { fsize_limit: Some(0), ..Spawn::default() });
    r.expect_code(exit::ERROR);
    assert_clear(&r, &[store.dir.to_str().unwrap()]);
    // Space is back: running the command again must work.
    let r = ingest_paths(&store, &[&f], Spawn::default());
    assert_clear(&r, &[]);
    r.ok();
    intact(&store, "after creating the store again", Spawn::default());
}

#[test]
fn a_second_writer_gets_exit_code_6_and_readers_keep_working() {
    let store = Store::new();
    seed(&store, Spawn::default());
    let big = write(&store.scratch("big").join("big.bin"), &rand_bytes(131, 24 << 20));
    let other = write(&store.scratch("other").join("o.txt"), b"other\n");
    let mut child = store.spawn(&["ingest", big.to_str().unwrap()], Spawn::default());
    let pid = child.id().to_string();
    // Wait until the writer holds the lock (it writes its pid into LOCK), then freeze it.
    // (No time limit: the writer either takes the lock or exits, however slow the machine.)
    let lock = store.dir.join("LOCK");
    loop {
        if std::fs::read_to_string(&lock).map(|s| s.trim() == pid).unwrap_or(false) {
            signal(&child, libc::SIGSTOP);
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the writer finished ({st}) before the test saw it take the lock");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let result = std::panic::catch_unwind(|| {
        for args in [vec!["ingest", other.to_str().unwrap()], vec!["gc"], vec!["rm", "#1"]] {
            let r = store.run(&args);
            r.expect_code(exit::LOCKED);
            assert_clear(&r, &["locked", &pid, store.dir.to_str().unwrap()]);
        }
        let r = store.run(&["--json", "gc"]);
        r.expect_code(exit::LOCKED);
        assert_eq!(r.json()["exit_code"], exit::LOCKED);
        // Readers need no lock.
        intact(&store, "while another process writes", Spawn::default());
    });
    signal(&child, libc::SIGCONT);
    let out = child.wait_with_output().unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(out.status.success(), "the first writer failed: {}", String::from_utf8_lossy(&out.stderr));
    intact(&store, "after the first writer finished", Spawn::default());
    assert_eq!(store.ls(false).len(), 4);
    // The lock is free again.
    store.ingest(&[&other]);
}

#[test]
fn unknown_ids_and_missing_stores_get_their_exit_codes() {
    let store = Store::new();
    // No store yet: readers say so (exit 3) and create nothing.
    let r = store.run(&["ls"]);
    r.expect_code(exit::NOT_FOUND);
    assert_clear(&r, &[store.dir.to_str().unwrap()]);
    assert!(!store.dir.exists(), "a reader created the store directory");
    seed(&store, Spawn::default());
    let r = store.run(&["cat", &"ab".repeat(32)]);
    r.expect_code(exit::NOT_FOUND);
    let r = store.run(&["cat", "#999"]);
    r.expect_code(exit::NOT_FOUND);
    assert_clear(&r, &["#999"]);
    let r = store.run(&["show", "xyz!"]);
    r.expect_code(exit::USAGE);
    let r = store.run(&["rm", "#999"]);
    r.expect_code(exit::NOT_FOUND);
    intact(&store, "after unknown ids", Spawn::default());
}

/// Two files whose names are not UTF-8 and differ only in those bytes are two objects, each
/// with a URI that names its own file. (The URI was built with `Path::display`, which
/// replaces such bytes with U+FFFD: both files got the same URI, the second was reported
/// `unchanged` and never became an object.)
#[test]
fn files_with_non_utf8_names_keep_their_own_uris() {
    use std::os::unix::ffi::OsStrExt;
    let store = Store::new();
    seed(&store, Spawn::default());
    let d = store.scratch("names");
    let a = write(&d.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")), b"same bytes\n");
    let b = write(&d.join(std::ffi::OsStr::from_bytes(b"caf\xe8.txt")), b"same bytes\n");
    let c = write(&d.join("plain name with spaces & 100% #hash.txt"), b"other bytes\n");
    let rep = store.ingest(&[&d]);
    let uris: Vec<&str> = rep.objects.iter().map(|o| o.uri.as_str()).collect();
    assert!(uris.iter().all(|u| !u.contains('\u{FFFD}')), "URIs lost bytes of the file names: {uris:?}");
    for o in &rep.objects {
        assert_eq!(o.status, "completed", "{} is a file of its own: {o:?}", o.uri);
    }
    let mut named: Vec<PathBuf> = rep.objects.iter().map(|o| o.path()).collect();
    named.sort();
    let mut want = vec![canon(&a), canon(&b), canon(&c)];
    want.sort();
    assert_eq!(named, want, "each object's URI names its own file");
    intact(&store, "after non-UTF-8 names", Spawn::default());
}

/// Ingesting a tree that contains the store itself (`hart ingest ~` with the default store
/// under ~/.local/share) must end: it read its own log while appending to it and grew the
/// store without bound.
#[test]
fn ingesting_a_tree_that_contains_the_store_terminates() {
    let mut store = Store::new();
    let tree = store.scratch("home");
    store.dir = tree.join(".local/share/hartonomous");
    write(&tree.join("docs/a.txt"), rand_text(141, 100_000).as_bytes());
    write(&tree.join("docs/b.bin"), &rand_bytes(142, 6 << 20));
    // A store with something in it already, inside the tree.
    store.ingest(&[&tree.join("docs")]);
    let mut child = store.spawn(&["ingest", tree.to_str().unwrap()], Spawn::default());
    let start = Instant::now();
    // The failure was growth without bound, so growth is what ends the wait (no time limit:
    // a slow machine takes longer, not more space).
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        let size = dir_bytes(&store.dir);
        if size > 64 << 20 {
            child.kill().unwrap();
            child.wait().unwrap();
            eprintln!(
                "ingest of a tree holding its store: killed after {:?}, store at {} MiB",
                start.elapsed(),
                size >> 20
            );
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status.expect("ingesting a tree that holds the store did not end: the store kept growing");
    assert!(matches!(status.code(), Some(0) | Some(4)), "exit {status}");
    store.fsck_ok("after ingesting a tree that holds the store");
    let docs = canon(&tree.join("docs"));
    for o in store.ls(false).iter().filter(|o| o.path().starts_with(&docs)) {
        assert_bytes_eq(&store.cat(o.root.as_deref().unwrap()), &std::fs::read(o.path()).unwrap(), &o.uri);
    }
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => n += dir_bytes(&e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

/// `rm` and `gc` on a full disk: either they work, or they fail with a clear message and
/// change nothing; the exit code and the store must agree. (On a tmpfs, `rm` wrote and synced
/// its delete record, then failed in the checkpoint that follows, exited 1 with "nothing
/// already stored was changed" — and the object was gone; `rm` again then failed with
/// "object 1 is Deleted".)
#[test]
fn rm_and_gc_on_a_full_disk_report_what_they_did() {
    let mut store = Store::new();
    let corpus = disk_corpus(&store);
    let mut disk = Disk::new(&mut store, 8 << 20);
    ingest_paths(&store, &[&corpus], disk.spawn()).ok();
    let objs = store.ls(false);
    let victim = format!("#{}", objs[0].id);
    disk.fill(&store);
    let mut words = vec![store.dir.to_str().unwrap()];
    words.extend(disk.words());

    let r = store.run_with(&["rm".as_ref(), victim.as_ref()], disk.spawn());
    let still_there = store.ls(false).iter().any(|o| format!("#{}", o.id) == victim);
    if r.code == exit::OK {
        assert!(!still_there, "rm exited 0 but {victim} is still listed");
    } else {
        r.expect_code(exit::ERROR);
        assert_clear(&r, &words);
        assert!(still_there, "rm on a full disk exited {} ({}) but removed {victim}", r.code, r.stderr.trim());
    }
    intact(&store, "after rm on a full disk", Spawn::default());
    let r = store.run_with(&["gc".as_ref()], disk.spawn());
    if r.code != exit::OK {
        r.expect_code(exit::ERROR);
        assert_clear(&r, &words);
    }
    intact(&store, "after gc on a full disk", Spawn::default());

    // Space back: the same commands work and leave a whole store.
    disk.unfill();
    if still_there {
        store.run_with(&["rm".as_ref(), victim.as_ref()], disk.spawn()).ok();
    }
    store.run_with(&["gc".as_ref()], disk.spawn()).ok();
    intact(&store, "after rm and gc with space again", Spawn::default());
    assert_eq!(store.ls(false).len(), objs.len() - 1);
}
