#!/usr/bin/env bash
# Fuzz every parser of stored bytes (docs/decisions/0016-fuzzing.md): build the cargo-fuzz
# targets of crates/embedded/fuzz and run each for N executions, printing time and exec/s.
#
#   scripts/fuzz.sh [-n RUNS] [--minimize] [TARGET...]     (default: 1000000 runs, all targets)
#
#   -n RUNS      executions per target (libFuzzer -runs)
#   --minimize   afterwards, merge the kept corpus and what the run found into a minimal
#                corpus (libFuzzer -merge=1 on edge coverage, -use_counters=0, inputs cut to
#                a length cap per target, so that the kept corpus stays small) and replace
#                crates/embedded/fuzz/corpus/<target>
#
# Needs only the stable toolchain: cargo-fuzz is installed from crates.io if missing, and
# RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z flags it passes (sanitizer, coverage).
# libfuzzer-sys builds libFuzzer from the C++ sources it ships (g++). Inputs the fuzzer finds
# go to crates/embedded/fuzz/work/<target> (not kept), crashes to fuzz/artifacts/<target>/.
# FUZZ_SANITIZER=none builds without AddressSanitizer (faster; the code under test is safe
# Rust but for its mappings). Exits non-zero if any target crashed.
#
# Seeds: `cargo run -p hart-embedded --example seed_corpus -- STORE FILES` (see that
# example) writes seeds cut from a real store to fuzz/seeds/<target>; pass them with
# FUZZ_EXTRA_CORPUS=crates/embedded/fuzz/seeds to fuzz (and minimize) them too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=1000000
MINIMIZE=0
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -n) RUNS="$2"; shift 2 ;;
        --minimize) MINIMIZE=1; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
FUZZ=crates/embedded/fuzz
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(record frames run state manifest store)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io" >&2
    cargo install --locked cargo-fuzz
fi
command -v g++ >/dev/null || { echo "fuzz.sh: libfuzzer-sys needs a C++ compiler (g++)" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
SANITIZER="${FUZZ_SANITIZER:-address}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"

echo "fuzz.sh: building ${TARGETS[*]} (release, debug assertions, sanitizer $SANITIZER)" >&2
for t in "${TARGETS[@]}"; do
    (cd crates/embedded && cargo fuzz build -O -a -s "$SANITIZER" "$t")
done
BIN="$FUZZ/target/$TRIPLE/release"

# The harness's scratch files (tiny stores, runs, states) go to a directory of this run.
HART_FUZZ_TMP="$(mktemp -d /dev/shm/hart-fuzz.XXXXXX 2>/dev/null || mktemp -d)"
export HART_FUZZ_TMP
trap 'rm -rf "$HART_FUZZ_TMP"' EXIT

failed=()
printf '%-9s %10s %9s %9s %7s\n' target runs seconds exec/s crash
for t in "${TARGETS[@]}"; do
    mkdir -p "$FUZZ/work/$t" "$FUZZ/artifacts/$t"
    extra=()
    if [ -n "${FUZZ_EXTRA_CORPUS:-}" ] && [ -d "$FUZZ_EXTRA_CORPUS/$t" ]; then
        extra=("$FUZZ_EXTRA_CORPUS/$t")
    fi
    log="$FUZZ/work/$t.log"
    start=$(date +%s.%N)
    rc=0
    "$BIN/$t" -runs="$RUNS" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$FUZZ/artifacts/$t/" "$FUZZ/work/$t" "$FUZZ/corpus/$t" "${extra[@]}" \
        >"$log" 2>&1 || rc=$?
    end=$(date +%s.%N)
    secs=$(echo "$end - $start" | bc)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    runs=${runs:-0}
    rate=$(echo "scale=0; $runs / $secs" | bc)
    crash=no
    if [ "$rc" -ne 0 ]; then
        crash=YES
        failed+=("$t")
    fi
    printf '%-9s %10s %9.1f %9s %7s\n' "$t" "$runs" "$secs" "$rate" "$crash"
    if [ "$crash" = YES ]; then
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -5 | sed 's/^/    /'
    elif [ "$MINIMIZE" = 1 ]; then
        case "$t" in
            record|manifest) cap=1024 ;;
            frames|state) cap=4096 ;;
            run) cap=8192 ;;
            *) cap=4096 ;;
        esac
        merged="$(mktemp -d)"
        "$BIN/$t" -merge=1 -use_counters=0 -max_len="$cap" "$merged" "$FUZZ/corpus/$t" "$FUZZ/work/$t" \
            "${extra[@]}" >"$FUZZ/work/$t.merge.log" 2>&1
        rm -rf "$FUZZ/corpus/$t"
        mkdir -p "$FUZZ/corpus/$t"
        cp "$merged"/* "$FUZZ/corpus/$t/"
        rm -rf "$merged"
        echo "    corpus: $(ls "$FUZZ/corpus/$t" | wc -l) files, $(du -sb --apparent-size "$FUZZ/corpus/$t" | cut -f1) bytes"
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in ${failed[*]}: see $FUZZ/artifacts/<target>/ and $FUZZ/work/<target>.log" >&2
    exit 1
fi
