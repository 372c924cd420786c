//! The `hart` binary behaves like a Unix tool (issue 12): a closed stdout ends output quietly
//! and never stops an ingest half-way; `cat -o` never replaces a device, FIFO or symlink and
//! leaves a regular file whole or untouched; files are read to EOF whatever size the kernel
//! reports; commands that need a store never create one; a run whose every input failed
//! says so. Each test is named after what it found.

mod common;

use common::*;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// No panic, no backtrace on stderr.
fn no_panic(stderr: &str, what: &str) {
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{what} panicked:\n{stderr}");
}

/// `n` small text files, each different, in a directory of their own.
fn many_files(store: &Store, name: &str, n: u64) -> PathBuf {
    let d = store.scratch(name);
    for i in 0..n {
        write(&d.join(format!("file-{i:05}.txt")), format!("file {i} of {name}\n{}", rand_text(i, 40)).as_bytes());
    }
    d
}

/// The sorted names in a directory.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Exit code of a finished child (a signal is a failure here: Rust ignores SIGPIPE).
fn code(st: std::process::ExitStatus, what: &str) -> i32 {
    st.code().unwrap_or_else(|| panic!("{what} was killed by a signal: {st:?}"))
}

/// `hart ingest DIR | head -1` (and `2>&1 | head -1`) stopped part-way with exit 101 and
/// "failed printing to stdout: Broken pipe". The reader here takes one line and closes the
/// pipe; the output (~130 KB for 1200 files) is larger than the pipe's buffer (64 KiB) and the
/// reader's (8 KiB), so writes must meet the closed pipe whatever the timing.
#[test]
fn closed_stdout_during_ingest_finishes_and_exits_quietly() {
    let store = Store::new();
    let d = many_files(&store, "many", 1200);
    let mut child = store.spawn(&["ingest", d.to_str().unwrap()], Spawn::default());
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("completed"), "first line: {first:?}");
    // The reader has dropped its end here: `head -1` has exited.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    no_panic(&stderr, "ingest into a closed stdout");
    assert_eq!(code(out.status, "ingest"), exit::OK, "stderr:\n{stderr}");
    assert!(stderr.contains("1200 objects"), "the summary still reaches stderr:\n{stderr}");
    // Every file was stored and committed.
    assert_eq!(store.ls(false).len(), 1200);
    store.fsck_ok("after an ingest into a closed stdout");

    // stdout and stderr both closed (`hart ingest DIR 2>&1 | head -1`): the same.
    let d2 = many_files(&store, "more", 300);
    let mut child = store.spawn(&["ingest", d2.to_str().unwrap()], Spawn::default());
    drop(child.stdout.take());
    drop(child.stderr.take());
    assert_eq!(code(child.wait().unwrap(), "ingest with stdout and stderr closed"), exit::OK);
    assert_eq!(store.ls(false).len(), 1500);
    store.assert_all_intact("after ingests into closed pipes");
}

/// `hart ls --json | head -c 10` and `fsck`, `gc`, `rm`, `stats`, `show` piped into `true`
/// exited 101 with "failed printing to stdout: Broken pipe". Now: exit 0, and the command's
/// work is done (`rm` removed the object).
#[test]
fn closed_stdout_of_ls_fsck_gc_rm_is_not_an_error() {
    let store = Store::new();
    let d = many_files(&store, "many", 800);
    store.ingest(&[&d]);

    // ls --json | head -c 10 (the JSON is ~250 KB: larger than any pipe buffer).
    let mut child = store.spawn(&["--json", "ls"], Spawn::default());
    let mut ten = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut ten).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    no_panic(&stderr, "ls --json | head -c 10");
    assert_eq!(code(out.status, "ls --json"), exit::OK, "stderr:\n{stderr}");

    // Piped into `true`: the reader is gone before the first write.
    let into_true = |args: &[&str]| {
        let mut child = store.spawn(args, Spawn::default());
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        no_panic(&stderr, &format!("hart {args:?} | true"));
        assert_eq!(code(out.status, &format!("{args:?}")), exit::OK, "hart {args:?} | true:\n{stderr}");
    };
    for args in [
        &["ls"][..],
        &["ls", "--all"],
        &["fsck"],
        &["--json", "fsck"],
        &["stats"],
        &["--json", "stats"],
        &["show", "#1"],
        &["cat", "#1"],
        &["rm", "#1"],
        &["--json", "rm", "#2"],
        &["gc"],
        &["--json", "gc"],
    ] {
        into_true(args);
    }
    let left: Vec<u64> = store.ls(false).iter().map(|o| o.id).collect();
    assert!(!left.contains(&1) && !left.contains(&2), "rm into a closed stdout still removed #1 and #2");
    assert_eq!(left.len(), 798);
    store.fsck_ok("after commands into closed pipes");
    assert_eq!(store.stats().garbage_atoms, 0, "gc into a closed stdout still collected");
}

