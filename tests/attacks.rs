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

/// Raises this process's descriptor limit to its hard limit: the flood below holds both
/// ends of thousands of sockets in one process.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(limit.rlim_cur >= 3000, "the flood tests need 3000 descriptors; the hard limit is {}", limit.rlim_cur);
}

async fn connect_from(source: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((std::net::Ipv4Addr::from(source), 0).into()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), socket.connect(to)).await.unwrap().unwrap()
}

/// Whether the proxy has closed the socket (EOF or reset), waiting until `by`.
async fn closed_by(stream: &mut tokio::net::TcpStream, by: tokio::time::Instant) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 64];
    loop {
        match tokio::time::timeout_at(by, stream.read(&mut byte)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The proxy may answer before closing (an error message); keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

/// Thousands of sockets that never log in (silent, or a byte a second) used to stay open
/// forever and could hold every descriptor; now each is closed by the login deadline (or
/// at once beyond the per-source cap) and a real psql logs in throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_log_in_are_closed_and_do_not_lock_out_psql() {
    use tokio::io::AsyncWriteExt;
    raise_fd_limit();
    let mut proxy = Proxy::start_custom("login_timeout = \"2s\"", "").await;
    let started = tokio::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..2000 {
        silent.push(connect_from([127, 0, 0, 2], proxy.addr).await);
    }
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(connect_from([127, 0, 0, 3], proxy.addr).await);
    }
    // A startup packet's length, one byte a second, from another task.
    let dribble = tokio::spawn(async move {
        for byte in [0u8, 0, 0, 80] {
            for s in slow.iter_mut() {
                let _ = s.write_all(&[byte]).await;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        slow
    });

    let (ok, stdout, stderr) =
        proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-Atc".into(), "SELECT 'in'".into()]).await;
    assert!(ok, "psql was locked out by the flood: {stderr}");
    assert_eq!(stdout.trim(), "in");

    // Deadline 2 s after each accept; allow generous slack for a loaded machine.
    let by = started + std::time::Duration::from_secs(12);
    let mut open = 0;
    for s in silent.iter_mut() {
        if !closed_by(s, by).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} of 2000 silent sockets still open");
    let mut slow = dribble.await.unwrap();
    for s in slow.iter_mut() {
        assert!(closed_by(s, by).await, "a slow-loris socket is still open");
    }
    let (ok, _, stderr) = proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-Atc".into(), "SELECT 1".into()]).await;
    assert!(ok, "{stderr}");
    proxy.stop().await;
}

/// The SCRAM server-first message dbtape sends for a login name, without its nonce.
async fn scram_salt_and_iterations(proxy: &Proxy, user: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut body = 196_608i32.to_be_bytes().to_vec();
    body.extend_from_slice(format!("user\0{user}\0database\0postgres\0\0").as_bytes());
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    s.write_all(&startup).await.unwrap();
    let read_message = async |s: &mut tokio::net::TcpStream| {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.unwrap();
        let mut body = vec![0u8; i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4];
        s.read_exact(&mut body).await.unwrap();
        (header[0], body)
    };
    let (ty, body) = read_message(&mut s).await;
    assert_eq!((ty, &body[..4]), (b'R', &10i32.to_be_bytes()[..]));
    let first = "n,,n=,r=fyko+d2lbbFgONRv9qkxdawL";
    let mut p = b"SCRAM-SHA-256\0".to_vec();
    p.extend_from_slice(&(first.len() as i32).to_be_bytes());
    p.extend_from_slice(first.as_bytes());
    let mut m = vec![b'p'];
    m.extend_from_slice(&((p.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(&p);
    s.write_all(&m).await.unwrap();
    let (ty, body) = read_message(&mut s).await;
    assert_eq!((ty, &body[..4]), (b'R', &11i32.to_be_bytes()[..]));
    let server_first = String::from_utf8(body[4..].to_vec()).unwrap();
    let field = |name: &str| server_first.split(',').find_map(|f| f.strip_prefix(name)).unwrap().to_string();
    (field("s="), field("i="))
}

/// Unknown users used to get a fresh random salt on every try and known users always the
/// same one, so two tries told who exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_does_not_reveal_which_users_exist() {
    let mut proxy = Proxy::start().await;
    let (nobody_salt, nobody_iterations) = scram_salt_and_iterations(&proxy, "nobody").await;
    let again = scram_salt_and_iterations(&proxy, "nobody").await;
    assert_eq!(again, (nobody_salt.clone(), nobody_iterations.clone()), "an unknown user's salt changes between tries");
    let (alice_salt, alice_iterations) = scram_salt_and_iterations(&proxy, "alice").await;
    assert_eq!(scram_salt_and_iterations(&proxy, "alice").await, (alice_salt.clone(), alice_iterations.clone()));
    assert_eq!(nobody_iterations, alice_iterations, "an unknown user's iteration count differs from a real user's");
    assert_eq!(nobody_salt.len(), alice_salt.len());
    assert_ne!(nobody_salt, scram_salt_and_iterations(&proxy, "somebody-else").await.0);
    proxy.stop().await;
}

/// A recorded `ESC[2K\r` or OSC sequence used to reach the reviewer's terminal raw, so a
/// statement could erase itself from `play`'s screen or retitle the window; user names from
/// refused logins reached `ls` the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playback_ls_and_verify_escape_terminal_controls() {
    let mut proxy = Proxy::start().await;
    let sneaky = "SELECT 'DROP TABLE audit_me;\u{1b}[2K\r' AS x, '\u{1b}]0;innocent\u{7}' AS y, '\u{9b}31m' AS z";
    let (ok, _, stderr) = proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-c".into(), sneaky.into()]).await;
    assert!(ok, "{stderr}");
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(proxy.addr.port()).user("mallory\u{1b}[2J\u{1b}]0;x\u{7}").password("x").dbname("postgres");
    assert!(config.connect(tokio_postgres::NoTls).await.is_err());
    proxy.stop().await;

    let sessions = proxy.sessions();
    let sid = sessions.iter().find(|s| s[0]["user"] == "alice" && s[0]["success"] == true).unwrap()[0]["sid"].as_str().unwrap().to_string();
    let dir = proxy.store.dir().to_path_buf();
    let run = |args: &[&str]| {
        let out = common::dbtape_bin().args(args).arg("--dir").arg(&dir).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let raw_controls = |text: &str| text.chars().any(|c| c.is_control() && c != '\n');
    let screen = run(&["play", &sid, "--format", "text"]);
    assert!(!raw_controls(&screen), "raw control characters reach the terminal: {screen:?}");
    assert!(screen.contains(r"DROP TABLE audit_me;\x1b[2K\r"), "{screen}");
    assert!(screen.contains(r"\x1b]0;innocent\x07"), "{screen}");
    assert!(screen.contains(r"\u{009b}31m"), "{screen}");
    let listing = run(&["ls"]);
    assert!(!raw_controls(&listing), "{listing:?}");
    let refused = run(&["ls", "--failed"]);
    assert!(!raw_controls(&refused), "{refused:?}");
    assert!(refused.contains(r"mallory\x1b[2J"), "{refused}");
    let key = proxy.root.path().join("key.pub");
    let report = run(&["verify", "--all", "--public-key", key.to_str().unwrap()]);
    assert!(!raw_controls(&report), "{report:?}");
    // JSON output stays exact.
    let json = run(&["play", &sid, "--format", "json"]);
    assert!(json.contains(r#"DROP TABLE audit_me;\u001b[2K\r"#), "{json}");
}

/// Everything the proxy logs, for tests that look for secrets in it.
fn captured_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer: &'static std::sync::Mutex<Vec<u8>> = Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        struct Sink(&'static std::sync::Mutex<Vec<u8>>);
        impl std::io::Write for Sink {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_writer(move || Sink(buffer)).finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buffer
    })
}

/// Passwords in statements used to reach the recording, `export` and everything built on
/// them. Each statement goes through psql; the secret must be nowhere afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_statements_never_reach_recordings_exports_or_logs() {
    let logs = captured_logs();
    let mut proxy = Proxy::start().await;
    let statements = [
        "DROP USER MAPPING IF EXISTS FOR redact_role SERVER redact_srv",
        "DROP SERVER IF EXISTS redact_srv",
        "DROP ROLE IF EXISTS redact_role",
        "CREATE EXTENSION IF NOT EXISTS postgres_fdw",
        "CREATE EXTENSION IF NOT EXISTS dblink",
        "CREATE ROLE redact_role LOGIN PASSWORD 'hunter2-create'",
        "ALTER ROLE redact_role WITH ENCRYPTED PASSWORD 'hunter2-alter'",
        // The server echoes the second literal in its error; the session already gave it.
        "ALTER ROLE redact_role PASSWORD 'hunter2-echo' VALID UNTIL 'hunter2-echo'",
        "CREATE SERVER redact_srv FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', dbname 'nowhere')",
        "CREATE USER MAPPING FOR redact_role SERVER redact_srv OPTIONS (user 'x', password 'hunter2-mapping')",
        "ALTER USER MAPPING FOR redact_role SERVER redact_srv OPTIONS (SET password 'hunter2-remap')",
        "SELECT dblink_connect('redact', 'host=127.0.0.1 port=1 user=x password=hunter2-dblink connect_timeout=1')",
        "SELECT dblink('postgresql://x:hunter2-uri@127.0.0.1:1/x?connect_timeout=1', 'select 1')",
        "DROP USER MAPPING FOR redact_role SERVER redact_srv",
        "DROP SERVER redact_srv",
        "DROP ROLE redact_role",
    ];
    let mut stderr_all = String::new();
    for sql in statements {
        let (_, _, stderr) = proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-c".into(), sql.into()]).await;
        stderr_all.push_str(&stderr);
    }
    assert!(stderr_all.contains("hunter2-echo"), "the server should have echoed the secret to the client: {stderr_all}");
    proxy.stop().await;

    let secrets = ["hunter2-create", "hunter2-alter", "hunter2-echo", "hunter2-mapping", "hunter2-remap", "hunter2-dblink", "hunter2-uri"];
    let dir = proxy.store.dir().to_path_buf();
    let export = common::dbtape_bin().args(["export", "--dir"]).arg(&dir).output().unwrap();
    assert!(export.status.success());
    let export = String::from_utf8_lossy(&export.stdout).into_owned();
    let mut everything = export.clone();
    for entry in std::fs::read_dir(&dir).unwrap() {
        everything.push_str(&String::from_utf8_lossy(&std::fs::read(entry.unwrap().path()).unwrap()));
    }
    everything.push_str(&String::from_utf8_lossy(&logs.lock().unwrap()));
    for secret in secrets {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
    // The statements are still there, with the secret replaced, and say so.
    let queries: Vec<serde_json::Value> =
        export.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|e: &serde_json::Value| e["event"] == "db.session.query").collect();
    let create = queries.iter().find(|e| e["db_query"].as_str().unwrap().starts_with("CREATE ROLE redact_role")).unwrap();
    assert_eq!(create["db_query"], "CREATE ROLE redact_role LOGIN PASSWORD '[REDACTED]'");
    assert_eq!(create["redacted"], true);
    let echo_error = export
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["error"].as_str().is_some_and(|t| t.contains("timestamp")))
        .unwrap();
    assert!(echo_error["error"].as_str().unwrap().contains("[REDACTED]"), "{echo_error}");
    assert_eq!(echo_error["redacted"], true);
    let sid = create["sid"].as_str().unwrap();
    let screen = common::dbtape_bin().args(["play", sid, "--format", "text", "--dir"]).arg(&dir).output().unwrap();
    assert!(String::from_utf8_lossy(&screen.stdout).contains("CREATE ROLE redact_role LOGIN PASSWORD '[REDACTED]'"));
}

/// One failed SCRAM login as a stranger would try it: a made-up user and a garbage proof.
/// Returns false when the proxy closed the connection before asking for a password.
async fn failed_login_from(source: [u8; 4], to: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect_from(source, to).await;
    let mut body = 196_608i32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0intruder\0database\0postgres\0\0");
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    if s.write_all(&startup).await.is_err() {
        return false;
    }
    let message = |ty: u8, payload: &[u8]| {
        let mut m = vec![ty];
        m.extend_from_slice(&((payload.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    };
    let mut header = [0u8; 5];
    if s.read_exact(&mut header).await.is_err() {
        return false;
    }
    let mut rest = vec![0u8; i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4];
    s.read_exact(&mut rest).await.unwrap();
    let first = "n,,n=,r=abcdefghijklmnop";
    let mut p = b"SCRAM-SHA-256\0".to_vec();
    p.extend_from_slice(&(first.len() as i32).to_be_bytes());
    p.extend_from_slice(first.as_bytes());
    s.write_all(&message(b'p', &p)).await.unwrap();
    s.read_exact(&mut header).await.unwrap();
    let mut server_first = vec![0u8; i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4];
    s.read_exact(&mut server_first).await.unwrap();
    let nonce = String::from_utf8_lossy(&server_first[4..]).split(',').find_map(|f| f.strip_prefix("r=").map(str::to_string)).unwrap();
    let last = format!("c=biws,r={nonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    s.write_all(&message(b'p', last.as_bytes())).await.unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply).await;
    assert_eq!(reply.first(), Some(&b'E'), "a garbage proof must be refused");
    true
}

/// Every refusal used to create its own recording, sidecar and signed manifest: 1,500 wrong
/// passwords left 2.9 MB. Now they share one log per listener and day, and a source that
/// keeps failing is shut out for the minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_failed_logins_stay_small_and_do_not_lock_out_psql() {
    raise_fd_limit();
    let mut proxy = Proxy::start().await;
    let addr = proxy.addr;
    let sources = 100u8;
    let per_source = 100;
    let flood = tokio::spawn(async move {
        let tasks: Vec<_> = (0..sources)
            .map(|i| {
                tokio::spawn(async move {
                    let mut answered = 0;
                    for _ in 0..per_source {
                        if failed_login_from([127, 0, 1, 10 + i], addr).await {
                            answered += 1;
                        }
                    }
                    answered
                })
            })
            .collect();
        let mut answered = 0;
        for t in tasks {
            answered += t.await.unwrap();
        }
        answered
    });
    let (ok, stdout, stderr) =
        proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-Atc".into(), "SELECT 'in'".into()]).await;
    assert!(ok, "psql was locked out by the flood: {stderr}");
    assert_eq!(stdout.trim(), "in");
    let answered = flood.await.unwrap();
    proxy.stop().await;

    // Each source got its 30 tries a minute (server.max_failed_logins_per_source), the rest
    // were closed at accept.
    assert_eq!(answered, u32::from(sources) * 30, "answered logins");
    let bytes: u64 = std::fs::read_dir(proxy.store.dir()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    eprintln!("{} failed logins ({answered} answered) left {bytes} bytes of recordings", u32::from(sources) * per_source);
    assert!(bytes < 10_000_000, "{bytes} bytes of recordings");
    let dir = proxy.store.dir().to_path_buf();
    let refused =
        common::dbtape_bin().args(["ls", "--failed", "--limit", "100000", "--format", "json", "--dir"]).arg(&dir).output().unwrap();
    assert!(refused.status.success());
    let refused: Vec<serde_json::Value> = serde_json::from_slice(&refused.stdout).unwrap();
    let denied = refused.iter().filter(|e| e["user"] == "intruder").count();
    let shut_out = refused.iter().filter(|e| e["error"].as_str().unwrap().contains("max_failed_logins_per_source")).count();
    assert_eq!((denied, shut_out), (answered as usize, sources as usize));
    let listing = common::dbtape_bin().args(["ls", "--dir"]).arg(&dir).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains(&format!("({} refused logins)", answered + u32::from(sources))), "{listing}");
    let (ok, report) = verify_all(&proxy);
    assert!(ok, "{report}");
}
