#!/usr/bin/env bash
# Soak: CLIENTS (200) concurrent pgbench sessions for DURATION (60 s) through dbtape's
# PostgreSQL path, strict mode, uploads to S3 (moto, signatures checked) on, with long
# sessions sent in parts while they run. Samples dbtape's memory every 5 s; afterwards checks
# that every recording reached the bucket and verifies there, and that the bucket holds one
# query event per transaction pgbench reports. Sourced by scripts/bench.
set -euo pipefail

DURATION=${DURATION:-60}
CLIENTS=${CLIENTS:-200}

source scripts/bench-common.sh
bench_workdir
echo "== building dbtape (release)"
cargo build --locked --release -q
BIN="$ROOT/target/release/dbtape"
scripts/services start
set -a; source .services/env; set +a
trap 'bench_cleanup; scripts/services stop >/dev/null 2>&1 || true' EXIT
chmod 755 "$WORK"

export PGPASSWORD=$PG_PASSWORD
DIRECT="host=localhost port=$PG_PORT user=postgres dbname=postgres sslmode=verify-full sslrootcert=$CERTS/ca.crt"
pgbench -i -s 10 -q "$DIRECT" >/dev/null 2>&1

# The proxy's own AWS identity in moto, and a bucket of its own.
export AWS_ACCESS_KEY_ID=$MOTO_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$MOTO_SECRET_ACCESS_KEY
: > "$WORK/aws-empty"
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE="$WORK/aws-empty" AWS_SHARED_CREDENTIALS_FILE="$WORK/aws-empty"
BUCKET="soak-$(date +%s)"
"$SERVICES_VENV/bin/python" -c "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1').create_bucket(Bucket=sys.argv[2])" "$AWS_ENDPOINT" "$BUCKET"

PORT=$(free_port)
ADMIN=$(free_port)
VERIFIER=$(echo "$PG_PASSWORD" | "$BIN" user add postgres --password-stdin | sed -n 's/^scram_verifier = //p')
export BENCH_PG_PASSWORD=$PG_PASSWORD
cat > "$WORK/dbtape.toml" <<CONF
[server]
admin_listen = "127.0.0.1:$ADMIN"
max_pending_logins_per_source = 256
[recording]
dir = "recordings"
signing_key = "key"
mode = "strict"
fsync = "batch"
[storage.s3]
bucket = "$BUCKET"
prefix = "soak/"
region = "us-east-1"
endpoint = "$AWS_ENDPOINT"
force_path_style = true
part_size = 262144
scan_interval = "2s"
[[databases]]
name = "bench"
protocol = "postgres"
listen = "127.0.0.1:$PORT"
upstream = "postgres://localhost:$PG_PORT/postgres"
[databases.client_tls]
mode = "required"
cert = "$CERTS/server.crt"
key = "$CERTS/server.key"
[databases.upstream_tls]
ca = "$CERTS/ca.crt"
[databases.auth]
password = { env = "BENCH_PG_PASSWORD" }
[[users]]
name = "postgres"
scram_verifier = $VERIFIER
[[users.grants]]
database = "bench"
db_users = ["postgres"]
CONF
cd "$WORK"
setsid "$BIN" serve --config dbtape.toml 2> dbtape.log &
DBTAPE_PID=$!
PIDS+=($DBTAPE_PID)
wait_port "$PORT"
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$DBTAPE_PID/status"; }

echo "== $CLIENTS sessions for ${DURATION}s through dbtape (select-only, TLS, strict, uploads on)"
before=$(cpu_ticks "$DBTAPE_PID")
pgbench -n -S -c "$CLIENTS" -j 2 -T "$DURATION" -P 10 \
    "host=localhost port=$PORT user=postgres dbname=postgres sslmode=require" > pgbench.out 2> pgbench.err &
LOAD=$!
SAMPLES=()
while kill -0 "$LOAD" 2>/dev/null; do
    SAMPLES+=("$(rss_kib)")
    sleep 5
done
wait "$LOAD" || { cat pgbench.err >&2; exit 1; }
cpu=$(( $(cpu_ticks "$DBTAPE_PID") - before ))
grep -E '^progress' pgbench.err | sed 's/^/  /' || true
TX=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' pgbench.out)
TPS=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' pgbench.out | head -n 1)
echo "  rss samples (KiB, every 5 s): ${SAMPLES[*]}"
METRICS=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$ADMIN/metrics').read().decode())")
echo "$METRICS" | grep -E '^dbtape_(sessions_total|queries_total|upload|uploads|recorded_bytes)' | grep -v 'mongodb\|dynamodb' | sed 's/^/  /'

kill -TERM "$DBTAPE_PID"
wait "$DBTAPE_PID" 2>/dev/null || true
# Whatever the last bounded pass at shutdown left: `dbtape upload` drains it.
"$BIN" upload --config dbtape.toml | tail -n 1
REC=$(ls recordings/*.dbt | wc -l)
UPLOADED=$(ls recordings/*.uploaded.json 2>/dev/null | wc -l)
echo "== from the bucket alone"
"$BIN" verify --all --source s3 --dir from-bucket --config dbtape.toml > verify.out || true
VERIFIED=$(grep -c '  OK  ' verify.out || true)
RECORDED=$("$BIN" export --source s3 --dir from-bucket --config dbtape.toml --event db.session.query | grep -c 'SELECT abalance FROM pgbench_accounts' || true)
FIRST=${SAMPLES[2]:-${SAMPLES[0]}}
LAST=${SAMPLES[-1]}
echo "  sessions $REC, uploaded $UPLOADED, verified from the bucket $VERIFIED"
echo "  transactions pgbench reports $TX, query events in the bucket $RECORDED"
echo "  dbtape rss: $((FIRST / 1024)) MiB at 10 s, $((LAST / 1024)) MiB at the end; cpu $(( cpu * 1000000 / $(getconf CLK_TCK) / (TX > 0 ? TX : 1) )) us/tx"
LOST=$(( TX - RECORDED ))
echo "RESULT soak clients=$CLIENTS seconds=$DURATION tps=$TPS transactions=$TX recorded=$RECORDED lost=$LOST sessions=$REC uploaded=$UPLOADED verified=$VERIFIED rss_mib_10s=$((FIRST / 1024)) rss_mib_end=$((LAST / 1024))"
[[ $LOST -eq 0 && $VERIFIED -eq $REC && $UPLOADED -eq $REC ]]
