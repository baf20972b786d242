#!/usr/bin/env bash
# pgbench select-only through four paths, interleaved in one run, TLS on every leg:
#   direct     client ──TLS──> PostgreSQL
#   haproxy    client ──TLS (passed through)──> PostgreSQL      (one extra TCP hop)
#   pgbouncer  client ──TLS──> pgbouncer (session mode) ──TLS──> PostgreSQL
#   dbtape     client ──TLS──> dbtape (strict, batch fsync, recording) ──TLS──> PostgreSQL
# Then a connection storm (pgbench -C) through the same paths, and the proxy's memory per
# idle connection. Sourced by scripts/bench.
set -euo pipefail

DURATION=${DURATION:-30}
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-8}
IDLE_CONNS=${IDLE_CONNS:-100}
# The high-concurrency case: one pass per path with this many clients (0 skips it).
HIGH_CLIENTS=${HIGH_CLIENTS:-200}
HIGH_DURATION=${HIGH_DURATION:-20}
# The connection storm: pgbench -C (a new connection, TLS and SCRAM on every leg, for each
# transaction), STORM_CLIENTS clients, STORM_ROUNDS interleaved rounds of STORM_DURATION s
# (STORM_ROUNDS=0 skips it).
STORM_ROUNDS=${STORM_ROUNDS:-3}
STORM_DURATION=${STORM_DURATION:-8}
STORM_CLIENTS=${STORM_CLIENTS:-8}
# IDLE_SPACED=1: the idle clients log in one after another rather than all at once.
# MODE=extended|prepared: pgbench's query protocol (default simple); prepared sends each
# transaction as Bind/Describe/Execute of a statement parsed once, the path a driver takes.
MODE=${MODE:-simple}

source scripts/bench-common.sh
bench_need haproxy pgbouncer
# Debian starts packaged daemons; the bench runs its own.
systemctl stop haproxy pgbouncer >/dev/null 2>&1 || service haproxy stop >/dev/null 2>&1 || true

# MAIN_BIN=path runs that build as the dbtape path instead of this tree's (for swapped A/B runs).
if [[ -n ${MAIN_BIN:-} ]]; then
    BIN=$MAIN_BIN
else
    echo "== building dbtape (release)"
    cargo build --locked --release -q
    BIN="$ROOT/target/release/dbtape"
    # PROFILE=1: the same build with line tables, so perf attributes time to lines.
    if [[ ${PROFILE:-0} == 1 ]]; then
        cargo build --locked --profile profiling -q
        BIN="$ROOT/target/profiling/dbtape"
    fi
fi

# ALT_LAKE=1 writes the event lake from the ALT path (to moto's S3), so it needs moto too.
if [[ -n ${ALT_LAKE:-} ]]; then scripts/services start; else scripts/services start postgres; fi
set -a; source .services/env; set +a
WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [[ -f $WORK/pgbouncer.pid ]] && kill "$(cat "$WORK/pgbouncer.pid")" 2>/dev/null || true
    scripts/services stop >/dev/null 2>&1 || true
    if [[ -n ${KEEP_RECORDINGS:-} ]]; then
        rm -rf "$ROOT/target/bench-pg-recordings"
        cp -r "$WORK/recordings" "$ROOT/target/bench-pg-recordings" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

export PGPASSWORD=$PG_PASSWORD
DIRECT="host=localhost port=$PG_PORT user=postgres dbname=postgres sslmode=verify-full sslrootcert=$CERTS/ca.crt"
pgbench -i -s 10 -q "$DIRECT" >/dev/null 2>&1

# haproxy: plain TCP passthrough; TLS stays end to end between client and PostgreSQL.
# (pgbouncer -d and PostgreSQL's pg_ctl get sessions of their own too.)
HAPROXY_PORT=$(free_port)
start_haproxy pg "$HAPROXY_PORT" "$PG_PORT"

# pgbouncer: session mode, terminating TLS on both legs like dbtape.
BOUNCER_PORT=$(free_port)
SECRET=$(psql "$DIRECT" -Atc "select rolpassword from pg_authid where rolname='postgres'")
echo "\"postgres\" \"$SECRET\"" > "$WORK/userlist.txt"
install -o postgres -m 600 "$CERTS/server.crt" "$CERTS/server.key" "$WORK/"
cp "$CERTS/ca.crt" "$WORK/ca.crt"
cat > "$WORK/pgbouncer.ini" <<CONF
[databases]
* = host=localhost port=$PG_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = session
max_client_conn = 500
default_pool_size = 250
client_tls_sslmode = require
client_tls_cert_file = $WORK/server.crt
client_tls_key_file = $WORK/server.key
server_tls_sslmode = verify-full
server_tls_ca_file = $WORK/ca.crt
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
CONF
chown -R postgres "$WORK"
runuser -u postgres -- pgbouncer -d "$WORK/pgbouncer.ini"

