#!/usr/bin/env bash
# A mixed GetItem/PutItem/Query load (examples/dynamo_load.rs: CLIENTS keep-alive
# connections, every request SigV4-signed) through three paths, interleaved in one run:
#   direct    client ──> dynalite
#   haproxy   client ──(TCP passthrough)──> dynalite
#   dbtape    client ──> dbtape (signature verified, strict, batch fsync, a request and a
#             result event per request, re-signed with the assumed role) ──> dynalite
# dynalite (npm) is the fastest DynamoDB stand-in here; it checks no signatures, so it shows
# the proxy's own cost. dbtape assumes its role once from moto (STS, no signature checks).
# PROFILE=1 writes a perf profile of dbtape to target/perf-dynamodb.txt; ALT_BIN=path adds
# another dbtape build as a fourth path (bench-common.sh, start_alt).
# Sourced by scripts/bench.
set -euo pipefail

DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
CACHE=${BENCH_CACHE:-$HOME/.cache/dbtape-bench}

source scripts/bench-common.sh
bench_need haproxy npm:nodejs,npm
systemctl stop haproxy >/dev/null 2>&1 || service haproxy stop >/dev/null 2>&1 || true
if [[ ! -x $CACHE/node/node_modules/.bin/dynalite ]]; then
    echo "== installing dynalite (npm) into $CACHE/node"
    mkdir -p "$CACHE/node"
    (cd "$CACHE/node" && npm install --silent --no-audit --no-fund dynalite@4.0.0 >/dev/null)
fi
# moto comes from the test services' venv.
[[ -x $ROOT/.services/venv/bin/moto_server ]] || { scripts/services start >/dev/null; scripts/services stop >/dev/null; }

bench_build dynamo_load
bench_workdir

DYNALITE_PORT=$(free_port)
setsid node "$CACHE/node/node_modules/.bin/dynalite" --host 127.0.0.1 --port "$DYNALITE_PORT" --createTableMs 0 \
    > "$WORK/dynalite.log" 2>&1 &
PIDS+=($!)
wait_port "$DYNALITE_PORT"

STS_PORT=$(free_port)
setsid "$ROOT/.services/venv/bin/moto_server" -H 127.0.0.1 -p "$STS_PORT" > "$WORK/moto.log" 2>&1 &
PIDS+=($!)
wait_port "$STS_PORT"

HAPROXY_PORT=$(free_port)
start_haproxy dynamodb "$HAPROXY_PORT" "$DYNALITE_PORT"

DBTAPE_PORT=$(free_port)
export BENCH_AWS_SECRET=bench-secret-0123456789
cat > "$WORK/dbtape.toml" <<CONF
[recording]
dir = "$WORK/recordings"
signing_key = "$WORK/key"
# Short sessions packed into segments once sealed (SEGMENTS=false for the old layout).
[recording.segments]
enabled = ${SEGMENTS:-true}
[[databases]]
name = "bench-ddb"
protocol = "dynamodb"
listen = "127.0.0.1:$DBTAPE_PORT"
upstream = "http://127.0.0.1:$DYNALITE_PORT"
[databases.auth]
method = "aws_iam"
[databases.aws]
region = "us-east-1"
account_id = "123456789012"
endpoint = "http://127.0.0.1:$STS_PORT"
[[users]]
name = "bench"
aws_access_key_id = "DBTAPEBENCH"
aws_secret_access_key = { env = "BENCH_AWS_SECRET" }
[[users.grants]]
database = "bench-ddb"
db_users = ["bench-role"]
CONF
AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench setsid "$BIN" serve --config "$WORK/dbtape.toml" > "$WORK/dbtape.log" 2>&1 &
DBTAPE_PID=$!
PIDS+=($DBTAPE_PID)
wait_port "$DBTAPE_PORT"
start_alt "$WORK/dbtape.toml" "$DBTAPE_PORT" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench

"$LOAD" "http://127.0.0.1:$DYNALITE_PORT" AKIDBENCH secret 1 1 --preload

args_of() {
    case $1 in
        direct) echo "http://127.0.0.1:$DYNALITE_PORT AKIDBENCH secret" ;;
        haproxy) echo "http://127.0.0.1:$HAPROXY_PORT AKIDBENCH secret" ;;
        dbtape) echo "http://127.0.0.1:$DBTAPE_PORT DBTAPEBENCH $BENCH_AWS_SECRET" ;;
        alt) echo "http://127.0.0.1:$ALT_PORT DBTAPEBENCH $BENCH_AWS_SECRET" ;;
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

# shellcheck disable=SC2046
load_of() { "$LOAD" $(args_of "$1") "$CLIENTS" "$DURATION"; }

# The connection storm first: STORM_ROUNDS (3) interleaved rounds of STORM_DURATION (8 s),
# each request on a new connection, as the aws CLI sends each call (through dbtape, a
# session and a recording per request). Its figures join the RESULT line below.
STORM_PATHS=(direct haproxy dbtape)
[[ -n ${ALT_PORT:-} ]] && STORM_PATHS+=(alt)
# shellcheck disable=SC2046
storm_load() { "$LOAD" $(args_of "$1") "$CLIENTS" "${STORM_DURATION:-8}" --storm; }
storm_rounds requests "requests/s, each on a new connection" 1e6 µs/request storm_load "${STORM_PATHS[@]}"
RESULT_EXTRA=$(python3 - "$WORK/storm" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
mean = lambda p, c: statistics.mean(float(r[c]) for r in rows if r[0] == p and len(r) > c)
print(f"storm_direct_rps={mean('direct', 1):.0f} storm_haproxy_rps={mean('haproxy', 1):.0f} storm_dbtape_rps={mean('dbtape', 1):.0f} "
      f"storm_dbtape_cpu_us={mean('dbtape', 2):.1f} storm_haproxy_cpu_us={mean('haproxy', 2):.1f}"
      + (f" storm_alt_rps={mean('alt', 1):.0f} storm_alt_cpu_us={mean('alt', 2):.1f}" if any(r[0] == 'alt' for r in rows) else ""))
PY
)
echo "   storm: $RESULT_EXTRA"
export RESULT_EXTRA

bench_rounds dynamodb requests req rps
"$BIN" ls --dir "$WORK/recordings" --limit 3
