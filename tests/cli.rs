//! The auditor's commands, run as the real binary against real recordings.

mod common;

use std::path::Path;

use common::{assert_schema_valid, block_on, context, recorder, TestRecorder};
use dbtape::audit::{EventBody, Protocol, Status};

const T0: i64 = 1_714_655_100_000; // Thu May  2 13:05:00 UTC 2024

fn run(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = common::dbtape_bin().args(args).arg("--dir").arg(dir).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn pg_session(rec: &TestRecorder) -> String {
    let mut ctx = context(Protocol::Postgres);
    ctx.database.service = "pg1".into();
    let sid = ctx.sid.clone();
    let log = rec.recorder.open_at(ctx, T0).unwrap();
    let q = |text: &str| EventBody::Query { query: text.into(), parameters: vec![], db_name: None };
    let events = [
        EventBody::SessionStart { status: Status::ok(), postgres_pid: Some(77), upstream_reused: None },
        q("SELECT id\n   FROM t;"),
        EventBody::Result { status: Status::ok(), affected_records: 3, query_ei: None },
        q("SELECT err;"),
        EventBody::Result {
            status: Status::failed("ERROR: column \"err\" does not exist (SQLSTATE 42703)", ""),
            affected_records: 0,
            query_ei: None,
        },
        EventBody::PostgresParse { statement_name: "s1".into(), query: "UPDATE t SET v = $1 WHERE id = $2".into() },
        EventBody::PostgresBind {
            statement_name: "s1".into(),
            portal_name: String::new(),
            parameters: vec!["a\"b".into(), "7".into()],
            parameter_formats: vec![],
            parameter_types: None,
        },
        EventBody::PostgresExecute { portal_name: String::new() },
        EventBody::Result { status: Status::ok(), affected_records: 1, query_ei: None },
        EventBody::SessionEnd {
            session_start: chrono::DateTime::from_timestamp_millis(T0).unwrap(),
            session_stop: chrono::DateTime::from_timestamp_millis(T0 + 120_000).unwrap(),
        },
    ];
    let n = events.len() as i64;
    for (i, body) in events.iter().enumerate() {
        let at = if i as i64 == n - 1 { T0 + 120_000 } else { T0 + i as i64 * 1000 };
        log.append(body, at).unwrap();
    }
    block_on(log.close()).unwrap();
    sid
}

fn mongo_session(rec: &TestRecorder, user: &str) -> String {
    let mut ctx = context(Protocol::MongoDb);
    ctx.user.user = user.into();
    ctx.database.service = "mongo1".into();
    let sid = ctx.sid.clone();
    let log = rec.recorder.open_at(ctx, T0 + 500_000).unwrap();
    log.append(&EventBody::SessionStart { status: Status::ok(), postgres_pid: None, upstream_reused: None }, T0 + 500_000).unwrap();
    log.append(
        &EventBody::Query {
            query: "OpMsg(Body={\"find\": \"books\",\"$db\": \"shop\"}, Documents=[], Flags=)".into(),
            parameters: vec![],
            db_name: Some("shop".into()),
        },
        T0 + 500_100,
    )
    .unwrap();
    log.append(
        &EventBody::QueryFailed {
            query: "OpMsg(Body={\"saslStart\": 1}, Documents=[], Flags=)".into(),
            parameters: vec![],
            db_name: Some("admin".into()),
            status: Status::failed("access denied", ""),
        },
        T0 + 500_200,
    )
    .unwrap();
    block_on(log.close()).unwrap();
    sid
}

#[test]
fn play_text_renders_postgres_like_tsh_play() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let sid = pg_session(&rec);
    let (code, out, err) = run(&["play", &sid, "--format", "text"], &rec.dir);
    assert_eq!(code, 0, "{err}");
    let expected = "Session started to database \"pg1\" at Thu May  2 13:05 UTC\n\
        \n\
        app=> SELECT id\n\
        \x20     FROM t;\n\
        SUCCESS\n\
        (3 rows affected)\n\
        \n\
        app=> SELECT err;\n\
        ERROR: column \"err\" does not exist (SQLSTATE 42703)\n\
        \n\
        app=> UPDATE t SET v = $1 WHERE id = $2 ($1 = \"a\\\"b\", $2 = \"7\")\n\
        SUCCESS\n\
        (1 row affected)\n\
        \n\
        Session ended at Thu May  2 13:07 UTC\n";
    assert_eq!(out, expected);
    // pty falls back to text when stdout is not a terminal.
    let (code, pty, err) = run(&["play", &sid], &rec.dir);
    assert_eq!(code, 0);
    assert_eq!(pty, expected);
    assert!(err.contains("not a terminal"));
}