# dbtape: strict mode, batch fsync, recording every query and result. A second listener of
# the same process, bench-pool, has the upstream session pool on (the storm's dbtape_pool).
DBTAPE_PORT=$(free_port)
POOL_PORT=$(free_port)
VERIFIER=$(echo "$PG_PASSWORD" | "$BIN" user add postgres --password-stdin | sed -n 's/^scram_verifier = //p')
export BENCH_PG_PASSWORD=$PG_PASSWORD
cat > "$WORK/dbtape.toml" <<CONF
[server]
workers = ${WORKERS:-0}
# pgbench opens its 200-client case all at once from one address.
max_pending_logins_per_source = 256
[recording]
dir = "recordings"
signing_key = "key"
mode = "strict"
fsync = "batch"
# Short sessions packed into segments once sealed (SEGMENTS=false for the old layout).
[recording.segments]
enabled = ${SEGMENTS:-true}
[[databases]]
name = "bench"
protocol = "postgres"
listen = "127.0.0.1:$DBTAPE_PORT"
upstream = "postgres://localhost:$PG_PORT/postgres"
[databases.client_tls]
mode = "required"
cert = "$CERTS/server.crt"
key = "$CERTS/server.key"
[databases.upstream_tls]
ca = "$CERTS/ca.crt"
[databases.auth]
password = { env = "BENCH_PG_PASSWORD" }
[[databases]]
name = "bench-pool"
protocol = "postgres"
listen = "127.0.0.1:$POOL_PORT"
upstream = "postgres://localhost:$PG_PORT/postgres"
[databases.client_tls]
mode = "required"
cert = "$CERTS/server.crt"
key = "$CERTS/server.key"
[databases.upstream_tls]
ca = "$CERTS/ca.crt"
[databases.auth]
password = { env = "BENCH_PG_PASSWORD" }
[databases.pool]
mode = "session"
max_size = 250
[[users]]
name = "postgres"
scram_verifier = $VERIFIER
[[users.grants]]
database = "bench"
db_users = ["postgres"]
[[users.grants]]
database = "bench-pool"
db_users = ["postgres"]
CONF
setsid "$BIN" serve --config "$WORK/dbtape.toml" 2> "$WORK/dbtape.log" &
DBTAPE_PID=$!
PIDS+=($DBTAPE_PID)
for p in $HAPROXY_PORT $BOUNCER_PORT $DBTAPE_PORT; do wait_port "$p"; done

# ALT_BIN=path: a second dbtape build (an experiment) run as a fifth path, same config and
# port layout, so two builds are compared side by side in one run.
ALT_PORT=
if [[ -n ${ALT_BIN:-} ]]; then
    ALT_PORT=$(free_port)
    ALT_POOL_PORT=$(free_port)
    mkdir -p "$WORK/alt"
    # ALT_SEGMENTS=off: the alternative packs no sessions (or predates [recording.segments]).
    strip_segments=''
    [[ ${ALT_SEGMENTS:-} == off ]] && strip_segments='/^\[recording\.segments\]$/,/^enabled = /d'
    sed -e "$strip_segments" -e "s/127.0.0.1:$DBTAPE_PORT/127.0.0.1:$ALT_PORT/" -e "s/127.0.0.1:$POOL_PORT/127.0.0.1:$ALT_POOL_PORT/" -e 's|^dir = "recordings"|dir = "alt/recordings"|' \
        -e "s/^workers = .*/workers = ${ALT_WORKERS:-${WORKERS:-0}}/" \
        -e "s/^fsync = .*/fsync = \"${ALT_FSYNC:-batch}\"/" "$WORK/dbtape.toml" > "$WORK/alt.toml"
    ALT_ENV=()
    if [[ -n ${ALT_LAKE:-} ]]; then
        # The same build with the lake on (flushing every 10 s, so it writes during the run)
        # against the main path with it off: what the lake costs the relay.
        "$SERVICES_VENV/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT', region_name='us-east-1', aws_access_key_id='$MOTO_ACCESS_KEY_ID', aws_secret_access_key='$MOTO_SECRET_ACCESS_KEY').create_bucket(Bucket='bench-lake')"
        printf '\n[storage.s3]\nbucket = "bench-lake"\nregion = "us-east-1"\nendpoint = "%s"\nforce_path_style = true\n\n[lake]\nenabled = true\nflush_interval = "10s"\n' "$AWS_ENDPOINT" >> "$WORK/alt.toml"
        ALT_ENV=(AWS_ACCESS_KEY_ID="$MOTO_ACCESS_KEY_ID" AWS_SECRET_ACCESS_KEY="$MOTO_SECRET_ACCESS_KEY" AWS_EC2_METADATA_DISABLED=true)
    fi
    env "${ALT_ENV[@]}" setsid "$ALT_BIN" serve --config "$WORK/alt.toml" 2> "$WORK/alt.log" &
    ALT_PID=$!
    PIDS+=($ALT_PID)
    wait_port "$ALT_PORT"
