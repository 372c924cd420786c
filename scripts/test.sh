#!/usr/bin/env bash
# The whole test suite: start the throwaway PostgreSQL cluster (scripts/pg.sh), run every
# workspace test against it, stop the cluster at exit.
#
#   scripts/test.sh [cargo test args...]      e.g. scripts/test.sh -p hart-pg -- rls
#
# HART_PG_KEEP=1 leaves the cluster running afterwards (faster reruns). Several runs may
# share one cluster: the last one to finish stops it, and a cluster that was already running
# before any of them started is left running.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PG_DIR="${HART_PG_DIR:-/tmp/hart-pg}"
export HART_PG_DIR="$PG_DIR"

# Runs currently using the cluster register a file under holders/; the lock serialises
# start/stop decisions between concurrent runs.
HOLDERS="$PG_DIR.holders"
LOCK="$PG_DIR.lock"
# Present while the cluster runs because a test run started it (so a test run may stop it).
STARTED="$PG_DIR.started-by-test"
mkdir -p "$HOLDERS"

started_here=0
release() {
    local rc=$?
    (
        flock 9
        rm -f "$HOLDERS/$$"
        # Forget holders whose process is gone (a killed run).
        for f in "$HOLDERS"/*; do
            [ -e "$f" ] || continue
            kill -0 "$(basename "$f")" 2>/dev/null || rm -f "$f"
        done
        if [ "${HART_PG_KEEP:-0}" != 1 ] && [ -z "$(ls -A "$HOLDERS")" ] \
            && [ -e "$STARTED" ]; then
            rm -f "$STARTED"
            scripts/pg.sh stop 9>&- || true
        fi
    ) 9>"$LOCK"
    exit "$rc"
}

(
    flock 9
    if ! scripts/pg.sh status 2>/dev/null 9>&-; then
        touch "$STARTED"
    fi
    scripts/pg.sh start >/dev/null 9>&-
    touch "$HOLDERS/$$"
) 9>"$LOCK"
trap release EXIT
trap 'exit 130' INT TERM

eval "$(scripts/pg.sh env)"
echo "test.sh: PostgreSQL at 127.0.0.1:$HART_PG_PORT ($HART_PG_DIR)" >&2

# --no-fail-fast: report every failing test binary, not just the first.
cargo test --workspace --locked --no-fail-fast "$@"
