#!/usr/bin/env bash
# Search: EVENTS (1,000,000) realistic PostgreSQL events in 1,000 signed recordings, then
# three auditor's queries through `dbtape search` (index, then read-back from the verified
# recordings) against the same questions answered by a full scan (`dbtape export | grep`),
# in the same run, on one core. For the choice of library, the same events go into SQLite
# FTS5 (Python's sqlite3, external-content table and a b-tree on user and time) and the same
# text and user/time queries run there. Sourced by scripts/bench.
set -euo pipefail

EVENTS=${EVENTS:-1000000}
source scripts/bench-common.sh
bench_workdir
bench_build search_corpus
cd "$WORK"
echo "== writing $EVENTS events"
"$LOAD" "$WORK" "$EVENTS"
printf '[recording]\ndir = "recordings"\nsigning_key = "key"\n' > review.toml
REC_BYTES=$(du -sb recordings | cut -f1)
now_ms() { date +%s%3N; }
one_core() { taskset -c 0 "$@"; }

t=$(now_ms); one_core "$BIN" index rebuild --config review.toml; BUILD_MS=$(( $(now_ms) - t ))
INDEX_BYTES=$(du -sb recordings/index | cut -f1)
REC_BYTES=$(( REC_BYTES ))

# Three questions, each as a search and as a scan: the median of 3 runs of each.
median3() { sort -n | sed -n 2p; }
time_search() { for _ in 1 2 3; do t=$(now_ms); one_core "$BIN" search --config review.toml --count "$@" > count.out; echo $(( $(now_ms) - t )); done | median3; }
time_scan() { for _ in 1 2 3; do t=$(now_ms); one_core sh -c "$1" > scan.out; echo $(( $(now_ms) - t )); done | median3; }

declare -A SEARCH_MS SCAN_MS HITS SCANNED
q_text=(--text '"damaged in transit"' --event db.session.query)
q_user=(--user u07 --since 2026-10-10 --until 2026-10-11 --event db.session.query)
q_class=(--class ROLE)
SEARCH_MS[text]=$(time_search "${q_text[@]}"); HITS[text]=$(cat count.out)
SCAN_MS[text]=$(time_scan "\"$BIN\" export --raw --config review.toml --event db.session.query | grep -c 'damaged in transit'"); SCANNED[text]=$(cat scan.out)
SEARCH_MS[user]=$(time_search "${q_user[@]}"); HITS[user]=$(cat count.out)
SCAN_MS[user]=$(time_scan "\"$BIN\" export --raw --config review.toml --user u07 --since 2026-10-10 --until 2026-10-11 --event db.session.query | wc -l"); SCANNED[user]=$(cat scan.out)
SEARCH_MS[class]=$(time_search "${q_class[@]}"); HITS[class]=$(cat count.out)
SCAN_MS[class]=$(time_scan "\"$BIN\" export --raw --config review.toml --event db.session.query | grep -cE '\"db_query\":\"(GRANT|REVOKE) '"); SCANNED[class]=$(cat scan.out)

echo "== SQLite FTS5 on the same events (Python's sqlite3)"
"$BIN" export --raw --config review.toml > events.jsonl
python3 - "$WORK" <<'PY' | tee sqlite.out
import json, os, sqlite3, statistics, sys, time
from datetime import datetime
work = sys.argv[1]
db = os.path.join(work, "fts.db")
con = sqlite3.connect(db)
con.executescript("""
PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
CREATE TABLE ev(id INTEGER PRIMARY KEY, sid TEXT, ei INTEGER, ts INTEGER, user TEXT, event TEXT, text TEXT);
CREATE VIRTUAL TABLE ev_fts USING fts5(text, content='ev', content_rowid='id');
""")
def ms(t):
    return int(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000)
t0 = time.time()
rows = []
with open(os.path.join(work, "events.jsonl")) as f:
    for line in f:
        e = json.loads(line)
        text = e.get("db_query") or e.get("error") or ""
        rows.append((e["sid"], e["ei"], ms(e["time"]), e.get("user", ""), e["event"], text))
rows.sort(key=lambda r: r[2])
con.executemany("INSERT INTO ev(sid, ei, ts, user, event, text) VALUES (?,?,?,?,?,?)", rows)
con.execute("INSERT INTO ev_fts(ev_fts) VALUES('rebuild')")
con.execute("CREATE INDEX ev_user_ts ON ev(user, ts)")
con.commit()
build = time.time() - t0
con.execute("VACUUM")
size = os.path.getsize(db)
def timed(sql, args):
    runs = []
    for _ in range(3):
        t = time.time(); n = con.execute(sql, args).fetchone()[0]; runs.append((time.time() - t) * 1000)
    return n, statistics.median(runs)
since, until = ms("2026-10-10T00:00:00Z"), ms("2026-10-11T00:00:00Z")
n1, t1 = timed("SELECT count(*) FROM ev WHERE event='db.session.query' AND id IN (SELECT rowid FROM ev_fts WHERE ev_fts MATCH ?)", ('"damaged in transit"',))
n2, t2 = timed("SELECT count(*) FROM ev WHERE user=? AND ts BETWEEN ? AND ?", ("u07", since, until))
print(f"sqlite build_s={build:.1f} bytes={size} text_hits={n1} text_ms={t1:.1f} user_hits={n2} user_ms={t2:.1f}")
PY

echo "== dbtape search: index (tantivy) and read-back from verified recordings, one core"
printf '  %-38s %8s %10s %10s\n' query hits search_ms scan_ms
for q in text user class; do
    printf '  %-38s %8s %10s %10s\n' "$q" "${HITS[$q]}" "${SEARCH_MS[$q]}" "${SCAN_MS[$q]}"
    [[ ${HITS[$q]} == "${SCANNED[$q]}" ]] || echo "  MISMATCH: the scan found ${SCANNED[$q]}" >&2
done
echo "  index: built in ${BUILD_MS} ms, $INDEX_BYTES bytes for $REC_BYTES bytes of recordings ($(( INDEX_BYTES * 100 / REC_BYTES ))%)"
WORST=$(printf '%s\n' "${SEARCH_MS[@]}" | sort -n | tail -n 1)
echo "RESULT search events=$EVENTS index_ms=$WORST scan_ms=${SCAN_MS[text]} index_bytes_per_event=$(( INDEX_BYTES / EVENTS )).$(( INDEX_BYTES * 10 / EVENTS % 10 )) index_build_ms=$BUILD_MS text_ms=${SEARCH_MS[text]}/${SCAN_MS[text]} user_ms=${SEARCH_MS[user]}/${SCAN_MS[user]} class_ms=${SEARCH_MS[class]}/${SCAN_MS[class]} recording_bytes_per_event=$(( REC_BYTES / EVENTS ))"
