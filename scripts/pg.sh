#!/usr/bin/env bash
# Throwaway PostgreSQL + PostGIS cluster for Hartonomous' tests and benchmarks.
#
#   scripts/pg.sh start    install PostgreSQL/PostGIS if missing, build and install the
#                          hart_native extension (crates/pg/native) if missing or changed,
#                          create the cluster if missing, start it if stopped, wait until
#                          ready, print `export` lines
#   scripts/pg.sh env      print the `export` lines only:  eval "$(scripts/pg.sh env)"
#   scripts/pg.sh status   exit 0 if the cluster runs, 3 if not
#   scripts/pg.sh stop     stop the cluster (the data directory is kept)
#   scripts/pg.sh destroy  stop the cluster and delete its directory
#
# The cluster is ours alone: its own directory (HART_PG_DIR, default /tmp/hart-pg), its own
# port (HART_PG_PORT, default 55432), listening on 127.0.0.1 and on a unix socket inside the
# data directory. It is never a system service and never touches Debian's default cluster.
#
# Environment:
#   HART_PG_DIR       cluster directory                 (/tmp/hart-pg)
#   HART_PG_PORT      TCP port on 127.0.0.1             (55432)
#   HART_PG_VERSION   PostgreSQL major version          (15)
#   HART_PG_PASSWORD  password of the superuser `hart`  (hart)
#   HART_PG_DURABLE   1 = keep fsync on (for benchmarks); default off: a throwaway test
#                     cluster does not need crash safety, and fsync dominates test time.
#
# Logs of this script go to stderr; stdout carries only the `export` lines.
set -euo pipefail

PG_VERSION="${HART_PG_VERSION:-15}"
PG_BIN="/usr/lib/postgresql/${PG_VERSION}/bin"
PG_SHARE="/usr/share/postgresql/${PG_VERSION}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NATIVE_SRC="$ROOT/crates/pg/native"
DIR="${HART_PG_DIR:-/tmp/hart-pg}"
DATA="$DIR/data"
SOCK="$DATA/run"
LOG="$DIR/postgres.log"
PORT="${HART_PG_PORT:-55432}"
PASSWORD="${HART_PG_PASSWORD:-hart}"
DURABLE="${HART_PG_DURABLE:-0}"

say() { printf 'pg.sh: %s\n' "$*" >&2; }
die() {
    printf 'pg.sh: error: %s\n' "$1" >&2
    shift
    for line in "$@"; do printf '  %s\n' "$line" >&2; done
    exit 1
}

# PostgreSQL refuses to run as root: as root we act as the `postgres` OS user.
if [ "$(id -u)" -eq 0 ]; then
    RUN_USER=postgres
else
    RUN_USER="$(id -un)"
fi

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            su -s /bin/sh postgres -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