/// stdout that fails otherwise than by a closed pipe (`> /dev/full`) is an error that names
/// stdout; an ingest still stores and commits every file first.
#[test]
fn stdout_on_a_full_disk_is_an_error_and_ingest_still_commits() {
    let store = Store::new();
    let d = many_files(&store, "few", 20);
    let full = || Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full"));
    let mut c = store.command(&[OsStr::new("ingest"), d.as_os_str()], Spawn::default());
    let out = c.stdin(Stdio::null()).stdout(full()).stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    no_panic(&stderr, "ingest > /dev/full");
    assert_eq!(code(out.status, "ingest > /dev/full"), exit::ERROR, "stderr:\n{stderr}");
    assert!(stderr.contains("cannot write to stdout") && stderr.contains("No space left"), "{stderr}");
    assert!(stderr.contains("20 objects stored and durable"), "{stderr}");
    assert_eq!(store.ls(false).len(), 20);
    for args in [&["ls"][..], &["--json", "ls"], &["cat", "#1"], &["stats"]] {
        let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let out = store.command(&a, Spawn::default()).stdin(Stdio::null()).stdout(full()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        no_panic(&stderr, &format!("{args:?} > /dev/full"));
        assert_eq!(code(out.status, "> /dev/full"), exit::ERROR, "hart {args:?} > /dev/full:\n{stderr}");
        assert!(stderr.contains("stdout") && stderr.contains("No space left"), "hart {args:?}:\n{stderr}");
    }
    store.fsck_ok("after output to a full disk");
}

/// Objects to `cat`: a 200 kB binary and a text.
fn seeded(store: &Store) -> (Vec<u8>, Vec<u8>) {
    let d = store.scratch("seed");
    let bin = rand_bytes(7, 200_000);
    let text = rand_text(8, 30_000).into_bytes();
    store.ingest(&[&write(&d.join("a.bin"), &bin), &write(&d.join("b.txt"), &text)]);
    (bin, text)
}

/// `hart cat X -o /dev/full` as root renamed a temporary file over the device: /dev/full
/// became a regular file. A device is written through: the error is the device's, and it
/// stays the device it was. (/dev/null takes the bytes, exit 0.)
#[test]
fn cat_o_dev_full_is_not_replaced() {
    let store = Store::new();
    seeded(&store);
    let before = std::fs::metadata("/dev/full").expect("/dev/full");
    assert!(before.file_type().is_char_device());
    let r = store.run(&["cat", "#1", "-o", "/dev/full"]);
    r.expect_code(exit::ERROR);
    no_panic(&r.stderr, "cat -o /dev/full");
    assert!(r.stderr.contains("cannot write /dev/full") && r.stderr.contains("No space left"), "{}", r.stderr);
    let after = std::fs::metadata("/dev/full").unwrap();
    assert!(after.file_type().is_char_device(), "/dev/full is no longer a device: {after:?}");
    assert_eq!((after.rdev(), after.ino()), (before.rdev(), before.ino()), "/dev/full was replaced");
    assert!(!names(Path::new("/dev")).iter().any(|n| n.contains("hart")), "a temporary file was left in /dev");

    let null = std::fs::metadata("/dev/null").unwrap();
    store.run(&["cat", "#1", "-o", "/dev/null"]).ok();
    let now = std::fs::metadata("/dev/null").unwrap();
    assert!(now.file_type().is_char_device() && now.ino() == null.ino(), "/dev/null was replaced");
}

/// A FIFO at -o PATH was replaced by a regular file; it is written through (to whoever reads
/// it) and stays a FIFO.
#[test]
fn cat_o_fifo_is_written_through() {
    let store = Store::new();
    let (bin, _) = seeded(&store);
    let fifo = store.scratch("out").join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(&fifo).unwrap())
    };
    store.run(&["cat", "#1", "-o", fifo.to_str().unwrap()]).ok();
    assert_bytes_eq(&reader.join().unwrap(), &bin, "read from the FIFO");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    assert_eq!(names(fifo.parent().unwrap()), ["fifo"]);
}

