//! Attacks from outside, through real clients and real bytes, against the real PostgreSQL:
//! what a recorded user, a stranger or a hostile upstream might try. Each test failed on
//! the code before its fix.

mod common;

use common::proxy::{brief, Proxy, ALICE_PASSWORD};
use sha2::Digest;

async fn connect_alice(proxy: &Proxy) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(proxy.addr.port()).user("alice").password(ALICE_PASSWORD).dbname("postgres");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

fn verify_all(proxy: &Proxy) -> (bool, String) {
    let key = proxy.root.path().join("key.pub");
    let out =
        common::dbtape_bin().args(["verify", "--all", "--public-key"]).arg(&key).arg("--dir").arg(proxy.store.dir()).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A query of control bytes (JSON escapes each as six) and a huge binary Bind value used to
/// make frames no reader accepts, hiding everything the session did afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_queries_and_binds_are_stored_cut_and_never_hide_later_events() {
    let mut proxy = Proxy::start().await;
    let client = connect_alice(&proxy).await;
    let control_bytes = "\u{1}".repeat(12 << 20);
    let refused = client.simple_query(&control_bytes).await;
    assert!(refused.is_err(), "PostgreSQL accepted a query of control bytes");
    let blob = vec![0xA5u8; 48 << 20];
    let row = client.query_one("SELECT length($1::bytea)", &[&blob]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 48 << 20);
    let row = client.query_one("SELECT 'still recorded'", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "still recorded");
    drop(client);
    proxy.stop().await;

    let sessions = proxy.sessions();
    assert_eq!(sessions.len(), 1);
    let events = &sessions[0];
    assert_eq!(brief(events.last().unwrap()), "end");
    let big_query = events.iter().find(|e| e["event"] == "db.session.query").unwrap();
    assert_eq!(big_query["db_query"].as_str().unwrap().len(), 1 << 20);
    let cut = &big_query["truncated"][0];
    assert_eq!(cut["field"], "db_query");
    assert_eq!(cut["bytes"], 12u64 << 20);
    assert_eq!(cut["sha256"], hex(&sha2::Sha256::digest(control_bytes.as_bytes())));

    let bind = events.iter().find(|e| e["event"] == "db.session.postgres.statements.bind" && e["truncated"].is_array()).unwrap();
    let full_b64 = base64_len(48 << 20);
    assert_eq!(bind["truncated"][0]["field"], "parameters[0]");
    assert_eq!(bind["truncated"][0]["bytes"], full_b64 as u64);
    assert!(bind["parameters"][0].as_str().unwrap().len() <= 1 << 20);
    assert!(
        events.iter().any(|e| e["event"] == "db.session.postgres.statements.parse" && e["query"] == "SELECT 'still recorded'"),
        "the statement after the attacks is missing"
    );
    let (ok, report) = verify_all(&proxy);
    assert!(ok, "{report}");
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
