//! The review console's data at scale, for `scripts/bench review`: 100,000 recorded sessions
//! of all three protocols (1,000,000 events among them, over 30 days, twelve users) and one
//! session of 1,000,000 events, signed as the proxy signs them. It prints the big session's
//! id; the script then serves them with `dbtape review` and times its pages.

use std::sync::Arc;

use dbtape::audit::{ConnectionMeta, EventBody, Protocol, SessionContext, Status};
use dbtape::recording::{Recorder, RecorderConfig};
use dbtape::signing::Signer;

mod support;

const USERS: [&str; 12] = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar"];
/// 2026-11-01T00:00:00Z.
const T0_MS: i64 = 1_793_491_200_000;

fn context(protocol: Protocol, user: &str, n: u64) -> SessionContext {
    let mut ctx = support::context(protocol, user);
    ctx.connection = ConnectionMeta {
        local_addr: "10.0.0.1:5432".into(),
        remote_addr: format!("10.1.{}.{}:40000", n % 200, n % 250),
        user_agent: String::new(),
    };
    ctx
}

fn query(n: u64) -> EventBody {
    let query = match n % 20 {
        0 => format!("ALTER TABLE orders ADD COLUMN note_{} text", n % 13),
        1 => format!("SELECT * FROM invoices WHERE customer = {} AND state = 'overdue'", n % 5000),
        _ => format!("SELECT abalance FROM pgbench_accounts WHERE aid = {}", n % 100_000),
    };
    EventBody::Query { query, parameters: vec![], db_name: None }
}

fn main() {
    let out = std::path::PathBuf::from(std::env::var("REVIEW_OUT").expect("REVIEW_OUT: the folder to write"));
    let sessions: u64 = std::env::var("SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let events: u64 = std::env::var("EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let big: u64 = std::env::var("BIG_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let signer = Arc::new(Signer::load_or_generate(&out.join("key")).expect("key"));
    let mut config = RecorderConfig::new(out.join("recordings"));
    config.fsync = dbtape::config::FsyncPolicy::Never;
    let recorder = Recorder::start(config, signer).expect("recorder");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let per_session = (events / sessions).max(2);
    let span_ms = 30 * 86_400_000 / sessions as i64;
    for n in 0..sessions {
        let protocol = [Protocol::Postgres, Protocol::MongoDb, Protocol::DynamoDb][(n % 3) as usize];
        let start = T0_MS + n as i64 * span_ms;
        let log = recorder.open_at(context(protocol, USERS[(n % 12) as usize], n), start).expect("open");
        for i in 0..per_session {
            let body = if i % 2 == 0 {
                query(n + i)
            } else {
                EventBody::Result { status: Status::ok(), affected_records: 1, query_ei: Some(i - 1) }
            };
            log.append(&body, start + i as i64).expect("append");
        }
        runtime.block_on(log.close()).expect("close");
        if n % 10_000 == 0 {
            eprintln!("{n} sessions");
        }
    }
    let start = T0_MS + 30 * 86_400_000;
    let ctx = context(Protocol::Postgres, "alice", 0);
    let sid = ctx.sid.clone();
    let log = recorder.open_at(ctx, start).expect("open");
    for i in 0..big {
        let body =
            if i % 2 == 0 { query(i) } else { EventBody::Result { status: Status::ok(), affected_records: 1, query_ei: Some(i - 1) } };
        log.append(&body, start + i as i64 * 10).expect("append");
    }
    runtime.block_on(log.close()).expect("close");
    drop(recorder);
    println!("BIG {sid}");
}
