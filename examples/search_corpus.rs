//! Writes a corpus of realistic recordings for `scripts/bench search`: many sessions by many
//! users over 30 days, a PostgreSQL mix of reads, writes, transactions, errors and the odd
//! DDL or GRANT, each query followed by its result. Sealed and signed by the real recorder.
//!
//!     search_corpus <dir> <events>   (recordings in <dir>/recordings, key in <dir>/key)

use std::sync::Arc;

use dbtape::audit::{ConnectionMeta, DatabaseMeta, EventBody, Protocol, ServerMeta, SessionContext, Status, UserMeta};
use dbtape::recording::{Recorder, RecorderConfig};
use dbtape::signing::Signer;

const EVENTS_PER_SESSION: u64 = 1_000;
const DAY_MS: i64 = 86_400_000;
/// 2026-10-01T00:00:00Z: the corpus covers the 30 days from here.
pub const T0: i64 = 1_790_812_800_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).ok_or("usage: search_corpus <dir> <events>")?);
    let events: u64 = args.get(2).ok_or("usage: search_corpus <dir> <events>")?.parse()?;
    let signer = Arc::new(Signer::load_or_generate(&dir.join("key"))?);
    let recorder = Recorder::start(RecorderConfig::new(dir.join("recordings")), signer)?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let sessions = events.div_ceil(EVENTS_PER_SESSION);
    for s in 0..sessions {
        let user = format!("u{:02}", next() % 50);
        let db = ["orders", "payments", "analytics"][(next() % 3) as usize];
        let start = T0 + (next() % (30 * DAY_MS as u64)) as i64;
        let ctx = context(&user, db);
        let log = recorder.open_at(ctx, start)?;
        for i in 0..EVENTS_PER_SESSION.min(events - s * EVENTS_PER_SESSION) {
            let time = start + i as i64 * 100;
            let r = next();
            let body = if i % 2 == 1 {
                if r % 50 == 0 {
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
                }
            } else {
                EventBody::Query { query: statement(r), parameters: vec![], db_name: None }
            };
            log.append(&body, time)?;
        }
        runtime.block_on(log.close())?;
    }
    recorder.shutdown();
    println!("{sessions} sessions, {events} events");
    Ok(())
}

fn statement(r: u64) -> String {
    let id = (r >> 16) % 1_000_000;
    match r % 2000 {
        0 => format!("GRANT SELECT ON payments TO analyst_{}", id % 20),
        1 => format!("DROP TABLE tmp_export_{}", id % 1000),
        2 => format!("CREATE INDEX ON orders_archive_{} (created_at)", id % 100),
        3..=4 => format!("INSERT INTO refunds (order_id, reason) VALUES ({id}, 'damaged in transit')"),
        5..=40 => "SET statement_timeout = '30s'".to_string(),
        n => match n % 6 {
            0 => format!("SELECT abalance FROM pgbench_accounts WHERE aid = {id}"),
            1 => format!("UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {id}", (r >> 40) % 5000),
            2 => format!("SELECT o.id, o.total, o.status FROM orders o WHERE o.customer_id = {id} ORDER BY o.created_at DESC LIMIT 20"),
            3 => format!("INSERT INTO payments (order_id, amount, currency) VALUES ({id}, {}, 'EUR')", (r >> 40) % 100_000),
            4 => "BEGIN".to_string(),
            _ => "COMMIT".to_string(),
        },
    }
}

fn context(user: &str, db: &str) -> SessionContext {
    SessionContext {
        sid: uuid::Uuid::new_v4().to_string(),
        cluster_name: "prod".into(),
        user: UserMeta { user: user.into(), aws_role_arn: String::new() },
        database: DatabaseMeta {
            service: db.into(),
            protocol: Protocol::Postgres,
            uri: format!("{db}-db:5432"),
            name: db.into(),
            user: "app".into(),
            labels: Default::default(),
            aws_region: String::new(),
            db_type: "rds".into(),
        },
        server: ServerMeta::default(),
        connection: ConnectionMeta { local_addr: String::new(), remote_addr: "10.0.0.7:50000".into(), user_agent: "psql".into() },
    }
}
