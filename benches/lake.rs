//! The event lake's writer, without the bucket: events of all three protocols recorded, then
//! turned into Parquet objects by the writer's own `build_batch` (read, derive the
//! statement fields, sort, encode), as a flush does. Reports rows written per second on one
//! core (with the derived fields, as the lake writes them), and Parquet bytes per event
//! against the recordings' bytes per event. Run through `scripts/bench lake`, pinned to one
//! core; it ends with `RESULT lake …`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use dbtape::audit::{EventBody, Protocol, Status};
use dbtape::lake::journal::Range;
use dbtape::lake::writer::build_batch;
use dbtape::recording::{Recorder, RecorderConfig, RecordingStore};
use dbtape::replay::cursor::Cursor;
use dbtape::signing::Signer;

mod support;
use support::context;

/// A statement of the session's protocol, with varying constants: mostly reads and writes,
/// one in fifty DDL, as a production mix is.
fn statement(protocol: Protocol, r: u64) -> EventBody {
    let id = r % 1_000_000;
    let query = match (protocol, r % 50, r % 4) {
        (Protocol::DynamoDb, _, _) => return dynamodb_request(r),
        (Protocol::Postgres, 0, _) => format!("CREATE INDEX IF NOT EXISTS orders_{} ON orders (customer_id)", r % 7),
        (Protocol::Postgres, 1, _) => format!("DROP TABLE IF EXISTS scratch_{}", r % 11),
        (Protocol::Postgres, _, 0) => format!("SELECT abalance FROM pgbench_accounts WHERE aid = {id}"),
        (Protocol::Postgres, _, 1) => format!("UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {id}", r % 5000),
        (Protocol::Postgres, _, 2) => {
            format!("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES ({}, {}, {id}, {})", r % 100, r % 10, r % 5000)
        }
        (Protocol::Postgres, _, _) => {
            format!("SELECT o.id, o.total FROM orders o WHERE o.customer_id = {id} ORDER BY o.created_at DESC LIMIT 20")
        }
        (_, 0, _) => "OpMsg(Body={\"createIndexes\": \"loans\", \"indexes\": [{\"key\": {\"book\": 1}, \"name\": \"book_1\"}], \"$db\": \"lib\"}, Documents=[], Flags=)".to_string(),
        (_, _, 0 | 1) => format!("OpMsg(Body={{\"find\": \"books\", \"filter\": {{\"_id\": {id}}}, \"$db\": \"lib\"}}, Documents=[], Flags=)"),
        (_, _, _) => {
            format!("OpMsg(Body={{\"insert\": \"loans\", \"$db\": \"lib\"}}, Documents=[{{\"_id\": {id}, \"book\": {}}}], Flags=)", r % 977)
        }
    };
    EventBody::Query { query, parameters: vec![], db_name: None }
}

