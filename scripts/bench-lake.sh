#!/usr/bin/env bash
# The event lake: EVENTS (10,000,000) events of all three protocols recorded, turned into
# Parquet by the lake writer's own code (benches/lake.rs: rows per second on one core, with
# and without the derived statement fields, and bytes per event), then one auditor's
# selective question (one user, one week, statement class DDL) asked three ways over the
# same events in the same run: DuckDB over the Parquet objects, `dbtape search` over its
# index, and a full `dbtape export` scan. Sourced by scripts/bench.
set -euo pipefail

EVENTS=${EVENTS:-10000000}
source scripts/bench-common.sh
bench_workdir
[[ -x .services/venv/bin/python ]] || scripts/services start >/dev/null
PY="$ROOT/.services/venv/bin/python"
echo "== building dbtape and the lake bench (release)"
cargo build --locked --release -q
exe=$(cargo bench --locked --bench lake --no-run 2>&1 | grep -o 'target/release/deps/lake-[0-9a-f]*' | head -n 1)
[[ -n $exe ]] || { echo "bench: could not build benches/lake.rs" >&2; exit 1; }
BIN="${MAIN_BIN:-$ROOT/target/release/dbtape}"
echo "== recording $EVENTS events and writing them to the lake (one core)"
EVENTS=$EVENTS LAKE_OUT="$WORK" taskset -c 0 "$exe" --bench | tee "$WORK/writer.out"
WRITER=$(grep '^RESULT lake ' "$WORK/writer.out" | sed 's/^RESULT lake //')
cd "$WORK"
printf '[recording]\ndir = "recordings"\nsigning_key = "key"\n' > review.toml
now_ms() { date +%s%3N; }
median3() { sort -n | sed -n 2p; }
one_core() { taskset -c 0 "$@"; }

# Alice's DDL in the first week of the bench's events (they start on Monday 2026-01-05).
SINCE=2026-01-05T00:00:00Z
UNTIL=2026-01-11T23:59:59.999Z
echo "== the question through DuckDB, dbtape search and a full export scan"
one_core "$PY" - "$WORK" > duckdb.out <<'PY'
import statistics, sys, time
import duckdb
work = sys.argv[1]
con = duckdb.connect()
con.execute("SET threads = 1")
sql = f"""
SELECT count(*) FROM read_parquet('{work}/lake/events/*/*.parquet', hive_partitioning = true)
WHERE event_date BETWEEN '2026-01-05' AND '2026-01-11'
  AND "user" = 'alice' AND db_statement_class = 'DDL'
  AND time >= TIMESTAMPTZ '2026-01-05 00:00:00+00' AND time < TIMESTAMPTZ '2026-01-12 00:00:00+00'
"""
runs = []
for _ in range(3):
    t = time.perf_counter(); n = con.execute(sql).fetchone()[0]; runs.append((time.perf_counter() - t) * 1000)
print(n, round(statistics.median(runs)))
PY
read -r DUCK_HITS DUCK_MS < duckdb.out
t=$(now_ms); one_core "$BIN" index rebuild --config review.toml >/dev/null; INDEX_MS=$(( $(now_ms) - t ))
SEARCH_MS=$(for _ in 1 2 3; do t=$(now_ms); one_core "$BIN" search --config review.toml --count --user alice --class DDL --since "$SINCE" --until "$UNTIL" > search.out; echo $(( $(now_ms) - t )); done | median3)
SEARCH_HITS=$(cat search.out)
SCAN_MS=$(for _ in 1 2 3; do t=$(now_ms); one_core sh -c "\"$BIN\" export --config review.toml --user alice --since $SINCE --until $UNTIL | grep -c '\"db_statement_class\":\"DDL\"'" > scan.out; echo $(( $(now_ms) - t )); done | median3)
SCAN_HITS=$(cat scan.out)
echo "   DuckDB: $DUCK_HITS events in $DUCK_MS ms; dbtape search: $SEARCH_HITS in $SEARCH_MS ms (index built in $INDEX_MS ms); export scan: $SCAN_HITS in $SCAN_MS ms"
if [[ $DUCK_HITS != "$SEARCH_HITS" || $DUCK_HITS != "$SCAN_HITS" || $DUCK_HITS == 0 ]]; then
    echo "bench: the three answers differ (or found nothing)" >&2
    exit 1
fi
echo "RESULT lake $WRITER duckdb_ms=$DUCK_MS search_ms=$SEARCH_MS scan_ms=$SCAN_MS hits=$DUCK_HITS"
