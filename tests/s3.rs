//! Recordings to S3 (moto, signatures checked) with the real binary: uploads (single and
//! multipart), review from the bucket alone, and nothing lost through an S3 outage and a
//! SIGKILL of the proxy mid-session.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{verifier, ALICE_PASSWORD};
use common::services::Services;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A bucket of its own for each test, made with the proxy's moto identity.
fn make_bucket(services: &Services) -> String {
    make_bucket_with(services, false)
}

/// As `make_bucket`, with S3 Object Lock (and so versioning) on if `locked`.
fn make_bucket_with(services: &Services, locked: bool) -> String {
    let bucket = format!("rec-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let script = "import sys, boto3\nboto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1').create_bucket(Bucket=sys.argv[2], ObjectLockEnabledForBucket=sys.argv[3] == 'locked')";
    let lock = if locked { "locked" } else { "plain" };
    let out = services
        .python()
        .args(["-c", script, services.get("AWS_ENDPOINT"), &bucket, lock])
        .envs(services.proxy_aws_vars())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    bucket
}

/// An object's JSON, if it exists.
fn fetch(services: &Services, bucket: &str, key: &str) -> Option<serde_json::Value> {
    let script = "import sys, boto3\ntry: sys.stdout.buffer.write(boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1').get_object(Bucket=sys.argv[2], Key=sys.argv[3])['Body'].read())\nexcept Exception: pass";
    let out =
        services.python().args(["-c", script, services.get("AWS_ENDPOINT"), bucket, key]).envs(services.proxy_aws_vars()).output().unwrap();
    serde_json::from_slice(&out.stdout).ok()
}

/// Object keys and ETags in the bucket.
fn objects(services: &Services, bucket: &str) -> Vec<(String, String)> {
    let script = "import sys, boto3\nfor o in boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1').list_objects_v2(Bucket=sys.argv[2]).get('Contents', []): print(o['Key'], o['ETag'].strip('\"'))";
    let out =
        services.python().args(["-c", script, services.get("AWS_ENDPOINT"), bucket]).envs(services.proxy_aws_vars()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_once(' ')).map(|(k, e)| (k.to_string(), e.to_string())).collect()
}

struct Setup {
    root: tempfile::TempDir,
    services: Services,
    port: u16,
    admin: u16,
    config: std::path::PathBuf,
}

impl Setup {
    fn new(bucket: &str, s3_endpoint: &str) -> Setup {
        Setup::with(bucket, s3_endpoint, "")
    }

    /// With more `[storage.s3]` lines.
    fn with(bucket: &str, s3_endpoint: &str, more_s3: &str) -> Setup {
        let services = Services::load();
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin = free_port();
        let certs = services.get("CERTS");
        let text = format!(
            r#"
{preamble}[storage.s3]
bucket = "{bucket}"
prefix = "dbtape/"
region = "us-east-1"
endpoint = "{s3_endpoint}"
force_path_style = true
part_size = 65536
upload_retries = 2
scan_interval = "200ms"
{more_s3}
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
password = {{ env = "DBTAPE_TEST_PG_PASSWORD" }}
[[users]]
name = "alice"
scram_verifier = "{alice}"
[[users.grants]]
database = "pg"
db_users = ["postgres"]
"#,
            // Each instance its own server_id, as a fleet's would be.
            preamble = common::test_server_toml(root.path())
                .replace("[server]\n", &format!("[server]\nserver_id = \"proxy-{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n")),
            pg_port = services.get("PG_PORT"),
            alice = verifier(ALICE_PASSWORD),
        );
        let config = root.path().join("dbtape.toml");
        std::fs::write(&config, text).unwrap();
        Setup { root, services, port, admin, config }
    }

    /// A GET on the admin listener: (status line, body).
    fn admin_get(&self, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.admin)).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_string(), body.to_string())
    }

    fn serve(&self) -> Serving {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.root.path().join("serve.log")).unwrap();
        let child = common::dbtape_bin()
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("DBTAPE_TEST_PG_PASSWORD", self.services.get("PG_PASSWORD"))
            .envs(self.services.proxy_aws_vars())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "dbtape did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Serving(child)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("serve.log")).unwrap_or_default()
    }

    fn psql(&self, sql: &str) -> Child {
        let mut child = Command::new("psql")
            .arg(format!(
                "host=localhost port={} user=alice dbname=postgres sslmode=verify-full sslrootcert={}/ca.crt",
                self.port,
                self.services.get("CERTS")
            ))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .env("PGPASSWORD", ALICE_PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Statements on stdin: a 400 KB one would be too long for an argument.
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, format!("{sql}\n").as_bytes()).unwrap();
        drop(stdin);
        child
    }

    /// Turns `[recording.segments]` on, segments closing at `max_age`.
    fn pack_short_sessions(&self, max_age: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(&format!("\n[recording.segments]\nenabled = true\nmax_age = \"{max_age}\"\n"));
        std::fs::write(&self.config, text).unwrap();
    }

    fn recordings(&self) -> std::path::PathBuf {
        self.root.path().join("recordings")
    }

    fn markers(&self) -> usize {
        std::fs::read_dir(self.recordings())
            .map_or(0, |d| d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".uploaded.json")).count())
    }

    /// The multipart checkpoint of the one live session, once it has at least `parts` parts.
    fn wait_for_checkpoint(&self, parts: usize) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = std::fs::read_dir(self.recordings()).ok().into_iter().flatten().flatten().find_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let text = std::fs::read_to_string(e.path()).ok().filter(|_| name.ends_with(".upload.json"))?;
                serde_json::from_str::<serde_json::Value>(&text).ok().filter(|c| c["parts"].as_array().map_or(0, Vec::len) >= parts)
            });
            if let Some(checkpoint) = found {
                return checkpoint;
            }
            assert!(Instant::now() < deadline, "no live multipart upload with {parts} parts; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for_markers(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.markers() < n {
            assert!(Instant::now() < deadline, "{} of {n} recordings uploaded; log:\n{}", self.markers(), self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A review command against the bucket alone, copying into a fresh folder.
    fn review(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.try_review(args);
        assert!(ok, "{args:?}: {stderr}");
        stdout
    }

    /// As `review`, for a command that may fail: (success, stdout, stderr).
    fn try_review(&self, args: &[&str]) -> (bool, String, String) {
        let copy = self.root.path().join("from-bucket");
        let out = common::dbtape_bin()
            .args(args)
            .args(["--source", "s3", "--dir"])
            .arg(&copy)
            .arg("--config")
            .arg(&self.config)
            .envs(self.services.proxy_aws_vars())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).replace('\r', ""), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A running `dbtape serve`, killed if a failing test leaves it running.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGTERM, as a service manager stops dbtape, and waits for it to exit.
/// SIGKILLs the proxy while a session is running in it.
fn kill_mid_session(setup: &Setup, mut serve: Serving) {
    let mut running = setup.psql("SELECT 'before the crash' AS note; SELECT pg_sleep(30)");
    std::thread::sleep(Duration::from_millis(1500));
    serve.0.kill().unwrap();
    let _ = serve.0.wait();
    let _ = running.kill();
    let _ = running.wait();
}

fn stop(mut serving: Serving) {
    let _ = Command::new("kill").args(["-TERM", &serving.0.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while serving.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "dbtape did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    getrandom::getrandom(&mut raw).unwrap();
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn recordings_are_uploaded_whole_and_reviewable_from_the_bucket() {
    let services = Services::load();
    let bucket = make_bucket(&services);
    let setup = Setup::new(&bucket, services.get("AWS_ENDPOINT"));
    // A damaged recording left from before: quarantined, kept, and no obstacle to the rest.
    let damaged = uuid::Uuid::new_v4().to_string();
    std::fs::create_dir_all(setup.recordings()).unwrap();
    std::fs::write(setup.recordings().join(format!("{damaged}.dbt")), b"not a dbtape recording at all").unwrap();
    let serve = setup.serve();
    let small = setup.psql("SELECT 'small session' AS note").wait_with_output().unwrap();
    assert!(small.status.success(), "{}", String::from_utf8_lossy(&small.stderr));
    // 400 KB of random hex in the statement: the recording passes the 64 KiB part size.
    let large = setup.psql(&format!("SELECT length('{}') AS big", random_hex(200_000))).wait_with_output().unwrap();
    assert!(large.status.success(), "{}", String::from_utf8_lossy(&large.stderr));
    setup.wait_for_markers(2);
    // The admin listener counts what happened.
    let (status, health) = setup.admin_get("/healthz");
    assert!(status.contains(" 200 "), "{status} {health}");
    let (status, metrics) = setup.admin_get("/metrics");
    assert!(status.contains(" 200 "), "{status}");
    let value = |line: &str| -> f64 {
        let found = metrics.lines().find(|l| l.starts_with(line)).unwrap_or_else(|| panic!("{line} missing: {metrics}"));
        found.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("dbtape_sessions_total{protocol=\"postgres\"}"), 2.0, "{metrics}");
    assert_eq!(value("dbtape_sessions_active{protocol=\"postgres\"}"), 0.0, "{metrics}");
    assert!(value("dbtape_queries_total{protocol=\"postgres\"}") >= 2.0, "{metrics}");
    assert_eq!(value("dbtape_uploads_total"), 2.0, "{metrics}");
    assert_eq!(value("dbtape_upload_backlog"), 0.0, "{metrics}");
    assert!(value("dbtape_recorded_bytes_total") > 200_000.0, "{metrics}");
    assert!(value("dbtape_recording_write_seconds_count") >= 1.0, "{metrics}");
    stop(serve);
    // The proxy indexed its sealed recordings for `dbtape search` as it went.
    let indexed = common::dbtape_bin().args(["index", "verify", "--dir"]).arg(setup.recordings()).output().unwrap();
    assert!(indexed.status.success(), "{}", String::from_utf8_lossy(&indexed.stdout));
    assert!(setup.recordings().join("index").is_dir());
    assert!(setup.recordings().join("quarantine").join(format!("{damaged}.dbt")).exists(), "the damaged file is kept in quarantine");
    assert!(!setup.recordings().join(format!("{damaged}.dbt")).exists());

    let objects = objects(&services, &bucket);
    let today = chrono::Utc::now().format("%Y/%m/%d").to_string();
    let recordings: Vec<&(String, String)> = objects.iter().filter(|(k, _)| k.ends_with(".dbt")).collect();
    assert_eq!(recordings.len(), 2, "{objects:?}");
    for (key, _) in &recordings {
        assert!(key.starts_with(&format!("dbtape/{today}/")), "{key}");
        for suffix in [".meta.json", ".manifest.json"] {
            let sibling = key.replace(".dbt", suffix);
            assert!(objects.iter().any(|(k, _)| *k == sibling), "{sibling} missing");
        }
    }
    assert!(recordings.iter().any(|(_, etag)| etag.contains('-')), "one recording went up in parts: {recordings:?}");
    assert!(recordings.iter().any(|(_, etag)| !etag.contains('-')), "one went up whole: {recordings:?}");
    assert!(objects.iter().any(|(k, _)| k.starts_with("dbtape/keys/") && k.ends_with(".pub")), "the instance's public key is published");

    // Review from the bucket alone.
    let listed: serde_json::Value = serde_json::from_str(&setup.review(&["ls", "--format", "json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let verified = setup.review(&["verify", "--all"]);
    assert_eq!(verified.lines().filter(|l| l.contains("  OK  ")).count(), 2, "{verified}");
    let plays: Vec<String> =
        listed.as_array().unwrap().iter().map(|s| setup.review(&["play", "--format", "text", s["sid"].as_str().unwrap()])).collect();
    assert!(plays.iter().any(|p| p.contains("SELECT 'small session' AS note")), "the small session plays from the bucket");

    // A recording gone from the proxy's disk is found in the bucket without --source s3.
    let at = plays.iter().position(|p| p.contains("small session")).unwrap();
    let small = listed[at]["sid"].as_str().unwrap().to_string();
    for file in std::fs::read_dir(setup.recordings()).unwrap().flatten() {
        if file.file_name().to_string_lossy().starts_with(&small) {
            std::fs::remove_file(file.path()).unwrap();
        }
    }
    for args in [vec!["play", "--format", "text", &small], vec!["verify", &small], vec!["export", "--session", &small]] {
        let out = common::dbtape_bin()
            .args(&args)
            .arg("--config")
            .arg(&setup.config)
            .env("XDG_CACHE_HOME", setup.root.path().join("cache"))
            .envs(services.proxy_aws_vars())
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("reading it from s3://"), "{args:?}: {stderr}");
        assert!(stdout.contains("small session") || stdout.contains("  OK  "), "{args:?}: {stdout}");
    }
}

/// A TCP relay to S3 that can be taken down (it refuses connections) and brought back.
fn switchable_relay(target: &str) -> (String, Arc<AtomicBool>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    let target = target.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            if !flag.load(Ordering::Acquire) {
                drop(client);
                continue;
            }
            let target = target.clone();
            std::thread::spawn(move || {
                let Ok(server) = std::net::TcpStream::connect(target) else { return };
                let (mut c1, mut s1) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c2, mut s2) = (client, server);
                let a = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c1, &mut s1);
                    let _ = s1.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
                let _ = a.join();
            });
        }
    });
    (format!("http://{addr}"), up)
}

#[test]
fn an_s3_outage_and_a_killed_proxy_lose_nothing() {
    let services = Services::load();
    let bucket = make_bucket(&services);
    let (relay, s3_up) = switchable_relay(services.get("AWS_ENDPOINT"));
    let setup = Setup::new(&bucket, &relay);
    let serve = setup.serve();
    // S3 is down: a finished session stays queued.
    let done = setup.psql("SELECT 'during the outage' AS note").wait_with_output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(setup.markers(), 0, "nothing can be uploaded while S3 is down");
    kill_mid_session(&setup, serve);
    // S3 comes back and the proxy restarts: recovery seals the killed session, and both go up.
    s3_up.store(true, Ordering::Release);
    let serve = setup.serve();
    setup.wait_for_markers(2);
    stop(serve);
    let objects = objects(&services, &bucket);
    assert_eq!(objects.iter().filter(|(k, _)| k.ends_with(".dbt")).count(), 2, "{objects:?}");
    let verified = setup.review(&["verify", "--all"]);
    assert!(verified.contains("OK (recovered after a crash)"), "{verified}");
    assert_eq!(verified.lines().filter(|l| l.contains("  OK")).count(), 2, "{verified}");
    let listed: serde_json::Value = serde_json::from_str(&setup.review(&["ls", "--format", "json"])).unwrap();
    let crashed = listed.as_array().unwrap().iter().find(|s| s["state"] == "recovered").expect("the killed session, recovered");
    let crashed_sid = crashed["sid"].as_str().unwrap();
    let play = setup.review(&["play", "--format", "text", crashed_sid]);
    assert!(play.contains("before the crash"), "every query the client saw answered is there: {play}");
    // The end the dead proxy never wrote is rebuilt from the last recorded event, and says so.
    let exported = setup.review(&["export", "--session", crashed_sid]);
    let events: Vec<serde_json::Value> = exported.lines().map(|l| common::assert_schema_valid(l.as_bytes())).collect();
    let (end, before) = events.split_last().unwrap();
    assert_eq!(end["event"], "db.session.end", "{exported}");
    assert_eq!(end["rebuilt"], true);
    assert_eq!(end["ei"].as_u64(), before.last().unwrap()["ei"].as_u64().map(|ei| ei + 1));
    assert_eq!(end["session_stop"], before.last().unwrap()["time"]);
    assert_eq!(end["user"], "alice");
    assert!(events.iter().filter(|e| e["event"] == "db.session.end").count() == 1);

    // By hand: nothing is pending; --all sends everything again.
    let upload = |all: bool| {
        let mut command = common::dbtape_bin();
        command.arg("upload").arg("--config").arg(&setup.config).envs(services.proxy_aws_vars());
        if all {
            command.arg("--all");
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(upload(false).contains("0 uploaded, 0 failed"), "{}", upload(false));
    let again = upload(true);
    assert!(again.contains("2 uploaded, 0 failed"), "{again}");
}

/// Statements that make a recording of several 64 KiB parts, then a session that stays open.
fn long_session_sql() -> String {
    format!(
        "SELECT length('{}') AS first_half; SELECT length('{}') AS second_half; SELECT pg_sleep(60)",
        random_hex(150_000),
        random_hex(150_000)
    )
}

#[test]
fn a_proxy_killed_mid_upload_resumes_the_same_multipart_upload() {
    let services = Services::load();
    let bucket = make_bucket(&services);
    let (relay, s3_up) = switchable_relay(services.get("AWS_ENDPOINT"));
    s3_up.store(true, Ordering::Release);
    let setup = Setup::new(&bucket, &relay);
    let mut serve = setup.serve();
    let mut running = setup.psql(&long_session_sql());
    // Parts go up while the session runs; then S3 goes away and the proxy is killed mid-upload.
    let checkpoint = setup.wait_for_checkpoint(2);
    s3_up.store(false, Ordering::Release);
    serve.0.kill().unwrap();
    let _ = serve.0.wait();
    let _ = running.kill();
    let _ = running.wait();
    assert_eq!(objects(&services, &bucket).iter().filter(|(k, _)| k.ends_with(".dbt")).count(), 0, "not complete yet");
    s3_up.store(true, Ordering::Release);
    let serve = setup.serve();
    setup.wait_for_markers(1);
    stop(serve);
    let marker = std::fs::read_dir(setup.recordings())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".uploaded.json"))
        .unwrap();
    let marker: serde_json::Value = serde_json::from_slice(&std::fs::read(marker.path()).unwrap()).unwrap();
    assert_eq!(
        marker["upload_id"],
        checkpoint["upload_id"],
        "the upload begun before the crash was resumed, not begun again; log:\n{}",
        setup.log()
    );
    assert!(setup.log().contains("resuming multipart upload"), "{}", setup.log());
    let recording = objects(&services, &bucket).into_iter().find(|(k, _)| k.ends_with(".dbt")).unwrap();
    let parts: usize = recording.1.split('-').nth(1).unwrap().parse().unwrap();
    assert!(parts > checkpoint["parts"].as_array().unwrap().len(), "{recording:?}");
    let verified = setup.review(&["verify", "--all"]);
    assert!(verified.contains("OK (recovered after a crash)"), "{verified}");
    let listed: serde_json::Value = serde_json::from_str(&setup.review(&["ls", "--format", "json"])).unwrap();
    let play = setup.review(&["play", "--format", "text", listed[0]["sid"].as_str().unwrap()]);
    assert!(play.contains("second_half"), "{play}");
}

#[test]
fn the_parts_of_a_host_that_never_returns_are_completed_by_another_instance() {
    let services = Services::load();
    let bucket = make_bucket(&services);
    let first = Setup::new(&bucket, services.get("AWS_ENDPOINT"));
    let mut serve = first.serve();
    let mut running = first.psql(&long_session_sql());
    let mut checkpoint = first.wait_for_checkpoint(2);
    // Once the session idles, its whole parts are all sent and the bucket's copy of the
    // checkpoint names every one of them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = first.wait_for_checkpoint(2);
        let key = sent["key"].as_str().unwrap().replace(".dbt", ".upload.json");
        if fetch(&services, &bucket, &key).is_some_and(|copy| copy["parts"] == sent["parts"]) && sent == checkpoint {
            break;
        }
        assert!(Instant::now() < deadline, "the bucket's checkpoint never caught up: {sent}");
        checkpoint = sent;
        std::thread::sleep(Duration::from_millis(500));
    }
    serve.0.kill().unwrap();
    let _ = serve.0.wait();
    let _ = running.kill();
    let _ = running.wait();
    // The host and its disk are gone. Another instance on the same bucket sweeps the orphan.
    let sent = checkpoint["parts"].as_array().unwrap().len();
    let key = checkpoint["key"].as_str().unwrap().to_string();
    let first_log = first.log();
    drop(first);
    let second = Setup::with(&bucket, services.get("AWS_ENDPOINT"), "stale_upload_after = \"1s\"");
    let serve = second.serve();
    let deadline = Instant::now() + Duration::from_secs(30);
    let completed = loop {
        if let Some(found) = objects(&services, &bucket).into_iter().find(|(k, _)| *k == key) {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the orphaned upload was never completed; objects {:?}; first log:\n{first_log}\nsecond log:\n{}",
            objects(&services, &bucket),
            second.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    stop(serve);
    assert!(completed.1.ends_with(&format!("-{sent}")), "every part the dead host sent: {completed:?}");
    assert!(second.log().contains("completed an orphaned multipart upload"), "{}", second.log());
    // What reached the bucket can be listed and played, though it was never signed.
    let listed: serde_json::Value = serde_json::from_str(&second.review(&["ls", "--format", "json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let play = second.review(&["play", "--format", "text", listed[0]["sid"].as_str().unwrap()]);
    assert!(play.contains("first_half"), "the first part's statements survive the host: {play}");
}

#[test]
fn a_fleet_shares_one_bucket_and_each_recording_names_its_signer() {
    let services = Services::load();
    let bucket = make_bucket(&services);
    let a = Setup::new(&bucket, services.get("AWS_ENDPOINT"));
    let b = Setup::new(&bucket, services.get("AWS_ENDPOINT"));
    let (serve_a, serve_b) = (a.serve(), b.serve());
    for (setup, note) in [(&a, "via proxy a"), (&b, "via proxy b")] {
        let done = setup.psql(&format!("SELECT '{note}' AS note")).wait_with_output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
    a.wait_for_markers(1);
    b.wait_for_markers(1);
    stop(serve_a);
    stop(serve_b);
    let objects = objects(&services, &bucket);
    assert_eq!(objects.iter().filter(|(k, _)| k.starts_with("dbtape/keys/")).count(), 2, "each instance publishes its key: {objects:?}");

    // A's reviewer trusts only A's key: B's recording is named as B's, and not trusted.
    let listed: serde_json::Value = serde_json::from_str(&a.review(&["ls", "--format", "json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "both instances' sessions: {listed}");
    let (ok, report, _) = a.try_review(&["verify", "--all"]);
    assert!(!ok, "{report}");
    assert_eq!(report.matches("  OK  ").count(), 1, "{report}");
    assert!(report.contains(&format!("published as keys/proxy-{}-", b.port)) && report.contains("not trusted"), "{report}");
    // Once B's public key is in A's config, the whole bucket verifies, each recording naming its signer.
    let config = std::fs::read_to_string(&a.config).unwrap();
    let trusted = format!("[recording]\ntrusted_keys = [\"{}\"]\n", b.root.path().join("key.pub").display());
    std::fs::write(&a.config, config.replacen("[recording]\n", &trusted, 1)).unwrap();
    let report = a.review(&["verify", "--all"]);
    assert_eq!(report.matches("  OK  ").count(), 2, "{report}");
    for setup in [&a, &b] {
        assert!(report.contains(&format!("published as keys/proxy-{}-", setup.port)), "{report}");
    }
    assert_eq!(report.matches(", trusted)").count(), 2, "{report}");
    let plays: Vec<String> =
        listed.as_array().unwrap().iter().map(|s| a.review(&["play", "--format", "text", s["sid"].as_str().unwrap()])).collect();
    assert!(plays.iter().any(|p| p.contains("via proxy a")) && plays.iter().any(|p| p.contains("via proxy b")), "{plays:?}");
}

/// SIGKILL right after the client saw its queries answered. With fsync `always`, strict mode
/// answers a query only once its event is on disk, so every answered query is in the
/// recording that reaches the bucket. With `batch`, the last batch interval may be lost, but
/// never a query from before it: what is recorded is always a prefix of what was answered,
/// and holds at least the ten answered a second (five batch intervals) before the kill.
#[test]
fn a_proxy_killed_right_after_answering_keeps_every_answered_query() {
    let services = Services::load();
    for fsync in ["always", "batch"] {
        let bucket = make_bucket(&services);
        let setup = Setup::new(&bucket, services.get("AWS_ENDPOINT"));
        let config = std::fs::read_to_string(&setup.config).unwrap();
        std::fs::write(&setup.config, config.replacen("[recording]\n", &format!("[recording]\nfsync = \"{fsync}\"\n"), 1)).unwrap();
        let mut serve = setup.serve();
        let answered = setup.root.path().join("answered");
        let mut sql: String = (1..=10).map(|i| format!("SELECT 'answered {i}' AS q;\n")).collect();
        sql.push_str("SELECT pg_sleep(1);\n");
        sql.extend((11..=20).map(|i| format!("SELECT 'answered {i}' AS q;\n")));
        sql.push_str(&format!("\\! touch {}\nSELECT pg_sleep(30);\n", answered.display()));
        let mut client = setup.psql(&sql);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !answered.exists() {
            assert!(Instant::now() < deadline, "psql never got its answers: {}", setup.log());
            std::thread::sleep(Duration::from_millis(2));
        }
        serve.0.kill().unwrap();
        let _ = serve.0.wait();
        let _ = client.kill();
        let _ = client.wait();
        let serve = setup.serve();
        setup.wait_for_markers(1);
        stop(serve);
        let exported = setup.review(&["export", "--event", "db.session.query"]);
        let recorded: Vec<u32> = exported
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| {
                e["db_query"].as_str().and_then(|q| q.strip_prefix("SELECT 'answered ")).and_then(|q| q.split('\'').next()?.parse().ok())
            })
            .collect();
        let prefix: Vec<u32> = (1..=recorded.len() as u32).collect();
        assert_eq!(recorded, prefix, "fsync {fsync}: recorded queries are a prefix of the answered ones");
        if fsync == "always" {
            assert_eq!(recorded.len(), 20, "fsync always: every answered query survives the kill");
        } else {
            assert!(recorded.len() >= 10, "fsync batch: queries answered a second before the kill were lost: {recorded:?}");
        }
        eprintln!("fsync {fsync}: {} of 20 answered queries recorded after SIGKILL", recorded.len());
    }
}

#[test]
fn object_lock_keeps_even_the_proxys_credentials_from_deleting_a_recording() {
    let services = Services::load();
    let bucket = make_bucket_with(&services, true);
    let setup = Setup::with(&bucket, services.get("AWS_ENDPOINT"), "object_lock_mode = \"COMPLIANCE\"\nobject_lock_days = 1");
    let serve = setup.serve();
    for sql in ["SELECT 'locked small' AS note".to_string(), format!("SELECT length('{}') AS locked_big", random_hex(200_000))] {
        let done = setup.psql(&sql).wait_with_output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
    setup.wait_for_markers(2);
    stop(serve);
    // Every recording, the one sent whole and the one sent in parts, is under COMPLIANCE
    // retention, and deleting its version is refused even with the proxy's own credentials.
    let script = r#"
import sys, boto3
s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')
for o in s3.list_object_versions(Bucket=sys.argv[2], Prefix='dbtape/20')['Versions']:
    if not o['Key'].endswith('.dbt'):
        continue
    # GetObjectRetention answers 500 in moto 5.2.5; HeadObject carries the same retention.
    r = {'Mode': s3.head_object(Bucket=sys.argv[2], Key=o['Key'], VersionId=o['VersionId']).get('ObjectLockMode', 'none')}
    try:
        s3.delete_object(Bucket=sys.argv[2], Key=o['Key'], VersionId=o['VersionId'])
        outcome = 'deleted'
    except s3.exceptions.ClientError as e:
        outcome = e.response['Error']['Code']
    print(r['Mode'], outcome)
"#;
    let out =
        services.python().args(["-c", script, services.get("AWS_ENDPOINT"), &bucket]).envs(services.proxy_aws_vars()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines, ["COMPLIANCE AccessDenied", "COMPLIANCE AccessDenied"], "{lines:?}");
    let objects = objects(&services, &bucket);
    assert!(objects.iter().any(|(k, etag)| k.ends_with(".dbt") && etag.contains('-')), "one went up in parts: {objects:?}");
}

/// Runs a Python reader of the lake (`argv[1]` is the S3 endpoint, then `args`) and returns
/// the JSON it prints.
fn read_lake(services: &Services, script: &str, args: &[&str]) -> serde_json::Value {
    // pyarrow's native threads can abort the interpreter's own teardown under load
    // ("terminate called without an active exception"); once the answer is out, skip it.
    let script = format!("{script}\nimport os, sys\nsys.stdout.flush()\nos._exit(0)\n");
    let out =
        services.python().args(["-c", &script, services.get("AWS_ENDPOINT")]).args(args).envs(services.proxy_aws_vars()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

const LAKE: &str = "\n[lake]\nenabled = true\nprefix = \"lake/\"\nflush_interval = \"1s\"\n";

impl Setup {
    /// `dbtape lake <args> --config`: (success, stdout, stderr).
    fn lake(&self, args: &[&str]) -> (bool, String, String) {
        let out = common::dbtape_bin()
            .arg("lake")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .envs(self.services.proxy_aws_vars())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Waits until `lake verify` finds every recorded event in the lake once.
    fn wait_for_lake(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out, err) = self.lake(&["verify"]);
            if ok {
                return out;
            }
            assert!(Instant::now() < deadline, "the lake never matched the recordings:\n{out}{err}\nlog:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// How many events this instance's recordings hold.
    fn recorded_events(&self) -> usize {
        let out = common::dbtape_bin().args(["export", "--raw", "--config"]).arg(&self.config).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

/// Two proxies write one bucket's lake; pyarrow reads it straight from the bucket (Hive
/// partitions), DuckDB from a downloaded copy through `lake ddl`'s own view, and each
/// auditor's question gets its exact answer.
#[test]
fn a_fleets_lake_answers_auditors_questions_in_pyarrow_and_duckdb() {
    let services = Services::load();
    let bucket = make_bucket(&services);
    let fleet: Vec<Setup> = (0..2).map(|_| Setup::with(&bucket, services.get("AWS_ENDPOINT"), LAKE)).collect();
    for setup in &fleet {
        let serve = setup.serve();
        let sql = "CREATE TABLE IF NOT EXISTS payments_HOST (id int);\nINSERT INTO payments_HOST VALUES (1);\nSELECT id FROM payments_HOST;\nDROP TABLE payments_HOST;";
        let done = setup.psql(&sql.replace("HOST", &setup.port.to_string())).wait_with_output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        let report = setup.wait_for_lake();
        assert!(report.contains("every recorded event once"), "{report}");
        stop(serve);
    }
    let recorded: usize = fleet.iter().map(Setup::recorded_events).sum();
    let folder = fleet[0].root.path().join("lake-copy");
    let (ok, ddl, err) = fleet[0].lake(&["ddl", "--engine", "duckdb", "--location", folder.join("lake").to_str().unwrap()]);
    assert!(ok, "{err}");
    let script = r#"
import json, os, sys, boto3, duckdb
import pyarrow.dataset as ds, pyarrow.fs as pafs
endpoint, bucket, folder, ddl = sys.argv[1:5]
s3 = pafs.S3FileSystem(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                       region="us-east-1", scheme="http", endpoint_override=endpoint.split("://")[1])
table = ds.dataset(f"{bucket}/lake/events", filesystem=s3, format="parquet", partitioning="hive").to_table()
pairs = list(zip(table.column("sid").to_pylist(), table.column("ei").to_pylist()))
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
for o in client.list_objects_v2(Bucket=bucket, Prefix="lake/")["Contents"]:
    path = os.path.join(folder, o["Key"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    client.download_file(bucket, o["Key"], path)
con = duckdb.connect()
con.execute(ddl)
q = lambda sql: con.execute(sql).fetchall()
print(json.dumps({
    "rows": len(pairs), "distinct": len(set(pairs)), "hive_dates": sorted({str(d) for d in table.column("event_date").to_pylist()}),
    "drops": q("SELECT count(*) FROM dbtape_events WHERE db_statement_class = 'DDL' AND db_query ILIKE 'DROP%' AND year(event_date) >= 2026")[0][0],
    "alice": q("SELECT count(*) FROM dbtape_events WHERE \"user\" = 'alice' AND event = 'db.session.query'")[0][0],
    "roles": [r[0] for r in q("SELECT DISTINCT db_user FROM dbtape_events WHERE list_contains(db_tables, 'payments_" + sys.argv[5] + "')")],
    "hosts": q("SELECT count(DISTINCT server_id) FROM dbtape_events")[0][0],
    "time_type": q("SELECT typeof(time) FROM dbtape_events LIMIT 1")[0][0],
}))
"#;
    let answers = read_lake(&services, script, &[&bucket, folder.to_str().unwrap(), &ddl, &fleet[0].port.to_string()]);
    assert_eq!(answers["rows"], recorded, "{answers}");
    assert_eq!(answers["distinct"], recorded, "every (sid, ei) once: {answers}");
    assert_eq!(answers["drops"], 2, "{answers}");
    assert_eq!(answers["alice"], 8, "four statements on each proxy: {answers}");
    assert_eq!(answers["roles"], serde_json::json!(["postgres"]), "{answers}");
    assert_eq!(answers["hosts"], 2, "{answers}");
    assert_eq!(answers["time_type"], "TIMESTAMP WITH TIME ZONE", "{answers}");
    assert_eq!(answers["hive_dates"].as_array().unwrap().len(), 1, "{answers}");
}

/// The lake through an S3 outage and a SIGKILL of the proxy: once both are over, every
/// event is in the lake once.
#[test]
fn the_lake_survives_an_s3_outage_and_a_killed_proxy() {
    let services = Services::load();
    let bucket = make_bucket(&services);
    let (relay, s3_up) = switchable_relay(services.get("AWS_ENDPOINT"));
    let setup = Setup::with(&bucket, &relay, LAKE);
    let serve = setup.serve();
    for i in 0..3 {
        let done = setup.psql(&format!("SELECT {i} AS during_the_outage")).wait_with_output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
    // The batch falls due and fails; the journal holds it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let journal = std::fs::read_to_string(setup.recordings().join("lake/journal.json")).unwrap_or_default();
        if journal.contains("\"pending\":{") {
            break;
        }
        assert!(Instant::now() < deadline, "no batch waits for S3: {journal}\n{}", setup.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    kill_mid_session(&setup, serve);
    s3_up.store(true, Ordering::Release);
    let serve = setup.serve();
    let report = setup.wait_for_lake();
    stop(serve);
    let report_after = setup.wait_for_lake();
    assert!(report_after.contains("every recorded event once"), "{report}\n{report_after}");
    // Bounded to an hour ago, nothing this test recorded is checked, and no row is unknown.
    let (ok, out, err) = setup.lake(&["verify", "--until", "1h"]);
    assert!(ok && out.contains("; 0 recorded event(s)"), "{out}{err}");
    // Written again by hand: nothing new, nothing twice.
    let (ok, out, err) = setup.lake(&["backfill"]);
    assert!(ok && out.starts_with("0 event(s)"), "{out}{err}");
}

/// `formats = ["dbtape", "ocsf"]`: the same events as OCSF 1.3 Datastore Activity rows in
/// Security Lake's custom-source layout, each row valid against class 6005's schema as the
/// `ocsf-json-schema` package generates it.
#[test]
fn ocsf_rows_in_security_lakes_layout_validate_against_class_6005() {
    let services = Services::load();
    let bucket = make_bucket(&services);
    let lake = format!("{LAKE}formats = [\"dbtape\", \"ocsf\"]\nocsf_account_id = \"123456789012\"\n");
    let setup = Setup::with(&bucket, services.get("AWS_ENDPOINT"), &lake);
    let serve = setup.serve();
    let done = setup.psql("SELECT 1 AS one;\nCREATE TEMP TABLE t (v int);\nSELECT err;").wait_with_output().unwrap();
    assert!(!done.status.success(), "the last statement fails");
    // A refused login: a Connect that failed.
    let refused = Command::new("psql")
        .arg(format!(
            "host=localhost port={} user=alice dbname=postgres sslmode=verify-full sslrootcert={}/ca.crt",
            setup.port,
            services.get("CERTS")
        ))
        .args(["-X", "-c", "SELECT 1"])
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    setup.wait_for_lake();
    stop(serve);
    let script = r#"
import json, os, sys, boto3, io
import pyarrow.parquet as pq, jsonschema
from importlib import resources
from ocsf_json_schema import OcsfJsonSchemaEmbedded
endpoint, bucket = sys.argv[1:3]
raw = json.loads((resources.files("ocsf_json_schema") / "ocsf" / "1.3.0.json").read_text())
schema = OcsfJsonSchemaEmbedded(raw).get_class_schema(OcsfJsonSchemaEmbedded(raw).lookup_class_name_from_uid(6005))
validator = jsonschema.Draft202012Validator(schema)
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="lake/ext/")["Contents"]]
def clean(v):
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items() if x is not None}
    return v
rows, errors = [], []
for key in keys:
    table = pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
    for row in table.to_pylist():
        row = clean(row)
        row["unmapped"] = json.loads(row["unmapped"])
        errors += [e.message for e in validator.iter_errors(row)]
        rows.append(row)
print(json.dumps({"keys": keys, "rows": len(rows), "errors": errors[:5],
    "activities": sorted({(r["activity_name"], r["status_id"]) for r in rows}),
    "queries": sorted(r["query_info"]["query_string"] for r in rows if "query_info" in r),
    "failed": [(r["query_info"]["query_string"], r.get("status_detail")) for r in rows if "query_info" in r and r["status_id"] == 2]}))
"#;
    let answer = read_lake(&services, script, &[&bucket]);
    assert_eq!(answer["errors"], serde_json::json!([]), "{answer}");
    let keys = answer["keys"].as_array().unwrap();
    assert!(
        keys.iter().all(|k| {
            let k = k.as_str().unwrap();
            k.starts_with("lake/ext/dbtape/region=us-east-1/accountId=123456789012/eventDay=20") && k.ends_with(".parquet")
        }),
        "{answer}"
    );
    let activities = answer["activities"].as_array().unwrap();
    for expected in [
        serde_json::json!(["Connect", 1]),
        serde_json::json!(["Connect", 2]),
        serde_json::json!(["Read", 1]),
        serde_json::json!(["Query", 1]),
    ] {
        assert!(activities.contains(&expected), "{expected} in {answer}");
    }
    assert_eq!(answer["queries"], serde_json::json!(["CREATE TEMP TABLE t (v int);", "SELECT 1 AS one;", "SELECT err;"]), "{answer}");
    // The statement whose result was an error is a failed activity, with the server's error.
    assert_eq!(answer["failed"], serde_json::json!([["SELECT err;", "ERROR: column \"err\" does not exist (SQLSTATE 42703)"]]), "{answer}");
}

/// The lake holds all three protocols in one table: pymongo through the MongoDB path and the
/// aws CLI through the DynamoDB path, each proxy's recordings written by `lake backfill`
/// (the writer's own batch code) as a host of its own into one bucket, beside a PostgreSQL
/// proxy's live writer; pyarrow then reads every host's rows and `lake verify --source s3`
/// checks the whole fleet against the bucket's recordings.
#[test]
fn the_lake_holds_all_three_protocols_from_a_fleet() {
    use common::dynamo::{DynamoProxy, ALICE_KEY, ALICE_SECRET};
    use common::mongo::MongoProxy;
    let services = Services::load();
    let bucket = make_bucket(&services);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mongo = runtime.block_on(async {
        let mut proxy = MongoProxy::start().await;
        let script = "import sys, pymongo\nc = pymongo.MongoClient(sys.argv[1])\nc.lib.loans.insert_one({'book': 7})\nprint(c.lib.loans.count_documents({}))\nc.close()";
        let (ok, _, err) = proxy.pymongo(script, proxy.uri("alice", ALICE_PASSWORD, "")).await;
        assert!(ok, "{err}");
        proxy.stop().await;
        proxy
    });
    let dynamo = runtime.block_on(async {
        let mut proxy = DynamoProxy::start("").await;
        let table = format!("lake-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let key = format!("{ALICE_KEY}@audit-target");
        let create = [
            "dynamodb",
            "create-table",
            "--table-name",
            &table,
            "--attribute-definitions",
            "AttributeName=id,AttributeType=S",
            "--key-schema",
            "AttributeName=id,KeyType=HASH",
            "--billing-mode",
            "PAY_PER_REQUEST",
        ];
        let (ok, out, err) = proxy.aws(&key, ALICE_SECRET, &create).await;
        assert!(ok, "{out}{err}");
        let (ok, out, err) =
            proxy.aws(&key, ALICE_SECRET, &["dynamodb", "put-item", "--table-name", &table, "--item", r#"{"id":{"S":"1"}}"#]).await;
        assert!(ok, "{out}{err}");
        proxy.stop().await;
        proxy
    });
    // A reviewer's config for each proxy's recordings, as that host's lake would be.
    let lake_config = |name: &str, root: &std::path::Path| {
        let config = root.join("lake.toml");
        let text = format!(
            "[server]\nserver_id = \"{name}\"\n[recording]\ndir = \"{dir}\"\nsigning_key = \"{key}\"\n[storage.s3]\nbucket = \"{bucket}\"\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\nforce_path_style = true\n{LAKE}",
            dir = root.join("recordings").display(),
            key = root.join("key").display(),
            endpoint = services.get("AWS_ENDPOINT"),
        );
        std::fs::write(&config, text).unwrap();
        config
    };
    let mut recorded = 0;
    for (name, root, store) in [("mongo-host", mongo.root.path(), &mongo.store), ("dynamo-host", dynamo.root.path(), &dynamo.store)] {
        let config = lake_config(name, root);
        let run = |args: &[&str]| {
            let out =
                common::dbtape_bin().arg("lake").args(args).arg("--config").arg(&config).envs(services.proxy_aws_vars()).output().unwrap();
            (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let (ok, out, err) = run(&["backfill"]);
        assert!(ok, "{out}{err}");
        let events: usize = common::sessions_in(store).iter().map(Vec::len).sum();
        assert!(out.starts_with(&format!("{events} event(s)")), "{out}");
        let (ok, out, err) = run(&["verify"]);
        assert!(ok, "{out}{err}");
        recorded += events;
    }
    // A PostgreSQL proxy's live writer into the same bucket.
    let pg = Setup::with(&bucket, services.get("AWS_ENDPOINT"), LAKE);
    let serve = pg.serve();
    let done = pg.psql("SELECT 1 AS one;").wait_with_output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    pg.wait_for_lake();
    stop(serve);
    recorded += pg.recorded_events();
    let script = r#"
import json, os, sys
import pyarrow.dataset as ds, pyarrow.fs as pafs
endpoint, bucket = sys.argv[1:3]
s3 = pafs.S3FileSystem(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                       region="us-east-1", scheme="http", endpoint_override=endpoint.split("://")[1])
t = ds.dataset(f"{bucket}/lake/events", filesystem=s3, format="parquet", partitioning="hive").to_table()
rows = t.select(["sid", "ei", "db_protocol", "server_id", "event", "db_statement_class"]).to_pylist()
print(json.dumps({"rows": len(rows), "distinct": len({(r["sid"], r["ei"]) for r in rows}),
    "protocols": sorted({r["db_protocol"] for r in rows}), "hosts": len({r["server_id"] for r in rows}),
    "ddl": sorted({r["db_protocol"] for r in rows if r["db_statement_class"] == "DDL"})}))
"#;
    let answer = read_lake(&services, script, &[&bucket]);
    assert_eq!(answer["rows"], recorded, "{answer}");
    assert_eq!(answer["distinct"], recorded, "{answer}");
    assert_eq!(answer["protocols"], serde_json::json!(["dynamodb", "mongodb", "postgres"]), "{answer}");
    assert_eq!(answer["hosts"], 3, "{answer}");
    assert_eq!(answer["ddl"], serde_json::json!(["dynamodb"]), "the CreateTable: {answer}");
}

#[test]
fn short_sessions_go_up_packed_in_one_object_and_are_reviewed_from_the_bucket() {
    let services = Services::load();
    let bucket = make_bucket(&services);
    let setup = Setup::new(&bucket, services.get("AWS_ENDPOINT"));
    setup.pack_short_sessions("3s");
    let serve = setup.serve();
    const SESSIONS: usize = 12;
    for i in 0..SESSIONS {
        let out = setup.psql(&format!("SELECT 'packed session {i}' AS note")).wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The segment closes at its age and goes up with the next pass.
    let segments = setup.recordings().join("segments");
    let deadline = Instant::now() + Duration::from_secs(30);
    let uploaded = || {
        std::fs::read_dir(&segments)
            .map_or(0, |d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".dseg.uploaded.json")).count())
    };
    while uploaded() == 0 {
        assert!(Instant::now() < deadline, "no segment uploaded; log:\n{}", setup.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(serve);
    let own: Vec<String> = std::fs::read_dir(setup.recordings())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".dbt") || n.ends_with(".meta.json") || n.ends_with(".manifest.json"))
        .collect();
    assert!(own.is_empty(), "packed sessions keep no files of their own: {own:?}");
    let objects = objects(&services, &bucket);
    let segment_objects: Vec<_> = objects.iter().filter(|(k, _)| k.starts_with("dbtape/segments/") && k.ends_with(".dseg")).collect();
    assert_eq!(segment_objects.len(), 1, "{objects:?}");
    let today = chrono::Utc::now().format("%Y/%m/%d").to_string();
    assert!(segment_objects[0].0.starts_with(&format!("dbtape/segments/{today}/segment-")), "{segment_objects:?}");
    assert!(!objects.iter().any(|(k, _)| k.ends_with(".dbt") || k.ends_with(".manifest.json")), "{objects:?}");

    // Locally and from the bucket alone, every reader sees the sessions as before.
    let indexed = common::dbtape_bin().args(["index", "verify", "--dir"]).arg(setup.recordings()).output().unwrap();
    assert!(indexed.status.success(), "{}", String::from_utf8_lossy(&indexed.stdout));
    let found = common::dbtape_bin()
        .args(["search", "--format", "json", "--text", "packed session 7", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    assert!(String::from_utf8_lossy(&found.stdout).contains("packed session 7"), "{}", String::from_utf8_lossy(&found.stdout));
    let listed: serde_json::Value = serde_json::from_str(&setup.review(&["ls", "--format", "json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), SESSIONS, "{listed:?}");
    assert!(listed.iter().all(|s| s["state"] == "sealed" && s["queries"] == 1), "{listed:?}");
    let verified = setup.review(&["verify", "--all"]);
    assert_eq!(verified.lines().filter(|l| l.contains("  OK  ")).count(), SESSIONS, "{verified}");
    let played = setup.review(&["play", "--format", "text", listed[3]["sid"].as_str().unwrap()]);
    assert!(played.contains("SELECT 'packed session"), "{played}");
    let exported = setup.review(&["export"]);
    assert_eq!(exported.lines().filter(|l| l.contains("\"db.session.query\"")).count(), SESSIONS, "{exported}");
}

#[test]
fn a_proxy_killed_with_an_open_segment_loses_no_packed_session() {
    let services = Services::load();
    let bucket = make_bucket(&services);
    let setup = Setup::new(&bucket, services.get("AWS_ENDPOINT"));
    setup.pack_short_sessions("1h");
    let mut serve = setup.serve();
    const SESSIONS: usize = 6;
    for i in 0..SESSIONS {
        let out = setup.psql(&format!("SELECT 'before the kill {i}' AS note")).wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // A short session starts in memory and is packed at the writer's next batch tick, so wait
    // until another process reads every one from the open segment and none has its own file.
    let own_recordings =
        || std::fs::read_dir(setup.recordings()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".dbt")).count();
    let packed = || {
        let out = common::dbtape_bin().args(["verify", "--all", "--config"]).arg(&setup.config).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("  OK  ")).count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while own_recordings() > 0 || packed() < SESSIONS {
        assert!(Instant::now() < deadline, "sessions not packed; log:\n{}", setup.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGKILL: the segment is left open, without its end record, and so not uploaded.
    serve.0.kill().unwrap();
    let _ = serve.0.wait();
    let segments = setup.recordings().join("segments");
    let listed =
        || std::fs::read_dir(&segments).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>();
    assert!(!listed().iter().any(|n| n.ends_with(".uploaded.json")), "{:?}", listed());
    let open_len = std::fs::metadata(segments.join(listed().iter().find(|n| n.ends_with(".dseg")).unwrap())).unwrap().len();

    // The restart closes it (an end record of 48 bytes) and uploads it.
    let serve = setup.serve();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listed().iter().any(|n| n.ends_with(".dseg.uploaded.json")) {
        assert!(Instant::now() < deadline, "the recovered segment was not uploaded; log:\n{}", setup.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(serve);
    assert!(setup.log().contains("closed a segment a dead writer left open"), "{}", setup.log());
    let name = listed().into_iter().find(|n| n.ends_with(".dseg")).unwrap();
    assert_eq!(std::fs::metadata(segments.join(&name)).unwrap().len(), open_len + 48);
    let verified = common::dbtape_bin().args(["verify", "--all", "--config"]).arg(&setup.config).output().unwrap();
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{report}");
    assert_eq!(report.lines().filter(|l| l.contains("  OK  ")).count(), SESSIONS, "{report}");
    let objects = objects(&services, &bucket);
    assert!(objects.iter().any(|(k, _)| k.ends_with(&name)), "{objects:?}");
}