#[test]
fn play_json_and_yaml_print_every_event() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let sid = mongo_session(&rec, "carol");
    let (code, out, _) = run(&["play", &sid, "--format", "json"], &rec.dir);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_schema_valid(line.as_bytes());
    }
    let (code, yaml, _) = run(&["play", &sid, "--format", "yaml"], &rec.dir);
    assert_eq!(code, 0);
    assert_eq!(yaml.matches("\n- \"ei\": ").count() + usize::from(yaml.starts_with("- \"ei\": ")), 3, "{yaml}");
    assert!(yaml.contains("  \"event\": \"db.session.query.failed\"\n"), "{yaml}");
    // MongoDB sessions play back as mongosh lines.
    let (_, text, _) = run(&["play", &sid, "--format", "text"], &rec.dir);
    assert!(text.starts_with("Session started to database \"mongo1\" at Thu May  2 13:13 UTC by \"carol\" as \"reader\"\n"), "{text}");
    assert!(text.contains("shop> db.books.find({})\n"), "{text}");
    assert!(
        text.contains("admin> OpMsg(Body={\"saslStart\": 1}, Documents=[], Flags=)\nMongoServerError[Error]: access denied\n"),
        "{text}"
    );
}

#[test]
fn bad_session_ids_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    for (input, needle) in [
        ("../../etc/passwd", "looks like a path"),
        ("/tmp/x.dbt", "looks like a path"),
        ("not-a-session", "is not a session id"),
        ("", "session id is empty"),
        ("5D2F8A90-3C4B-4D5E-9F60-ABCDEF012345", "no recording for session 5d2f8a90-3c4b-4d5e-9f60-abcdef012345"),
        ("5d2f8a903c4b4d5e9f60abcdef012345", "is not a session id"),
        ("5d2f8a90-3c4b-4d5e-9f60-abcdef012345", "no recording for session 5d2f8a90-3c4b-4d5e-9f60-abcdef012345"),
    ] {
        for cmd in [vec!["play", input, "--format", "text"], vec!["verify", input], vec!["export", "--session", input]] {
            let (code, _, err) = run(&cmd, &rec.dir);
            assert_eq!(code, 2, "{cmd:?}: {err}");
            assert!(err.contains(needle), "{cmd:?}: {err}");
        }
    }
}

#[test]
fn ls_lists_sessions_with_counts_and_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let pg = pg_session(&rec);
    let m1 = mongo_session(&rec, "carol");
    let m2 = mongo_session(&rec, "dave");
    let (code, out, err) = run(&["ls"], &rec.dir);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("ID") && lines[0].contains("QUERIES") && lines[0].ends_with("STATE"));
    let pg_line = lines.iter().find(|l| l.starts_with(&pg)).unwrap();
    let cells: Vec<&str> = pg_line.split_whitespace().collect();
    assert_eq!(&cells[1..4], ["alice", "pg1", "postgres"], "{pg_line}");
    assert_eq!(&cells[7..], ["3", "1", "sealed"], "{pg_line}"); // one query ended in an error

    let (_, json, _) = run(&["ls", "--format", "json", "--user", "carol"], &rec.dir);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["sid"], m1.as_str());
    assert_eq!(rows[0]["queries"], 2);
    assert_eq!(rows[0]["failed_queries"], 1);
    assert_eq!(rows[0]["state"], "sealed");

    let (_, out, _) = run(&["ls", "--protocol", "mongodb", "--limit", "1"], &rec.dir);
    assert_eq!(out.lines().count(), 2);
    let (_, out, _) = run(&["ls", "--db", "pg1"], &rec.dir);
    assert!(out.contains(&pg) && !out.contains(&m2));
    let (_, out, _) = run(&["ls", "--until", "2000-01-01"], &rec.dir);
    assert_eq!(out.trim(), "no recorded sessions match");
    let (code, _, err) = run(&["ls", "--since", "last tuesday"], &rec.dir);
    assert_eq!(code, 2);
    assert!(err.contains("--since") && err.contains("is not a time"), "{err}");
}

