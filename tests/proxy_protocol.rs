//! Behind a load balancer: a real HAProxy (Debian's) with `send-proxy-v2` in front of a
//! PostgreSQL, a MongoDB and a DynamoDB listener of one dbtape, driven by psql, pymongo and
//! the aws CLI. Events carry the client address the balancer reports, the per-source limit
//! shuts out only the client that misbehaves, and a header from an untrusted address, a
//! missing one and a malformed one are refused and audited.
//!
//! Every client here runs on this machine, so HAProxy sees them all as 127.0.0.1. Each
//! "client" therefore comes through a frontend of its own that sets the source address it
//! reports (`tcp-request connection set-src`): 127.0.0.2 is a well-behaved client, 127.0.0.3
//! a misbehaving one. HAProxy itself connects to dbtape from 127.0.0.5, the only trusted
//! address; the test's own direct connections come from 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::dynamo::{ALICE_KEY, ALICE_SECRET};
use common::proxy::{verifier, Running, ALICE_PASSWORD};
use common::services::Services;
use dbtape::recording::RecordingStore;

const GOOD: &str = "127.0.0.2";
const BAD: &str = "127.0.0.3";
const BALANCER: &str = "127.0.0.5";

struct Balancer {
    child: Child,
    /// (database, reported client address) → the frontend's port.
    ports: HashMap<(String, String), u16>,
}

