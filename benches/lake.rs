//! The event lake's writer, without the bucket: events of all three protocols recorded, then
//! turned into Parquet objects by the writer's own `build_batch` (read, derive the
//! statement fields, sort, encode), as a flush does. Reports rows written per second on one
//! core (with the derived fields, as the lake writes them), and Parquet bytes per event
//! against the recordings' bytes per event. Run through `scripts/bench lake`, pinned to one
//! core; it ends with `RESULT lake …`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use dbtape::audit::{ConnectionMeta, DatabaseMeta, EventBody, Protocol, ServerMeta, SessionContext, Status, UserMeta};
use dbtape::lake::journal::Range;
use dbtape::lake::writer::build_batch;
use dbtape::recording::{Recorder, RecorderConfig, RecordingStore};
use dbtape::replay::cursor::Cursor;
use dbtape::signing::Signer;

fn context(protocol: Protocol, user: &str) -> SessionContext {
    SessionContext {
        sid: uuid::Uuid::new_v4().to_string(),
        cluster_name: "prod".into(),
        user: UserMeta { user: user.into(), aws_role_arn: String::new() },
        database: DatabaseMeta {
            service: format!("{protocol:?}").to_lowercase(),
            protocol,
            uri: "db.internal:5432".into(),
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

/// A statement and its result, of the session's protocol, with varying constants.
fn statement(protocol: Protocol, r: u64) -> EventBody {
    let id = r % 1_000_000;
    let query = match (protocol, r % 4) {
        (Protocol::Postgres, 0) => format!("SELECT abalance FROM pgbench_accounts WHERE aid = {id}"),
        (Protocol::Postgres, 1) => format!("UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {id}", r % 5000),
        (Protocol::Postgres, 2) => {
            format!("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES ({}, {}, {id}, {})", r % 100, r % 10, r % 5000)
        }
        (Protocol::Postgres, _) => {
            format!("SELECT o.id, o.total FROM orders o WHERE o.customer_id = {id} ORDER BY o.created_at DESC LIMIT 20")
        }
        (_, 0 | 1) => format!("OpMsg(Body={{\"find\": \"books\", \"filter\": {{\"_id\": {id}}}, \"$db\": \"lib\"}}, Documents=[], Flags=)"),
        (_, _) => {
            format!("OpMsg(Body={{\"insert\": \"loans\", \"$db\": \"lib\"}}, Documents=[{{\"_id\": {id}, \"book\": {}}}], Flags=)", r % 977)
        }
    };
    EventBody::Query { query, parameters: vec![], db_name: None }
}

fn main() {
    let events: u64 = std::env::var("EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("recordings");
    let signer = Arc::new(Signer::load_or_generate(&tmp.path().join("key")).expect("key"));
    let recorder = Recorder::start(RecorderConfig::new(&dir), signer).expect("recorder");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let store = RecordingStore::new(&dir);
    // Sessions of 1,000 events (a statement and its result each), the protocols in turn.
    let mut ranges = BTreeMap::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let t0 = 1_790_000_000_000i64;
    let mut written = 0u64;
    let mut session = 0u64;
    while written < events {
        let protocol = [Protocol::Postgres, Protocol::MongoDb][(session % 2) as usize];
        let ctx = context(protocol, ["alice", "bob", "carol"][(session % 3) as usize]);
        let sid = ctx.sid.clone();
        let log = recorder.open(ctx).expect("open");
        let n = 1000.min(events - written);
        for i in 0..n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let body = if i % 2 == 0 {
                statement(protocol, seed)
            } else {
                EventBody::Result { status: Status::ok(), affected_records: seed % 3, query_ei: Some(i) }
            };
            log.append(&body, t0 + (written + i) as i64).expect("append");
        }
        runtime.block_on(log.close()).expect("close");
        ranges.insert(sid, Range { from: 0, to: n + 1 });
        written += n;
        session += 1;
    }
    let recorded_bytes: u64 = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dbt"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let settings = dbtape::lake::LakeSettings::from_config(&dbtape::config::LakeSection::default(), "proxy-1", "us-east-1");
    let mut rates = Vec::new();
    let mut parquet_bytes = 0u64;
    let mut rows = 0u64;
    for _ in 0..3 {
        let start = Instant::now();
        // A fresh enricher each run: its cache must not carry one run's statements to the next.
        let mut enricher = dbtape::statement::enrich::Enricher::for_export(false);
        let objects = build_batch(&store, &Cursor::default(), &ranges, &settings, &mut enricher).expect("build");
        let elapsed = start.elapsed().as_secs_f64();
        rows = objects.iter().map(|o| o.rows).sum();
        parquet_bytes = objects.iter().map(|o| o.parquet.len() as u64).sum();
        rates.push(rows as f64 / elapsed);
    }
    rates.sort_by(f64::total_cmp);
    let rate = rates[rates.len() / 2];
    println!("{rows} rows (with session start and end events) from {session} sessions");
    println!("lake rows written per second, one core, derived fields included: {rate:.0}");
    println!(
        "Parquet {:.1} bytes/event; recordings {:.1} bytes/event",
        parquet_bytes as f64 / rows as f64,
        recorded_bytes as f64 / rows as f64
    );
    println!(
        "RESULT lake events={rows} rows_per_s={rate:.0} parquet_bytes_per_event={:.1} recording_bytes_per_event={:.1}",
        parquet_bytes as f64 / rows as f64,
        recorded_bytes as f64 / rows as f64
    );
}
