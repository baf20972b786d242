#!/usr/bin/env bash
# A mixed GetItem/PutItem/Query load (examples/dynamo_load.rs: CLIENTS keep-alive
# connections, every request SigV4-signed) through three paths, interleaved in one run:
#   direct    client ──> dynalite
#   haproxy   client ──(TCP passthrough)──> dynalite
#   dbtape    client ──> dbtape (signature verified, strict, batch fsync, a request and a
#             result event per request, re-signed with the assumed role) ──> dynalite
# dynalite (npm) is the fastest DynamoDB stand-in here; it checks no signatures, so it shows
# the proxy's own cost. dbtape assumes its role once from moto (STS, no signature checks).
# PROFILE=1 writes a perf profile of dbtape to target/perf-dynamodb.txt.
# Sourced by scripts/bench.
set -euo pipefail

DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
CACHE=${BENCH_CACHE:-$HOME/.cache/dbtape-bench}

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v npm >/dev/null || need+=(nodejs npm)
if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
systemctl stop haproxy >/dev/null 2>&1 || service haproxy stop >/dev/null 2>&1 || true
if [[ ! -x $CACHE/node/node_modules/.bin/dynalite ]]; then
    echo "== installing dynalite (npm) into $CACHE/node"
    mkdir -p "$CACHE/node"
    (cd "$CACHE/node" && npm install --silent --no-audit --no-fund dynalite@4.0.0 >/dev/null)
fi
# moto comes from the test services' venv.
[[ -x $ROOT/.services/venv/bin/moto_server ]] || { scripts/services start >/dev/null; scripts/services stop >/dev/null; }

echo "== building dbtape and the load client (release)"
cargo build --locked --release -q
cargo build --locked --release -q --example dynamo_load
BIN="$ROOT/target/release/dbtape"
LOAD="$ROOT/target/release/examples/dynamo_load"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
source scripts/bench-common.sh

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

"$LOAD" "http://127.0.0.1:$DYNALITE_PORT" AKIDBENCH secret 1 1 --preload

args_of() {
    case $1 in
        direct) echo "http://127.0.0.1:$DYNALITE_PORT AKIDBENCH secret" ;;
        haproxy) echo "http://127.0.0.1:$HAPROXY_PORT AKIDBENCH secret" ;;
        dbtape) echo "http://127.0.0.1:$DBTAPE_PORT DBTAPEBENCH $BENCH_AWS_SECRET" ;;
    esac
}
pid_of() {
    case $1 in
        haproxy) echo "$HAPROXY_PID" ;;
        dbtape) echo "$DBTAPE_PID" ;;
        *) echo "" ;;
    esac
}

echo "== $ROUNDS round(s) of ${DURATION}s per path, $CLIENTS clients, interleaved"
for round in $(seq "$ROUNDS"); do
    for path in direct haproxy dbtape; do
        pid=$(pid_of $path)
        before=0
        [[ -n $pid ]] && before=$(cpu_ticks "$pid")
        perf=
        if [[ $path == dbtape && -n ${PROFILE:-} ]]; then
            perf record -F 999 -g -p "$pid" -o "$ROOT/target/perf-dynamodb.data" -- sleep "$DURATION" >/dev/null 2>&1 &
            perf=$!
        fi
        # shellcheck disable=SC2046
        out=$("$LOAD" $(args_of $path) "$CLIENTS" "$DURATION")
        if [[ -n $perf ]]; then
            wait "$perf" || true
            perf report -i "$ROOT/target/perf-dynamodb.data" --no-children --percent-limit 0.7 --stdio 2>/dev/null |
                grep -E '^ +[0-9]' > "$ROOT/target/perf-dynamodb.txt" || true
        fi
        requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<< "$out")
        secs=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<< "$out")
        p99=$(sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<< "$out")
        errors=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<< "$out")
        [[ $errors == 0 ]] || { echo "bench: $path answered $errors requests with errors" >&2; tail -5 "$WORK/dbtape.log" >&2; exit 1; }
        cpu_us=""
        if [[ -n $pid ]]; then
            ticks=$(( $(cpu_ticks "$pid") - before ))
            cpu_us=$(python3 -c "print(f'{$ticks * 1e6 / $(getconf CLK_TCK) / $requests:.1f}')")
        fi
        python3 -c "print(f'   round $round  $path: {$requests / $secs:9.0f} req/s  p99 {$p99 / 1000:.2f} ms' + ('  proxy CPU $cpu_us us/req' if '$cpu_us' else ''))"
        echo "$path $(python3 -c "print($requests / $secs)") $p99 $cpu_us" >> "$WORK/results"
    done
done

python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def mean(path, col):
    values = [float(r[col]) for r in rows if r[0] == path and len(r) > col]
    return statistics.mean(values) if values else 0.0
rps = {p: mean(p, 1) for p in ("direct", "haproxy", "dbtape")}
cpu = {p: mean(p, 3) for p in ("haproxy", "dbtape")}
rounds = [float(r[1]) for r in rows if r[0] == "dbtape"]
ha_rounds = [float(r[1]) for r in rows if r[0] == "haproxy"]
ratios = ", ".join(f"{d / h:.2f}" for d, h in zip(rounds, ha_rounds))
print(f"   dbtape/haproxy {rps['dbtape'] / rps['haproxy']:.2f} (rounds {ratios}); dbtape/direct {rps['dbtape'] / rps['direct']:.2f}")
print(f"   proxy CPU per request: dbtape {cpu['dbtape']:.1f} us, haproxy {cpu['haproxy']:.1f} us")
print(f"RESULT dynamodb direct_rps={rps['direct']:.0f} haproxy_rps={rps['haproxy']:.0f} dbtape_rps={rps['dbtape']:.0f} "
      f"dbtape_cpu_us={cpu['dbtape']:.1f} haproxy_cpu_us={cpu['haproxy']:.1f} dbtape_p99_us={mean('dbtape', 2):.0f} direct_p99_us={mean('direct', 2):.0f}")
PY
"$BIN" ls --dir "$WORK/recordings" --limit 3