fi

# utime of a process and its threads, in clock ticks.
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }
# Voluntary context switches (sleeps) over all of a process's threads.
sleeps() { cat /proc/$1/task/*/status | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n}'; }
# Involuntary context switches: times a runnable thread of the process was preempted.
preemptions() { cat /proc/$1/task/*/status | awk '/^nonvoluntary_ctxt_switches/ {n += $2} END {print n}'; }
# Machine-wide busy and idle ticks (all CPUs): how much the whole chain spends per transaction.
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
# Context switches machine-wide, and CPU migrations of a process's threads.
machine_ctxt() { awk '/^ctxt/ {print $2}' /proc/stat; }
migrations() { cat /proc/$1/task/*/sched 2>/dev/null | awk '/se.nr_migrations/ {n += $3} END {print n + 0}'; }
# TCP segments sent machine-wide (loopback carries all of this benchmark's traffic).
tcp_out_segs() { awk '/^Tcp:/ && $2 ~ /^[0-9]/ {print $12}' /proc/net/snmp; }
machine_idle() { awk '/^cpu / {print $5 + $6}' /proc/stat; }

conninfo() {
    case $1 in
        direct) echo "$DIRECT" ;;
        haproxy) echo "host=localhost port=$HAPROXY_PORT user=postgres dbname=postgres sslmode=verify-full sslrootcert=$CERTS/ca.crt" ;;
        pgbouncer) echo "host=localhost port=$BOUNCER_PORT user=postgres dbname=postgres sslmode=verify-full sslrootcert=$CERTS/ca.crt" ;;
        dbtape) echo "host=localhost port=$DBTAPE_PORT user=postgres dbname=postgres sslmode=verify-full sslrootcert=$CERTS/ca.crt" ;;
        dbtape_pool) echo "host=localhost port=$POOL_PORT user=postgres dbname=postgres sslmode=verify-full sslrootcert=$CERTS/ca.crt" ;;
        alt) echo "host=localhost port=$ALT_PORT user=postgres dbname=postgres sslmode=verify-full sslrootcert=$CERTS/ca.crt" ;;
    esac
}

# The process of a path's proxy (none for direct).
proxy_pid_of() {
    case $1 in
        haproxy) echo "$HAPROXY_PID" ;;
        pgbouncer) cat "$WORK/pgbouncer.pid" ;;
        dbtape | dbtape_pool) echo "$DBTAPE_PID" ;;
        alt) echo "$ALT_PID" ;;
    esac
}

# Each run logs every transaction's latency; percentiles are computed from those logs.
run() { # path round
    local dir="$WORK/run-$1-$2"
    mkdir -p "$dir"
    local proxy_pid
    proxy_pid=$(proxy_pid_of "$1")
    local perf=
    if [[ ( $1 == dbtape || $1 == pgbouncer || $1 == alt ) && -n ${PROFILE:-} ]]; then
        perf record -F 999 -g -p "$proxy_pid" -o "$ROOT/target/perf-$1.data" -- sleep "$DURATION" >/dev/null 2>&1 &
        perf=$!
    fi
    local trace=
    if [[ -n ${SYSCALLS:-} && ( $1 == dbtape || $1 == pgbouncer ) ]]; then
        (sleep 2; timeout -s INT 3 strace -c -f -p "$proxy_pid" -o "$ROOT/target/syscalls-$1.txt") >/dev/null 2>&1 &
        trace=$!
    fi
    local cpu_before=0 user_before=0 sleeps_before=0 migrations_before=0 preempted_before=0 busy_before idle_before
    busy_before=$(machine_busy)
    local segs_before ctxt_before
    segs_before=$(tcp_out_segs)
    ctxt_before=$(machine_ctxt)
    idle_before=$(machine_idle)
    if [[ -n $proxy_pid ]]; then
        cpu_before=$(cpu_ticks "$proxy_pid")
        user_before=$(user_ticks "$proxy_pid")
        sleeps_before=$(sleeps "$proxy_pid")
        preempted_before=$(preemptions "$proxy_pid")
        migrations_before=$(migrations "$proxy_pid")
    fi
    (cd "$dir" && pgbench -S -n -M "$MODE" -c "$CLIENTS" -j 2 -T "$DURATION" -l --log-prefix=tx "$(conninfo "$1")" > summary.txt 2>&1)
    [[ -n $trace ]] && wait "$trace" || true
    if [[ -n $perf ]]; then
        wait "$perf" || true
        {
            perf report -i "$ROOT/target/perf-$1.data" --stdio --no-children --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
            perf report -i "$ROOT/target/perf-$1.data" --stdio --no-children --sort sym -g none --percent-limit 0.5 2>/dev/null | grep -v '^#' | grep -v '^$' | head -80
        } > "$ROOT/target/perf-$1.txt" || true
        echo "   profile of $1 written to target/perf-$1.txt"
    fi
    grep -oP 'tps = \K[0-9.]+(?= \(without initial)' "$dir/summary.txt" >> "$WORK/tps-$1${SUFFIX:-}"
    local all_txns busy idle
    all_txns=$(grep -oP 'actually processed: \K[0-9]+' "$dir/summary.txt")
    busy=$(( $(machine_busy) - busy_before ))
    idle=$(( $(machine_idle) - idle_before ))
    python3 -c "print($busy * 1e6 / $(getconf CLK_TCK) / $all_txns, 100.0 * $idle / max(1, $busy + $idle), ($(tcp_out_segs) - $segs_before) / $all_txns, ($(machine_ctxt) - $ctxt_before) / $all_txns)" >> "$WORK/machine-$1${SUFFIX:-}"
    if [[ -n $proxy_pid ]]; then
        # The proxy's own CPU per transaction: steadier than TPS on a shared machine.
        local ticks=$(( $(cpu_ticks "$proxy_pid") - cpu_before ))
        local uticks=$(( $(user_ticks "$proxy_pid") - user_before ))
        local txns=$(grep -oP 'actually processed: \K[0-9]+' "$dir/summary.txt")
        python3 -c "print($ticks * 1e6 / $(getconf CLK_TCK) / $txns)" >> "$WORK/cpu-$1${SUFFIX:-}"
        python3 -c "print($uticks * 1e6 / $(getconf CLK_TCK) / $txns)" >> "$WORK/ucpu-$1${SUFFIX:-}"
        python3 -c "print(($(sleeps "$proxy_pid") - $sleeps_before) / $txns, ($(migrations "$proxy_pid") - $migrations_before) / $txns, ($(preemptions "$proxy_pid") - $preempted_before) / $txns)" >> "$WORK/sleeps-$1${SUFFIX:-}"
    fi
    cat "$dir"/tx.* >> "$WORK/lat-$1${SUFFIX:-}"
}

for p in "haproxy $HAPROXY_PID" "pgbouncer $(cat "$WORK/pgbouncer.pid")" "dbtape $DBTAPE_PID"; do
    set -- $p
    echo "   $1 scheduling group: $(cat /proc/$2/autogroup 2>/dev/null || echo none) (this script: $(cat /proc/$$/autogroup 2>/dev/null || echo none))"
done
# The TLS each path negotiates with the client, so the comparison is like for like.
for p in "direct $PG_PORT" "pgbouncer $BOUNCER_PORT" "dbtape $DBTAPE_PORT"; do
    set -- $p
    cipher=$(openssl s_client -starttls postgres -connect "127.0.0.1:$2" -CAfile "$CERTS/ca.crt" </dev/null 2>/dev/null | grep -m1 -oP '(New|Cipher is) \K\S+, Cipher is \S+|Cipher is \K\S+' || true)
    echo "   $1 client TLS: ${cipher:-unknown}"
done

PATHS=(direct haproxy pgbouncer dbtape)
[[ -n $ALT_PORT ]] && PATHS+=(alt)
# IDLE_ONLY=1: only the memory per idle connection (dbtape, and ALT_BIN if given), for A/B runs.
[[ -n ${IDLE_ONLY:-} ]] && ROUNDS=0 HIGH_CLIENTS=0
for round in $(seq "$ROUNDS"); do
    for path in "${PATHS[@]}"; do
        echo "== round $round: $path (${DURATION}s, $CLIENTS clients, select-only, TLS)"
        run "$path" "$round"
        settle "$DBTAPE_PID" "${ALT_PID:-}"
    done
    PATHS=("${PATHS[@]:1}" "${PATHS[0]}")   # rotate the order between rounds
done

# High concurrency: a per-connection cost that a few clients hide shows up with many.
if (( HIGH_CLIENTS > 0 )); then
    HIGH_PATHS=(direct haproxy pgbouncer dbtape)
    [[ -n $ALT_PORT ]] && HIGH_PATHS+=(alt)
    for path in "${HIGH_PATHS[@]}"; do
        echo "== high concurrency: $path (${HIGH_DURATION}s, $HIGH_CLIENTS clients, select-only, TLS)"
        SUFFIX=-high CLIENTS=$HIGH_CLIENTS DURATION=$HIGH_DURATION run "$path" high
        settle "$DBTAPE_PID" "${ALT_PID:-}"
    done
fi

# The recordings' own storage (sessions' files and segments), without the search index,
# which is derived and reported apart.
# Files come and go while du walks the folder (packed sessions' own files are removed), and
# du then fails though its total is right: its status is not the measurement's.
recordings_du() { { du -s "$@" --exclude=index "$WORK/recordings" 2>/dev/null || true; } | head -1 | cut -f1; }
index_du() { local n; n=$({ du -sB1 "$WORK/recordings/index" 2>/dev/null || true; } | head -1 | cut -f1); echo "${n:-0}"; }
recordings_files() { find "$WORK/recordings" -path "$WORK/recordings/index" -prune -o -type f -print | wc -l; }

# Connection storm: new connections per second through each path, the proxy's CPU per
# connection, and what each one-statement session leaves in dbtape's recordings folder.
storm() { # path round
    local dir="$WORK/storm-$1-$2" proxy_pid
    mkdir -p "$dir"
    proxy_pid=$(proxy_pid_of "$1")
    local cpu_before=0 bytes_before files_before
    [[ -n $proxy_pid ]] && cpu_before=$(cpu_ticks "$proxy_pid")
    bytes_before=$(recordings_du -b --apparent-size)
    local blocks_before index_before
    blocks_before=$(recordings_du -B1)
    index_before=$(index_du)
    files_before=$(recordings_files)
    local perf=
    if [[ $1 == dbtape* && -n ${PROFILE:-} ]]; then
        perf record -F 999 -g -p "$proxy_pid" -o "$ROOT/target/perf-storm-$1.data" -- sleep "$STORM_DURATION" >/dev/null 2>&1 &
        perf=$!
    fi
    (cd "$dir" && pgbench -C -S -n -c "$STORM_CLIENTS" -j 2 -T "$STORM_DURATION" "$(conninfo "$1")" > summary.txt 2>&1)
    local txns cps
    [[ -n $perf ]] && wait "$perf"
    txns=$(grep -oP 'actually processed: \K[0-9]+' "$dir/summary.txt")
    cps=$(python3 -c "print($txns / $STORM_DURATION)")
    echo "$cps" >> "$WORK/storm-cps-$1"
    if [[ -n $proxy_pid ]]; then
        python3 -c "print(($(cpu_ticks "$proxy_pid") - $cpu_before) * 1e3 / $(getconf CLK_TCK) / $txns)" >> "$WORK/storm-cpu-$1"
    fi
    if [[ $1 == dbtape ]]; then
        # Sealing runs on the recorder's own thread: let it finish before counting.
        sleep 2
        local index_after
        index_after=$(index_du)
        python3 -c "print(($(recordings_du -B1) - $blocks_before) / $txns, ($(recordings_du -b --apparent-size) - $bytes_before) / $txns, ($(recordings_files) - $files_before) / $txns, ($index_after - $index_before) / $txns)" >> "$WORK/storm-disk"
    fi
    printf '   %s: %.0f new connections/s\n' "$1" "$cps"
}
STORM_PATHS=(direct haproxy pgbouncer dbtape dbtape_pool)
[[ -n $ALT_PORT ]] && STORM_PATHS+=(alt)
for round in $(seq "$STORM_ROUNDS"); do
    for path in "${STORM_PATHS[@]}"; do
        echo "== storm round $round: $path (${STORM_DURATION}s, $STORM_CLIENTS clients, a new connection per transaction, TLS + SCRAM)"
        storm "$path" "$round"
        settle "$DBTAPE_PID" "${ALT_PID:-}"
    done
    STORM_PATHS=("${STORM_PATHS[@]:1}" "${STORM_PATHS[0]}")
done
# S3 PUTs per session, as the uploader makes them: one per segment (the open one included,
# which is one PUT when it closes) and three per session in its own files (recording,
# manifest, sidecar), over every session this dbtape recorded.
sleep 2
"$BIN" ls --dir "$WORK/recordings" --format json --limit 1000000000 > "$WORK/sessions.json"
python3 - "$WORK/recordings" "$WORK/sessions.json" > "$WORK/storm-puts" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
sessions = len(json.loads(pathlib.Path(sys.argv[2]).read_text()))
segments = len(list((root / "segments").glob("*.dseg")))
own = len(list(root.glob("*.manifest.json")))
print(sessions, segments, own, (segments + 3 * own) / max(sessions, 1))
PY

# Memory per idle connection: a fresh dbtape process, warmed by one session (and the indexer's
# pass over it), then the RSS growth while IDLE_CONNS clients sit connected doing nothing.
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }
# measure_idle PATH OLD_PID BIN CONFIG LOG PORT: the proxy restarted from nothing, then its
# memory per idle connection measured; writes "idle before after" to $WORK/idle-PATH.
measure_idle() {
    local path=$1 old=$2 bin=$3 config=$4 log=$5 port=$6
    kill "$old"; wait "$old" 2>/dev/null || true
    setsid "$bin" serve --config "$config" 2>> "$log" &
    local pid=$!
    PIDS+=($pid)
    wait_port "$port"
    psql "$(conninfo "$path")" -X -q -c "SELECT 1" >/dev/null
    # The search indexer's next pass (every 5 s) indexes that session; its code and working
    # set are the process's, not any connection's, so they are in before the count starts.
    sleep 6
    local before after before_anon after_anon
    before=$(rss "$pid")
    before_anon=$(anonymous "$pid")
    local idle_pids=()
    # Each client notes when its login and first query are done, then sits idle: counting
    # TCP connections alone would measure logins still in progress.
    local logged="$WORK/logged-$path"
    : > "$logged"
    for _ in $(seq "$IDLE_CONNS"); do
        psql "$(conninfo "$path")" -X -q -c "SELECT 1" -c "\\! echo in >> $logged" -c '\! sleep 30' >/dev/null 2>&1 &
        idle_pids+=($!)
        if [[ -n ${IDLE_SPACED:-} ]]; then
            for _ in $(seq 100); do (( $(wc -l < "$logged") >= ${#idle_pids[@]} )) && break; sleep 0.02; done
        fi
    done
    for _ in $(seq 600); do
        (( $(wc -l < "$logged") >= IDLE_CONNS )) && break
        sleep 0.1
    done
    # Idle means idle: a few seconds after the last login.
    sleep 3
    after=$(rss "$pid")
    after_anon=$(anonymous "$pid")
    local idle
    idle=$(established "$port")
    echo "$idle $before $after $before_anon $after_anon" > "$WORK/idle-$path"
    awk -v p="$path" -v n="$idle" -v logged="$(wc -l < "$logged")" -v b="$before" -v a="$after" -v ba="$before_anon" -v aa="$after_anon" \
        'BEGIN { n = n > 0 ? n : 1; printf "   %s: %d idle, %d logged in; per idle connection: RSS %.1f KiB, anonymous %.1f KiB\n", p, n, logged, (a - b) / n, (aa - ba) / n }'
    for p in "${idle_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait "${idle_pids[@]}" 2>/dev/null || true
}
anonymous() { awk '/^Anonymous/ {print $2}' "/proc/$1/smaps_rollup"; }
measure_idle dbtape "$DBTAPE_PID" "$BIN" "$WORK/dbtape.toml" "$WORK/dbtape.log" "$DBTAPE_PORT"
read -r idle before after before_anon after_anon < "$WORK/idle-dbtape"
[[ -n $ALT_PORT ]] && measure_idle alt "$ALT_PID" "$ALT_BIN" "$WORK/alt.toml" "$WORK/alt.log" "$ALT_PORT"
[[ -n ${IDLE_ONLY:-} ]] && exit 0

python3 - "$WORK" "$idle" "$before" "$after" "$HIGH_CLIENTS" "$before_anon" "$after_anon" <<'PY'
import statistics, sys, pathlib
work, idle, before, after = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
before_anon, after_anon = int(sys.argv[6]), int(sys.argv[7])
res = {}
for path in ["direct", "haproxy", "pgbouncer", "dbtape", "alt"]:
    if not (work / f"tps-{path}").exists():
        continue
    tps = [float(x) for x in (work / f"tps-{path}").read_text().split()]
    lat = sorted(int(line.split()[2]) for line in (work / f"lat-{path}").read_text().splitlines() if line.strip())
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0
    res[path] = (statistics.mean(tps), pct(0.50), pct(0.99))
    cpu_file = work / f"cpu-{path}"
    mean_of = lambda f: statistics.mean(float(x) for x in f.read_text().split())
    col_mean = lambda f, i: statistics.mean(float(line.split()[i]) for line in f.read_text().splitlines())
    cpu = f"   proxy CPU {mean_of(cpu_file):5.1f} us/txn ({mean_of(work / f'ucpu-{path}'):4.1f} user), {col_mean(work / f'sleeps-{path}', 0):4.2f} sleeps/txn, {col_mean(work / f'sleeps-{path}', 2):4.2f} preempted/txn, {col_mean(work / f'sleeps-{path}', 1):5.3f} migrations/txn" if cpu_file.exists() else ""
    machine = [tuple(map(float, line.split())) for line in (work / f"machine-{path}").read_text().splitlines()]
    whole = f"   machine {statistics.mean(m[0] for m in machine):5.1f} us/txn, {statistics.mean(m[1] for m in machine):4.1f}% idle, {statistics.mean(m[2] for m in machine):4.2f} segs/txn, {statistics.mean(m[3] for m in machine):4.2f} switches/txn"
    print(f"{path:10s} tps {res[path][0]:8.0f}   p50 {res[path][1]:6.3f} ms   p99 {res[path][2]:6.3f} ms{whole}{cpu}")
d, h, b, t = (res[p][0] for p in ["direct", "haproxy", "pgbouncer", "dbtape"])
print(f"ratios: haproxy/direct {h/d:.2f}  pgbouncer/direct {b/d:.2f}  dbtape/direct {t/d:.2f}  dbtape/haproxy {t/h:.2f}  dbtape/pgbouncer {t/b:.2f}")
rounds = [dict(zip(["direct", "haproxy", "pgbouncer", "dbtape"], r)) for r in zip(*[[float(x) for x in (work / f"tps-{p}").read_text().split()] for p in ["direct", "haproxy", "pgbouncer", "dbtape"]])]
if len(rounds) > 1:
    print("per round: " + "  ".join(f"dbtape/pgbouncer {r['dbtape']/r['pgbouncer']:.2f}, dbtape/haproxy {r['dbtape']/r['haproxy']:.2f}" for r in rounds))
if "alt" in res:
    print(f"alt (ALT_BIN): alt/dbtape {res['alt'][0]/t:.2f}  alt/pgbouncer {res['alt'][0]/b:.2f}")
def cpu_of(path, suffix=""):
    f = work / f"cpu-{path}{suffix}"
    return statistics.mean(float(x) for x in f.read_text().split()) if f.exists() else float("nan")
high = {}
for path in ["direct", "haproxy", "pgbouncer", "dbtape", "alt"]:
    f = work / f"tps-{path}-high"
    if f.exists():
        lat = sorted(int(line.split()[2]) for line in (work / f"lat-{path}-high").read_text().splitlines() if line.strip())
        high[path] = (statistics.mean(float(x) for x in f.read_text().split()), lat[min(len(lat) - 1, int(0.99 * len(lat)))] / 1000.0)
        cpu = f"   proxy CPU {cpu_of(path, '-high'):5.1f} us/txn" if path != "direct" else ""
        print(f"high concurrency {path:10s} tps {high[path][0]:8.0f}   p99 {high[path][1]:7.3f} ms{cpu}")
if all(p in high for p in ['direct', 'haproxy', 'pgbouncer', 'dbtape']):
    if "alt" in high:
        print(f"high concurrency alt: alt/dbtape {high['alt'][0]/high['dbtape'][0]:.2f}  alt CPU/dbtape CPU {cpu_of('alt', '-high')/cpu_of('dbtape', '-high'):.2f}")
    print(f"high concurrency ratios: dbtape/pgbouncer {high['dbtape'][0]/high['pgbouncer'][0]:.2f}  dbtape/haproxy {high['dbtape'][0]/high['haproxy'][0]:.2f}  "
          f"dbtape CPU/pgbouncer CPU {cpu_of('dbtape', '-high')/cpu_of('pgbouncer', '-high'):.2f}")
storm = {}
for path in ["direct", "haproxy", "pgbouncer", "dbtape", "dbtape_pool", "alt"]:
    f = work / f"storm-cps-{path}"
    if f.exists():
        cps = [float(x) for x in f.read_text().split()]
        cpu_f = work / f"storm-cpu-{path}"
        cpu = statistics.mean(float(x) for x in cpu_f.read_text().split()) if cpu_f.exists() else float("nan")
        storm[path] = (statistics.mean(cps), cpu)
        print(f"storm {path:10s} {storm[path][0]:7.1f} new connections/s (rounds {', '.join(f'{c:.0f}' for c in cps)})" + (f"   proxy CPU {cpu:.2f} ms/connection" if cpu == cpu else ""))
storm_result = ""
if all(p in storm for p in ["direct", "haproxy", "pgbouncer", "dbtape"]):
    disk = [tuple(map(float, line.split())) for line in (work / "storm-disk").read_text().splitlines()]
    blocks, apparent, files, index = (statistics.mean(d[i] for d in disk) for i in range(4))
    sessions, segments, own, puts = (work / "storm-puts").read_text().split()
    print(f"storm ratios: dbtape/haproxy {storm['dbtape'][0]/storm['haproxy'][0]:.2f}  dbtape/pgbouncer {storm['dbtape'][0]/storm['pgbouncer'][0]:.2f}  "
          f"dbtape CPU/pgbouncer CPU {storm['dbtape'][1]/storm['pgbouncer'][1]:.2f}; per one-statement session: {blocks:.0f} bytes on disk ({apparent:.0f} written), "
          f"{files:.2f} files, and {index:.0f} bytes of search index")
    print(f"S3 PUTs: {sessions} sessions recorded, {segments} segment(s) and {own} session(s) in their own files: {float(puts):.4f} PUTs per session")
    storm_result = (f" storm_direct_cps={storm['direct'][0]:.0f} storm_haproxy_cps={storm['haproxy'][0]:.0f} storm_pgbouncer_cps={storm['pgbouncer'][0]:.0f} "
                    f"storm_dbtape_cps={storm['dbtape'][0]:.0f} storm_dbtape_cpu_ms={storm['dbtape'][1]:.2f} storm_pgbouncer_cpu_ms={storm['pgbouncer'][1]:.2f} "
                    f"storm_haproxy_cpu_ms={storm['haproxy'][1]:.2f} storm_disk_bytes_per_session={blocks:.0f} storm_files_per_session={files:.2f} "
                    f"storm_index_bytes_per_session={index:.0f} storm_puts_per_session={float(puts):.4f}")
    if "dbtape_pool" in storm:
        print(f"storm pool ratios: dbtape_pool/pgbouncer {storm['dbtape_pool'][0]/storm['pgbouncer'][0]:.2f}  "
              f"dbtape_pool CPU/pgbouncer CPU {storm['dbtape_pool'][1]/storm['pgbouncer'][1]:.2f}")
        storm_result += f" storm_dbtape_pool_cps={storm['dbtape_pool'][0]:.0f} storm_dbtape_pool_cpu_ms={storm['dbtape_pool'][1]:.2f}"
    if "alt" in storm:
        print(f"storm alt (ALT_BIN): alt/dbtape {storm['alt'][0]/storm['dbtape'][0]:.2f}  alt CPU/dbtape CPU {storm['alt'][1]/storm['dbtape'][1]:.2f}")
per_conn = (after - before) / max(idle, 1)
# RSS also grows by code pages first touched under load, which are no connection's; the
# anonymous memory is what the connections hold.
anon_per_conn = (after_anon - before_anon) / max(idle, 1)
print(f"idle connections: {idle}, dbtape RSS {before} KiB -> {after} KiB: {per_conn:.1f} KiB per idle connection, {anon_per_conn:.1f} KiB anonymous")
print(f"RESULT pg direct_tps={d:.0f} haproxy_tps={h:.0f} pgbouncer_tps={b:.0f} dbtape_tps={t:.0f} "
      f"dbtape_p99_ms={res['dbtape'][2]:.3f} direct_p99_ms={res['direct'][2]:.3f} dbtape_idle_kib_per_conn={per_conn:.1f} dbtape_idle_anon_kib_per_conn={anon_per_conn:.1f} "
      f"dbtape_cpu_us={cpu_of('dbtape'):.1f} pgbouncer_cpu_us={cpu_of('pgbouncer'):.1f} haproxy_cpu_us={cpu_of('haproxy'):.1f}"
      + (f" high_clients={sys.argv[5]} high_dbtape_tps={high['dbtape'][0]:.0f} high_pgbouncer_tps={high['pgbouncer'][0]:.0f} "
         f"high_haproxy_tps={high['haproxy'][0]:.0f} high_dbtape_cpu_us={cpu_of('dbtape', '-high'):.1f} high_pgbouncer_cpu_us={cpu_of('pgbouncer', '-high'):.1f}" if 'dbtape' in high and 'pgbouncer' in high and 'haproxy' in high else "")
      + storm_result)
PY