fn dynamodb_request(r: u64) -> EventBody {
    let (target, body) = match r % 50 {
        0 => ("CreateTable", format!(r#"{{"TableName":"scratch_{}","BillingMode":"PAY_PER_REQUEST"}}"#, r % 5)),
        _ if r.is_multiple_of(2) => ("GetItem", format!(r#"{{"TableName":"orders","Key":{{"id":{{"S":"o-{}"}}}}}}"#, r % 100_000)),
        _ => ("PutItem", format!(r#"{{"TableName":"orders","Item":{{"id":{{"S":"o-{}"}},"total":{{"N":"{}"}}}}}}"#, r % 100_000, r % 977)),
    };
    EventBody::DynamoDbRequest {
        status_code: 200,
        path: "/".into(),
        raw_query: String::new(),
        method: "POST".into(),
        target: format!("DynamoDB_20120810.{target}"),
        body: dbtape::audit::JsonBody::object(body.as_bytes()),
        uri: Some("https://dynamodb.us-east-1.amazonaws.com/".into()),
        failed: false,
    }
}

fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Events of a session (a statement and its result each; DynamoDB requests stand alone).
const SESSION_EVENTS: u64 = 1000;
/// Sessions per batch: a million events, as a busy fleet host's `flush_interval` holds.
const BATCH_SESSIONS: usize = 1000;
/// 2026-01-05T00:00:00Z, a Monday; events are 600 ms apart, so 10 million span ten weeks.
const T0_MS: i64 = 1_767_571_200_000;
const STEP_MS: i64 = 600;
const USERS: [&str; 12] = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar"];

fn main() {
    let events: u64 = std::env::var("EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    // LAKE_OUT keeps the recordings and writes the objects there, for the query comparison
    // `scripts/bench lake` runs next; without it all goes to a temporary folder.
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = std::env::var_os("LAKE_OUT").map(std::path::PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    let dir = out.join("recordings");
    let signer = Arc::new(Signer::load_or_generate(&out.join("key")).expect("key"));
    let recorder = Recorder::start(RecorderConfig::new(&dir), signer).expect("recorder");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let store = RecordingStore::new(&dir);
    let mut batches: Vec<BTreeMap<String, Range>> = vec![BTreeMap::new()];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut written = 0u64;
    let mut session = 0u64;
    while written < events {
        let protocol = [Protocol::Postgres, Protocol::MongoDb, Protocol::DynamoDb][(session % 3) as usize];
        let ctx = context(protocol, USERS[(session / 3 % USERS.len() as u64) as usize]);
        let sid = ctx.sid.clone();
        let log = recorder.open_at(ctx, T0_MS + written as i64 * STEP_MS).expect("open");
        let n = SESSION_EVENTS.min(events - written);
        for i in 0..n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let body = if i % 2 == 0 || protocol == Protocol::DynamoDb {
                statement(protocol, seed)
            } else {
                EventBody::Result { status: Status::ok(), affected_records: seed % 3, query_ei: Some(i) }
            };
            log.append(&body, T0_MS + (written + i) as i64 * STEP_MS).expect("append");
        }
        runtime.block_on(log.close()).expect("close");
        if batches.last().is_some_and(|b| b.len() >= BATCH_SESSIONS) {
            batches.push(BTreeMap::new());
        }
        batches.last_mut().expect("a batch").insert(sid, Range { from: 0, to: n + 1 });
        written += n;
        session += 1;
    }
    drop(recorder);
    let recorded_bytes: u64 = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dbt"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let settings = dbtape::lake::LakeSettings::from_config(&dbtape::config::LakeSection::default(), "proxy-1", "us-east-1");
    // Several passes over a small run, for a median; one over a large one.
    let passes = if events <= 2_000_000 { 3 } else { 1 };
    let run = |derived: bool, keep: bool| {
        let (mut rows, mut bytes, mut cpu, mut wall) = (0u64, 0u64, 0f64, 0f64);
        for (seq, ranges) in batches.iter().enumerate() {
            let (start, cpu_start) = (Instant::now(), thread_cpu_seconds());
            // A fresh enricher each pass: its cache must not carry one pass's statements on.
            let mut enricher = dbtape::statement::enrich::Enricher::for_export(!derived);
            let objects = build_batch(&store, &Cursor::default(), ranges, &settings, &mut enricher).expect("build");
            // This thread's CPU time, not the wall clock's: the machines are shared, and the
            // target is per core. The wall clock's figure is printed beside it.
            cpu += thread_cpu_seconds() - cpu_start;
            wall += start.elapsed().as_secs_f64();
            for object in objects {
                rows += object.rows;
                bytes += object.parquet.len() as u64;
                if keep {
                    let folder = out.join(format!("lake/events/event_date={}", object.day));
                    std::fs::create_dir_all(&folder).expect("lake folder");
                    std::fs::write(folder.join(format!("proxy-1-{seq}.parquet")), &object.parquet).expect("object");
                }
            }
        }
        println!("pass: {rows} rows, {:.0} rows/s of CPU, {:.0} rows/s of wall clock", rows as f64 / cpu, rows as f64 / wall);
        (rows as f64 / cpu, rows, bytes)
    };
    let median = |mut rates: Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let mut derived = Vec::new();
    let (mut rows, mut parquet_bytes) = (0, 0);
    for pass in 0..passes {
        let (rate, r, b) = run(true, pass == 0 && std::env::var_os("LAKE_OUT").is_some());
        (rows, parquet_bytes) = (r, b);
        derived.push(rate);
    }
    let raw: Vec<f64> = (0..passes).map(|_| run(false, false).0).collect();
    let (rate, raw_rate) = (median(derived), median(raw));
    println!("{rows} rows from {session} sessions in {} batches", batches.len());
    println!("lake rows written per second, one core: {rate:.0} with the derived statement fields, {raw_rate:.0} without");
    println!(
        "Parquet {:.1} bytes/event; recordings {:.1} bytes/event",
        parquet_bytes as f64 / rows as f64,
        recorded_bytes as f64 / rows as f64
    );
    println!(
        "RESULT lake events={rows} rows_per_s={rate:.0} rows_per_s_without_derived={raw_rate:.0} parquet_bytes_per_event={:.1} recording_bytes_per_event={:.1}",
        parquet_bytes as f64 / rows as f64,
        recorded_bytes as f64 / rows as f64
    );
}
