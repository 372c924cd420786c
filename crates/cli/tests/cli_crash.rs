//! Crash safety of the real `hart` binary: `kill -9` during ingest, at several moments
//! (including right after the last object is committed, while the final checkpoint is
//! written), never leaves a store that fails `fsck` or an object that does not `cat` back
//! byte for byte; a later ingest completes and `gc` collects exactly what the killed runs
//! left behind.

mod common;

use common::*;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// Several files, some large, with shared content between them (~10 MiB).
fn corpus(store: &Store) -> PathBuf {
    let c = store.scratch("corpus");
    let big = rand_bytes(201, 3 << 20);
    write(&c.join("big-1.bin"), &big);
    let mut edited = big.clone();
    for i in 0..8 {
        edited[i * (big.len() / 8) + 1234] ^= 0xff;
    }
    write(&c.join("big-1-edited.bin"), &edited);
    write(&c.join("big-2.bin"), &rand_bytes(202, 2 << 20));
    let text = rand_text(203, 768 << 10);
    write(&c.join("text-1.txt"), text.as_bytes());
    write(&c.join("text-2.txt"), text.replace("store", "shop").as_bytes());
    for i in 0..12u64 {
        let len = 1000 + (i as usize * 3331) % 40_000;
        if i % 2 == 0 {
            write(&c.join(format!("small/{i:02}.txt")), rand_text(210 + i, len).as_bytes());
        } else {
            write(&c.join(format!("small/{i:02}.bin")), &rand_bytes(210 + i, len));
        }
    }
    for n in ["GPL-2", "GPL-3", "LGPL-2.1"] {
        std::fs::copy(license(n), c.join(n)).unwrap();
    }
    c
}

/// After a kill: fsck ok, every completed object byte-exact. Returns how many are completed.
fn check(store: &Store, when: &str) -> usize {
    store.fsck_ok(when);
    store.assert_all_intact(when).0
}

fn describe(st: &ExitStatus) -> String {
    match (st.signal(), st.code()) {
        (Some(s), _) => format!("killed by signal {s}"),
        (None, Some(c)) => format!("had already exited {c}"),
        _ => format!("{st:?}"),
    }
}

/// Paths the human output of `ingest` reported as committed (one line per stored object).
fn reported(stdout: &[u8]) -> Vec<PathBuf> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.starts_with("completed") || l.starts_with("unchanged"))
        .map(|l| PathBuf::from(l.split_whitespace().last().expect("path column")))
        .collect()
}

/// Every object reported as committed before the kill is a completed object in the store.
fn assert_survived(store: &Store, committed: &[PathBuf], round: usize) {
    let live: Vec<PathBuf> = store.ls(false).iter().map(|o| o.path()).collect();
    for p in committed {
        assert!(
            live.contains(&canon(p)),
            "round {round}: {} was reported committed but is not in the store",
            p.display()
        );
    }
}

fn ingest_args(paths: &[&Path]) -> Vec<String> {
    let mut a = vec!["ingest".to_string()];
    a.extend(paths.iter().map(|p| p.to_str().unwrap().to_string()));
    a
}

/// Capacity of the pipe a killed ingest writes its report into.
const PIPE: usize = 4096;

/// Files ingested last in every killed round, whose report lines (long paths) do not fit in
/// the pipe: the ingest cannot finish while the test is not reading, so a kill at any moment
/// before those lines are read lands in a running process, however fast the machine.
fn tail(store: &Store) -> PathBuf {
    let deep = store.scratch(&format!("tail-{}/{}", "t".repeat(200), "u".repeat(200)));
    let mut reported = 0;
    for i in 0..20u64 {
        let f = write(&deep.join(format!("{i:02}.txt")), format!("tail file {i}\n").as_bytes());
        reported += f.as_os_str().len();
    }
    assert!(reported > 2 * PIPE, "the tail's report ({reported} bytes) must not fit in the pipe ({PIPE} bytes)");
    store.tmp.path().join(format!("tail-{}", "t".repeat(200)))
}

/// Spawn `hart ARGS` with stdout into a pipe of [`PIPE`] bytes, and its read end.
fn spawn_into_small_pipe(store: &Store, args: &[String]) -> (std::process::Child, std::io::PipeReader) {
    let (r, w) = std::io::pipe().expect("pipe");
    // SAFETY: fcntl on a pipe descriptor we own; F_SETPIPE_SZ takes an int.
    let got = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE as libc::c_int) };
    assert_eq!(got, PIPE as libc::c_int, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let mut c = store.command(&a, Spawn::default());
    c.stdin(Stdio::null()).stdout(w).stderr(Stdio::piped());
    let child = c.spawn().expect("spawn hart");
    drop(c); // the parent's copy of the write end: EOF once the child is gone
    (child, r)
}

