//! Runs dbtape in-process in front of the services' MongoDB-compatible server (secantusdb,
//! with --auth and a replica-set advertisement), and drives it with pymongo.

use std::net::SocketAddr;

use dbtape::recording::RecordingStore;

use super::proxy::{run_server, verifier, Running, ALICE_PASSWORD};
use super::services::Services;

pub struct MongoProxy {
    pub addr: SocketAddr,
    pub store: RecordingStore,
    pub root: tempfile::TempDir,
    pub services: Services,
    recordings: std::path::PathBuf,
    server: Running,
}

impl MongoProxy {
    pub async fn start() -> MongoProxy {
        Self::start_recording_in(None).await
    }

    /// As `start`, with the recordings in `recordings` instead of the temporary root.
    pub async fn start_recording_in(recordings: Option<std::path::PathBuf>) -> MongoProxy {
        let services = Services::load();
        let root = tempfile::tempdir().unwrap();
        let recordings = recordings.unwrap_or_else(|| root.path().join("recordings"));
        let certs = services.get("CERTS").to_string();
        let mongo_password = super::secret_file(root.path(), "mongo-password", services.get("MONGO_PASSWORD"));
        let text = format!(
            r#"
[server]
shutdown_grace = "2s"
[recording]
dir = "{recordings}"
signing_key = "{root}/key"
batch_interval = "10ms"
# Tests put recordings on a 1 MiB disk to watch it fill; the free-space guard would refuse
# the session first.
min_free_bytes = 0
[[databases]]
name = "mongo"
protocol = "mongodb"
listen = "127.0.0.1:0"
upstream = "mongodb://127.0.0.1:{port}/?authSource=admin"
[databases.client_tls]
mode = "optional"
cert = "{certs}/server.crt"
key = "{certs}/server.key"
client_ca = "{certs}/ca.crt"
[databases.upstream_tls]
mode = "disable"
[databases.auth]
method = "password"
password = {mongo_password}

[[users]]
name = "alice"
scram_verifier = "{alice}"
[[users.grants]]
database = "mongo"
db_users = ["dbtape_app"]
db_names = ["lib", "admin"]

[[users]]
name = "carol"
cert_cn = "carol"
[[users.grants]]
database = "mongo"
db_users = ["dbtape_app"]
db_names = ["lib"]
"#,
            root = root.path().display(),
            port = services.get("MONGO_PORT"),
            alice = verifier(ALICE_PASSWORD),
            recordings = recordings.display(),
        );
        let (addr, stop, task) = run_server(&text, root.path()).await;
        let store = RecordingStore::new(recordings.clone());
        MongoProxy { addr, store, root, services, recordings, server: Running::new(stop, task) }
    }

    pub fn uri(&self, user: &str, password: &str, options: &str) -> String {
        format!("mongodb://{user}:{password}@{}/lib?authSource=admin{options}", self.addr)
    }

    /// Runs a Python script with pymongo; `argv[1]` is `uri`. Returns (success, stdout, stderr).
    pub async fn pymongo(&self, script: &str, uri: String) -> (bool, String, String) {
        self.pymongo_with(script, &[&uri]).await
    }

    /// As `pymongo`, with `args` as `argv[1..]`.
    pub async fn pymongo_with(&self, script: &str, args: &[&str]) -> (bool, String, String) {
        let mut cmd = self.services.python();
        cmd.args(["-c", script]).args(args);
        super::output(cmd).await
    }

    pub async fn stop(&mut self) {
        self.server.stop().await;
    }

    /// Events of every recording, sessions in start order, each checked against its schema.
    pub fn sessions(&self) -> Vec<Vec<serde_json::Value>> {
        super::sessions_in(&self.store)
    }

    /// `dbtape play --format text` of a session.
    pub fn play_text(&self, sid: &str) -> String {
        let out = super::dbtape_bin().args(["play", "--dir"]).arg(&self.recordings).args(["--format", "text", sid]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).replace('\r', "")
    }
}

/// An event as `kind command db → outcome`, for exact assertions.
pub fn brief(event: &serde_json::Value) -> String {
    let command = |e: &serde_json::Value| {
        let q = e["db_query"].as_str().unwrap_or_default();
        q.strip_prefix("OpMsg(Body={\"").and_then(|r| r.split('"').next()).unwrap_or(q).to_string()
    };
    match event["event"].as_str().unwrap_or_default() {
        "db.session.start" => {
            format!("start {} {}", event["code"].as_str().unwrap_or_default(), event["db_user"].as_str().unwrap_or_default())
        }
        "db.session.query" => format!("query {} {}", command(event), event["db_name"].as_str().unwrap_or_default()),
        "db.session.query.failed" => format!(
            "denied {} {} {}",
            command(event),
            event["db_name"].as_str().unwrap_or_default(),
            event["error"].as_str().unwrap_or_default()
        ),
        "db.session.result" if event["success"] == false => format!("error {}", event["error"].as_str().unwrap_or_default()),
        "db.session.result" => format!("result {}", event["affected_records"].as_u64().unwrap_or(0)),
        "db.session.end" => "end".into(),
        other => other.to_string(),
    }
}

/// Raw OP_MSG on a socket, for tests that play a driver or a server by hand: one kind-0
/// section, as drivers and servers send.
pub mod raw {
    use mongodb::bson::Document;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    pub const OP_MSG: i32 = 2013;

    /// An OP_MSG message carrying `doc`.
    pub fn op_msg(request_id: i32, response_to: i32, doc: &Document) -> Vec<u8> {
        let mut body = vec![0, 0, 0, 0, 0];
        doc.to_writer(&mut body).unwrap();
        let mut out = Vec::with_capacity(16 + body.len());
        for field in [(16 + body.len()) as i32, request_id, response_to, OP_MSG] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&body);
        out
    }

    /// The next message: its request id, opcode and first section's document.
    pub async fn read<S: AsyncRead + Unpin>(s: &mut S) -> Option<(i32, i32, Document)> {
        let mut head = [0u8; 16];
        s.read_exact(&mut head).await.ok()?;
        let field = |i: usize| i32::from_le_bytes(head[i..i + 4].try_into().unwrap());
        let mut body = vec![0u8; field(0) as usize - 16];
        s.read_exact(&mut body).await.ok()?;
        assert_eq!(body[4], 0, "kind-0 section first");
        Some((field(4), field(12), Document::from_reader(&body[5..]).unwrap()))
    }

    /// Sends `doc` as a command and returns the reply's document.
    pub async fn command<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, doc: &Document) -> Option<Document> {
        s.write_all(&op_msg(7, 0, doc)).await.ok()?;
        read(s).await.map(|(_, _, reply)| reply)
    }
}

const PING: &str = "import sys, pymongo\nc = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)\ntry:\n    print(c.lib.command('ping')['ok'])\nexcept pymongo.errors.PyMongoError as e:\n    print('failed', getattr(e, 'code', e))\n";

/// alice pings database `lib` through the proxy at `addr` with pymongo: "1.0", or
/// "failed <code>" when the server or the proxy refuses.
pub async fn ping_as_alice(services: &Services, addr: SocketAddr) -> String {
    let mut cmd = services.python();
    cmd.args(["-c", PING, &format!("mongodb://alice:{ALICE_PASSWORD}@{addr}/lib?authSource=admin&directConnection=true")]);
    let (ok, out, err) = super::output(cmd).await;
    assert!(ok, "{err}");
    out.trim().to_string()
}