#[test]
fn export_streams_filtered_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let pg = pg_session(&rec);
    let m1 = mongo_session(&rec, "carol");
    let (code, out, err) = run(&["export"], &rec.dir);
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out.lines().map(|l| assert_schema_valid(l.as_bytes())).collect();
    assert_eq!(events.len(), 13);
    // Sessions in start order, events in ei order.
    assert_eq!(events[0]["sid"], pg.as_str());
    assert_eq!(events[10]["sid"], m1.as_str());
    for pair in events[..10].windows(2) {
        assert!(pair[0]["ei"].as_u64() < pair[1]["ei"].as_u64());
    }

    let (_, out, _) = run(&["export", "--event", "db.session.query", "--event", "db.session.query.failed"], &rec.dir);
    let kinds: Vec<String> =
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["db.session.query", "db.session.query", "db.session.query", "db.session.query.failed"]);

    let (_, out, _) = run(&["export", "--user", "carol"], &rec.dir);
    assert_eq!(out.lines().count(), 3);
    let (_, out, _) = run(&["export", "--session", &pg, "--since", "2024-05-02T13:05:02Z", "--until", "2024-05-02T13:05:04Z"], &rec.dir);
    let eis: Vec<u64> = out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["ei"].as_u64().unwrap()).collect();
    assert_eq!(eis, [2, 3, 4]);

    let file = tmp.path().join("out.jsonl");
    let (code, out, _) = run(&["export", "--db", "mongo1", "--out", file.to_str().unwrap()], &rec.dir);
    assert_eq!(code, 0);
    assert!(out.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);
}

#[test]
fn verify_all_passes_on_intact_recordings() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    pg_session(&rec);
    mongo_session(&rec, "carol");
    let key = dbtape::signing::public_key_path(&rec.key_path);
    let (code, out, err) = run(&["verify", "--all", "--public-key", key.to_str().unwrap()], &rec.dir);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("  OK  ").count(), 2, "{out}");
    let (code, out, _) = run(&["verify", "--all", "--format", "json", "--public-key", key.to_str().unwrap()], &rec.dir);
    assert_eq!(code, 0);
    let reports: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(reports.iter().all(|r| r["verdict"] == "ok"));
    assert!(!err.contains("verify ["), "no progress bar when stderr is not a terminal: {err}");
    // Without the trusted key, verification cannot pass.
    let (code, _, err) = run(&["verify", "--all", "--public-key", "/nonexistent.pub"], &rec.dir);
    assert_eq!(code, 1, "{err}");
    // In a terminal, a progress bar counts the recordings.
    let cmd = format!("{} verify --all --dir {} --public-key {}", env!("CARGO_BIN_EXE_dbtape"), rec.dir.display(), key.display());
    let out = std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]).stdin(std::process::Stdio::null()).output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("verify [") && screen.contains("2/2"), "{screen}");
}

#[test]
fn every_command_has_help() {
    for cmd in [vec![], vec!["serve"], vec!["config", "check"], vec!["ls"], vec!["play"], vec!["export"], vec!["verify"]] {
        let mut args = cmd.clone();
        args.push("--help");
        let out = common::dbtape_bin().args(&args).output().unwrap();
        assert!(out.status.success(), "{cmd:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: dbtape"), "{cmd:?}");
    }
}

