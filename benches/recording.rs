//! Recording throughput: events per second written (batch fsync) and exported, and bytes
//! per event on disk, for a realistic mix of ~300-byte query events.
//!
//! Criterion measures both paths; afterwards a direct run prints the figures as one line:
//! `RESULT recording write_eps=… export_eps=… bytes_per_event=…`. Run it through
//! `scripts/bench recording`, which pins it to one core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use dbtape::audit::{ConnectionMeta, DatabaseMeta, EventBody, Protocol, ServerMeta, SessionContext, Status, UserMeta};
use dbtape::recording::{Recorder, RecorderConfig, RecordingStore};
use dbtape::replay::export::{export, ExportFilter};
use dbtape::signing::Signer;

const EVENTS: u64 = 200_000;

fn context() -> SessionContext {
    SessionContext {
        sid: uuid::Uuid::new_v4().to_string(),
        cluster_name: "prod".into(),
        user: UserMeta { user: "alice".into(), aws_role_arn: String::new() },
        database: DatabaseMeta {
            service: "orders".into(),
            protocol: Protocol::Postgres,
            uri: "orders-db:5432".into(),
            name: "orders".into(),
            user: "app".into(),
            labels: Default::default(),
            aws_region: String::new(),
            db_type: "rds".into(),
        },
        server: ServerMeta::default(),
        connection: ConnectionMeta::default(),
    }
}

/// A pgbench-like mix: mostly point reads and small updates with varying keys, each query
/// followed by its result, with an occasional error.
fn workload(n: u64) -> Vec<EventBody> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|i| {
            let r = next();
            if i % 2 == 1 {
                return if r % 50 == 0 {
                    EventBody::Result {
                        status: Status::failed(
                            "ERROR: duplicate key value violates unique constraint \"orders_pkey\" (SQLSTATE 23505)",
                            "",
                        ),
                        affected_records: 0,
                        query_ei: Some(i - 1),
                    }
                } else {
                    EventBody::Result { status: Status::ok(), affected_records: r % 3, query_ei: Some(i - 1) }
                };
            }
            let id = r % 1_000_000;
            let query = match r % 5 {
                0 => format!("SELECT abalance FROM pgbench_accounts WHERE aid = {id};"),
                1 => format!("UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {id};", (r >> 20) % 5000),
                2 => {
                    format!("SELECT o.id, o.total, o.status FROM orders o WHERE o.customer_id = {id} ORDER BY o.created_at DESC LIMIT 20;")
                }
                3 => format!(
                    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({}, {}, {id}, {}, CURRENT_TIMESTAMP);",
                    r % 100,
                    r % 10,
                    (r >> 24) % 5000
                ),
                _ => "BEGIN;".to_string(),
            };
            EventBody::Query { query, parameters: vec![], db_name: None }
        })
        .collect()
}

/// A binary-protocol driver's session (asyncpg, pgx): each statement a Bind of five binary
/// parameters (int4, bytea, jsonb, text, timestamp) with their types, an Execute and a
/// result; the statement itself parsed once.
fn binary_bind_workload(n: u64) -> Vec<EventBody> {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let types: Arc<[u32]> = Arc::from([23u32, 17, 3802, 25, 1114]);
    let mut events = vec![EventBody::PostgresParse {
        statement_name: "__asyncpg_stmt_1__".into(),
        query: "UPDATE accounts SET payload = $3, note = $4, seen = $5, blob = $2 WHERE id = $1".into(),
    }];
    for i in 0..n / 3 {
        let id = (i as i32).wrapping_mul(7919);
        let mut json = vec![1u8];
        json.extend_from_slice(format!("{{\"k\": {i}}}").as_bytes());
        let parameters = vec![
            b64(&id.to_be_bytes()),
            b64(&i.to_be_bytes()),
            b64(&json),
            b64(format!("customer {i} note").as_bytes()),
            b64(&(820_000_000_000_000i64 + i as i64 * 1_000_003).to_be_bytes()),
        ];
        events.push(EventBody::PostgresBind {
            statement_name: "__asyncpg_stmt_1__".into(),
            portal_name: String::new(),
            parameters,
            parameter_formats: vec![1; 5],
            parameter_types: Some(types.clone()),
        });
        events.push(EventBody::PostgresExecute { portal_name: String::new() });
        events.push(EventBody::Result { status: Status::ok(), affected_records: 1, query_ei: Some(3 * i + 2) });
    }
    events
}

struct Setup {
    _tmp: tempfile::TempDir,
    recorder: Recorder,
    store: RecordingStore,
}

fn setup() -> Setup {
    setup_with(|_| {})
}

fn setup_with(configure: impl FnOnce(&mut RecorderConfig)) -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("recordings");
    let signer = Arc::new(Signer::load_or_generate(&tmp.path().join("key")).expect("key"));
    let mut config = RecorderConfig::new(&dir);
    configure(&mut config);
    let recorder = Recorder::start(config, signer).expect("recorder");
    Setup { store: RecordingStore::new(&dir), _tmp: tmp, recorder }
}

