//! Deduplication and reference counts seen through the real `hart` binary: a second ingest of
//! the same tree adds no atom, a one-byte edit adds a handful, near-duplicate texts share most
//! of their atoms, and `fsck`'s recount agrees with the stored counts through ingest, `rm`
//! and `gc` in sequence.

mod common;

use common::*;
use std::path::Path;

#[test]
fn ingesting_the_same_tree_twice_adds_no_atom() {
    let store = Store::new();
    let tree = store.scratch("tree");
    write(&tree.join("a.txt"), rand_text(11, 200_000).as_bytes());
    write(&tree.join("sub/b.bin"), &rand_bytes(12, 300_000));
    write(&tree.join("sub/empty"), b"");
    write(&tree.join("sub/deeper/c.txt"), rand_text(13, 5_000).as_bytes());
    std::fs::copy(license("GPL-3"), tree.join("GPL-3")).unwrap();
    let lic = licenses_dir();

    let first = store.ingest(&[&tree, &lic]);
    assert!(first.totals.atoms_created > 0);
    assert!(first.objects.iter().all(|o| o.status == "completed" || o.status == "unchanged"));
    let before = store.stats();
    assert_eq!(before.garbage_atoms, 0);

    let second = store.ingest(&[&tree, &lic]);
    assert_eq!(second.objects.len(), first.objects.len());
    for o in &second.objects {
        assert_eq!(o.status, "unchanged", "second ingest of {}", o.uri);
        assert_eq!(o.atoms_created, 0, "second ingest of {} created atoms", o.uri);
    }
    assert_eq!(second.totals.atoms_created, 0);
    assert_eq!(second.totals.unchanged, second.objects.len() as u64);
    let after = store.stats();
    assert_eq!(after.atoms, before.atoms, "atom count changed on the second ingest");
    assert_eq!(after.objects, before.objects, "the second ingest added objects");
    assert_eq!(after.garbage_atoms, 0);
    // The same bytes under another name are a new object but still no new atom.
    let copy = store.scratch("copy");
    let c = write(&copy.join("a-again.txt"), &std::fs::read(tree.join("a.txt")).unwrap());
    let third = store.ingest(&[&c]);
    assert_eq!(third.objects[0].status, "completed");
    assert_eq!(third.objects[0].atoms_created, 0);
    assert_eq!(third.objects[0].root, first.for_file(&tree.join("a.txt")).root);
    assert_eq!(store.stats().atoms, before.atoms);
    store.fsck_ok("after re-ingest");
}

#[test]
fn one_byte_edit_in_the_middle_of_a_1mib_file_adds_a_handful_of_atoms() {
    let store = Store::new();
    let d = store.scratch("in");
    let orig = rand_bytes(21, 1 << 20);
    let mut edited = orig.clone();
    edited[(1 << 19) + 7] ^= 0x5a;
    let a = write(&d.join("original.bin"), &orig);
    let b = write(&d.join("edited.bin"), &edited);
    let ra = store.ingest(&[&a]);
    let atoms_a = store.stats().atoms;
    assert_eq!(ra.objects[0].atoms_created, atoms_a);
    let rb = store.ingest(&[&b]);
    let ob = &rb.objects[0];
    assert_eq!(ob.status, "completed");
    assert_ne!(ob.root, ra.objects[0].root);
    let added = store.stats().atoms - atoms_a;
    assert_eq!(added, ob.atoms_created, "stats and the ingest report disagree on new atoms");
    eprintln!(
        "one-byte edit in a 1 MiB random file: {added} new atoms (the original needed {atoms_a}); {} references to stored atoms",
        ob.atoms_referenced
    );
    assert!(added >= 2, "an edit must add at least a leaf and a root: {added}");
    assert!(added <= 12, "a one-byte edit added {added} atoms (more than a handful)");

    // The same for text: one character in the middle of 1 MiB of text.
    let text = rand_text(22, 1 << 20).into_bytes();
    let mut text2 = text.clone();
    let mid = text2.len() / 2;
    let at = mid + text2[mid..].iter().position(|c| c.is_ascii_lowercase()).unwrap();
    text2[at] = if text2[at] == b'q' { b'z' } else { b'q' };
    let t1 = write(&d.join("original.txt"), &text);
    let t2 = write(&d.join("edited.txt"), &text2);
    store.ingest(&[&t1]);
    let before = store.stats().atoms;
    let rt = store.ingest(&[&t2]);
    let added_text = store.stats().atoms - before;
    assert_eq!(added_text, rt.objects[0].atoms_created);
    eprintln!("one-character edit in 1 MiB of text: {added_text} new atoms");
    assert!(added_text <= 12, "a one-character text edit added {added_text} atoms");
    assert_eq!(rt.objects[0].modality, "text");

    store.assert_all_intact("after edits");
    store.fsck_ok("after edits");
}