#[test]
fn play_follow_streams_a_live_session_until_it_is_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let ctx = context(Protocol::Postgres);
    let sid = ctx.sid.clone();
    let log = rec.recorder.open(ctx).unwrap();
    let q = |i: u64| EventBody::Query { query: format!("SELECT {i}"), parameters: vec![], db_name: None };
    for i in 0..3 {
        log.append(&q(i), T0 + i as i64).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let child = common::dbtape_bin()
        .args(["play", &sid, "--format", "json", "--follow", "--dir"])
        .arg(&rec.dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    for i in 3..6 {
        log.append(&q(i), T0 + i as i64).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    block_on(log.close()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let queries: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["db_query"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(queries, (0..6).map(|i| format!("SELECT {i}")).collect::<Vec<_>>());
}

#[test]
fn play_pty_replays_in_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let sid = pg_session(&rec);
    // `script` gives the player a real pseudo-terminal.
    let cmd = format!("{} play {sid} --dir {} --speed 16 --skip-idle", env!("CARGO_BIN_EXE_dbtape"), rec.dir.display());
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Hold stdin open: closing it would reach the player as Ctrl-D, which quits.
    let _stdin = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let screen = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    assert!(screen.contains("Session started to database \"pg1\" at Thu May  2 13:05 UTC\n"), "{screen}");
    assert!(screen.contains("app=> SELECT err;\nERROR: column \"err\" does not exist (SQLSTATE 42703)\n"), "{screen}");
    assert!(screen.contains("end of session playback"), "{screen}");
    // Ten events, idle gaps capped at 500 ms, at 16x: well under the recorded two minutes.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// An auditor with read access to recordings used to need the proxy's secrets (its upstream
/// password's variable, its TLS files) just to list or verify them.
#[test]
fn review_commands_need_no_proxy_secrets() {
    let root = tempfile::tempdir().unwrap();
    let rec = recorder(root.path(), |_| {});
    let sid = pg_session(&rec);
    rec.recorder.shutdown();
    let config = root.path().join("dbtape.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[recording]
dir = "{dir}"
signing_key = "{key}"
[[databases]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:0"
upstream = "postgres://db.internal:5432/app"
[databases.client_tls]
cert = "/nonexistent/server.crt"
key = "/nonexistent/server.key"
[databases.auth]
password = {{ env = "DBTAPE_REVIEW_TEST_UNSET_PASSWORD" }}
[[users]]
name = "alice"
scram_verifier = {{ file = "/nonexistent/verifier" }}
[[users.grants]]
database = "pg"
db_users = ["app"]
"#,
            dir = rec.dir.display(),
            key = rec.key_path.display()
        ),
    )
    .unwrap();
    let with_config = |args: &[&str]| {
        let out =
            common::dbtape_bin().args(args).arg("--config").arg(&config).env_remove("DBTAPE_REVIEW_TEST_UNSET_PASSWORD").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, out) = with_config(&["ls"]);
    assert!(ok && out.contains(&sid), "{out}");
    let (ok, out) = with_config(&["verify", "--all"]);
    assert!(ok && out.contains("OK"), "{out}");
    let (ok, out) = with_config(&["play", &sid, "--format", "text"]);
    assert!(ok && out.contains("SELECT err;"), "{out}");
    let (ok, out) = with_config(&["export", "--session", &sid]);
    assert!(ok && out.contains("db.session.start"), "{out}");
    // Serving still demands every secret.
    let (ok, out) = with_config(&["config", "check"]);
    assert!(!ok && out.contains("DBTAPE_REVIEW_TEST_UNSET_PASSWORD"), "{out}");
}

/// A log shipper's exporter, killed with SIGKILL at random moments while sessions are being
/// recorded and restarted each time: its output file holds every event exactly once, each
/// session's in order.
#[test]
fn export_with_a_cursor_survives_sigkill_with_every_event_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = std::sync::Arc::new(recorder(tmp.path(), |_| {}));
    let writer_rec = rec.clone();
    let writer = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut total = 0u64;
        for s in 0..12 {
            let log = writer_rec.recorder.open(context(Protocol::Postgres)).unwrap();
            for i in 0..300u64 {
                let query = format!("SELECT {i} FROM session_{s}");
                log.append(&EventBody::Query { query, parameters: vec![], db_name: None }, T0 + (s * 1000 + i) as i64).unwrap();
                total += 1;
                if i % 10 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(4));
                }
            }
            runtime.block_on(log.close()).unwrap();
        }
        total
    });
    let cursor = tmp.path().join("cursor.json");
    let out = tmp.path().join("shipped.jsonl");
    let run = |follow: bool| {
        let mut command = common::dbtape_bin();
        command.args(["export", "--cursor"]).arg(&cursor).arg("--out").arg(&out).arg("--dir").arg(&rec.dir);
        if follow {
            command.arg("--follow");
        }
        command
    };
    let mut kills = 0;
    while !writer.is_finished() {
        let mut child = run(true).spawn().unwrap();
        let mut wait = [0u8; 1];
        getrandom::getrandom(&mut wait).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20 + u64::from(wait[0])));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    let total = writer.join().unwrap();
    let last = run(false).output().unwrap();
    assert!(last.status.success(), "{}", String::from_utf8_lossy(&last.stderr));
    assert!(kills >= 5, "only {kills} kills");
    let text = std::fs::read_to_string(&out).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut last_ei: std::collections::HashMap<String, u64> = Default::default();
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("torn line {line:?}: {e}"));
        let (sid, ei) = (event["sid"].as_str().unwrap().to_string(), event["ei"].as_u64().unwrap());
        assert!(seen.insert((sid.clone(), ei)), "({sid}, {ei}) shipped twice");
        if let Some(previous) = last_ei.insert(sid.clone(), ei) {
            assert!(ei > previous, "{sid}: {ei} after {previous}");
        }
    }
    assert_eq!(seen.len() as u64, total, "every event once, after {kills} kills");
    // A cursor never cuts a file it did not write.
    std::fs::remove_file(&cursor).unwrap();
    let refused = run(false).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already holds data"), "{}", String::from_utf8_lossy(&refused.stderr));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text, "the file is untouched");
}

