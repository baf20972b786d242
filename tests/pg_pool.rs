//! The PostgreSQL upstream session pool (`[databases.pool]`) against the real server: what a
//! client leaves behind never reaches the next one, cancels reach the right backend, and
//! each client session keeps its own complete, verifiable recording.

mod common;

use std::time::Duration;

use common::proxy::{brief, Proxy, ALICE_PASSWORD};

async fn connect(proxy: &Proxy) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    connect_to(proxy.addr.port()).await
}

async fn connect_to(port: u16) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).user("alice").password(ALICE_PASSWORD).dbname("postgres");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

async fn one_value(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .unwrap()
}

async fn backend_pid(client: &tokio_postgres::Client) -> String {
    one_value(client, "SELECT pg_backend_pid()").await.unwrap()
}

/// Closes the client with a Terminate and waits until its connection task ends.
async fn close(client: tokio_postgres::Client, task: tokio::task::JoinHandle<()>) {
    drop(client);
    task.await.unwrap();
}

fn verify_all(proxy: &Proxy) {
    let key = proxy.root.path().join("key.pub");
    let out =
        common::dbtape_bin().args(["verify", "--all", "--public-key"]).arg(&key).arg("--dir").arg(proxy.store.dir()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The start events, in session order: (upstream_reused, postgres_pid).
fn starts(proxy: &Proxy) -> Vec<(Option<bool>, u64)> {
    proxy.sessions().iter().map(|s| (s[0]["upstream_reused"].as_bool(), s[0]["postgres_pid"].as_u64().unwrap_or(0))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_carries_no_session_state_to_the_next_client() {
    let mut proxy = Proxy::start_pooled("mode = \"session\"\nmax_size = 1").await;
    let (first, task) = connect(&proxy).await;
    let pid = backend_pid(&first).await;
    let default_work_mem = one_value(&first, "SHOW work_mem").await.unwrap();
    first
        .batch_execute(
            "CREATE TEMP TABLE leak (x int); SET work_mem = '7MB'; PREPARE leaky AS SELECT 1; \
             SELECT pg_advisory_lock(4242); LISTEN leak_channel",
        )
        .await
        .unwrap();
    // tokio-postgres's own prepared statement, parsed by the extended protocol.
    first.prepare("SELECT $1::int + 1").await.unwrap();
    assert_eq!(one_value(&first, "SHOW work_mem").await.unwrap(), "7MB");
    close(first, task).await;

    let (second, task) = connect(&proxy).await;
    assert_eq!(backend_pid(&second).await, pid, "max_size = 1: the same backend serves the next client");
    assert_eq!(one_value(&second, "SELECT to_regclass('pg_temp.leak')::text").await, None, "the temporary table is gone");
    assert_eq!(one_value(&second, "SHOW work_mem").await.unwrap(), default_work_mem);
    assert_eq!(one_value(&second, "SELECT count(*) FROM pg_prepared_statements").await.unwrap(), "0");
    assert_eq!(
        one_value(&second, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()").await.unwrap(),
        "0"
    );
    assert_eq!(one_value(&second, "SELECT count(*) FROM pg_listening_channels()").await.unwrap(), "0");
    // The client's own startup parameters came with the reused connection.
    assert_eq!(one_value(&second, "SHOW client_encoding").await.unwrap(), "UTF8");
    close(second, task).await;
    proxy.stop().await;

    let sessions = proxy.sessions();
    assert_eq!(sessions.len(), 2);
    for events in &sessions {
        assert_eq!(events.last().map(brief).as_deref(), Some("end"), "each client session has its own end");
    }
    let pid: u64 = pid.parse().unwrap();
    assert_eq!(starts(&proxy), [(Some(false), pid), (Some(true), pid)]);
    // The reset is the pool's own business, never a client's statement.
    assert!(!sessions.iter().flatten().any(|e| e["db_query"] == "DISCARD ALL"));
    verify_all(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_transaction_hands_no_open_transaction_on() {
    use std::io::Write;
    let mut proxy = Proxy::start_pooled("mode = \"session\"\nmax_size = 1").await;
    let (setup, task) = connect(&proxy).await;
    setup.batch_execute("DROP TABLE IF EXISTS pool_probe; CREATE TABLE pool_probe (id int)").await.unwrap();
    close(setup, task).await;
    // psql's startup parameters differ from tokio-postgres's, so psql sessions share
    // connections among themselves only. A clean one first, to be reused.
    let psql_probe = "SELECT pg_backend_pid() || '|' || (now() = statement_timestamp()) || '|' || (SELECT count(*) FROM pool_probe)";
    let (ok, clean, err) =
        proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-At".into(), "-c".into(), psql_probe.into()]).await;
    assert!(ok, "{err}");
    let clean_pid = clean.trim().split('|').next().unwrap().to_string();

    // psql inside a transaction, then killed: its connection must not be reused.
    let mut psql = std::process::Command::new("psql")
        .arg(proxy.conninfo("alice", ""))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .env("PGPASSWORD", ALICE_PASSWORD)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = psql.stdin.take().unwrap();
    writeln!(stdin, "BEGIN; INSERT INTO pool_probe VALUES (1); SELECT 'inside', pg_backend_pid();").unwrap();
    stdin.flush().unwrap();
    let mut stdout = psql.stdout.take().unwrap();
    let inside = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("inside|") || seen.last() != Some(&b'\n') {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "psql ended early");
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    })
    .await
    .unwrap();
    let killed_pid = inside.split("inside|").nth(1).unwrap_or_default().trim().to_string();
    assert_eq!(killed_pid, clean_pid, "the second psql reused the first one's connection");
    psql.kill().unwrap();
    psql.wait().unwrap();
    drop(stdin);

    let (ok, next, err) =
        proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-At".into(), "-c".into(), psql_probe.into()]).await;
    assert!(ok, "{err}");
    let next: Vec<&str> = next.trim().split('|').collect();
    assert_ne!(next[0], killed_pid, "the killed client's backend was discarded, not reused");
    // Not inside someone else's transaction (its start is this statement's), and the
    // killed client's insert is gone.
    assert_eq!(next[1..], ["true", "0"]);
    let (ok, _, err) =
        proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-c".into(), "DROP TABLE pool_probe".into()]).await;
    assert!(ok, "{err}");
    proxy.stop().await;

    let starts = starts(&proxy);
    assert_eq!(starts.iter().map(|s| s.0).collect::<Vec<_>>(), [Some(false), Some(false), Some(true), Some(false), Some(true)]);
    let killed = &proxy.sessions()[2];
    let briefs: Vec<String> = killed.iter().map(brief).collect();
    assert!(briefs.contains(&"query INSERT INTO pool_probe VALUES (1);".to_string()), "{briefs:#?}");
    assert_eq!(briefs.last().map(String::as_str), Some("end"));
    verify_all(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_reach_the_backend_of_the_session_that_sent_them() {
    let mut proxy = Proxy::start_pooled("mode = \"session\"\nmax_size = 2").await;
    let (earlier, task) = connect(&proxy).await;
    let earlier_pid = backend_pid(&earlier).await;
    let stale = earlier.cancel_token();
    close(earlier, task).await;

    // The next client takes the same backend; the earlier client's key must not reach it.
    let (current, current_task) = connect(&proxy).await;
    assert_eq!(backend_pid(&current).await, earlier_pid);
    // A second client beside it, on the pool's other connection.
    let (beside, beside_task) = connect(&proxy).await;
    assert_ne!(backend_pid(&beside).await, earlier_pid);
    let beside_sleep = tokio::spawn(async move {
        let done = beside.simple_query("SELECT pg_sleep(2)").await.map(|_| ());
        (beside, done)
    });
    let current = std::sync::Arc::new(current);
    let sleeper = {
        let current = current.clone();
        tokio::spawn(async move { current.simple_query("SELECT pg_sleep(3)").await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stale.cancel_query(tokio_postgres::NoTls).await.unwrap();
    assert!(sleeper.await.unwrap().is_ok(), "a stale cancel key cancelled another client's query");

    // The current client's own key cancels its own query, and only that one.
    let token = current.cancel_token();
    let sleeper = {
        let current = current.clone();
        tokio::spawn(async move { current.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED));
    let (beside, done) = beside_sleep.await.unwrap();
    assert!(done.is_ok(), "the cancel reached the other backend");
    close(beside, beside_task).await;
    drop(std::sync::Arc::try_unwrap(current).ok().unwrap());
    current_task.await.unwrap();
    proxy.stop().await;
    verify_all(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_connecting_per_transaction_reuses_a_few_backends() {
    let mut proxy = Proxy::start_pooled("mode = \"session\"\nmax_size = 3").await;
    let script = proxy.root.path().join("one.sql");
    std::fs::write(&script, "SELECT pg_backend_pid();\n").unwrap();
    let port = proxy.addr.port().to_string();
    let script_arg = script.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "alice", "-n", "-C", "-c", "3", "-j", "1", "-t", "20", "-f", &script_arg])
            .arg("postgres")
            .env("PGPASSWORD", ALICE_PASSWORD)
            .env("PGSSLMODE", "disable")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("number of failed transactions: 0"), "{stdout}");
    proxy.stop().await;

    // pgbench's own first connection, then one per transaction.
    let starts = starts(&proxy);
    assert_eq!(starts.len(), 61, "one recording per client session");
    let backends: std::collections::BTreeSet<u64> = starts.iter().map(|s| s.1).collect();
    assert!(backends.len() <= 3, "at most max_size backends: {backends:?}");
    let reused = starts.iter().filter(|s| s.0 == Some(true)).count();
    assert!(reused >= 58, "only {reused} of 61 sessions reused a connection");
    let sessions = proxy.sessions();
    let transactions = sessions.iter().filter(|events| {
        let briefs: Vec<String> = events.iter().map(brief).collect();
        assert_eq!(briefs.last().map(String::as_str), Some("end"), "{briefs:?}");
        briefs[1..] == ["query SELECT pg_backend_pid();", "result 1", "end"]
    });
    assert_eq!(transactions.count(), 60);
    verify_all(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_reset_fails_is_closed_not_reused() {
    let mut proxy = Proxy::start_pooled("mode = \"session\"\nmax_size = 1\nreset = \"SELECT no_such_column\"").await;
    let (first, task) = connect(&proxy).await;
    let first_pid = backend_pid(&first).await;
    close(first, task).await;
    let (second, task) = connect(&proxy).await;
    assert_ne!(backend_pid(&second).await, first_pid);
    close(second, task).await;
    proxy.stop().await;
    assert_eq!(starts(&proxy).iter().map(|s| s.0).collect::<Vec<_>>(), [Some(false), Some(false)]);
    verify_all(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_waits_for_a_busy_pool_and_takes_the_connection_given_back() {
    let mut proxy = Proxy::start_pooled("mode = \"session\"\nmax_size = 1").await;
    let (holder, holder_task) = connect(&proxy).await;
    let pid = backend_pid(&holder).await;
    // The only slot is taken: the next login waits for it rather than open a second backend.
    let waiting = tokio::spawn(connect_to(proxy.addr.port()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "a second session got in while the pool's one connection was in use");
    close(holder, holder_task).await;
    let (waiter, waiter_task) = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(backend_pid(&waiter).await, pid, "the waiting session took the connection given back");
    close(waiter, waiter_task).await;
    proxy.stop().await;
    assert_eq!(starts(&proxy).iter().map(|s| s.0).collect::<Vec<_>>(), [Some(false), Some(true)]);
    verify_all(&proxy);
}

/// A session's upstream connection goes back to the pool when its client leaves, not once
/// its recording is sealed: a short session is sealed at the writer's next batch tick (a
/// minute away here, where it is packed), and the next client does not wait for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_goes_back_before_the_recording_is_sealed() {
    let mut proxy =
        Proxy::start_pooled_recording("mode = \"session\"\nmax_size = 1", "batch_interval = \"60s\"\n[recording.segments]\nenabled = true")
            .await;
    let (first, task) = connect(&proxy).await;
    let pid = backend_pid(&first).await;
    close(first, task).await;
    let (second, task) = tokio::time::timeout(Duration::from_secs(20), connect(&proxy))
        .await
        .expect("the one pooled connection is still held by a session whose recording waits to be sealed");
    assert_eq!(backend_pid(&second).await, pid, "the second client reuses the first's backend");
    close(second, task).await;
    proxy.stop().await;
    let pid: u64 = pid.parse().unwrap();
    assert_eq!(starts(&proxy), [(Some(false), pid), (Some(true), pid)]);
    verify_all(&proxy);
}

/// An idle pooled connection whose backend the server ended (a restart,
/// pg_terminate_backend) is noticed when the next session would take it: that session gets
/// a new backend instead of a dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_server_ended_is_not_handed_out() {
    let mut proxy = Proxy::start_pooled("mode = \"session\"\nmax_size = 1").await;
    let (first, task) = connect(&proxy).await;
    let pid = backend_pid(&first).await;
    close(first, task).await;
    let mut direct = tokio_postgres::Config::new();
    direct
        .host_path(proxy.services.get("PG_SOCKET_DIR"))
        .port(proxy.services.get("PG_PORT").parse().unwrap())
        .user(proxy.services.get("PG_USER"))
        .password(proxy.services.get("PG_PASSWORD"))
        .dbname("postgres");
    let (admin, connection) = direct.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let ended = admin.query_one(&format!("SELECT pg_terminate_backend({pid})"), &[]).await.unwrap();
    assert!(ended.get::<_, bool>(0), "the pooled backend {pid} was terminated");
    // The backend's FATAL and close reach the idle connection's socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (second, task) = connect(&proxy).await;
    let second_pid = backend_pid(&second).await;
    assert_ne!(second_pid, pid, "the ended backend was not handed to the next session");
    close(second, task).await;
    proxy.stop().await;
    let (pid, second_pid): (u64, u64) = (pid.parse().unwrap(), second_pid.parse().unwrap());
    assert_eq!(starts(&proxy), [(Some(false), pid), (Some(false), second_pid)]);
    verify_all(&proxy);
}