installed() {
    [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/initdb" ] \
        && [ -f "$PG_SHARE/extension/postgis.control" ]
}

# What builds hart_native: PGXS and the server headers, make, a C compiler.
build_tools() {
    [ -x "$PG_BIN/pg_config" ] && [ -f "/usr/include/postgresql/${PG_VERSION}/server/fmgr.h" ] \
        && command -v make >/dev/null 2>&1 && command -v gcc >/dev/null 2>&1
}

# Root, or sudo without a password, or nothing (then "$@" must not need privileges).
SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
fi

install_packages() {
    # The server, PostGIS, and what builds hart_native (PGXS headers, make, a C compiler).
    local pkgs=("postgresql-${PG_VERSION}" "postgresql-${PG_VERSION}-postgis-3"
        "postgresql-server-dev-${PG_VERSION}" make gcc libc6-dev)
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        if installed; then
            say "warning: cannot install ${pkgs[*]} as this user; hart_native needs postgresql-server-dev-${PG_VERSION}, make and gcc."
            return 0
        else
            die "PostgreSQL ${PG_VERSION} with PostGIS 3 is not installed and this user cannot install packages." \
                "missing: $PG_BIN/postgres or $PG_SHARE/extension/postgis.control" \
                "fix: as root, run: apt-get update && apt-get install -y ${pkgs[*]}" \
                "then run this script again."
        fi
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "PostgreSQL ${PG_VERSION} + PostGIS 3 are missing and apt-get is not available." \
            "fix: install ${pkgs[*]} (or the equivalent for your system) so that $PG_BIN exists."
    say "installing ${pkgs[*]} with apt-get (once per machine)"
    # Debian's postgresql-common creates and starts a default cluster on install; we do not
    # want one, so when postgresql-common is not configured yet, tell it not to.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        "${SUDO[@]}" mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" | "${SUDO[@]}" tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq >&2 \
        || die "apt-get update failed (see above)." "fix: check network access and /etc/apt/sources.list, then retry."
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${pkgs[@]}" >&2 \
        || die "apt-get install ${pkgs[*]} failed (see above)." \
            "if the packages do not exist on this release, set HART_PG_VERSION to the major version it ships" \
            "(apt-cache search postgis) or add the apt.postgresql.org repository."
    { installed && build_tools; } || die "after installing, $PG_BIN/postgres, $PG_SHARE/extension/postgis.control or the server headers are still missing." \
        "fix: check the output of apt-get above; the PostGIS package must match PostgreSQL ${PG_VERSION}."
}

# Build crates/pg/native (PGXS) in a scratch directory and install it into this PostgreSQL
# when the installed files differ. Databases pick it up at their next `hart db migrate`.
# Without it the key functions run in PL/pgSQL (slower bulk loads, same answers); under CI
# a failure here is an error, so that the tests always cover the C functions.
install_native() {
    local pkglib share build f differ=0
    if ! build_tools; then
        native_failed "cannot build hart_native: postgresql-server-dev-${PG_VERSION}, make or gcc is missing."
        return 0
    fi
    pkglib="$("$PG_BIN/pg_config" --pkglibdir)"
    share="$("$PG_BIN/pg_config" --sharedir)/extension"
    # A scratch directory per run (runs for two clusters may overlap); the Makefile keeps its
    # path out of the library, so the same sources build the same file for the comparison.
    build="$(mktemp -d)"
    cp "$NATIVE_SRC"/Makefile "$NATIVE_SRC"/hart_native.c "$NATIVE_SRC"/hart_native.control \
        "$NATIVE_SRC"/hart_native--*.sql "$build"/
    if ! make -s -C "$build" PG_CONFIG="$PG_BIN/pg_config" with_llvm=no >"$build/make.log" 2>&1; then
        cat "$build/make.log" >&2
        rm -rf "$build"
        native_failed "building hart_native failed (compiler output above)."
        return 0
    fi
    cmp -s "$build/hart_native.so" "$pkglib/hart_native.so" || differ=1
    for f in "$build"/hart_native.control "$build"/hart_native--*.sql; do
        cmp -s "$f" "$share/$(basename "$f")" || differ=1
    done
    if [ "$differ" = 1 ]; then
        say "installing the hart_native extension into $pkglib"
        # `make install` writes a new file (install unlinks first): backends that loaded the
        # old library keep their mapping.
        if ! "${SUDO[@]}" make -s -C "$build" PG_CONFIG="$PG_BIN/pg_config" with_llvm=no install >"$build/make.log" 2>&1; then
            cat "$build/make.log" >&2
            rm -rf "$build"
            native_failed "installing hart_native into $pkglib failed (output above)."
            return 0
        fi
    fi
    rm -rf "$build"
}

native_failed() {
    if [ "${CI:-}" = true ]; then
        die "$1" "under CI the C key functions are required; fix the build, or install postgresql-server-dev-${PG_VERSION}, make and gcc."
    fi
    say "warning: $1 The key functions will run in PL/pgSQL (slower bulk loads, same answers)."
}

running() {
    [ -f "$DATA/PG_VERSION" ] && as_pg "$PG_BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

url() {
    printf 'postgres://hart:%s@127.0.0.1:%s/postgres' "$PASSWORD" "$PORT"
}

print_env() {
    printf 'export HART_TEST_DATABASE_URL=%q\n' "$(url)"
    printf 'export HART_PG_DIR=%q\n' "$DIR"
    printf 'export HART_PG_PORT=%q\n' "$PORT"
}

init_cluster() {
    [ -f "$DATA/PG_VERSION" ] && return 0
    say "creating a throwaway cluster in $DATA (port $PORT)"
    mkdir -p "$DIR" || die "cannot create $DIR." "fix: set HART_PG_DIR to a writable directory."
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$DIR"
        # The postgres user must be able to reach $DIR (e.g. not under /root).
        as_pg test -w "$DIR" || die "the postgres OS user cannot write to $DIR." \
            "fix: set HART_PG_DIR to a directory postgres can reach, e.g. /tmp/hart-pg."
    fi
    chmod 700 "$DIR"
    if ! as_pg "$PG_BIN/initdb" -D "$DATA" --username=postgres --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C --no-sync >"$DIR/initdb.log" 2>&1; then
        cat "$DIR/initdb.log" >&2
        die "initdb failed for $DATA (log above, also in $DIR/initdb.log)." \
            "fix: remove $DIR (scripts/pg.sh destroy) and retry; check free space and permissions."
    fi
    as_pg mkdir -p "$SOCK"
    local fsync=off
    [ "$DURABLE" = 1 ] && fsync=on
    # Only loopback: trust on the socket, passwords over TCP (initdb wrote pg_hba.conf so).
    as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<EOF

# --- Hartonomous throwaway cluster (scripts/pg.sh) ---
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
max_connections = 200
# 256 partitions x several indexes: one migration or unpruned query locks thousands of objects.
max_locks_per_transaction = 1024
# Bulk loads: 100 MiB of binary is ~2.5 M atoms, ~1.6 GB of heap and ~0.8 GB of indexes.
# With 256MB the merges' index inserts went to the OS cache and bulk loading ran at
# 37k atoms/s; 2GB (under a quarter of this machine's RAM) keeps the indexes in PostgreSQL's
# cache (44.7-52.5k, decision 0011). A larger max_wal_size spaces checkpoints out (they came every few seconds).
shared_buffers = 2GB
max_wal_size = 8GB
fsync = $fsync
synchronous_commit = $fsync
full_page_writes = $fsync
logging_collector = off
log_min_messages = warning
log_min_error_statement = panic
EOF
}

check_port_free() {
    running && return 0
    if command -v ss >/dev/null 2>&1 && ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .; then
        die "port $PORT on this machine is already in use by another server." \
            "fix: stop it, or choose another port: HART_PG_PORT=55433 scripts/pg.sh start"
    fi
}

start_cluster() {
    if running; then
        say "cluster already running in $DATA (port $PORT)"
    else
        say "starting the cluster in $DATA (port $PORT)"
        if ! as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 120 start >/dev/null 2>&1; then
            tail -n 30 "$LOG" >&2 || true
            die "PostgreSQL did not start (last lines of $LOG above)." \
                "fix: read $LOG; if the directory is damaged, scripts/pg.sh destroy and start again."
        fi
    fi
    local i
    for i in $(seq 1 60); do
        if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -d postgres; then
            break
        fi
        [ "$i" -eq 60 ] && die "PostgreSQL is running but not accepting connections on 127.0.0.1:$PORT after 60 s." \
            "fix: read $LOG."
        sleep 1
    done
    # The superuser the tests connect as. Re-set the password every start so that a changed
    # HART_PG_PASSWORD takes effect on an existing cluster.
    local sql
    sql="DO \$\$BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hart') THEN
             CREATE ROLE hart LOGIN SUPERUSER;
           END IF;
         END\$\$;
         ALTER ROLE hart PASSWORD '${PASSWORD//\'/\'\'}';"
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres \
        -c "$sql" >/dev/null \
        || die "could not create the role hart in the cluster at $DATA." "fix: read $LOG."
}

stop_cluster() {
    if running; then
        say "stopping the cluster in $DATA"
        as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null \
            || die "pg_ctl stop failed for $DATA." "fix: read $LOG."
    else
        say "no cluster running in $DATA"
    fi
}

cmd="${1:-}"
case "$cmd" in
    start)
        { installed && build_tools; } || install_packages
        install_native
        check_port_free
        init_cluster
        start_cluster
        print_env
        ;;
    env)
        print_env
        ;;
    status)
        if running; then
            say "running: $DATA, 127.0.0.1:$PORT"
            exit 0
        fi
        say "not running ($DATA)"
        exit 3
        ;;
    stop)
        stop_cluster
        ;;
    destroy)
        stop_cluster
        say "removing $DIR"
        rm -rf "$DIR"
        ;;
    *)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