/// A first export over many recordings goes out in bounded passes, each saved to the cursor,
/// and still holds every event once.
#[test]
fn export_with_a_cursor_works_in_bounded_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let mut total = 0;
    for s in 0..5 {
        let log = rec.recorder.open(context(Protocol::Postgres)).unwrap();
        for i in 0..100u64 {
            let query = format!("SELECT {i} FROM pass_{s}");
            log.append(&EventBody::Query { query, parameters: vec![], db_name: None }, T0 + (i * 10 + s) as i64).unwrap();
            total += 1;
        }
        block_on(log.close()).unwrap();
    }
    let job = dbtape::replay::cursor::CursorExport {
        cursor: tmp.path().join("cursor.json"),
        out: Some(tmp.path().join("out.jsonl")),
        follow: false,
        batch_bytes: 4096,
    };
    let sent = dbtape::replay::cursor::export_from_cursor(&rec.store(), &Default::default(), &job, &|| false).unwrap();
    assert_eq!(sent, total);
    let text = std::fs::read_to_string(tmp.path().join("out.jsonl")).unwrap();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(seen.insert((e["sid"].as_str().unwrap().to_string(), e["ei"].as_u64().unwrap())));
    }
    assert_eq!(seen.len() as u64, total);
    // Nothing new: a second run sends nothing.
    assert_eq!(dbtape::replay::cursor::export_from_cursor(&rec.store(), &Default::default(), &job, &|| false).unwrap(), 0);
}

/// A follower of a live recording reads only what it gained since the last pass: the cursor
/// keeps where the last whole frame sent ends, and the next pass starts there with the hash
/// chain still checked from that point.
#[test]
fn export_with_a_cursor_reads_only_what_a_live_recording_gained() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let log = rec.recorder.open(context(Protocol::Postgres)).unwrap();
    let sid = log.sid().to_string();
    let append = |from: u64, to: u64| {
        let mut ticket = None;
        for i in from..to {
            let query = format!("SELECT {i} FROM live");
            ticket = Some(log.append(&EventBody::Query { query, parameters: vec![], db_name: None }, T0 + i as i64).unwrap());
        }
        block_on(log.wait_durable(ticket.unwrap())).unwrap();
    };
    append(0, 50);
    let job = dbtape::replay::cursor::CursorExport {
        cursor: tmp.path().join("cursor.json"),
        out: Some(tmp.path().join("out.jsonl")),
        follow: false,
        batch_bytes: dbtape::replay::cursor::BATCH_BYTES,
    };
    let export = || dbtape::replay::cursor::export_from_cursor(&rec.store(), &Default::default(), &job, &|| false).unwrap();
    assert_eq!(export(), 50);
    let cursor: serde_json::Value = serde_json::from_slice(&std::fs::read(&job.cursor).unwrap()).unwrap();
    let offset = cursor["resume"][&sid]["offset"].as_u64().unwrap();
    let path = rec.dir.join(format!("{sid}.dbt"));
    assert_eq!(offset, std::fs::metadata(&path).unwrap().len(), "the cursor stands at the end of what was read");
    // Spoil a byte of a frame already sent (not frame 0): a pass that read the file from the
    // start again would stop there as damaged; a resumed one never reads it.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = offset as usize - 10;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    append(50, 80);
    assert_eq!(export(), 30, "only what the recording gained");
    let text = std::fs::read_to_string(job.out.as_ref().unwrap()).unwrap();
    let eis: Vec<u64> = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["ei"].as_u64().unwrap()).collect();
    assert_eq!(eis, (0..80).collect::<Vec<u64>>());
    bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    block_on(log.close()).unwrap();
    assert_eq!(export(), 0, "sealed with nothing more to send");
    let cursor: serde_json::Value = serde_json::from_slice(&std::fs::read(&job.cursor).unwrap()).unwrap();
    assert!(cursor["resume"].is_null() && cursor["done"][0] == sid.as_str(), "{cursor}");
}

