#!/usr/bin/env bash
# The review console at scale: SESSIONS (100,000) recorded sessions holding EVENTS
# (1,000,000) events, and one session of BIG_EVENTS (1,000,000), written by benches/review.rs;
# then `dbtape review` serves them, pinned to one core, and curl times (median of 5, warm, TLS
# handshake included) the first sessions page, a filtered deep page (20 pages in by keyset),
# a search page, and opening the big session (its page and its first screen of steps).
# Sourced by scripts/bench.
set -euo pipefail

source scripts/bench-common.sh
bench_workdir
bench_need curl
[[ -f .services/certs/server.crt ]] || scripts/services start postgres >/dev/null
CERTS="$ROOT/.services/certs"
echo "== building dbtape and the review bench (release)"
cargo build --locked --release -q
exe=$(cargo bench --locked --bench review --no-run 2>&1 | grep -o 'target/release/deps/review-[0-9a-f]*' | head -n 1)
[[ -n $exe ]] || { echo "bench: could not build benches/review.rs" >&2; exit 1; }
BIN="${MAIN_BIN:-$ROOT/target/release/dbtape}"
echo "== recording ${SESSIONS:-100000} sessions and a ${BIG_EVENTS:-1000000}-event one"
REVIEW_OUT="$WORK" "$exe" --bench | tee "$WORK/generator.out"
BIG=$(awk '/^BIG /{print $2}' "$WORK/generator.out")
PORT=$(free_port)
cd "$WORK"
cat > review.toml <<CONF
[recording]
dir = "recordings"
signing_key = "key"

[review]
listen = "127.0.0.1:$PORT"
tls_cert = "$CERTS/server.crt"
tls_key = "$CERTS/server.key"
CONF
echo "bench-reviewer-password" | "$BIN" reviewer add auditor --config review.toml --password-stdin >/dev/null
t=$(date +%s%3N); "$BIN" index rebuild --config review.toml >/dev/null; INDEX_MS=$(( $(date +%s%3N) - t ))
taskset -c 0 "$BIN" review --config review.toml 2> review.log &
PIDS+=($!)
wait_port "$PORT"
URL="https://localhost:$PORT"
C=(curl -s --cacert "$CERTS/ca.crt" -b jar -c jar)
csrf=$("${C[@]}" "$URL/login" | grep -o 'name="csrf" value="[0-9a-f]*"' | grep -o '[0-9a-f]\{64\}')
"${C[@]}" -o /dev/null --data-urlencode name=auditor --data-urlencode password=bench-reviewer-password --data-urlencode "csrf=$csrf" "$URL/login"
# Milliseconds for one request, the median of 5 after one that warms the caches.
timed() {
    "${C[@]}" -o /dev/null "$1"
    for _ in 1 2 3 4 5; do "${C[@]}" -o /dev/null -w '%{time_total}\n' "$1"; done | sort -n | sed -n 3p | awk '{printf "%d", $1 * 1000}'
}
SESSIONS_MS=$(timed "$URL/sessions")
# DEEP_PAGES (20) pages into alice's PostgreSQL sessions, by the keyset cursor each page links to.
page="$URL/sessions?user=alice&protocol=postgres"
for _ in $(seq "${DEEP_PAGES:-20}"); do
    after=$("${C[@]}" "$page" | grep -o 'name="after" value="[^"]*"' | sed 's/.*value="//; s/"$//')
    [[ -n $after ]] || { echo "bench: ran out of pages" >&2; exit 1; }
    page="$URL/sessions?user=alice&protocol=postgres&after=$after"
done
DEEP_MS=$(timed "$page")
SEARCH_MS=$(timed "$URL/search?text=overdue&user=alice&class=READ")
HITS=$("${C[@]}" "$URL/search?text=overdue&user=alice&class=READ" | grep -c 'class="hit"' || true)
# A question with tens of thousands of hits: the page shows the first 500, each read back
# from its recording after the recording's signature and hash are checked.
SEARCH_FULL_MS=$(timed "$URL/search?text=overdue")
FULL_HITS=$("${C[@]}" "$URL/search?text=overdue" | grep -c 'class="hit"' || true)
OPEN_PAGE_MS=$(timed "$URL/sessions/$BIG")
OPEN_STEPS_MS=$(timed "$URL/api/sessions/$BIG/steps?from=0&limit=200")
OPEN_MS=$(( OPEN_PAGE_MS + OPEN_STEPS_MS ))
echo "   sessions page $SESSIONS_MS ms; 20 pages deep, filtered $DEEP_MS ms; search ($HITS hits shown) $SEARCH_MS ms; a full page of search hits ($FULL_HITS shown) $SEARCH_FULL_MS ms; the big session's page $OPEN_PAGE_MS ms + first 200 steps $OPEN_STEPS_MS ms (index built in $INDEX_MS ms)"
echo "RESULT review sessions_ms=$SESSIONS_MS deep_page_ms=$DEEP_MS search_ms=$SEARCH_MS search_full_page_ms=$SEARCH_FULL_MS open_session_ms=$OPEN_MS"
