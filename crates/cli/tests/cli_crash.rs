//! Crash safety of the real `hart` binary: `kill -9` during ingest, at several moments
//! (including right after the last object is committed, while the final checkpoint is
//! written), never leaves a store that fails `fsck` or an object that does not `cat` back
//! byte for byte; a later ingest completes and `gc` collects exactly what the killed runs
//! left behind.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
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

#[test]
fn kill_9_during_ingest_leaves_a_store_that_passes_fsck_with_every_completed_object_intact() {
    let store = Store::new();
    let c = corpus(&store);
    let extra = store.scratch("extra");

    // Kill at different points of the run: after the k-th object is reported committed and
    // a short delay (progress-based, so the points do not depend on the machine's speed).
    // Each round also brings a file of its own, first, so there is new data from the start.
    let mut killed = 0;
    for (round, (after, delay_ms)) in [(0usize, 30u64), (1, 0), (4, 10), (10, 0), (16, 20)].into_iter().enumerate() {
        let own = write(&extra.join(format!("round-{round}.bin")), &rand_bytes(300 + round as u64, 512 << 10));
        let mut child = store.spawn(&ingest_args(&[&own, &c]), Spawn::default());
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut out = Vec::new();
        while out.len() < after {
            match lines.next() {
                Some(l) => out.push(l.unwrap()),
                None => break,
            }
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        out.extend(lines.map(|l| l.unwrap()));
        let status = child.wait().unwrap();
        if status.signal() == Some(libc::SIGKILL) {
            killed += 1;
        } else {
            assert!(status.success(), "round {round}: {status}");
        }
        let committed = reported(out.join("\n").as_bytes());
        let n = check(&store, &format!("after kill round {round}"));
        assert_survived(&store, &committed, round);
        eprintln!(
            "crash round {round}: kill {delay_ms} ms after {after} objects were reported: {}, {} reported in all, {n} completed in the store",
            describe(&status),
            committed.len()
        );
    }

    // The last round: kill as soon as the last object is reported committed, that is while
    // the final checkpoint (log sync, index runs, state, manifest) is being written.
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
    let flush_killed = st.signal() == Some(libc::SIGKILL);
    let n = check(&store, "after a kill during the final flush");
    eprintln!("crash round final-flush: kill after the last commit: {}, {n} completed in the store", describe(&st));
    // The object reported committed before the kill survives it.
    assert!(
        store.ls(false).iter().any(|o| o.path() == canon(&last)),
        "an object reported as committed was lost by a kill during the final flush"
    );
    assert!(
        killed + usize::from(flush_killed) >= 4,
        "only {killed} timed rounds (and flush: {flush_killed}) were killed mid-run"
    );

    // A final, uninterrupted ingest of everything completes.
    let mut all: Vec<PathBuf> = (0..5).map(|r| extra.join(format!("round-{r}.bin"))).collect();
    all.push(last.clone());
    all.push(c.clone());
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
    while child.try_wait().unwrap().is_none() {
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
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "writer: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("readers during ingest: {reads} rounds of cat/ls/stats, {fscks} fsck, all consistent");
    assert!(reads >= 1);
    check(&store, "after the writer finished");
    assert_eq!(store.ls(false).len(), 4);
}