fn record(setup: &Setup, events: &[EventBody], runtime: &tokio::runtime::Runtime) -> String {
    let ctx = context();
    let sid = ctx.sid.clone();
    let log = setup.recorder.open(ctx).expect("open");
    let t0 = 1_790_000_000_000i64;
    for (i, body) in events.iter().enumerate() {
        log.append(body, t0 + i as i64 / 8).expect("append");
    }
    runtime.block_on(log.close()).expect("close");
    sid
}

fn bench(c: &mut Criterion, runtime: &tokio::runtime::Runtime, events: &[EventBody]) {
    let setup = setup();
    let mut group = c.benchmark_group("recording");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    group.bench_function("write_batch_fsync", |b| b.iter(|| record(&setup, events, runtime)));
    let export_setup = Setup { ..self::setup() };
    record(&export_setup, events, runtime);
    group.bench_function("export", |b| {
        let raw = ExportFilter { raw: true, ..ExportFilter::default() };
        b.iter(|| export(&export_setup.store, &raw, &mut std::io::sink()).expect("export"))
    });
    // With each statement's class, tables and fingerprint derived as it is read.
    group.bench_function("export_enriched", |b| {
        b.iter(|| export(&export_setup.store, &ExportFilter::default(), &mut std::io::sink()).expect("export"))
    });
    group.finish();
    // Binary parameters are decoded when read: what that costs an export.
    let binds = binary_bind_workload(events.len() as u64);
    let mut group = c.benchmark_group("binary_parameters");
    group.throughput(Throughput::Elements(binds.len() as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    let bind_setup = self::setup();
    record(&bind_setup, &binds, runtime);
    group.bench_function("export_raw", |b| {
        let raw = ExportFilter { raw: true, ..ExportFilter::default() };
        b.iter(|| export(&bind_setup.store, &raw, &mut std::io::sink()).expect("export"))
    });
    group.bench_function("export_decoded", |b| {
        b.iter(|| export(&bind_setup.store, &ExportFilter::default(), &mut std::io::sink()).expect("export"))
    });
    group.finish();
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let events = workload(EVENTS);
    let quick = std::env::args().any(|a| a == "--result-only");
    if !quick {
        let mut c = Criterion::default().configure_from_args();
        bench(&mut c, &runtime, &events);
        c.final_summary();
    }
    // Direct measurement for the RESULT line: median of five runs each.
    let setup = setup();
    let mut write = Vec::new();
    let mut sid = String::new();
    for _ in 0..5 {
        let start = Instant::now();
        sid = record(&setup, &events, &runtime);
        write.push(EVENTS as f64 / start.elapsed().as_secs_f64());
    }
    let size = std::fs::metadata(setup.store.recording_path(&sid)).expect("size").len();
    let raw: usize = {
        let mut total = 0;
        let mut stream = dbtape::recording::events::EventStream::open(&setup.store, &sid, false).expect("open");
        stream
            .for_each_event(|line| {
                total += line.len() + 1;
                Ok(true)
            })
            .expect("read");
        total
    };
    let filter = ExportFilter { session: Some(sid.clone()), raw: true, ..ExportFilter::default() };
    let mut export_rates = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let stats = export(&setup.store, &filter, &mut std::io::sink()).expect("export");
        assert_eq!(stats.events, EVENTS);
        export_rates.push(EVENTS as f64 / start.elapsed().as_secs_f64());
    }
    // Side by side in this run: the same events only serialised to memory (the floor any
    // recorder pays), and an export that must parse every line to filter by event type.
    let ctx = context();
    let mut floor = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut buf = Vec::with_capacity(64 << 20);
        for (i, body) in events.iter().enumerate() {
            let event = dbtape::audit::AuditEvent {
                index: i as u64,
                uid: uuid::Uuid::new_v4(),
                time_ms: i as i64,
                context: &ctx,
                body,
                notes: None,
            };
            serde_json::to_writer(&mut buf, &event).expect("serialise");
            buf.push(b'\n');
        }
        std::hint::black_box(&buf);
        floor.push(EVENTS as f64 / start.elapsed().as_secs_f64());
    }
    let filtered =
        ExportFilter { session: Some(sid.clone()), event_types: vec!["db.session.query".into()], raw: true, ..ExportFilter::default() };
    let mut filtered_rates = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        export(&setup.store, &filtered, &mut std::io::sink()).expect("export");
        filtered_rates.push(EVENTS as f64 / start.elapsed().as_secs_f64());
    }
    let (write_eps, floor_eps) = (median(write.clone()), median(floor));
    println!(
        "serialise-only floor {floor_eps:.0} events/s; recorder write {write_eps:.0} events/s = {:.2}x of the floor",
        write_eps / floor_eps
    );
    println!("export filtered by event type (parses every line): {:.0} events/s", median(filtered_rates));
    let enriched = ExportFilter { session: Some(sid.clone()), ..ExportFilter::default() };
    let start = Instant::now();
    export(&setup.store, &enriched, &mut std::io::sink()).expect("export");
    println!(
        "export with each statement's class, tables and fingerprint derived: {:.0} events/s",
        EVENTS as f64 / start.elapsed().as_secs_f64()
    );
    println!(
        "raw JSON {:.0} bytes/event, on disk {:.1} bytes/event (ratio {:.1}x)",
        raw as f64 / EVENTS as f64,
        size as f64 / EVENTS as f64,
        raw as f64 / size as f64
    );
    let short = short_sessions(false);
    let packed = short_sessions(true);
    for (name, at_once, case) in [("own files", SHORT_AT_ONCE, &short), ("packed into segments", PACKED_AT_ONCE, &packed)] {
        println!(
            "short sessions (start, one statement, its result, end), {name}, {at_once} at a time: {:.0} opened and sealed/s, \
             {:.0} µs of CPU ({:.0} sealed per CPU-second), {:.0} bytes on disk and {:.3} files each",
            case.per_s,
            case.cpu_us,
            1e6 / case.cpu_us.max(1.0),
            case.disk_bytes,
            case.files
        );
    }
    println!(
        "RESULT recording write_eps={:.0} export_eps={:.0} bytes_per_event={:.1} sealed_per_s={:.0} short_disk_bytes={:.0} \
         short_cpu_us={:.0} packed_sealed_per_s={:.0} packed_cpu_us={:.0} packed_disk_bytes={:.0}",
        median(write),
        median(export_rates),
        size as f64 / EVENTS as f64,
        short.per_s,
        short.disk_bytes,
        short.cpu_us,
        packed.per_s,
        packed.cpu_us,
        packed.disk_bytes
    );
}

