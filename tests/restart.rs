//! Replacing a running `dbtape serve` without refusing a connection: a second process starts
//! on the same port (`SO_REUSEPORT`), the first gets SIGTERM, closes its listener (the
//! kernel moves connections still queued on it to the new one: `net.ipv4.tcp_migrate_req`,
//! which scripts/services turns on) and lets its sessions finish. A long pgbench run spans
//! the hand-over and a loop of new psql connections runs through it; nothing fails, and
//! every session of both processes is recorded and verifies.

mod common;

use common::serve::{serve, sigterm, KillOnDrop};

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::proxy::{verifier, ALICE_PASSWORD};
use common::services::Services;

fn config(root: &std::path::Path, services: &Services, port: u16) -> std::path::PathBuf {
    let certs = services.get("CERTS");
    let pg_password = common::secret_file(root, "pg-password", services.get("PG_PASSWORD"));
    let text = format!(
        r#"
[server]
shutdown_grace = "60s"
[recording]
dir = "{root}/recordings"
signing_key = "{root}/key"
[[databases]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:{port}"
upstream = "postgres://127.0.0.1:{pg_port}/postgres"
[databases.client_tls]
cert = "{certs}/server.crt"
key = "{certs}/server.key"
[databases.upstream_tls]
ca = "{certs}/ca.crt"
[databases.auth]
method = "password"
password = {pg_password}
[[users]]
name = "alice"
scram_verifier = "{alice}"
[[users.grants]]
database = "pg"
db_users = ["postgres"]
"#,
        root = root.display(),
        pg_port = services.get("PG_PORT"),
        alice = verifier(ALICE_PASSWORD),
    );
    let path = root.join("dbtape.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn psql(port: u16) -> std::process::Output {
    Command::new("psql")
        .arg(format!("host=127.0.0.1 port={port} user=alice dbname=postgres sslmode=require connect_timeout=10"))
        .args(["-X", "-q", "-A", "-t", "-c", "SELECT 'still here'"])
        .env("PGPASSWORD", ALICE_PASSWORD)
        .output()
        .unwrap()
}

#[test]
fn a_second_process_takes_over_the_port_and_no_connection_is_refused() {
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap_or_default();
    assert_eq!(migrate.trim(), "1", "net.ipv4.tcp_migrate_req must be 1 (scripts/services start sets it)");
    let services = Services::load();
    let root = tempfile::tempdir().unwrap();
    let port = common::console::free_port();
    let config = config(root.path(), &services, port);
    let mut old = serve(&config, root.path().join("old.log"));
    let _old_reaper = KillOnDrop(old.id());

    // pgbench: 2 clients, each one session that spans the hand-over.
    let script = root.path().join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let pgbench = Command::new("pgbench")
        .args(["-n", "-c", "2", "-T", "8", "-f"])
        .arg(&script)
        .arg(format!("host=127.0.0.1 port={port} user=alice dbname=postgres sslmode=require"))
        .env("PGPASSWORD", ALICE_PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // New connections, one after another, all through the hand-over.
    let stop = Arc::new(AtomicBool::new(false));
    let looping = stop.clone();
    let connections = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        while !looping.load(Ordering::Relaxed) {
            let out = psql(port);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("still here") {
                ok += 1;
            } else {
                failed.push(String::from_utf8_lossy(&out.stderr).into_owned());
            }
        }
        (ok, failed)
    });

    std::thread::sleep(Duration::from_secs(2));
    let mut new = serve(&config, root.path().join("new.log"));
    let _new_reaper = KillOnDrop(new.id());
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&old);
    std::thread::sleep(Duration::from_secs(2));
    assert!(old.try_wait().unwrap().is_none(), "the old process waits for pgbench's sessions");
    let bench = pgbench.wait_with_output().unwrap();
    let bench_out = String::from_utf8_lossy(&bench.stdout).into_owned() + &String::from_utf8_lossy(&bench.stderr);
    assert!(bench.status.success() && bench_out.contains("number of failed transactions: 0"), "{bench_out}");
    let exited = old.wait().unwrap();
    assert!(exited.success(), "the old process exits cleanly once its sessions end");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = connections.join().unwrap();
    assert!(failed.is_empty(), "{} of {} new connections failed: {failed:#?}", failed.len(), ok + failed.len());
    assert!(ok >= 10, "only {ok} connections in the loop");
    sigterm(&new);
    assert!(new.wait().unwrap().success());

    // Every session of both processes is recorded: each psql run's and each pgbench client's.
    let store = dbtape::recording::RecordingStore::new(root.path().join("recordings"));
    let sessions = common::sessions_in(&store);
    let queries = sessions.iter().filter(|s| s.iter().any(|e| e["event"] == "db.session.query")).count();
    assert!(queries >= ok + 2, "{queries} sessions with queries for {ok} psql runs and 2 pgbench clients");
    let out = common::dbtape_bin().args(["verify", "--all", "--config"]).arg(&config).output().unwrap();
    assert!(
        out.status.success(),
        "every recording verifies: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let old_log = std::fs::read_to_string(root.path().join("old.log")).unwrap_or_default();
    assert!(old_log.contains("all recordings sealed"), "{old_log}");
}
