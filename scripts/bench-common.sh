#!/usr/bin/env bash
# Helpers the protocol benchmarks share, sourced by scripts/bench-pg.sh, bench-mongo.sh and
# bench-dynamodb.sh. The helpers that start processes need WORK (a scratch folder) and PIDS
# (processes to stop): bench_workdir sets both, or the bench sets them itself.

# Installs, from Debian, what the bench needs: each argument is COMMAND[:PACKAGES], the
# packages (comma-separated, default COMMAND) installed when COMMAND is missing.
bench_need() {
    local item need=() pkgs
    for item in "$@"; do
        command -v "${item%%:*}" >/dev/null && continue
        if [[ $item == *:* ]]; then IFS=, read -r -a pkgs <<< "${item#*:}"; need+=("${pkgs[@]}"); else need+=("$item"); fi
    done
    if ((${#need[@]})); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

# dbtape and one load client (examples/NAME.rs) in release; sets BIN and LOAD.
bench_build() { # EXAMPLE
    echo "== building dbtape and the load client (release)"
    cargo build --locked --release -q
    cargo build --locked --release -q --example "$1"
    # MAIN_BIN=path measures another dbtape build (an A/B run against this tree's).
    BIN="${MAIN_BIN:-$ROOT/target/release/dbtape}"
    # PROFILE=1: the same build with line tables, so perf attributes time to lines.
    if [[ ${PROFILE:-0} == 1 && -z ${MAIN_BIN:-} ]]; then
        cargo build --locked --profile profiling -q
        BIN="$ROOT/target/profiling/dbtape"
    fi
    LOAD="$ROOT/target/release/examples/$1"
}

# A scratch folder WORK and the list PIDS of processes started, both cleaned up at exit.
bench_workdir() {
    WORK=$(mktemp -d)
    PIDS=()
    trap bench_cleanup EXIT
}
bench_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.5)" 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
# utime + stime of a process and its threads, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Waits (at most 120 s) until each PID has used at most 2 clock ticks of CPU in a second. A
# dbtape path's indexer indexes the events just recorded after the path ends; measured while
# the next path runs, it cost that path a fifth of its throughput on a 2-core machine.
settle() { # PID...
    local pid before start=$SECONDS deadline=$((SECONDS + 120))
    for pid in "$@"; do
        [[ -n $pid && -r /proc/$pid/stat ]] || continue
        while (( SECONDS < deadline )); do
            before=$(cpu_ticks "$pid")
            sleep 1
            (( $(cpu_ticks "$pid") - before <= 2 )) && break
        done
    done
    (( SECONDS - start > 1 )) && echo "   (waited $((SECONDS - start)) s for the proxies to go quiet)"
    return 0
}

# haproxy as a plain TCP passthrough from 127.0.0.1:LISTEN to 127.0.0.1:TARGET (any TLS stays
# end to end); sets HAPROXY_PID. Every server runs in its own session, as a service would:
# the kernel's autogroup scheduler shares CPU between sessions first, so a proxy left in the
# script's session would share one scheduling group with the load generator.
start_haproxy() { # NAME LISTEN TARGET
    cat > "$WORK/haproxy.cfg" <<CONF
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 5m
    timeout server 5m
listen $1
    bind 127.0.0.1:$2
    server $1 127.0.0.1:$3
CONF
    setsid haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.log" 2>&1 &
    HAPROXY_PID=$!
    PIDS+=($HAPROXY_PID)
}

# ALT_BIN=path: another dbtape build (today's main, say) as a fourth path "alt", with the
# same config on its own port and folder, so an A/B comparison is measured in one run; sets
# ALT_PORT and ALT_PID. ENV holds extra VAR=value words for its environment.
start_alt() { # CONFIG DBTAPE_PORT [ENV...]
    ALT_PORT=""
    [[ -n ${ALT_BIN:-} ]] || return 0
    local config=$1 port=$2
    shift 2
    ALT_PORT=$(free_port)
    mkdir -p "$WORK/alt"
    # ALT_SEGMENTS=off: the alternative is a build from before [recording.segments].
    local strip='/^\[recording\.segments\]$/,/^enabled = /d'
    [[ ${ALT_SEGMENTS:-} == off ]] || strip=''
    sed -e "s/127.0.0.1:$port\"/127.0.0.1:$ALT_PORT\"/" -e "s#$WORK/recordings#$WORK/alt/recordings#" -e "s#$WORK/key#$WORK/alt/key#" \
        -e "$strip" "$config" > "$WORK/alt.toml"
    env "$@" setsid "$ALT_BIN" serve --config "$WORK/alt.toml" > "$WORK/alt.log" 2>&1 &
    ALT_PID=$!
    PIDS+=($ALT_PID)
    wait_port "$ALT_PORT"
}

# ROUNDS interleaved rounds of DURATION over direct, haproxy and dbtape, then the summary and
# one `RESULT NAME …` line. The caller defines `load_of PATH` (runs the load for that path and
# prints its line: `<COUNT>=<n> seconds=<s> p99_us=<p99> [errors=<n>]`) and `pid_of PATH` (the
# proxy's pid, empty for direct). PROFILE=1 profiles dbtape into target/perf-NAME.txt.
bench_rounds() { # NAME COUNT UNIT RATE
    local name=$1 count=$2 unit=$3 rate=$4
    echo "== $ROUNDS round(s) of ${DURATION}s per path, $CLIENTS clients, interleaved"
    for round in $(seq "$ROUNDS"); do
        for path in direct haproxy dbtape ${ALT_BIN:+alt}; do
            local pid before=0 perf= out n secs p99 errors cpu_us=""
            pid=$(pid_of $path)
            [[ -n $pid ]] && before=$(cpu_ticks "$pid")
            if [[ $path == dbtape && -n ${PROFILE:-} ]]; then
                perf record -F 999 -g -p "$pid" -o "$ROOT/target/perf-$name.data" -- sleep "$DURATION" >/dev/null 2>&1 &
                perf=$!
            fi
            out=$(load_of $path)
            if [[ -n $perf ]]; then
                wait "$perf" || true
                perf report -i "$ROOT/target/perf-$name.data" --no-children --percent-limit 0.7 --stdio 2>/dev/null |
                    grep -E '^ +[0-9]' > "$ROOT/target/perf-$name.txt" || true
            fi
            n=$(sed -n "s/.*$count=\([0-9]*\).*/\1/p" <<< "$out")
            secs=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<< "$out")
            p99=$(sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<< "$out")
            errors=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<< "$out")
            [[ ${errors:-0} == 0 ]] || { echo "bench: $path answered $errors $unit(s) with errors" >&2; exit 1; }
            if [[ -n $pid ]]; then
                cpu_us=$(python3 -c "print(f'{($(cpu_ticks "$pid") - $before) * 1e6 / $(getconf CLK_TCK) / $n:.1f}')")
            fi
            python3 -c "print(f'   round $round  $path: {$n / $secs:9.0f} $unit/s  p99 {$p99 / 1000:.2f} ms' + ('  proxy CPU $cpu_us us/$unit' if '$cpu_us' else ''))"
            echo "$path $(python3 -c "print($n / $secs)") $p99 $cpu_us" >> "$WORK/results"
            settle "$pid"
        done
    done
    python3 - "$WORK/results" "$name" "$unit" "$rate" "${RESULT_EXTRA:-}" <<'PY'
import statistics, sys
path, name, unit, rate = sys.argv[1:5]
rows = [line.split() for line in open(path)]
def mean(p, col):
    values = [float(r[col]) for r in rows if r[0] == p and len(r) > col]
    return statistics.mean(values) if values else 0.0
speed = {p: mean(p, 1) for p in ("direct", "haproxy", "dbtape")}
cpu = {p: mean(p, 3) for p in ("haproxy", "dbtape")}
alt = mean("alt", 1)
rounds = [float(r[1]) for r in rows if r[0] == "dbtape"]
ha_rounds = [float(r[1]) for r in rows if r[0] == "haproxy"]
ratios = ", ".join(f"{d / h:.2f}" for d, h in zip(rounds, ha_rounds))
print(f"   dbtape/haproxy {speed['dbtape'] / speed['haproxy']:.2f} (rounds {ratios}); dbtape/direct {speed['dbtape'] / speed['direct']:.2f}")
print(f"   proxy CPU per {unit}: dbtape {cpu['dbtape']:.1f} us, haproxy {cpu['haproxy']:.1f} us")
extra = ""
if alt:
    alt_rounds = [float(r[1]) for r in rows if r[0] == "alt"]
    print(f"   dbtape/alt {speed['dbtape'] / alt:.2f} (rounds {', '.join(f'{d / a:.2f}' for d, a in zip(rounds, alt_rounds))}); "
          f"proxy CPU per {unit}: alt {mean('alt', 3):.1f} us")
    extra = f" alt_{rate}={alt:.0f} alt_cpu_us={mean('alt', 3):.1f} alt_p99_us={mean('alt', 2):.0f}"
print(f"RESULT {name} direct_{rate}={speed['direct']:.0f} haproxy_{rate}={speed['haproxy']:.0f} dbtape_{rate}={speed['dbtape']:.0f} "
      f"dbtape_cpu_us={cpu['dbtape']:.1f} haproxy_cpu_us={cpu['haproxy']:.1f} dbtape_p99_us={mean('dbtape', 2):.0f} direct_p99_us={mean('direct', 2):.0f}{extra}"
      + (" " + sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] else ""))
PY
}