/// Sessions open at once in the short-session case, as a connection storm's clients are.
const SHORT_AT_ONCE: usize = 8;

/// With segments, a session ends at the writer's next batch tick, so as many are open at
/// once as a storm of a few hundred connections a second has within one tick: the rate then
/// shows the recorder's work, not the tick's wait.
const PACKED_AT_ONCE: usize = 256;

struct ShortSessions {
    per_s: f64,
    /// Process CPU (every thread: the caller's and the writer's) per session.
    cpu_us: f64,
    disk_bytes: f64,
    files: f64,
}

/// This process's user and system CPU time so far, every thread's.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// Bytes in 512-byte blocks and regular files under `dir`, its subfolders included.
fn disk_usage(dir: &std::path::Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (b, f) = disk_usage(&entry.path());
            (bytes, files) = (bytes + b, files + f);
        } else if meta.is_file() {
            bytes += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
            files += 1;
        }
    }
    (bytes, files)
}

/// What a connection storm asks of the recorder: sessions of one statement, opened and
/// sealed (trailer, fsyncs, signed manifest, sidecar) as fast as they come, with the
/// default batch fsync. The rate includes the waits for the disk. `packed` turns on
/// `[recording.segments]`: each session starts in memory and is packed at the next tick.
fn short_sessions(packed: bool) -> ShortSessions {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let setup = if packed { setup_with(|c| c.segments = Some(Default::default())) } else { setup() };
    let at_once = if packed { PACKED_AT_ONCE } else { SHORT_AT_ONCE };
    let rounds = 2000 / at_once;
    let t0 = 1_790_000_000_000i64;
    let (start, cpu_before) = (Instant::now(), process_cpu());
    for round in 0..rounds {
        let logs: Vec<_> = (0..at_once).map(|_| setup.recorder.open(context()).expect("open")).collect();
        for log in &logs {
            let at = t0 + round as i64;
            log.append(&EventBody::SessionStart { status: Status::ok(), postgres_pid: Some(4242), upstream_reused: None }, at)
                .expect("append");
            let query = EventBody::Query {
                query: "SELECT abalance FROM pgbench_accounts WHERE aid = 4821;".into(),
                parameters: vec![],
                db_name: None,
            };
            log.append(&query, at).expect("append");
            let result = EventBody::Result { status: Status::ok(), affected_records: 1, query_ei: Some(1) };
            log.append(&result, at).expect("append");
            let moment = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(at).unwrap_or_default();
            log.append(&EventBody::SessionEnd { session_start: moment, session_stop: moment }, at).expect("append");
        }
        runtime.block_on(async {
            let mut closing = tokio::task::JoinSet::new();
            for log in logs {
                closing.spawn(log.close());
            }
            while let Some(done) = closing.join_next().await {
                done.expect("join").expect("seal");
            }
        });
    }
    let sessions = (rounds * at_once) as f64;
    let per_s = sessions / start.elapsed().as_secs_f64();
    let cpu_us = (process_cpu() - cpu_before).as_secs_f64() * 1e6 / sessions;
    let (bytes, files) = disk_usage(setup.store.dir());
    ShortSessions { per_s, cpu_us, disk_bytes: bytes as f64 / sessions, files: files as f64 / sessions }
}
