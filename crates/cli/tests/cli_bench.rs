//! `hart bench --quick` end to end, driving the real binary on both backends: every section
//! runs, exits 0, and reports a positive, finite figure in each row of its `--json` output,
//! with baselines where the section measures one. The figures themselves are not judged here
//! (quick sizes are below the targets' conditions, and CI machines vary): this guards the
//! command the README and the closing notes quote figures from.
//!
//! The PostgreSQL run creates and drops its own `hart_bench_<pid>_*` databases on the cluster
//! at `HART_TEST_DATABASE_URL`; without that variable it FAILS, saying how to start one.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

/// Run `hart [pre...] bench --quick --json --quiet --dir <tmp>`; its parsed report.
fn bench(pre: &[&str], t: &Store) -> Value {
    let work = t.scratch("bench");
    let out = Command::new(hart_bin())
        .args(pre)
        .args(["bench", "--quick", "--json", "--quiet", "--dir"])
        .arg(&work)
        .output()
        .expect("run hart bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hart {pre:?} bench --quick failed ({:?}):\n{stderr}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bench --json printed no JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["quick"], Value::Bool(true));
    let rows = report["rows"].as_array().expect("rows");
    assert!(!rows.is_empty(), "no figures: {report}");
    for row in rows {
        let value = row["value"].as_f64().unwrap_or_else(|| panic!("a row without a value: {row}"));
        assert!(value.is_finite() && value > 0.0, "a figure that is not a positive number: {row}");
        if let Some(b) = row["baseline"].as_f64() {
            assert!(b.is_finite() && b > 0.0, "a baseline that is not a positive number: {row}");
        }
    }
    // The work directory is removed unless --keep.
    assert!(std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0) == 0, "bench left files in {}", work.display());
    report
}

fn sections(report: &Value) -> BTreeSet<String> {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["section"].as_str().expect("section").to_string())
        .collect()
}

#[test]
fn bench_quick_runs_every_embedded_section() {
    let t = Store::new();
    let report = bench(&[], &t);
    let want: BTreeSet<String> = ["ingest", "cat", "lookup", "memory", "storage"].map(String::from).into();
    assert_eq!(sections(&report), want);
}

#[test]
fn bench_quick_runs_every_postgres_section() {
    let url = std::env::var("HART_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "HART_TEST_DATABASE_URL is not set: this test needs PostgreSQL with PostGIS; run the tests with \
             scripts/test.sh, or eval \"$(scripts/pg.sh start)\" first"
        )
    });
    let t = Store::new();
    let report = bench(&["--database-url", &url], &t);
    let want: BTreeSet<String> = ["pg-load", "pg-lookup", "pg-cat", "pg-spread"].map(String::from).into();
    assert_eq!(sections(&report), want);
    // Bulk loads are measured beside a raw COPY of the same rows, in the same run.
    let loads: Vec<&Value> = report["rows"].as_array().unwrap().iter().filter(|r| r["unit"] == "atoms/s").collect();
    assert!(loads.len() >= 3, "binary, 4 files and text loads: {loads:?}");
    assert!(loads.iter().all(|r| r["baseline"].as_f64().is_some()), "{loads:?}");
}