/// A symlink at -o PATH was replaced by a regular file; it is written through to what it
/// names (an existing file, a file not yet there, /dev/stdout) and stays a symlink.
#[test]
fn cat_o_symlink_writes_through_to_its_target() {
    let store = Store::new();
    let (bin, text) = seeded(&store);
    let d = store.scratch("out");
    let target = write(&d.join("target.bin"), b"old contents, longer than nothing");
    let link = d.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    store.run(&["cat", "#2", "-o", link.to_str().unwrap()]).ok();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink was replaced");
    assert_bytes_eq(&std::fs::read(&target).unwrap(), &text, "the symlink's target");

    let dangling = d.join("dangling");
    std::os::unix::fs::symlink(d.join("made-by-cat.bin"), &dangling).unwrap();
    store.run(&["cat", "#1", "-o", dangling.to_str().unwrap()]).ok();
    assert!(std::fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
    assert_bytes_eq(&std::fs::read(d.join("made-by-cat.bin")).unwrap(), &bin, "a dangling symlink's target");
    assert_eq!(names(&d), ["dangling", "link", "made-by-cat.bin", "target.bin"], "no temporary file is left");

    // /dev/stdout is a symlink to the process's stdout: here, a pipe to the test.
    let r = store.run(&["cat", "#1", "-o", "/dev/stdout"]);
    r.ok();
    assert_bytes_eq(&r.stdout, &bin, "cat -o /dev/stdout");
    assert!(std::fs::symlink_metadata("/dev/stdout").unwrap().file_type().is_symlink());
}

/// A regular file at -o PATH is replaced only by the whole object: a cat that fails (here
/// at a file-size limit of 64 KiB, for a 200 kB object) leaves it exactly as it was, with no
/// temporary file beside it; one that succeeds keeps its permissions.
#[test]
fn cat_o_failure_leaves_the_existing_file_untouched() {
    let store = Store::new();
    let (bin, _) = seeded(&store);
    let d = store.scratch("out");
    let keep = write(&d.join("keep.bin"), b"the file that was here");
    std::fs::set_permissions(&keep, std::fs::Permissions::from_mode(0o640)).unwrap();
    let limited = Spawn { fsize_limit: Some(64 << 10), ..Spawn::default() };
    let r = store.run_with(&[OsStr::new("cat"), OsStr::new("#1"), OsStr::new("-o"), keep.as_os_str()], limited);
    r.expect_code(exit::ERROR);
    no_panic(&r.stderr, "cat -o at a file-size limit");
    assert!(r.stderr.contains("cannot write") && r.stderr.contains("keep.bin"), "{}", r.stderr);
    assert!(r.stderr.contains("left as it was"), "{}", r.stderr);
    assert_eq!(std::fs::read(&keep).unwrap(), b"the file that was here");
    assert_eq!(names(&d), ["keep.bin"], "no partial or temporary file is left");
    // A new path that fails is not created at all.
    let new = d.join("new.bin");
    let r = store.run_with(&[OsStr::new("cat"), OsStr::new("#1"), OsStr::new("-o"), new.as_os_str()], limited);
    r.expect_code(exit::ERROR);
    assert_eq!(names(&d), ["keep.bin"]);

    store.run(&["cat", "#1", "-o", keep.to_str().unwrap()]).ok();
    assert_bytes_eq(&std::fs::read(&keep).unwrap(), &bin, "cat -o over an existing file");
    assert_eq!(std::fs::metadata(&keep).unwrap().permissions().mode() & 0o777, 0o640);
    let r = store.run(&["--json", "cat", "#1", "-o", new.to_str().unwrap()]);
    r.ok();
    assert_eq!(r.json()["bytes"], bin.len());
    assert_bytes_eq(&std::fs::read(&new).unwrap(), &bin, "cat -o to a new path");
    assert_eq!(names(&d), ["keep.bin", "new.bin"]);
    // A directory is refused, and left alone.
    let r = store.run(&["cat", "#1", "-o", d.to_str().unwrap()]);
    r.expect_code(exit::ERROR);
    assert!(r.stderr.contains("is a directory"), "{}", r.stderr);
    assert_eq!(names(&d), ["keep.bin", "new.bin"]);
}

/// `/proc/version` (the kernel reports its size as 0) was stored as an empty object, exit 0.
/// Files are read to EOF; and the "same size as a stored object: hash first" shortcut, which
/// took the reported size at its word, no longer matches an empty object to it.
#[test]
fn proc_files_are_read_to_eof() {
    let store = Store::new();
    let proc = Path::new("/proc/version");
    assert_eq!(std::fs::metadata(proc).unwrap().len(), 0, "the kernel reports /proc/version as empty");
    let want = std::fs::read(proc).unwrap();
    assert!(!want.is_empty());
    let rep = store.ingest(&[proc]);
    assert_eq!(rep.objects[0].size, want.len() as u64, "{:?}", rep.objects[0]);
    assert_bytes_eq(&store.cat(rep.objects[0].root.as_deref().unwrap()), &want, "cat of /proc/version");

    // An empty object of the same modality is stored: the reported size (0) matches it.
    let d = store.scratch("in");
    let empty = write(&d.join("empty"), b"");
    let (rep, _) = store.ingest_args(&[&empty], &["--modality", "binary"]);
    assert_eq!(rep.objects[0].size, 0);
    let (rep, _) = store.ingest_args(&[proc], &["--modality", "binary"]);
    assert_eq!(rep.objects[0].size, want.len() as u64, "taken for the empty object: {:?}", rep.objects[0]);
    assert_bytes_eq(&store.cat(rep.objects[0].root.as_deref().unwrap()), &want, "cat of /proc/version as binary");
    store.fsck_ok("after ingesting /proc files");
}

/// `hart rm` and `hart gc` on a --store that did not exist silently created an empty store.
/// Every command but ingest now fails with "no store at PATH" (exit 3) and creates nothing,
/// also in an empty directory.
#[test]
fn rm_on_missing_store_creates_nothing() {
    let store = Store::new();
    let other = store.tmp.path().join("elsewhere");
    let commands: Vec<Vec<&str>> = vec![
        vec!["rm", "#1"],
        vec!["--json", "rm", "#1"],
        vec!["gc"],
        vec!["ls"],
        vec!["cat", "#1"],
        vec!["show", "#1"],
        vec!["stats"],
        vec!["fsck"],
        vec!["sync", "--to", other.to_str().unwrap()],
    ];
    for args in &commands {
        let r = store.run(args);
        r.expect_code(exit::NOT_FOUND);
        no_panic(&r.stderr, &format!("{args:?}"));
        if args[0] == "--json" {
            assert!(r.json()["error"].as_str().unwrap().contains(store.dir.to_str().unwrap()), "{}", r.stdout_str());
        } else {
            assert!(r.stderr.contains(&format!("no store at {}", store.dir.display())), "hart {args:?}:\n{}", r.stderr);
        }
        assert!(!store.dir.exists(), "hart {args:?} created the store directory");
        assert!(!other.exists(), "hart {args:?} created {}", other.display());
    }
    // An empty directory is not a store either, and stays empty.
    std::fs::create_dir(&store.dir).unwrap();
    for args in &commands {
        store.run(args).expect_code(exit::NOT_FOUND);
        assert_eq!(names(&store.dir), Vec::<String>::new(), "hart {args:?} wrote into the empty directory");
    }
    // ingest creates it.
    let f = write(&store.scratch("in").join("a.txt"), b"a\n");
    store.ingest(&[&f]);
    store.run(&["rm", "#1"]).ok();
    store.run(&["gc"]).ok();
}

/// The check that keeps `rm` and `gc` from creating a store looks for the MANIFEST first; a
/// store whose MANIFEST is gone (a derived file, rebuilt from the log) is still a store to them.
#[test]
fn rm_and_gc_still_work_on_a_store_whose_manifest_is_gone() {
    let store = Store::new();
    seeded(&store);
    std::fs::remove_file(store.dir.join("MANIFEST")).unwrap();
    store.run(&["rm", "#1"]).ok();
    std::fs::remove_file(store.dir.join("MANIFEST")).unwrap();
    store.run(&["gc"]).ok();
    assert_eq!(store.ls(false).len(), 1);
    store.fsck_ok("after rm and gc on a store without its MANIFEST");
}

/// A directory of unrelated files passed as --store was refused, but left with a stray `LOCK`
/// file. Refused by every command, and left exactly as it was.
#[test]
fn a_directory_of_unrelated_files_is_refused_and_left_as_it_was() {
    let mut store = Store::new();
    let foreign = store.scratch("photos");
    write(&foreign.join("holiday.jpg"), &rand_bytes(9, 1000));
    write(&foreign.join("notes/list.txt"), b"not a store\n");
    store.dir = foreign.clone();
    let f = write(&store.scratch("in").join("a.txt"), b"a\n");
    let before = names(&foreign);
    for args in [vec!["ingest", f.to_str().unwrap()], vec!["rm", "#1"], vec!["gc"], vec!["ls"], vec!["fsck"]] {
        let r = store.run(&args);
        r.expect_code(exit::ERROR);
        no_panic(&r.stderr, &format!("{args:?}"));
        assert!(r.stderr.contains("is not a Hartonomous store"), "hart {args:?}:\n{}", r.stderr);
        assert_eq!(names(&foreign), before, "hart {args:?} left files in {}", foreign.display());
    }
}

/// An ingest whose every input failed exited 4 ("some inputs failed"), as if something had
/// been stored. It exits 1, says so, and its JSON report still names each failure.
#[test]
fn an_ingest_whose_every_input_failed_exits_1() {
    let store = Store::new();
    let d = store.scratch("in");
    let good = write(&d.join("good.txt"), b"good\n");
    let (missing, gone) = (d.join("missing-1"), d.join("missing-2"));
    let r = store.run(&[OsStr::new("ingest"), missing.as_os_str(), gone.as_os_str()]);
    r.expect_code(exit::ERROR);
    assert!(r.stderr.contains("none of the 2 inputs could be ingested"), "{}", r.stderr);
    let r = store.run(&[OsStr::new("--json"), OsStr::new("ingest"), missing.as_os_str()]);
    r.expect_code(exit::ERROR);
    let v = r.json();
    assert_eq!(v["totals"]["failed"], 1, "{v}");
    assert_eq!(v["totals"]["files"], 0, "{v}");
    // One good input among bad ones: partial (4), as before.
    let r = store.run(&[OsStr::new("ingest"), missing.as_os_str(), good.as_os_str()]);
    r.expect_code(exit::PARTIAL);
    // Nothing to do is not a failure.
    let empty = store.scratch("empty");
    store.run(&["ingest", empty.to_str().unwrap()]).ok();
}

/// Every subcommand prints its help (each argument's text is checked in main.rs's unit test).
#[test]
fn every_subcommand_has_help() {
    let store = Store::new();
    let top = store.run(&["--help"]);
    top.ok();
    let help = top.stdout_str();
    assert!(help.contains("Exit codes:") && help.contains("closes stdout"), "{help}");
    for cmd in ["ingest", "ls", "cat", "show", "stats", "rm", "gc", "fsck", "bench", "sync", "db"] {
        let r = store.run(&[cmd, "--help"]);
        r.ok();
        let text = r.stdout_str();
        assert!(text.lines().next().is_some_and(|l| !l.trim().is_empty()), "hart {cmd} --help has no description");
        assert!(text.contains("Usage:"), "{text}");
    }
    let cat = store.run(&["cat", "--help"]).stdout_str();
    assert!(cat.contains("prefix") && cat.contains("never replaced"), "cat --help states the stdout contract:\n{cat}");
    assert!(!store.dir.exists(), "--help opened the store");
}