/// One line, read a byte at a time (a buffered reader would drain the pipe past it and let
/// the child go on).
fn read_line(r: &mut impl Read) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8];
    loop {
        match r.read(&mut b) {
            Ok(0) => return (!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()),
            Ok(_) if b[0] == b'\n' => return Some(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading hart's output: {e}"),
        }
    }
}

/// Bytes of the files under `p` (0 if it does not exist).
fn bytes_under(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => bytes_under(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// When a round kills the ingest: every moment is defined by progress the test observes.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// At once: the store may not exist yet.
    Spawn,
    /// As soon as the store's MANIFEST exists.
    StoreCreated,
    /// While the round's own file is being stored: once the log grew by this many bytes.
    LogGrew(u64),
    /// After this many objects were reported committed.
    Reported(usize),
}

/// Wait (polling the file system, never a fixed delay) until `cond` holds. The child cannot
/// finish meanwhile (its report does not fit in the pipe): if it exits, it failed.
fn wait_for(child: &mut std::process::Child, what: &str, mut cond: impl FnMut() -> bool) {
    while !cond() {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the ingest exited ({st}) before {what}:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn kill_9_during_ingest_leaves_a_store_that_passes_fsck_with_every_completed_object_intact() {
    let store = Store::new();
    let c = corpus(&store);
    let t = tail(&store);
    let extra = store.scratch("extra");

    // Kill at different points of the run, each defined by what the test sees, so the
    // points do not depend on the machine's speed; and the ingest cannot have finished when
    // the kill comes (see `tail`), so every round is a kill of a running process. Each round
    // brings a file of its own, first, so there is new data from the start.
    let log = store.dir.join("log");
    let rounds = [
        KillAt::Spawn,
        KillAt::StoreCreated,
        KillAt::LogGrew(256 << 10),
        KillAt::Reported(1),
        KillAt::Reported(4),
        KillAt::Reported(10),
        KillAt::Reported(16),
    ];
    for (round, at) in rounds.into_iter().enumerate() {
        let own = write(&extra.join(format!("round-{round}.bin")), &rand_bytes(300 + round as u64, 512 << 10));
        let log_before = bytes_under(&log);
        let (mut child, mut out) = spawn_into_small_pipe(&store, &ingest_args(&[&own, &c, &t]));
        let mut lines = Vec::new();
        match at {
            KillAt::Spawn => {}
            KillAt::StoreCreated => {
                wait_for(&mut child, "the store was created", || store.dir.join("MANIFEST").exists())
            }
            KillAt::LogGrew(n) => wait_for(&mut child, "the log grew", || bytes_under(&log) >= log_before + n),
            KillAt::Reported(k) => {
                while lines.len() < k {
                    lines.push(read_line(&mut out).expect("the ingest ended before reporting enough objects"));
                }
            }
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "round {round} ({at:?}): {}", describe(&status));
        while let Some(l) = read_line(&mut out) {
            lines.push(l);
        }
        let committed = reported(lines.join("\n").as_bytes());
        let n = if store.dir.join("MANIFEST").exists() {
            let n = check(&store, &format!("after kill round {round} ({at:?})"));
            assert_survived(&store, &committed, round);
            n
        } else {
            // Killed before the store existed: there is none (whatever was begun of it is
            // started again by the next ingest), and nothing was reported committed.
            assert!(committed.is_empty(), "round {round}: objects reported without a store");
            let r = store.run(&["--json", "fsck"]);
            r.expect_code(exit::NOT_FOUND);
            assert!(r.json()["causes"].to_string().contains("no store at"), "{}", r.stdout_str());
            0
        };
        eprintln!("crash round {round}: killed at {at:?}: {} reported, {n} completed in the store", committed.len());
    }

    // The last round: kill as soon as the last object is reported committed, that is while
    // the final checkpoint (log sync, index runs, state, manifest) is being written — or, on
    // a fast machine, after the process has ended: both must leave a whole store.
    let last = write(&extra.join("round-last.bin"), &rand_bytes(399, 3 << 20));
    let mut child = store.spawn(&ingest_args(&[&c, &last]), Spawn::default());
    let stdout = child.stdout.take().unwrap();
    let mut saw_last = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.ends_with("round-last.bin") {
            child.kill().unwrap();
            saw_last = true;
            break;
        }
    }
    let st = child.wait().unwrap();
    assert!(saw_last, "the last object was never reported ({})", describe(&st));
    let n = check(&store, "after a kill during the final flush");
    eprintln!("crash round final-flush: kill after the last commit: {}, {n} completed in the store", describe(&st));
    // The object reported committed before the kill survives it.
    assert!(
        store.ls(false).iter().any(|o| o.path() == canon(&last)),
        "an object reported as committed was lost by a kill during the final flush"
    );

    // A final, uninterrupted ingest of everything completes.
    let mut all: Vec<PathBuf> = (0..rounds.len()).map(|r| extra.join(format!("round-{r}.bin"))).collect();
    all.push(last.clone());
    all.push(c.clone());
    all.push(t.clone());
    let paths: Vec<&Path> = all.iter().map(|p| p.as_path()).collect();
    let rep = store.ingest(&paths);
    assert!(rep.failed.is_empty());
    let n = check(&store, "after the final ingest");
    let objects = store.ls(false);
    assert_eq!(n, objects.len());
    let want: usize = rep.by_path().len();
    assert_eq!(objects.len(), want, "every input is a completed object");
    // Interrupted ingests are in the log as failed, none stuck as running.
    let every = store.ls(true);
    assert!(every.iter().all(|o| o.status != "running" && o.status != "pending"), "stuck: {every:?}");
    let interrupted = every.iter().filter(|o| o.status == "failed").count();
    // (An ingest killed before any of its frames reached the log left no entry at all.)
    eprintln!("crash: {interrupted} interrupted ingests recorded as failed");

    // gc collects what the killed runs wrote and nothing else: the store then holds exactly
    // the atoms a fresh store needs for the same files.
    store.run(&["gc"]).ok();
    check(&store, "after gc");
    let fresh = Store::new();
    let files: Vec<PathBuf> = objects.iter().map(|o| o.path()).collect();
    let fp: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    fresh.ingest(&fp);
    let (s, f) = (store.stats(), fresh.stats());
    assert_eq!(s.atoms, f.atoms, "after gc the crashed store holds {} atoms, a fresh one {}", s.atoms, f.atoms);
    assert_eq!(s.garbage_atoms, 0);
    assert_eq!(s.logical_bytes, f.logical_bytes);
}

#[test]
fn readers_see_a_consistent_store_while_a_writer_ingests() {
    // README: readers need no lock and see a consistent snapshot, also across the writer's
    // checkpoints (which rename and delete index files under them).
    let store = Store::new();
    let d = store.scratch("in");
    let first = write(&d.join("first.txt"), rand_text(401, 300_000).as_bytes());
    store.ingest(&[&first]);
    let big = store.scratch("big");
    for i in 0..3u64 {
        write(&big.join(format!("r{i}.bin")), &rand_bytes(410 + i, 4 << 20));
    }
    let mut child = store.spawn(&["ingest", big.to_str().unwrap()], Spawn::default());
    let want = std::fs::read(&first).unwrap();
    let mut reads = 0;
    let mut fscks = 0;
    // One round of reads is certain to run while the writer is mid-ingest, however fast the
    // machine: the writer is stopped once it holds the lock (it writes its pid into LOCK)
    // and continued after that round. The rounds after it run while it goes on.
    let pid = child.id().to_string();
    let lock = store.dir.join("LOCK");
    while std::fs::read_to_string(&lock).map(|s| s.trim() != pid).unwrap_or(true) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the writer exited ({st}) before the test saw it take the lock");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    signal(&child, libc::SIGSTOP);
    // Continues the writer if a check below panics (it then finishes on its own).
    struct Continue(libc::pid_t);
    impl Drop for Continue {
        fn drop(&mut self) {
            // SAFETY: kill(2) on our child, not yet waited for.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    let cont = Continue(child.id() as libc::pid_t);
    let mut stopped = true;
    while stopped || child.try_wait().unwrap().is_none() {
        let r = store.run(&["cat", "#1"]);
        r.ok();
        assert_bytes_eq(&r.stdout, &want, "cat #1 during ingest");
        let r = store.run(&["--json", "ls"]);
        r.ok();
        let objs: Vec<Obj> = serde_json::from_value(r.json()).unwrap();
        for o in objs.iter().skip(1) {
            // Objects committed by the running writer are whole already.
            assert_bytes_eq(&store.cat(o.root.as_deref().unwrap()), &std::fs::read(o.path()).unwrap(), &o.uri);
        }
        store.run(&["--json", "stats"]).ok();
        if reads % 4 == 0 {
            store.fsck_ok("during ingest");
            fscks += 1;
        }
        reads += 1;
        if stopped {
            signal(&child, libc::SIGCONT);
            stopped = false;
        }
    }
    drop(cont);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "writer: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("readers during ingest: {reads} rounds of cat/ls/stats, {fscks} fsck, all consistent");
    assert!(reads >= 1);
    check(&store, "after the writer finished");
    assert_eq!(store.ls(false).len(), 4);
}