/// Ingest `second` into a store that holds `first`, and into a fresh one; returns
/// (share of `second`'s distinct atoms already stored, share of its atom occurrences that
/// needed no write, the latter for `second` alone).
fn shared(first: &Path, second: &Path) -> (f64, f64, f64) {
    let both = Store::new();
    both.ingest(&[first]);
    let r = both.ingest(&[second]);
    let o = &r.objects[0];
    assert_eq!(o.status, "completed");
    let alone = Store::new();
    let ra = alone.ingest(&[second]);
    let a = &ra.objects[0];
    assert_eq!(a.root, o.root, "the same file gives the same root in both stores");
    // Every atom second needs that was not created by it was already stored.
    assert!(o.atoms_created <= a.atoms_created);
    let distinct = 1.0 - o.atoms_created as f64 / a.atoms_created as f64;
    let occ = o.atoms_skipped as f64 / (o.atoms_skipped + o.atoms_created) as f64;
    let occ_alone = a.atoms_skipped as f64 / (a.atoms_skipped + a.atoms_created) as f64;
    both.fsck_ok("after near-duplicates");
    both.assert_all_intact("after near-duplicates");
    (distinct, occ, occ_alone)
}

#[test]
fn near_duplicate_texts_share_most_atoms() {
    let (gpl_distinct, gpl_occ, gpl_alone) = shared(&license("GPL-2"), &license("GPL-3"));
    eprintln!(
        "GPL-3 after GPL-2: {:.1}% of GPL-3's distinct atoms were already stored; {:.1}% of its atom occurrences needed no write (alone: {:.1}%)",
        gpl_distinct * 100.0,
        gpl_occ * 100.0,
        gpl_alone * 100.0
    );
    let (lgpl_distinct, lgpl_occ, lgpl_alone) = shared(&license("LGPL-2"), &license("LGPL-2.1"));
    eprintln!(
        "LGPL-2.1 after LGPL-2: {:.1}% of LGPL-2.1's distinct atoms were already stored; {:.1}% of its atom occurrences needed no write (alone: {:.1}%)",
        lgpl_distinct * 100.0,
        lgpl_occ * 100.0,
        lgpl_alone * 100.0
    );
    // GPL-3 is a rewrite of GPL-2: the vocabulary and many phrases are shared.
    assert!(gpl_distinct >= 0.25, "GPL-3 shares only {:.1}% of its distinct atoms with GPL-2", gpl_distinct * 100.0);
    assert!(gpl_occ > gpl_alone + 0.02, "GPL-2 barely helps GPL-3: {gpl_occ:.3} vs {gpl_alone:.3} alone");
    // LGPL-2.1 is LGPL-2 with the name changed: most of it is shared.
    assert!(
        lgpl_distinct >= 0.5,
        "LGPL-2.1 shares only {:.1}% of its distinct atoms with LGPL-2",
        lgpl_distinct * 100.0
    );
    assert!(lgpl_occ >= 0.85, "only {:.1}% of LGPL-2.1's atom occurrences were already stored", lgpl_occ * 100.0);
    assert!(lgpl_distinct > gpl_distinct, "the closer pair shares more");
}

/// Live objects `cat` byte-exact, and `fsck` agrees.
fn check(store: &Store, when: &str) {
    store.fsck_ok(when);
    store.assert_all_intact(when);
}

/// Object ids of the completed objects whose file is under `dir`.
fn ids_under(store: &Store, dir: &Path) -> Vec<String> {
    let c = canon(dir);
    store.ls(false).into_iter().filter(|o| o.path().starts_with(&c)).map(|o| format!("#{}", o.id)).collect()
}

fn ref_count(store: &Store, root: &str) -> u64 {
    let r = store.run(&["--json", "show", root]);
    r.ok();
    r.json()["ref_count"].as_u64().expect("ref_count")
}

