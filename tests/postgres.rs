//! The PostgreSQL path end to end: real clients (psql, tokio-postgres, pgbench) through
//! dbtape to the real PostgreSQL that `scripts/services` starts.

mod common;

use common::proxy::{brief, Proxy, ALICE_PASSWORD, BOB_PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_session_is_recorded_and_plays_back() {
    let mut proxy = Proxy::start().await;
    let script = proxy.root.path().join("session.sql");
    std::fs::write(
        &script,
        "CREATE TEMP TABLE t (id int, v text);\n\
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');\n\
         SELECT id FROM t;\n\
         SELECT err;\n\
         \\copy t from stdin\n4\td\n5\te\n\\.\n\
         \\copy t to stdout\n",
    )
    .unwrap();
    let (ok, stdout, stderr) =
        proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-f".into(), script.display().to_string()]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("5\te"), "{stdout}");
    assert!(stderr.contains("column \"err\" does not exist"), "{stderr}");
    proxy.stop().await;

    let sessions = proxy.sessions();
    assert_eq!(sessions.len(), 1);
    let events = &sessions[0];
    let briefs: Vec<String> = events.iter().map(brief).collect();
    assert_eq!(
        briefs,
        [
            "start TDB00I",
            "query CREATE TEMP TABLE t (id int, v text);",
            "result 0",
            "query INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
            "result 3",
            "query SELECT id FROM t;",
            "result 3",
            "query SELECT err;",
            "error ERROR: column \"err\" does not exist (SQLSTATE 42703)",
            "query COPY  t FROM STDIN ",
            "result 2",
            "query COPY  t TO STDOUT ",
            "result 5",
            "end",
        ]
    );
    let start = &events[0];
    assert_eq!(start["user"], "alice");
    assert_eq!(start["db_user"], "postgres");
    assert_eq!(start["db_name"], "postgres");
    assert_eq!(start["db_service"], "pg");
    assert_eq!(start["user_agent"], "psql");
    assert!(start["postgres_pid"].as_u64().unwrap() > 0);

    let sid = start["sid"].as_str().unwrap();
    let out = common::dbtape_bin().args(["play", sid, "--format", "text", "--dir"]).arg(proxy.store.dir()).output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    let time = |e: &serde_json::Value| dbtape::replay::render::screen_time(e["time"].as_str().unwrap());
    let expected = format!(
        "Session started to database \"pg\" at {}\n\n\
         postgres=> CREATE TEMP TABLE t (id int, v text);\nSUCCESS\n(0 rows affected)\n\n\
         postgres=> INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');\nSUCCESS\n(3 rows affected)\n\n\
         postgres=> SELECT id FROM t;\nSUCCESS\n(3 rows affected)\n\n\
         postgres=> SELECT err;\nERROR: column \"err\" does not exist (SQLSTATE 42703)\n\n\
         postgres=> COPY  t FROM STDIN\nSUCCESS\n(2 rows affected)\n\n\
         postgres=> COPY  t TO STDOUT\nSUCCESS\n(5 rows affected)\n\n\
         Session ended at {}\n",
        time(&events[0]),
        time(events.last().unwrap())
    );
    assert_eq!(screen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_user_and_ungranted_db_user_are_denied() {
    let mut proxy = Proxy::start().await;
    let cases = [
        ("alice", "not-her-password", "password authentication failed for user \"alice\""),
        ("nobody", "whatever", "password authentication failed for user \"nobody\""),
        ("bob@postgres", BOB_PASSWORD, "may not connect as db_user \"postgres\""),
        // dave's own password; he may only open database name "app".
        ("dave", BOB_PASSWORD, "may not open database name \"postgres\""),
    ];
    for (user, password, needle) in cases {
        let (ok, _, stderr) = proxy.psql(proxy.conninfo(user, ""), Some(password), vec!["-c".into(), "SELECT 1".into()]).await;
        assert!(!ok, "{user} got in");
        assert!(stderr.contains(needle), "{user}: {stderr}");
    }
    // Still serving: a good login works after the refusals.
    let (ok, stdout, stderr) =
        proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-Atc".into(), "SELECT 40 + 2".into()]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "42");
    proxy.stop().await;
    // The refusals share the listener's refused-logins log, one event each; alice's session
    // has a recording of its own.
    let sessions = proxy.sessions();
    assert_eq!(sessions.len(), 2);
    let refusals = &sessions[0];
    assert_eq!(refusals.len(), cases.len(), "{refusals:?}");
    for (event, (user, _, needle)) in refusals.iter().zip(cases) {
        assert_eq!(event["event"], "db.session.start");
        assert_eq!(event["code"], "TDB00W");
        assert_eq!(event["success"], false);
        assert!(event["error"].as_str().unwrap().contains(needle));
        assert_eq!(event["user"], user.split('@').next().unwrap());
        assert!(event["addr.remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    assert_eq!(sessions[1][0]["user"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_identifies_by_certificate_cn_and_refuses_unknown_certificates() {
    let mut proxy = Proxy::start().await;
    let certs = proxy.services.get("CERTS").to_string();
    let tls = |who: &str| format!("sslmode=verify-full sslrootcert={certs}/ca.crt sslcert={certs}/{who}.crt sslkey={certs}/{who}.key");
    let conn = |who: &str| format!("host=localhost port={} user={who} dbname=postgres {}", proxy.addr.port(), tls(who));
    let (ok, stdout, stderr) = proxy.psql(conn("carol"), None, vec!["-Atc".into(), "SELECT current_user".into()]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "postgres");
    let (ok, _, stderr) = proxy.psql(conn("mallory"), None, vec!["-Atc".into(), "SELECT 1".into()]).await;
    assert!(!ok);
    assert!(stderr.contains("client certificate not trusted"), "{stderr}");
    proxy.stop().await;
    let sessions = proxy.sessions();
    assert_eq!(sessions.len(), 2);
    assert_eq!(brief(&sessions[0][0]), "start TDB00I");
    assert_eq!(sessions[0][0]["user"], "carol");
    assert_eq!(sessions[1][0]["code"], "TDB00W");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_pipelined_binary_and_transactions() {
    let mut proxy = Proxy::start().await;
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(proxy.addr.port()).user("alice").password(ALICE_PASSWORD).dbname("postgres");
    let (mut client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);

    let stmt = client.prepare("SELECT $1::int4 + 1").await.unwrap();
    let row = client.query_one(&stmt, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    // Two queries in flight at once: tokio-postgres pipelines them.
    let (a, b) = tokio::join!(client.query_one("SELECT $1::text", &[&"x"]), client.query_one("SELECT $1::int8 * 2", &[&21i64]));
    assert_eq!(a.unwrap().get::<_, String>(0), "x");
    assert_eq!(b.unwrap().get::<_, i64>(0), 42);
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("CREATE TEMP TABLE tx_t (v int)").await.unwrap();
    tx.execute("INSERT INTO tx_t VALUES ($1), ($2)", &[&1i32, &2i32]).await.unwrap();
    tx.commit().await.unwrap();
    drop(client);
    let _ = driver.await;
    proxy.stop().await;

    let events = &proxy.sessions()[0];
    let briefs: Vec<String> = events.iter().map(brief).collect();
    let find = |needle: &str| briefs.iter().position(|b| b == needle).unwrap_or_else(|| panic!("no {needle:?} in {briefs:#?}"));
    find("parse SELECT $1::int4 + 1");
    // 41 as a binary int4 is base64 "AAAAKQ==".
    let bind = find("bind [\"AAAAKQ==\"]");
    assert_eq!(briefs[bind + 1], "execute");
    assert_eq!(briefs[bind + 2], "result 1");
    find("bind [\"eA==\"]"); // text sent in binary format is its raw bytes
    find("bind [\"AAAAAAAAABU=\"]");
    find("query START TRANSACTION");
    find("query CREATE TEMP TABLE tx_t (v int)");
    let insert = find("bind [\"AAAAAQ==\",\"AAAAAg==\"]");
    assert_eq!(briefs[insert + 2], "result 2");
    find("query COMMIT");
    assert_eq!(briefs.last().unwrap(), "end");
    // Prepared statements play back with their parameters, read as values.
    let sid = events[0]["sid"].as_str().unwrap();
    let out = common::dbtape_bin().args(["play", sid, "--format", "text", "--dir"]).arg(proxy.store.dir()).output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("postgres=> SELECT $1::int4 + 1 ($1 = 41)\nSUCCESS\n(1 row affected)\n"), "{screen}");
    // Whether or not the two queries were in flight together, each shows with its result.
    assert!(screen.contains("postgres=> SELECT $1::text ($1 = 'x')\nSUCCESS\n(1 row affected)\n"), "{screen}");
    assert!(screen.contains("postgres=> SELECT $1::int8 * 2 ($1 = 21)\nSUCCESS\n(1 row affected)\n"), "{screen}");
    for result in events.iter().filter(|e| e["event"] == "db.session.result") {
        let query = &events[result["query_ei"].as_u64().unwrap() as usize];
        assert!(query["event"] == "db.session.query" || query["event"] == "db.session.postgres.statements.execute", "{result}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_keeps_each_query_paired_with_its_result() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut proxy = Proxy::start().await;
    let mut s = login_raw(&proxy).await;
    let mut pipeline = Vec::new();
    for sql in ["SELECT 1", "SELECT 1/0", "SELECT 3"] {
        pipeline.extend(msg(b'P', format!("\0{sql}\0\0\0").as_bytes()));
        pipeline.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        pipeline.extend(msg(b'E', b"\0\0\0\0\0"));
    }
    pipeline.extend(msg(b'S', b""));
    s.write_all(&pipeline).await.unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"Z") {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.unwrap();
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        seen.push(header[0]);
    }
    s.write_all(&msg(b'X', b"")).await.unwrap();
    drop(s);
    proxy.stop().await;
    let events = &proxy.sessions()[0];
    let executes: Vec<u64> =
        events.iter().filter(|e| e["event"] == "db.session.postgres.statements.execute").map(|e| e["ei"].as_u64().unwrap()).collect();
    let results: Vec<(Option<u64>, bool)> =
        events.iter().filter(|e| e["event"] == "db.session.result").map(|e| (e["query_ei"].as_u64(), e["success"] == true)).collect();
    assert_eq!(executes.len(), 3);
    // The third execute is skipped by the server after the error: no result.
    assert_eq!(results, [(Some(executes[0]), true), (Some(executes[1]), false)]);
    let sid = events[0]["sid"].as_str().unwrap();
    let out = common::dbtape_bin().args(["play", sid, "--format", "text", "--dir"]).arg(proxy.store.dir()).output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("postgres=> SELECT 1\nSUCCESS\n(1 row affected)\n\npostgres=> SELECT 1/0\nERROR: division by zero (SQLSTATE 22012)\n\npostgres=> SELECT 3\n"),
        "{screen}"
    );
}

/// Binary parameters a hostile or careless client sends: values that do not decode as their
/// type, a type the decoders do not read, a Describe the server fails, and the unnamed
/// statement parsed again before the server answered the first Describe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_parameters_that_do_not_decode_are_shown_as_base64_with_a_note() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut proxy = Proxy::start().await;
    let mut s = login_raw(&proxy).await;
    // Parse "" with one declared type; Bind one binary value.
    let parse = |sql: &str, types: &[u32]| {
        let mut body = format!("\0{sql}\0").into_bytes();
        body.extend_from_slice(&(types.len() as i16).to_be_bytes());
        types.iter().for_each(|t| body.extend_from_slice(&t.to_be_bytes()));
        msg(b'P', &body)
    };
    let bind_to = |statement: &str, value: &[u8]| {
        let mut body = format!("\0{statement}\0").into_bytes();
        body.extend_from_slice(b"\0\x01\0\x01\0\x01");
        body.extend_from_slice(&(value.len() as i32).to_be_bytes());
        body.extend_from_slice(value);
        body.extend_from_slice(b"\0\0");
        msg(b'B', &body)
    };
    let bind = |value: &[u8]| bind_to("", value);
    let mut pipeline = Vec::new();
    // 1. An int4 of three bytes: the server refuses it; the reviewer sees the bytes.
    pipeline.extend(parse("SELECT $1::int4", &[23]));
    pipeline.extend(bind(&[0, 0, 1]));
    pipeline.extend(msg(b'E', b"\0\0\0\0\0"));
    pipeline.extend(msg(b'S', b""));
    // 2. A point, which the decoders do not read.
    pipeline.extend(parse("SELECT $1::point", &[600]));
    pipeline.extend(bind(&[0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0]));
    pipeline.extend(msg(b'E', b"\0\0\0\0\0"));
    pipeline.extend(msg(b'S', b""));
    // 3. A Describe of a statement only the server knows (SQL PREPARE), then one of a new
    //    statement: each answer goes to its own Describe. (A simple query drops the
    //    unnamed statement, so this comes before 4.)
    pipeline.extend(msg(b'Q', b"PREPARE srv(int8) AS SELECT $1\0"));
    pipeline.extend(msg(b'D', b"Ssrv\0"));
    pipeline.extend(msg(b'P', b"s2\0SELECT $1::int4 + 1\0\0\0"));
    pipeline.extend(msg(b'D', b"Ss2\0"));
    pipeline.extend(msg(b'S', b""));
    // 4. A Describe the server fails (bad SQL), then in the same pipeline a new Parse of the
    //    unnamed statement, described and bound: its own types are used, not a stale answer.
    pipeline.extend(parse("SELEC oops $1", &[]));
    pipeline.extend(msg(b'D', b"S\0"));
    pipeline.extend(msg(b'S', b""));
    pipeline.extend(parse("SELECT $1::int8 + 0", &[]));
    pipeline.extend(msg(b'D', b"S\0"));
    pipeline.extend(msg(b'S', b""));
    s.write_all(&pipeline).await.unwrap();
    let mut ready = 0;
    while ready < 6 {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.unwrap();
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        ready += usize::from(header[0] == b'Z');
    }
    // The Bind goes after the Describe's answer, as drivers do.
    let mut last = bind(&7i64.to_be_bytes());
    last.extend(msg(b'E', b"\0\0\0\0\0"));
    last.extend(bind_to("s2", &5i32.to_be_bytes()));
    last.extend(msg(b'E', b"\0\0\0\0\0"));
    last.extend(msg(b'S', b""));
    last.extend(msg(b'X', b""));
    s.write_all(&last).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    proxy.stop().await;
    let events = &proxy.sessions()[0];
    let screen = proxy_play(&proxy, events[0]["sid"].as_str().unwrap());
    assert!(screen.contains("postgres=> SELECT $1::int4 ($1 = [base64 int4, not valid] AAAB)\nERROR: "), "{screen}");
    assert!(screen.contains("postgres=> SELECT $1::point ($1 = [base64 point] P/AAAAAAAABAAAAAAAAAAA==)\nSUCCESS"), "{screen}");
    assert!(screen.contains("postgres=> SELECT $1::int8 + 0 ($1 = 7)\nSUCCESS"), "{screen}");
    assert!(screen.contains("postgres=> SELECT $1::int4 + 1 ($1 = 5)\nSUCCESS"), "{screen}");
    let binds: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "db.session.postgres.statements.bind").collect();
    assert_eq!(binds[binds.len() - 2]["parameter_types"], serde_json::json!([20]), "the server's answer for the second Parse");
    assert_eq!(binds[binds.len() - 1]["parameter_types"], serde_json::json!([23]), "s2's own answer, not srv's");
}

/// A frontend message: type, length, body.
fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn proxy_play(proxy: &Proxy, sid: &str) -> String {
    let out = common::dbtape_bin().args(["play", sid, "--format", "text", "--dir"]).arg(proxy.store.dir()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_reach_the_real_backend() {
    let mut proxy = Proxy::start().await;
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(proxy.addr.port()).user("alice").password(ALICE_PASSWORD).dbname("postgres");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let token = client.cancel_token();
    let started = std::time::Instant::now();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    proxy.stop().await;
    let events = &proxy.sessions()[0];
    let briefs: Vec<String> = events.iter().map(brief).collect();
    assert!(briefs.contains(&"error ERROR: canceling statement due to user request (SQLSTATE 57014)".to_string()), "{briefs:#?}");
    // The backend key never reaches the recording.
    let pid = events[0]["postgres_pid"].as_u64().unwrap();
    assert!(pid > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_through_the_proxy_in_simple_and_prepared_modes() {
    let mut proxy = Proxy::start().await;
    let port = proxy.addr.port().to_string();
    let run = |args: Vec<&str>| {
        let mut full = vec!["-h", "127.0.0.1", "-p", port.as_str(), "-U", "alice"];
        full.extend(args);
        let full: Vec<String> = full.into_iter().map(str::to_string).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("pgbench")
                    .args(&full)
                    .env("PGPASSWORD", ALICE_PASSWORD)
                    .env("PGSSLMODE", "disable")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let init = run(vec!["-i", "-s", "1", "-q", "postgres"]).await;
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    for mode in ["simple", "prepared"] {
        let out = run(vec!["-c", "2", "-j", "1", "-T", "2", "-S", "-M", mode, "postgres"]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("number of failed transactions: 0"), "{stdout}");
    }
    proxy.stop().await;
    let sessions = proxy.sessions();
    let queries: usize = sessions
        .iter()
        .flatten()
        .filter(|e| e["event"] == "db.session.query" || e["event"] == "db.session.postgres.statements.execute")
        .count();
    assert!(queries > 100, "only {queries} queries recorded");
    assert!(sessions.iter().all(|s| s.last().map(brief).as_deref() == Some("end")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_end_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut proxy = Proxy::start().await;
    // Garbage instead of a startup packet.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    raw.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), raw.read_to_end(&mut reply)).await;
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("08P01"));

    // A logged-in session that then sends a message with an impossible length.
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(proxy.addr.port()).user("alice").password(ALICE_PASSWORD).dbname("postgres");
    let (bystander, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let mut bad = login_raw(&proxy).await;
    bad.write_all(b"Q\x00\x00\x00\x02").await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), bad.read_to_end(&mut reply)).await;
    assert!(String::from_utf8_lossy(&reply).contains("protocol violation"), "{}", String::from_utf8_lossy(&reply));
    // Other sessions carry on.
    let row = bystander.query_one("SELECT 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    drop(bystander);
    proxy.stop().await;
    let malformed: Vec<serde_json::Value> =
        proxy.sessions().into_iter().flatten().filter(|e| e["event"] == "db.session.malformed_packet").collect();
    assert_eq!(malformed.len(), 1);
    assert_eq!(malformed[0]["payload"], "UQAAAAI=");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_disabled_refuses_ssl_requests_even_with_a_certificate_configured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut proxy = Proxy::start_configured("", "", Some("mode = \"disabled\"")).await;
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // SSLRequest: length 8, code 80877103.
    raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
    let mut answer = [0u8; 1];
    tokio::time::timeout(std::time::Duration::from_secs(5), raw.read_exact(&mut answer)).await.unwrap().unwrap();
    assert_eq!(&answer, b"N", "TLS is off for this listener, whatever certificate is configured");
    drop(raw);
    let (ok, _, err) =
        proxy.psql(proxy.conninfo("alice", "sslmode=require"), Some(ALICE_PASSWORD), vec!["-c".into(), "SELECT 1".into()]).await;
    assert!(!ok, "sslmode=require must fail against a listener without TLS");
    assert!(err.contains("SSL"), "{err}");
    let (ok, out, err) =
        proxy.psql(proxy.conninfo("alice", "sslmode=disable"), Some(ALICE_PASSWORD), vec!["-c".into(), "SELECT 41 + 1".into()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("42"), "{out}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_upstream_password_refuses_the_session_and_says_why() {
    let mut proxy = Proxy::start().await;
    std::fs::remove_file(proxy.root.path().join("pg-password")).unwrap();
    let (ok, _, err) = proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-c".into(), "SELECT 1".into()]).await;
    assert!(!ok);
    assert!(err.contains("cannot read the upstream password"), "{err}");
    proxy.stop().await;
    let starts: Vec<serde_json::Value> = proxy.sessions().into_iter().flatten().filter(|e| e["event"] == "db.session.start").collect();
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(starts[0]["code"], "TDB00W");
    let error = starts[0]["error"].as_str().unwrap();
    assert!(error.contains("cannot read the upstream password (databases.auth.password, file "), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_identity_directory_serves_new_logins_and_spares_open_sessions() {
    let mut proxy = Proxy::start().await;
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(proxy.addr.port()).user("alice").password(ALICE_PASSWORD).dbname("postgres");
    let (open, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    // Everyone but bob is gone from the new directory.
    let bob = dbtape::config::UserConfig {
        name: "bob".into(),
        scram_verifier: Some(dbtape::config::SecretRef::Inline(common::proxy::verifier(common::proxy::BOB_PASSWORD))),
        cert_cn: None,
        aws_access_key_id: None,
        aws_secret_access_key: None,
        grants: vec![dbtape::config::Grant { database: "pg".into(), db_users: vec!["postgres".into()], db_names: vec![] }],
    };
    proxy.directory.replace(dbtape::auth::Directory::from_config(&[bob]).unwrap());
    let (ok, _, err) = proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-c".into(), "SELECT 1".into()]).await;
    assert!(!ok);
    assert!(err.contains("password authentication failed"), "{err}");
    let (ok, out, err) =
        proxy.psql(proxy.conninfo("bob", ""), Some(common::proxy::BOB_PASSWORD), vec!["-Atc".into(), "SELECT 'bob in'".into()]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "bob in");
    // The session that logged in before goes on.
    assert_eq!(open.query_one("SELECT 6 * 7", &[]).await.unwrap().get::<_, i32>(0), 42);
    drop(open);
    proxy.stop().await;
}

/// Logs in as alice over a raw socket, returning it after ReadyForQuery.
async fn login_raw(proxy: &Proxy) -> tokio::net::TcpStream {
    login_raw_version(proxy, 196_608).await.0
}

/// Logs in with the given protocol version; also returns the BackendKeyData body.
async fn login_raw_version(proxy: &Proxy, version: i32) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut key = Vec::new();
    let mut body = version.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0alice\0database\0postgres\0\0");
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    s.write_all(&startup).await.unwrap();
    let (mut scram, first) = dbtape::auth::scram::ClientExchange::start(ALICE_PASSWORD).unwrap();
    loop {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.unwrap();
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        let send = |ty: u8, payload: Vec<u8>| {
            let mut m = vec![ty];
            m.extend_from_slice(&((payload.len() + 4) as i32).to_be_bytes());
            m.extend_from_slice(&payload);
            m
        };
        match (header[0], body.get(..4).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))) {
            (b'R', Some(10)) => {
                let mut p = b"SCRAM-SHA-256\0".to_vec();
                p.extend_from_slice(&(first.len() as i32).to_be_bytes());
                p.extend_from_slice(first.as_bytes());
                s.write_all(&send(b'p', p)).await.unwrap();
            }
            (b'R', Some(11)) => {
                let reply = scram.respond(&String::from_utf8_lossy(&body[4..])).unwrap();
                s.write_all(&send(b'p', reply.into_bytes())).await.unwrap();
            }
            (b'K', _) => key = body.clone(),
            (b'Z', _) => return (s, key),
            (b'E', _) => panic!("login failed: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_2_clients_get_a_long_synthetic_cancel_key() {
    let mut proxy = Proxy::start().await;
    let (_s30, key30) = login_raw_version(&proxy, 196_608).await;
    let (_s32, key32) = login_raw_version(&proxy, 196_610).await;
    assert_eq!(key30.len(), 8, "pid + 4-byte key for 3.0");
    assert_eq!(key32.len(), 4 + 32, "pid + 32-byte key for 3.2");
    drop((_s30, _s32));
    proxy.stop().await;
    // The real backend pid is recorded; the synthetic one the client saw is not it.
    let sessions = proxy.sessions();
    let real: Vec<u64> = sessions.iter().map(|s| s[0]["postgres_pid"].as_u64().unwrap()).collect();
    let shown = u32::from_be_bytes([key30[0], key30[1], key30[2], key30[3]]) as u64;
    assert!(!real.contains(&shown), "the client must not see the real backend pid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_cancels_with_ctrl_c() {
    let mut proxy = Proxy::start().await;
    let conninfo = proxy.conninfo("alice", "");
    let child = std::process::Command::new("psql")
        .args([conninfo.as_str(), "-X", "-c", "SELECT pg_sleep(30)"])
        .env("PGPASSWORD", ALICE_PASSWORD)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // psql answers SIGINT by sending a CancelRequest on a new connection.
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("canceling statement due to user request"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.stop().await;
    let briefs: Vec<String> = proxy.sessions()[0].iter().map(brief).collect();
    assert_eq!(briefs[1..], ["query SELECT pg_sleep(30)", "error ERROR: canceling statement due to user request (SQLSTATE 57014)", "end"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_without_reading_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut proxy = Proxy::start().await;
    let mut s = login_raw(&proxy).await;
    // A Query claiming 1 GiB: refused from its header alone.
    s.write_all(&[b'Q', 0x40, 0, 0, 0, b'S', b'E']).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("08P01") && text.contains("exceeds the"), "{text}");
    proxy.stop().await;
    let kinds: Vec<String> = proxy.sessions()[0].iter().map(brief).collect();
    assert_eq!(kinds[1..], ["db.session.malformed_packet", "end"]);
}
