//! The server core with a line-echo engine standing in for a protocol: listeners, sessions
//! through the audit port, crash recovery at start-up, and graceful shutdown sealing
//! every recording.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dbtape::audit::{EventBody, Protocol, Status};
use dbtape::config::Config;
use dbtape::recording::store::RecordingState;
use dbtape::recording::verify::{verify_recording, Verdict};
use dbtape::recording::RecordingStore;
use dbtape::server::{BoxFuture, Connection, Engine, EngineRegistry, ListenerContext, Server, SessionIdentity};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Each line the client sends is a "query"; the engine answers `ok <line>`.
struct EchoEngine;

impl Engine for EchoEngine {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
    }

    fn handle(&self, mut conn: Connection, ctx: Arc<ListenerContext>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let identity = SessionIdentity { user: "alice".into(), db_user: "reader".into(), db_name: "app".into(), ..Default::default() };
            let port = ctx.open_session(identity, conn.info()).await.unwrap();
            let port = port.begin(None).await.unwrap();
            conn.login.logged_in();
            let (read, mut write) = conn.stream.split();
            let mut lines = BufReader::new(read).lines();
            loop {
                let line = tokio::select! {
                    _ = ctx.shutdown().cancelled() => break,
                    line = lines.next_line() => line,
                };
                let Ok(Some(line)) = line else { break };
                port.emit(EventBody::Query { query: line.clone(), parameters: vec![], db_name: None }).await.unwrap();
                write.write_all(format!("ok {line}\n").as_bytes()).await.unwrap();
                port.emit(EventBody::Result { status: Status::ok(), affected_records: 1, query_ei: None }).await.unwrap();
            }
            port.end().await.unwrap();
        })
    }
}

fn config(root: &std::path::Path) -> Arc<Config> {
    let text = format!(
        r#"
[server]
shutdown_grace = "2s"
[recording]
dir = "{root}/recordings"
signing_key = "{root}/keys/k"
batch_interval = "10ms"
[[databases]]
name = "echo"
protocol = "postgres"
listen = "127.0.0.1:0"
upstream = "postgres://127.0.0.1:1/app"
auth = {{ method = "none" }}
"#,
        root = root.display()
    );
    Arc::new(Config::parse(&text, &root.join("dbtape.toml")).unwrap())
}

async fn talk(addr: std::net::SocketAddr, lines: &[&str]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut reply = String::new();
    for line in lines {
        stream.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let mut reader = BufReader::new(&mut stream);
        reply.clear();
        reader.read_line(&mut reply).await.unwrap();
        assert_eq!(reply, format!("ok {line}\n"));
    }
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_recorded_and_shutdown_seals_open_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    let mut registry = EngineRegistry::new(HashMap::new());
    registry.register(Arc::new(EchoEngine));
    let server = Server::bind(config.clone(), &registry).await.unwrap();
    let addr = server.local_addrs()[0].1;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));

    // Two finished sessions and one still open at shutdown.
    drop(talk(addr, &["SELECT 1", "SELECT 2"]).await);
    drop(talk(addr, &["SELECT 3"]).await);
    let open = talk(addr, &["BEGIN", "UPDATE t SET x = 1"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap();
    drop(open);

    let store = RecordingStore::new(tmp.path().join("recordings"));
    let key = dbtape::signing::load_public_key(&tmp.path().join("keys/k.pub")).unwrap();
    let mut summaries: Vec<_> = store.summaries().unwrap().into_iter().map(Result::unwrap).collect();
    summaries.sort_by_key(|s| s.queries);
    assert_eq!(summaries.iter().map(|s| s.queries).collect::<Vec<_>>(), [1, 2, 2]);
    for s in &summaries {
        assert_eq!(s.state, RecordingState::Sealed);
        assert_eq!(s.user, "alice");
        assert_eq!(s.db_service, "echo");
        assert_eq!(verify_recording(&store, &s.sid, Some(&key)).verdict, Verdict::Ok);
        let (lines, _) = common::read_lines(&store, &s.sid);
        let last: serde_json::Value = common::assert_schema_valid(lines.last().unwrap());
        assert_eq!(last["event"], "db.session.end", "every session, the open one too, ends with an end event");
        assert_eq!(last["addr.remote"].as_str().map(|a| a.starts_with("127.0.0.1:")), Some(true));
    }
    // No new connections after shutdown.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_recovers_recordings_a_crash_left_open() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    // A session whose writer "died": written, then the sidecar put back to live, the trailer
    // torn off and the manifest removed.
    let sid = {
        let rec = common::recorder(tmp.path(), |_| {});
        let ctx = common::context(Protocol::Postgres);
        let sid = ctx.sid.clone();
        let log = rec.recorder.open(ctx).unwrap();
        for i in 0..50 {
            log.append(&EventBody::Query { query: format!("SELECT {i}"), parameters: vec![], db_name: None }, 1_700_000_000_000 + i)
                .unwrap();
        }
        log.close().await.unwrap();
        let store = rec.store();
        let path = store.recording_path(&sid);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 7).unwrap();
        std::fs::remove_file(store.manifest_path(&sid)).unwrap();
        let mut summary = store.read_summary(&sid).unwrap();
        summary.state = RecordingState::Live;
        store.write_summary(&summary).unwrap();
        sid
    };
    let registry = EngineRegistry::new(HashMap::new());
    let server = Server::bind(config, &registry).await.unwrap();
    assert!(server.local_addrs().is_empty(), "no engine, so nothing is served");
    let store = RecordingStore::new(tmp.path().join("recordings"));
    assert_eq!(store.read_summary(&sid).unwrap().state, RecordingState::Recovered);
    let key = dbtape::signing::load_public_key(&tmp.path().join("keys/k.pub")).unwrap();
    let report = verify_recording(&store, &sid, Some(&key));
    assert_eq!(report.verdict, Verdict::Recovered, "{report:?}");
    assert_eq!(report.events, 50);
    server.run(async {}).await;
}

#[test]
fn the_serve_command_starts_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("dbtape.toml");
    std::fs::write(&cfg, format!("[recording]\ndir = \"{0}/rec\"\nsigning_key = \"{0}/key\"\n", tmp.path().display())).unwrap();
    let mut child = common::dbtape_bin().args(["serve", "--config"]).arg(&cfg).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let ready = lines.by_ref().take(20).find_map(|l| l.ok().filter(|l| l.contains("dbtape ready")));
    assert!(ready.is_some(), "serve never said it was ready");
    assert!(tmp.path().join("key").exists() && tmp.path().join("key.pub").exists(), "signing key generated on first run");
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("all recordings sealed")), "{rest:?}");
}