#[test]
fn refcounts_stay_exact_through_ingest_rm_gc_sequences() {
    let store = Store::new();
    let a = store.scratch("A");
    let b = store.scratch("B");
    // A and B share content: an identical file, an edited text, a binary with a shared prefix.
    let gpl3 = std::fs::read(license("GPL-3")).unwrap();
    write(&a.join("gpl3.txt"), &gpl3);
    write(&b.join("gpl3-copy.txt"), &gpl3);
    let text = rand_text(31, 120_000);
    write(&a.join("notes.txt"), text.as_bytes());
    write(&b.join("notes-edited.txt"), text.replacen("atom", "ATOM", 3).as_bytes());
    let bin = rand_bytes(32, 400_000);
    write(&a.join("data.bin"), &bin);
    let mut bin2 = bin[..300_000].to_vec();
    bin2.extend_from_slice(&rand_bytes(33, 50_000));
    write(&b.join("data-prefix.bin"), &bin2);
    write(&a.join("only-a.bin"), &rand_bytes(34, 70_000));
    write(&b.join("only-b.txt"), rand_text(35, 20_000).as_bytes());
    write(&b.join("empty"), b"");

    store.ingest(&[&a]);
    check(&store, "after ingest A");
    let atoms_a = store.stats().atoms;
    let rb = store.ingest(&[&b]);
    check(&store, "after ingest B");
    let shared_root = rb.for_file(&b.join("gpl3-copy.txt")).root.clone().unwrap();
    assert_eq!(ref_count(&store, &shared_root), 2, "two objects hold the identical file's root");
    assert!(rb.totals.atoms_referenced > 0, "B shares atoms with A");
    let atoms_ab = store.stats().atoms;
    assert!(atoms_ab > atoms_a);

    let ids_a = ids_under(&store, &a);
    assert_eq!(ids_a.len(), 4);
    let mut args = vec!["rm".to_string()];
    args.extend(ids_a.iter().cloned());
    store.run(&args).ok();
    check(&store, "after rm A");
    assert_eq!(ref_count(&store, &shared_root), 1);
    let s = store.stats();
    assert_eq!(s.atoms, atoms_ab, "rm alone removes no atom");
    assert!(s.garbage_atoms > 0, "A's own atoms wait for gc");

    let gc = store.run(&["--json", "gc"]);
    gc.ok();
    let removed = gc.json()["atoms_removed"].as_u64().unwrap();
    check(&store, "after gc (A removed)");
    let s = store.stats();
    assert!(removed > 0);
    assert_eq!(s.atoms, atoms_ab - removed);
    assert_eq!(s.garbage_atoms, 0);
    assert_eq!(ref_count(&store, &shared_root), 1, "gc kept the root B still uses");

    let ra2 = store.ingest(&[&a]);
    assert!(ra2.objects.iter().all(|o| o.status == "completed"), "A is new again after rm: {:?}", ra2.objects);
    check(&store, "after ingest A again");
    assert_eq!(store.stats().atoms, atoms_ab, "A again restores exactly the atoms gc removed");
    assert_eq!(ref_count(&store, &shared_root), 2);

    let ids_b = ids_under(&store, &b);
    assert_eq!(ids_b.len(), 5);
    let mut args = vec!["--json".to_string(), "rm".to_string()];
    args.extend(ids_b.iter().cloned());
    let rm = store.run(&args);
    rm.ok();
    assert_eq!(rm.json()["removed"].as_array().unwrap().len(), 5);
    check(&store, "after rm B");
    store.run(&["gc"]).ok();
    check(&store, "after gc (B removed)");
    assert_eq!(store.stats().atoms, atoms_a, "only A's atoms remain");
    assert_eq!(ref_count(&store, &shared_root), 1);

    // gc twice in a row is a no-op; rm by root removes every live object with that root.
    let gc2 = store.run(&["--json", "gc"]);
    gc2.ok();
    assert_eq!(gc2.json()["atoms_removed"], 0);
    store.run(&["rm", &shared_root[..12]]).ok();
    check(&store, "after rm by root prefix");
    // Removing everything and collecting leaves an empty store.
    let rest: Vec<String> = store.ls(false).iter().map(|o| format!("#{}", o.id)).collect();
    assert_eq!(rest.len(), 3);
    let mut args = vec!["rm".to_string()];
    args.extend(rest);
    store.run(&args).ok();
    store.run(&["gc"]).ok();
    check(&store, "after removing everything");
    let s = store.stats();
    assert_eq!((s.atoms, s.objects, s.garbage_atoms), (0, 0, 0), "an emptied store holds no atom: {s:?}");
    // Removed objects' roots are gone: cat says not found (exit 3).
    let r = store.run(&["cat", &shared_root]);
    r.expect_code(exit::NOT_FOUND);
    assert!(r.stderr.contains(&shared_root[..16]) || r.stderr.contains("no atom"), "{}", r.stderr);
}