/// Recordings derive each event's uid from the session's seed and the event's ei rather than
/// storing it: every read gives the same uids, no two events share one, and each is a UUIDv4.
#[test]
fn derived_uids_are_unique_stable_and_version_4() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    for s in 0..3 {
        let log = rec.recorder.open(context(Protocol::Postgres)).unwrap();
        for i in 0..200u64 {
            let query = format!("SELECT {i} FROM uid_{s}");
            log.append(&EventBody::Query { query, parameters: vec![], db_name: None }, T0 + i as i64).unwrap();
        }
        block_on(log.close()).unwrap();
    }
    let export = || {
        let mut out = Vec::new();
        dbtape::replay::export::export(&rec.store(), &Default::default(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let first = export();
    assert_eq!(first, export(), "the same uids on every read");
    let uids: Vec<String> = first.lines().map(|l| assert_schema_valid(l.as_bytes())["uid"].as_str().unwrap().to_string()).collect();
    assert_eq!(uids.len(), 600);
    let distinct: std::collections::HashSet<&String> = uids.iter().collect();
    assert_eq!(distinct.len(), 600, "no two events share a uid");
    assert!(uids.iter().all(|u| uuid::Uuid::parse_str(u).unwrap().get_version_num() == 4));
}

/// A MongoDB session has no database of its own and each command names its `$db`: its
/// commands and replies are stored compact, in shared frames, not a frame per event, and
/// still read back whole with the command's database.
#[test]
fn mongodb_commands_share_compact_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let mut ctx = context(Protocol::MongoDb);
    ctx.database.name = String::new();
    let log = rec.recorder.open(ctx).unwrap();
    let sid = log.sid().to_string();
    for i in 0..100u64 {
        let query = format!("OpMsg(Body={{\"find\": \"c{i}\", \"$db\": \"shop\"}}, Documents=[], Flags=)");
        let ei = log.append(&EventBody::Query { query, parameters: vec![], db_name: Some("shop".into()) }, T0 + i as i64).unwrap();
        let result = EventBody::Result { status: dbtape::audit::Status::ok(), affected_records: 0, query_ei: Some(ei.ei) };
        log.append(&result, T0 + i as i64).unwrap();
    }
    block_on(log.close()).unwrap();
    let mut stream = dbtape::recording::events::EventStream::open(&rec.store(), &sid, false).unwrap();
    let (mut frames, mut events) = (0, Vec::new());
    stream
        .for_each_frame(|_, data| {
            frames += 1;
            events.extend(dbtape::recording::reader::event_lines(data).map(assert_schema_valid));
            Ok(true)
        })
        .unwrap();
    assert_eq!(events.len(), 200);
    assert!(frames <= 2, "{frames} frames for 200 events");
    assert!(events.iter().step_by(2).all(|e| e["db_name"] == "shop"), "{:?}", events[0]);
    assert!(events.iter().skip(1).step_by(2).all(|e| e.get("db_name").is_none()));
}

#[test]
fn ls_failed_includes_both_ends_of_its_time_range_as_export_and_search_do() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let log = rec.recorder.open_at(context(Protocol::Postgres), T0).unwrap();
    let refused = |user: &str| EventBody::RefusedStart {
        status: Status::failed("access denied", "wrong password"),
        user: user.into(),
        db_user: "postgres".into(),
        db_name: "app".into(),
        remote_addr: "10.0.0.9:5555".into(),
        user_agent: String::new(),
    };
    log.append(&refused("early"), T0).unwrap();
    log.append(&refused("edge"), T0 + 60_000).unwrap();
    log.append(&refused("late"), T0 + 60_001).unwrap();
    block_on(log.close()).unwrap();
    let edge = "2024-05-02T13:06:00.000Z";
    let users = |args: &[&str]| {
        let (code, out, err) = run(args, &rec.dir);
        assert_eq!(code, 0, "{err}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        rows.iter().map(|r| r["user"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(users(&["ls", "--failed", "--format", "json", "--until", edge]), ["edge", "early"]);
    assert_eq!(users(&["ls", "--failed", "--format", "json", "--since", edge]), ["late", "edge"]);
    assert_eq!(users(&["ls", "--failed", "--format", "json", "--since", edge, "--until", edge]), ["edge"]);
    // export takes the same range the same way.
    let (_, exported, _) = run(&["export", "--since", edge, "--until", edge], &rec.dir);
    assert_eq!(exported.lines().filter(|l| l.contains("\"user\":\"edge\"")).count(), 1, "{exported}");
}