impl Balancer {
    fn start(root: &std::path::Path, backends: &HashMap<String, SocketAddr>) -> Balancer {
        let mut config = String::from(
            "global\n    maxconn 200\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n",
        );
        let mut ports = HashMap::new();
        for (database, backend) in backends {
            for client in [GOOD, BAD] {
                let port = common::console::free_port();
                config.push_str(&format!(
                    "frontend {database}-{client}\n    bind 127.0.0.1:{port}\n    tcp-request connection set-src ipv4({client})\n    default_backend {database}-{client}\nbackend {database}-{client}\n    server dbtape {backend} send-proxy-v2 source {BALANCER}\n"
                ));
                ports.insert((database.clone(), client.to_string()), port);
            }
        }
        let path = root.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("haproxy.log")).unwrap())
            .spawn()
            .expect("haproxy (Debian's, installed by scripts/services)");
        for port in ports.values() {
            let mut up = false;
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            assert!(up, "haproxy never listened on {port}: {}", std::fs::read_to_string(root.join("haproxy.log")).unwrap_or_default());
        }
        Balancer { child, ports }
    }

    fn port(&self, database: &str, client: &str) -> u16 {
        self.ports[&(database.to_string(), client.to_string())]
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(root: &std::path::Path, services: &Services) -> String {
    let certs = services.get("CERTS");
    let pg_password = common::secret_file(root, "pg-password", services.get("PG_PASSWORD"));
    let mongo_password = common::secret_file(root, "mongo-password", services.get("MONGO_PASSWORD"));
    let alice_secret = common::secret_file(root, "alice-aws-secret", ALICE_SECRET);
    let behind = format!("proxy_protocol = \"v2\"\ntrusted_proxies = [\"{BALANCER}/32\"]");
    format!(
        r#"
[server]
shutdown_grace = "2s"
max_failed_logins_per_source = 3
[recording]
dir = "{root}/recordings"
signing_key = "{root}/key"
batch_interval = "10ms"
min_free_bytes = 0

[[databases]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:0"
upstream = "postgres://127.0.0.1:{pg_port}/postgres"
{behind}
[databases.client_tls]
cert = "{certs}/server.crt"
key = "{certs}/server.key"
[databases.upstream_tls]
ca = "{certs}/ca.crt"
[databases.auth]
method = "password"
password = {pg_password}

[[databases]]
name = "mongo"
protocol = "mongodb"
listen = "127.0.0.1:0"
upstream = "mongodb://127.0.0.1:{mongo_port}/?authSource=admin"
{behind}
[databases.upstream_tls]
mode = "disable"
[databases.auth]
method = "password"
password = {mongo_password}

[[databases]]
name = "ddb"
protocol = "dynamodb"
listen = "127.0.0.1:0"
upstream = "{aws}"
db_type = "dynamodb"
{behind}
{aws_auth}
session_tags = {{ team = "audit" }}

[[users]]
name = "alice"
scram_verifier = "{alice}"
[[users.grants]]
database = "pg"
db_users = ["postgres"]
[[users.grants]]
database = "mongo"
db_users = ["dbtape_app"]
db_names = ["lib", "admin"]

[[users]]
name = "alice-aws"
aws_access_key_id = "{ALICE_KEY}"
aws_secret_access_key = {alice_secret}
[[users.grants]]
database = "ddb"
db_users = ["audit-target"]
"#,
        root = root.display(),
        pg_port = services.get("PG_PORT"),
        mongo_port = services.get("MONGO_PORT"),
        aws = services.get("AWS_ENDPOINT"),
        aws_auth = common::dynamo::aws_iam_auth(services),
        alice = verifier(ALICE_PASSWORD),
    )
}

async fn psql(port: u16, password: &str, sql: &str) -> (bool, String, String) {
    let mut cmd = Command::new("psql");
    cmd.arg(format!("host=127.0.0.1 port={port} user=alice dbname=postgres sslmode=require connect_timeout=5"))
        .args(["-X", "-q", "-A", "-t", "-c", sql])
        .env("PGPASSWORD", password);
    common::output(cmd).await
}

/// A raw connection to dbtape from `source`, sending `bytes`; whether dbtape closed it
/// without answering.
fn closed_unanswered(source: &str, to: SocketAddr, bytes: &[u8]) -> bool {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source.parse().unwrap(), 0).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    matches!(stream.read_to_end(&mut answer), Ok(0)) || answer.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_haproxy_reports_each_clients_address_and_strangers_are_refused() {
    let services = Services::load();
    services.use_proxy_aws_identity();
    let root = tempfile::tempdir().unwrap();
    let text = config(root.path(), &services);
    let config = Arc::new(dbtape::config::Config::parse(&text, &root.path().join("dbtape.toml")).unwrap());
    let registry = dbtape::proxy::builtin_engines(&config).unwrap();
    let server = dbtape::server::Server::bind(config, &registry).await.unwrap();
    let listeners: HashMap<String, SocketAddr> = server.local_addrs().into_iter().collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let mut running = Running::new(stop, task);
    let balancer = Balancer::start(root.path(), &listeners);

    // The well-behaved client on all three paths.
    let (ok, out, err) = psql(balancer.port("pg", GOOD), ALICE_PASSWORD, "SELECT 'through the balancer'").await;
    assert!(ok && out.contains("through the balancer"), "{out}{err}");
    let uri =
        format!("mongodb://alice:{ALICE_PASSWORD}@127.0.0.1:{}/lib?authSource=admin&directConnection=true", balancer.port("mongo", GOOD));
    let mut pymongo = services.python();
    pymongo.args(["-c", "import sys, pymongo\nprint(pymongo.MongoClient(sys.argv[1]).lib.books.count_documents({}))", &uri]);
    let (ok, out, err) = common::output(pymongo).await;
    assert!(ok, "{out}{err}");
    let mut aws = Command::new(format!("{}/bin/aws", services.get("SERVICES_VENV")));
    common::dynamo::client_env(&mut aws, &format!("{ALICE_KEY}@audit-target"), ALICE_SECRET);
    aws.args(["--endpoint-url", &format!("http://127.0.0.1:{}", balancer.port("ddb", GOOD)), "dynamodb", "list-tables"]);
    let (ok, out, err) = common::output(aws).await;
    assert!(ok, "{out}{err}");

    // The misbehaving client fails its logins until it is shut out; the good one is not.
    for _ in 0..3 {
        let (ok, _, err) = psql(balancer.port("pg", BAD), "wrong password", "SELECT 1").await;
        assert!(!ok && err.contains("password authentication failed"), "{err}");
    }
    let (ok, _, err) = psql(balancer.port("pg", BAD), ALICE_PASSWORD, "SELECT 1").await;
    assert!(!ok && !err.contains("password authentication failed"), "shut out before any login: {err}");
    let (ok, out, err) = psql(balancer.port("pg", GOOD), ALICE_PASSWORD, "SELECT 'still welcome'").await;
    assert!(ok && out.contains("still welcome"), "the good client is not shut out with the bad one: {out}{err}");

    // Strangers: no header from an untrusted address, then from the trusted one no header
    // (a PostgreSQL SSLRequest straight away) and a malformed one.
    let ssl_request = [0, 0, 0, 8, 4, 210, 22, 47];
    assert!(closed_unanswered("127.0.0.1", listeners["pg"], &ssl_request), "an untrusted address is not answered");
    assert!(closed_unanswered(BALANCER, listeners["pg"], &ssl_request), "a missing header is not answered");
    let mut malformed = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    malformed.extend([0x21, 0x12, 0, 12]); // a datagram, which no database speaks
    malformed.extend([0u8; 12]);
    assert!(closed_unanswered(BALANCER, listeners["mongo"], &malformed), "a malformed header is not answered");

    drop(balancer);
    running.stop().await;
    let store = RecordingStore::new(root.path().join("recordings"));
    let events: Vec<serde_json::Value> = common::sessions_in(&store).into_iter().flatten().collect();
    let starts: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "db.session.start").collect();
    for protocol in ["postgres", "mongodb", "dynamodb"] {
        let start = starts
            .iter()
            .find(|e| e["db_protocol"] == protocol && e["success"] == true)
            .unwrap_or_else(|| panic!("no {protocol} session in {starts:#?}"));
        let remote = start["addr.remote"].as_str().unwrap();
        assert!(remote.starts_with(&format!("{GOOD}:")), "{protocol} session from {remote}, not the client the balancer reported");
    }
    let refusals: Vec<String> = starts.iter().filter(|e| e["success"] == false).map(|e| e.to_string()).collect();
    let wrong_passwords = refusals.iter().filter(|r| r.contains(&format!("\"addr.remote\":\"{BAD}:"))).count();
    assert!(wrong_passwords >= 3, "the bad client's refusals carry its address: {refusals:#?}");
    for expected in [
        "127.0.0.1 sent no PROXY header from a trusted address",
        "PROXY protocol from 127.0.0.5: no PROXY protocol v2 header",
        "not a stream connection",
    ] {
        assert!(refusals.iter().any(|r| r.contains(expected)), "{expected:?} not audited in {refusals:#?}");
    }
    assert!(refusals.iter().any(|r| r.contains("3 failed logins from 127.0.0.3")), "the shut-out is audited: {refusals:#?}");
}
