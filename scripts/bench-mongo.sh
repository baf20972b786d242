#!/usr/bin/env bash
# A mixed find/insert load (examples/mongo_load.rs on the Rust driver, CLIENTS connections)
# through three paths, interleaved in one run, plaintext on every leg:
#   direct    client ──(SCRAM login)──> secantusd-rs
#   haproxy   client ──(TCP passthrough, SCRAM login)──> secantusd-rs
#   dbtape    client ──> dbtape (SCRAM login, strict, batch fsync, recording every command
#             and reply) ──(SCRAM login, salted password cached)──> secantusd-rs
# secantusd-rs is the Rust MongoDB-compatible server (crates.io `secantus-mdb`), built once
# into BENCH_CACHE (default ~/.cache/dbtape-bench): the Python server would hide the
# proxy's cost. PROFILE=1 writes a perf profile of dbtape to target/perf-mongo.txt.
# Sourced by scripts/bench.
set -euo pipefail

DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
CACHE=${BENCH_CACHE:-$HOME/.cache/dbtape-bench}
SECANTUS_VERSION=0.5.3-beta.196

source scripts/bench-common.sh
bench_need haproxy cmake
systemctl stop haproxy >/dev/null 2>&1 || service haproxy stop >/dev/null 2>&1 || true

SERVER="$CACHE/bin/secantusd-rs"
if [[ ! -x $SERVER ]]; then
    echo "== building secantus-mdb $SECANTUS_VERSION into $CACHE (once; about 4 minutes)"
    # It declares a newer rust-version than this toolchain but builds and runs with it.
    CARGO_TARGET_DIR="$CACHE/secantus-target" cargo install -q secantus-mdb --version "$SECANTUS_VERSION" \
        --ignore-rust-version --root "$CACHE"
fi

bench_build mongo_load
bench_workdir

MONGO_PORT=$(free_port)
mkdir -p "$WORK/data"
setsid "$SERVER" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$WORK/data" --cache-size 256M \
    --log-file-max 16MB --standalone > "$WORK/server.log" 2>&1 &
PIDS+=($!)
wait_port "$MONGO_PORT"

HAPROXY_PORT=$(free_port)
start_haproxy mongo "$HAPROXY_PORT" "$MONGO_PORT"

# Every path logs in, as each new client of a server that requires logins must: the driver
# runs SCRAM-SHA-256 with the server (direct, haproxy) or with dbtape, which logs in
# upstream in turn with the password below. The server requires no login from clients
# without credentials, which none of the bench's are.
"$LOAD" "mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true" 1 1 --create-user bench bench-password
printf 'bench-password' > "$WORK/mongo-password"

DBTAPE_PORT=$(free_port)
VERIFIER=$(echo "bench-password" | "$BIN" user add bench --password-stdin | sed -n 's/^scram_verifier = //p')
# WORKERS=n overrides [server] workers (0, the default, is one per CPU) for A/B runs;
# ALT_BIN=path adds another dbtape build as a fourth path (bench-common.sh, start_alt).
cat > "$WORK/dbtape.toml" <<CONF
[server]
workers = ${WORKERS:-0}
[recording]
dir = "$WORK/recordings"
signing_key = "$WORK/key"
# Short sessions packed into segments once sealed (SEGMENTS=false for the old layout).
[recording.segments]
enabled = ${SEGMENTS:-true}
[[databases]]
name = "bench-mongo"
protocol = "mongodb"
listen = "127.0.0.1:$DBTAPE_PORT"
upstream = "mongodb://127.0.0.1:$MONGO_PORT"
[databases.upstream_tls]
mode = "disable"
[databases.auth]
method = "password"
password = { file = "$WORK/mongo-password" }
[[users]]
name = "bench"
scram_verifier = $VERIFIER
[[users.grants]]
database = "bench-mongo"
db_users = ["bench"]
db_names = ["bench"]
CONF
setsid "$BIN" serve --config "$WORK/dbtape.toml" > "$WORK/dbtape.log" 2>&1 &
DBTAPE_PID=$!
PIDS+=($DBTAPE_PID)
wait_port "$DBTAPE_PORT"
start_alt "$WORK/dbtape.toml" "$DBTAPE_PORT"

DIRECT_URI="mongodb://bench:bench-password@127.0.0.1:$MONGO_PORT/bench?authSource=admin&directConnection=true"
"$LOAD" "$DIRECT_URI" 1 1 --preload

uri_of() {
    case $1 in
        direct) echo "$DIRECT_URI" ;;
        haproxy) echo "mongodb://bench:bench-password@127.0.0.1:$HAPROXY_PORT/bench?authSource=admin&directConnection=true" ;;
        dbtape) echo "mongodb://bench:bench-password@127.0.0.1:$DBTAPE_PORT/bench?authSource=admin&directConnection=true" ;;
        alt) echo "mongodb://bench:bench-password@127.0.0.1:$ALT_PORT/bench?authSource=admin&directConnection=true" ;;
    esac
}
pid_of() {
    case $1 in
        haproxy) echo "$HAPROXY_PID" ;;
        dbtape) echo "$DBTAPE_PID" ;;
        alt) echo "$ALT_PID" ;;
        *) echo "" ;;
    esac
}

load_of() { "$LOAD" "$(uri_of "$1")" "$CLIENTS" "$DURATION"; }

# The connection storm first: STORM_ROUNDS (3) interleaved rounds of STORM_DURATION (8 s),
# each operation on a new driver client (its own connections, handshake and SCRAM login;
# through dbtape, its upstream login too). Its figures join the RESULT line below.
storm_load() { "$LOAD" "$(uri_of "$1")" "$CLIENTS" "${STORM_DURATION:-8}" --storm; }
STORM_PATHS=(direct haproxy dbtape)
[[ -n ${ALT_PORT:-} ]] && STORM_PATHS+=(alt)
storm_rounds ops "new clients/s" 1e3 ms/client storm_load "${STORM_PATHS[@]}"
RESULT_EXTRA=$(python3 - "$WORK/storm" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
mean = lambda p, c: statistics.mean(float(r[c]) for r in rows if r[0] == p and len(r) > c)
print(f"storm_direct_cps={mean('direct', 1):.0f} storm_haproxy_cps={mean('haproxy', 1):.0f} storm_dbtape_cps={mean('dbtape', 1):.0f} "
      f"storm_dbtape_cpu_ms={mean('dbtape', 2):.2f} storm_haproxy_cpu_ms={mean('haproxy', 2):.2f}"
      + (f" storm_alt_cps={mean('alt', 1):.0f} storm_alt_cpu_ms={mean('alt', 2):.2f}" if any(r[0] == 'alt' for r in rows) else ""))
PY
)
echo "   storm: $RESULT_EXTRA"
export RESULT_EXTRA

bench_rounds mongo ops op ops
"$BIN" ls --dir "$WORK/recordings" --limit 3
