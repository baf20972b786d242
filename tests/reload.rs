//! Reloading a running `dbtape serve` (`dbtape reload`, SIGHUP) while a psql session and a
//! pymongo session stay open: both go on and are recorded; the added user logs in, the
//! removed one is refused, a new connection gets the rotated certificate, and the new
//! redaction pattern applies to new sessions only. A broken file is rejected whole with
//! its errors, and the proxy goes on with the configuration it had.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::proxy::{verifier, ALICE_PASSWORD, BOB_PASSWORD};
use common::serve::{serve, sigterm, KillOnDrop};
use common::services::Services;

const ERIN_PASSWORD: &str = "erin-joins-later";

struct Setup<'a> {
    root: &'a std::path::Path,
    services: &'a Services,
    pg_port: u16,
    mongo_port: u16,
}

impl Setup<'_> {
    /// The config with these users (name, password), certificate and redaction pattern.
    fn write(&self, users: &[(&str, &str)], cert: &str, pattern: &str, extra_database: &str) -> std::path::PathBuf {
        let certs = self.services.get("CERTS");
        let pg_password = common::secret_file(self.root, "pg-password", self.services.get("PG_PASSWORD"));
        let mongo_password = common::secret_file(self.root, "mongo-password", self.services.get("MONGO_PASSWORD"));
        let mut text = format!(
            r#"
[server]
shutdown_grace = "2s"
[recording]
dir = "{root}/recordings"
signing_key = "{root}/key"
batch_interval = "10ms"
min_free_bytes = 0
redact_patterns = ["{pattern}"]
[[databases]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:{pg}"
upstream = "postgres://127.0.0.1:{pg_upstream}/postgres"
{extra_database}
[databases.client_tls]
cert = "{cert}.crt"
key = "{cert}.key"
[databases.upstream_tls]
ca = "{certs}/ca.crt"
[databases.auth]
method = "password"
password = {pg_password}
[[databases]]
name = "mongo"
protocol = "mongodb"
listen = "127.0.0.1:{mongo}"
upstream = "mongodb://127.0.0.1:{mongo_upstream}/?authSource=admin"
[databases.upstream_tls]
mode = "disable"
[databases.auth]
method = "password"
password = {mongo_password}
"#,
            root = self.root.display(),
            pg = self.pg_port,
            mongo = self.mongo_port,
            pg_upstream = self.services.get("PG_PORT"),
            mongo_upstream = self.services.get("MONGO_PORT"),
        );
        for (name, password) in users {
            text.push_str(&format!(
                "[[users]]\nname = \"{name}\"\nscram_verifier = \"{}\"\n[[users.grants]]\ndatabase = \"pg\"\ndb_users = [\"postgres\"]\n[[users.grants]]\ndatabase = \"mongo\"\ndb_users = [\"dbtape_app\"]\ndb_names = [\"lib\", \"admin\"]\n",
                verifier(password)
            ));
        }
        let path = self.root.join("dbtape.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A certificate for localhost signed by the test CA, with `cn` as its subject.
fn certificate(dir: &std::path::Path, certs: &str, cn: &str) -> String {
    let base = dir.join(cn);
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let (key, csr, crt, ext) = (
        format!("{}.key", base.display()),
        format!("{}.csr", base.display()),
        format!("{}.crt", base.display()),
        format!("{}.ext", base.display()),
    );
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={cn}"), "-keyout", &key, "-out", &csr]);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &format!("{certs}/ca.crt"),
        "-CAkey",
        &format!("{certs}/ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &crt,
    ]);
    base.display().to_string()
}

/// An interactive psql whose statements are answered one line at a time.
struct Psql {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Psql {
    fn open(port: u16, user: &str, password: &str) -> Psql {
        let mut child = Command::new("psql")
            .arg(format!("host=127.0.0.1 port={port} user={user} dbname=postgres sslmode=require"))
            .args(["-X", "-q", "-A", "-t"])
            .env("PGPASSWORD", password)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (input, output) = (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()));
        Psql { child, input, output }
    }

    fn ask(&mut self, sql: &str) -> String {
        writeln!(self.input, "{sql}").unwrap();
        self.input.flush().unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    fn close(mut self) {
        drop(self.input);
        assert!(self.child.wait().unwrap().success());
    }
}

fn psql_once(port: u16, user: &str, password: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .arg(format!("host=127.0.0.1 port={port} user={user} dbname=postgres sslmode=require connect_timeout=5"))
        .args(["-X", "-q", "-A", "-t", "-c", sql])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// The subject of the certificate a new PostgreSQL connection is served.
fn served_subject(port: u16) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find(|l| l.starts_with("subject=")).unwrap_or_default().to_string()
}

fn wait_for_log(path: &std::path::Path, needle: &str, count: usize) -> String {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{needle:?} never appeared {count} time(s) in {}", std::fs::read_to_string(path).unwrap_or_default());
}

#[test]
fn a_reload_changes_users_certificates_and_patterns_without_ending_a_session() {
    let services = Services::load();
    let root = tempfile::tempdir().unwrap();
    let certs = services.get("CERTS").to_string();
    let setup =
        Setup { root: root.path(), services: &services, pg_port: common::console::free_port(), mongo_port: common::console::free_port() };
    let first = format!("{certs}/server");
    let config = setup.write(&[("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)], &first, "zebra-[0-9]+", "");
    let log = root.path().join("serve.log");
    let mut proxy = serve(&config, log.clone());
    let _reaper = KillOnDrop(proxy.id());
    assert!(served_subject(setup.pg_port).contains("CN = localhost") || served_subject(setup.pg_port).contains("CN=localhost"));

    // Two sessions opened before the reload.
    let mut psql = Psql::open(setup.pg_port, "alice", ALICE_PASSWORD);
    assert_eq!(psql.ask("SELECT 'before';"), "before");
    let script = "import sys, pymongo\nc = pymongo.MongoClient(sys.argv[1])\nc.lib.reload_test.delete_many({})\nfor line in sys.stdin:\n    c.lib.reload_test.insert_one({'n': line.strip()})\n    print(c.lib.reload_test.count_documents({'n': line.strip()}), flush=True)\n";
    let uri = format!("mongodb://alice:{ALICE_PASSWORD}@127.0.0.1:{}/lib?authSource=admin&directConnection=true", setup.mongo_port);
    let mut mongo = services.python();
    let mut mongo = mongo.args(["-c", script, &uri]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let (mut mongo_in, mut mongo_out) = (mongo.stdin.take().unwrap(), BufReader::new(mongo.stdout.take().unwrap()));
    let mut mongo_ask = |n: &str| {
        writeln!(mongo_in, "{n}").unwrap();
        mongo_in.flush().unwrap();
        let mut line = String::new();
        mongo_out.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(mongo_ask("before"), "1");

    // The new file: erin added, bob removed, a new certificate, a new pattern.
    let rotated = certificate(root.path(), &certs, "dbtape-rotated");
    setup.write(&[("alice", ALICE_PASSWORD), ("erin", ERIN_PASSWORD)], &rotated, "okapi-[0-9]+", "");
    let out = common::dbtape_bin().args(["reload", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for_log(&log, "configuration reloaded", 1);

    // The open sessions go on, under what they started with.
    assert_eq!(psql.ask("SELECT 'zebra-1 okapi-1 after';"), "zebra-1 okapi-1 after");
    assert_eq!(mongo_ask("after"), "1");
    // New connections get the new configuration.
    assert!(served_subject(setup.pg_port).contains("dbtape-rotated"), "{}", served_subject(setup.pg_port));
    let (ok, out) = psql_once(setup.pg_port, "erin", ERIN_PASSWORD, "SELECT 'erin is in'");
    assert!(ok && out.contains("erin is in"), "{out}");
    let (ok, out) = psql_once(setup.pg_port, "bob", BOB_PASSWORD, "SELECT 1");
    assert!(!ok && out.contains("password authentication failed"), "{out}");
    let (ok, out) = psql_once(setup.pg_port, "alice", ALICE_PASSWORD, "SELECT 'zebra-2 okapi-2 new'");
    assert!(ok, "{out}");

    // A broken file is rejected whole: `dbtape reload` says why and does not signal; a
    // SIGHUP anyway leaves the running configuration in place.
    setup.write(
        &[("alice", ALICE_PASSWORD), ("erin", ERIN_PASSWORD), ("fred", ERIN_PASSWORD)],
        &rotated,
        "okapi-[0-9]+",
        "proxy_protocol = \"v2\"",
    );
    let out = common::dbtape_bin().args(["reload", "--config"]).arg(&config).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("databases[0].trusted_proxies"), "{said}");
    sigterm_hup(&proxy);
    let text = wait_for_log(&log, "configuration rejected", 1);
    assert!(text.contains("databases[0].trusted_proxies"), "{text}");
    let (ok, out) = psql_once(setup.pg_port, "fred", ERIN_PASSWORD, "SELECT 1");
    assert!(!ok, "fred came with the rejected file: {out}");
    let (ok, out) = psql_once(setup.pg_port, "erin", ERIN_PASSWORD, "SELECT 'still erin'");
    assert!(ok && out.contains("still erin"), "{out}");

    psql.close();
    drop(mongo_in);
    assert!(mongo.wait().unwrap().success());
    sigterm(&proxy);
    assert!(proxy.wait().unwrap().success());

    // Everything was recorded; the old session kept its pattern, the new one got the new.
    let store = dbtape::recording::RecordingStore::new(root.path().join("recordings"));
    let sessions = common::sessions_in(&store);
    let queries: Vec<String> = sessions
        .iter()
        .flatten()
        .filter(|e| e["event"] == "db.session.query")
        .filter_map(|e| e["db_query"].as_str().map(str::to_string))
        .collect();
    assert!(queries.iter().any(|q| q.contains("[REDACTED] okapi-1 after")), "the open session kept its pattern: {queries:#?}");
    assert!(queries.iter().any(|q| q.contains("zebra-2 [REDACTED] new")), "a new session has the new pattern: {queries:#?}");
    assert!(sessions.iter().any(|s| s[0]["db_protocol"] == "mongodb"
        && s.iter().filter(|e| e["event"] == "db.session.mongodb.request" || e["event"] == "db.session.query").count() >= 2));
    let out = common::dbtape_bin().args(["verify", "--all", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // Each reload, taken or rejected, is an audited event in a signed recording.
    let reloads: Vec<&serde_json::Value> = sessions.iter().flatten().filter(|e| e["event"] == "dbtape.config.reload").collect();
    let applied = reloads.iter().find(|e| e["code"] == "DTP02I").expect("the applied reload is audited");
    let message = applied["message"].as_str().unwrap();
    assert!(message.contains("\"erin\"") && !message.contains("\"bob\""), "{message}");
    assert_eq!(applied["db_protocol"], "dbtape");
    let rejected = reloads.iter().find(|e| e["code"] == "DTP02W").expect("the rejected reload is audited");
    assert!(rejected["success"] == false && rejected["message"].as_str().unwrap().contains("databases[0].trusted_proxies"), "{rejected}");
}

fn sigterm_hup(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: a signal to a child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}