# storm_rounds KEY WHAT SCALE CPU_UNIT RUNNER PATH...: STORM_ROUNDS (3) interleaved rounds of
# a connection storm. `RUNNER PATH` runs one round's load and prints "KEY=<n> seconds=<s>";
# each round appends "path rate cpu" to $WORK/storm, the proxy's CPU per item times SCALE
# (1e3 for ms, 1e6 for µs). Uses the script's pid_of.
storm_rounds() {
    local key=$1 what=$2 scale=$3 cpu_unit=$4 runner=$5
    shift 5
    : > "$WORK/storm"
    local round path pid before out n secs cpu
    for round in $(seq "${STORM_ROUNDS:-3}"); do
        for path in "$@"; do
            pid=$(pid_of "$path"); before=0; cpu=""
            [[ -n $pid ]] && before=$(cpu_ticks "$pid")
            # PROFILE=1: perf of dbtape through its storm rounds, in target/perf-storm-NAME.data.
            local perf=
            if [[ $path == dbtape && -n ${PROFILE:-} ]]; then
                perf record -F 999 -g -p "$pid" -o "$ROOT/target/perf-storm-$round.data" -- sleep "${STORM_DURATION:-8}" >/dev/null 2>&1 &
                perf=$!
            fi
            # SYSCALLS=1: strace's syscall counts of each proxy through its storm rounds.
            local tracer=
            if [[ -n $pid && -n ${SYSCALLS:-} ]]; then
                strace -c -f -p "$pid" -o "$ROOT/target/strace-storm-$path-$round.txt" &
                tracer=$!
            fi
            out=$("$runner" "$path")
            [[ -n $perf ]] && wait "$perf"
            [[ -n $tracer ]] && { kill -INT "$tracer"; wait "$tracer" || true; }
            n=$(sed -n "s/.*$key=\([0-9]*\).*/\1/p" <<< "$out")
            secs=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<< "$out")
            [[ -n $pid ]] && cpu=$(python3 -c "print(($(cpu_ticks "$pid") - $before) * $scale / $(getconf CLK_TCK) / $n)")
            python3 -c "print(f'   storm round $round  $path: {$n / $secs:7.1f} $what' + ('  proxy CPU {:.2f} $cpu_unit'.format($cpu) if '$cpu' else ''))"
            echo "$path $(python3 -c "print($n / $secs)") $cpu" >> "$WORK/storm"
            settle "$pid"
        done
    done
}
