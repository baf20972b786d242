//! The upstream side of the PostgreSQL path: IAM auth (credentials from the default chain
//! through AssumeRole on moto, with signature checks; RDS auth tokens only over TLS), and
//! upstreams that misbehave, played by a small stand-in server.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::proxy::ALICE_PASSWORD;
use common::services::Services;
use dbtape::config::AwsOptions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

fn options(s: &Services, external_id: &str) -> AwsOptions {
    AwsOptions {
        region: "us-east-1".into(),
        endpoint: s.get("AWS_ENDPOINT").into(),
        assume_role_arn: s.get("MOTO_ROLE_ARN").into(),
        external_id: external_id.into(),
        ..AwsOptions::default()
    }
}

#[tokio::test]
async fn assumed_role_credentials_are_fetched_cached_and_refreshed_as_configured() {
    use dbtape::aws::credentials::CredentialCache;
    let s = Services::load();
    s.use_proxy_aws_identity();
    let cache = CredentialCache::new(options(&s, "ext-123"));
    let first = cache.identity().await.unwrap().credentials;
    assert!(first.access_key_id().starts_with("ASIA"), "{}", first.access_key_id());
    assert!(first.session_token().is_some());
    assert_ne!(first.access_key_id(), s.get("MOTO_ACCESS_KEY_ID"));
    let second = cache.identity().await.unwrap().credentials;
    assert_eq!(first.access_key_id(), second.access_key_id(), "cached, not fetched again");

    // `refresh_before_expiry` is honoured for dbtape's own identity too (it was fixed at five
    // minutes): asked to refresh further ahead than the credentials live, every call asks STS.
    let mut eager = options(&s, "ext-123");
    eager.refresh_before_expiry = eager.session_duration + std::time::Duration::from_secs(60);
    let eager = CredentialCache::new(eager);
    let a = eager.identity().await.unwrap().credentials;
    let b = eager.identity().await.unwrap().credentials;
    assert_ne!(a.access_key_id(), b.access_key_id(), "credentials inside refresh_before_expiry are replaced");

    // Session tags go along with AssumeRole (the role's trust policy allows sts:TagSession).
    let mut tagged = options(&s, "ext-123");
    tagged.session_tags = std::collections::BTreeMap::from([("team".to_string(), "audit".to_string())]);
    let creds = CredentialCache::new(tagged).identity().await.unwrap().credentials;
    assert!(creds.access_key_id().starts_with("ASIA"));
    assert_ne!(creds.access_key_id(), first.access_key_id(), "a separate AssumeRole call");

    // The role's trust policy demands the external ID.
    let err = CredentialCache::new(options(&s, "wrong-id")).identity().await.unwrap_err().to_string();
    assert!(err.starts_with("STS AssumeRole for "), "{err}");
}

/// A stand-in upstream: asks for a cleartext password and reports what arrives.
async fn fake_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, tokio::sync::oneshot::Receiver<Option<String>>) {
    fake_upstream_then(tls, &[]).await
}

/// As `fake_upstream`, then sends `after_ready` once the session is up.
async fn fake_upstream_then(
    tls: Option<Arc<rustls::ServerConfig>>,
    after_ready: &'static [u8],
) -> (SocketAddr, tokio::sync::oneshot::Receiver<Option<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        match tls {
            Some(config) => {
                let mut request = [0u8; 8];
                tcp.read_exact(&mut request).await.unwrap();
                tcp.write_all(b"S").await.unwrap();
                let stream = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await.unwrap();
                let _ = tx.send(ask_password(stream, after_ready).await);
            }
            None => {
                let _ = tx.send(ask_password(tcp, after_ready).await);
            }
        }
    });
    (addr, rx)
}

async fn ask_password<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, after_ready: &[u8]) -> Option<String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut startup = vec![0u8; i32::from_be_bytes(len) as usize - 4];
    s.read_exact(&mut startup).await.ok()?;
    s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await.ok()?;
    let mut header = [0u8; 5];
    s.read_exact(&mut header).await.ok()?;
    let mut body = vec![0u8; i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4];
    s.read_exact(&mut body).await.ok()?;
    let password = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
    // AuthenticationOk, BackendKeyData, ReadyForQuery.
    let mut reply = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'K', 0, 0, 0, 12, 0, 0, 0, 42, 1, 2, 3, 4];
    reply.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    s.write_all(&reply).await.ok()?;
    if !after_ready.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        s.write_all(after_ready).await.ok()?;
    }
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    Some(password)
}

async fn proxy_to(
    upstream: SocketAddr,
    database_extra: &str,
) -> (SocketAddr, tempfile::TempDir, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    proxy_to_as(upstream, "app", "app_user", &format!("db_type = \"rds\"\n{database_extra}")).await
}

/// dbtape in front of `upstream` (database `db_name`), where alice is granted `db_user`.
async fn proxy_to_as(
    upstream: SocketAddr,
    db_name: &str,
    db_user: &str,
    database_extra: &str,
) -> (SocketAddr, tempfile::TempDir, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let root = tempfile::tempdir().unwrap();
    let verifier = common::proxy::verifier(ALICE_PASSWORD);
    let text = format!(
        r#"
[recording]
dir = "{root}/recordings"
signing_key = "{root}/key"
[[databases]]
name = "rds"
protocol = "postgres"
listen = "127.0.0.1:0"
upstream = "postgres://127.0.0.1:{port}/{db_name}"
{database_extra}
[[users]]
name = "alice"
scram_verifier = "{verifier}"
[[users.grants]]
database = "rds"
db_users = ["{db_user}"]
"#,
        root = root.path().display(),
        port = upstream.port(),
    );
    let (addr, stop, task) = common::proxy::run_server(&text, root.path()).await;
    (addr, root, stop, task)
}

async fn connect_alice(addr: SocketAddr) -> Result<(), tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(addr.port()).user("alice").password(ALICE_PASSWORD).dbname("app");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_logs_in_upstream_with_an_rds_iam_token_over_tls() {
    let s = Services::load();
    s.use_proxy_aws_identity();
    let certs = s.get("CERTS");
    let tls = dbtape::proxy::tls::server_config(&dbtape::config::ClientTlsConfig {
        mode: None,
        cert: Some(format!("{certs}/server.crt").into()),
        key: Some(format!("{certs}/server.key").into()),
        client_ca: None,
    })
    .unwrap()
    .unwrap();
    let (upstream, password) = fake_upstream(Some(tls.config)).await;
    let extra = format!(
        "[databases.upstream_tls]\nca = \"{certs}/ca.crt\"\n[databases.auth]\nmethod = \"aws_iam\"\n[databases.aws]\nregion = \"us-east-1\"\nendpoint = \"{}\"\nassume_role_arn = \"{}\"\nexternal_id = \"ext-123\"\n",
        s.get("AWS_ENDPOINT"),
        s.get("MOTO_ROLE_ARN")
    );
    let (addr, _root, stop, task) = proxy_to(upstream, &extra).await;
    connect_alice(addr).await.unwrap();
    let token = password.await.unwrap().expect("the upstream received a password");
    assert!(token.starts_with(&format!("127.0.0.1:{}/?Action=connect&DBUser=app_user&", upstream.port())), "{token}");
    assert!(token.contains("X-Amz-Credential=ASIA"), "signed with the assumed role's credentials: {token}");
    assert!(token.contains("%2Fus-east-1%2Frds-db%2Faws4_request"), "{token}");
    assert!(token.contains("X-Amz-Expires=900"), "{token}");
    assert!(token.contains("&X-Amz-Security-Token="), "{token}");
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleartext_password_request_over_plaintext_gets_nothing() {
    let (upstream, password) = fake_upstream(None).await;
    let secrets = tempfile::tempdir().unwrap();
    let password_ref = common::secret_file(secrets.path(), "password", "must-not-leak");
    let extra = format!("[databases.upstream_tls]\nmode = \"disable\"\n[databases.auth]\npassword = {password_ref}\n");
    let (addr, root, stop, task) = proxy_to(upstream, &extra).await;
    let err = connect_alice(addr).await.unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("cleartext password over an unencrypted connection"), "{err:?}");
    assert_eq!(password.await.unwrap(), None, "the upstream must not receive any password");
    let _ = stop.send(());
    task.await.unwrap();
    // The refusal is audited.
    let store = dbtape::recording::RecordingStore::new(root.path().join("recordings"));
    let summaries = store.summaries().unwrap();
    assert_eq!(summaries.len(), 1);
    let sid = summaries[0].as_ref().unwrap().sid.clone();
    let (lines, _) = common::read_lines(&store, &sid);
    let start = common::assert_schema_valid(&lines[0]);
    assert_eq!(start["code"], "TDB00W");
    assert!(start["error"].as_str().unwrap().contains("cleartext"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_from_the_upstream_end_the_session_with_an_event() {
    let s = Services::load();
    let (upstream, _password) = fake_upstream_then(Some(s.server_tls()), b"D\x00\x00\x00\x01garbage").await;
    let secrets = tempfile::tempdir().unwrap();
    let password_ref = common::secret_file(secrets.path(), "password", "stand-in");
    let extra = format!("[databases.upstream_tls]\nca = \"{}/ca.crt\"\n[databases.auth]\npassword = {password_ref}\n", s.get("CERTS"));
    let (addr, root, stop, task) = proxy_to(upstream, &extra).await;
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(addr.port()).user("alice").password(ALICE_PASSWORD).dbname("app");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let err = connection.await.unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("the database sent a malformed message"), "{err:?}");
    drop(client);
    let _ = stop.send(());
    task.await.unwrap();
    let store = dbtape::recording::RecordingStore::new(root.path().join("recordings"));
    let sid = store.summaries().unwrap()[0].as_ref().unwrap().sid.clone();
    let (lines, _) = common::read_lines(&store, &sid);
    let kinds: Vec<String> = lines.iter().map(|l| common::assert_schema_valid(l)["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["db.session.start", "db.session.malformed_packet", "db.session.end"]);
}

/// Runs SQL on the real PostgreSQL as its superuser, over verified TLS.
fn superuser_sql(s: &Services, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}/ca.crt",
            s.get("PG_PORT"),
            s.get("CERTS")
        ))
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", s.get("PG_PASSWORD"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_cleartext_passwords_log_in_to_the_real_postgres() {
    let s = Services::load();
    // scripts/services puts `md5` and `password` pg_hba lines on top for these two roles, so
    // the server asks for exactly that method.
    superuser_sql(
        &s,
        "SET password_encryption = 'md5'; \
         DROP ROLE IF EXISTS dbtape_md5; CREATE ROLE dbtape_md5 LOGIN PASSWORD 'md5-secret'; \
         DROP ROLE IF EXISTS dbtape_cleartext; CREATE ROLE dbtape_cleartext LOGIN PASSWORD 'clear-secret'",
    );
    assert_eq!(superuser_sql(&s, "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'dbtape_md5'"), "md5");
    let hba = superuser_sql(&s, "SELECT string_agg(auth_method, ',' ORDER BY line_number) FROM pg_hba_file_rules WHERE 'dbtape_md5' = ANY(user_name) OR 'dbtape_cleartext' = ANY(user_name)");
    assert_eq!(hba, "md5,password");

    for (db_user, password) in [("dbtape_md5", "md5-secret"), ("dbtape_cleartext", "clear-secret"), ("dbtape_md5", "wrong")] {
        let secrets = tempfile::tempdir().unwrap();
        let password_file = secrets.path().join("upstream-password");
        std::fs::write(&password_file, password).unwrap();
        let upstream: SocketAddr = format!("127.0.0.1:{}", s.get("PG_PORT")).parse().unwrap();
        let extra = format!(
            "[databases.upstream_tls]\nca = \"{}/ca.crt\"\n[databases.auth]\npassword = {{ file = \"{}\" }}",
            s.get("CERTS"),
            password_file.display()
        );
        let (addr, root, stop, task) = proxy_to_as(upstream, "postgres", db_user, &extra).await;
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(addr.port()).user("alice").password(ALICE_PASSWORD).dbname("postgres");
        let outcome = config.connect(tokio_postgres::NoTls).await;
        if password == "wrong" {
            // The server's own refusal reaches the client, and the attempt is recorded.
            let err = outcome.err().and_then(|e| e.as_db_error().map(|d| d.message().to_string())).unwrap_or_default();
            assert!(err.contains("password authentication failed for user \"dbtape_md5\""), "{err}");
        } else {
            let (client, connection) = outcome.unwrap();
            let connection = tokio::spawn(connection);
            let row = client.query_one("SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), db_user);
            assert!(row.get::<_, bool>(1), "the upstream leg must be TLS");
            drop(client);
            let _ = connection.await;
        }
        let _ = stop.send(());
        task.await.unwrap();
        let store = dbtape::recording::RecordingStore::new(root.path().join("recordings"));
        let summaries: Vec<_> = store.summaries().unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(summaries.len(), 1, "{db_user}");
        let lines = common::read_lines(&store, &summaries[0].sid).0;
        let start = common::assert_schema_valid(&lines[0]);
        assert_eq!(start["db_user"], db_user);
        assert_eq!(start["code"], if password == "wrong" { "TDB00W" } else { "TDB00I" }, "{start}");
        let text = lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect::<String>();
        assert!(!text.contains(password), "the upstream password must not be recorded");
    }
}

/// A stand-in upstream that asks for SCRAM with `iterations` PBKDF2 rounds.
async fn scram_upstream(tls: Arc<rustls::ServerConfig>, iterations: u64) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        tcp.read_exact(&mut request).await.unwrap();
        tcp.write_all(b"S").await.unwrap();
        let mut s = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut startup = vec![0u8; i32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut startup).await.unwrap();
        let sasl = b"SCRAM-SHA-256\0\0";
        let mut m = vec![b'R'];
        m.extend_from_slice(&((8 + sasl.len()) as i32).to_be_bytes());
        m.extend_from_slice(&10i32.to_be_bytes());
        m.extend_from_slice(sasl);
        s.write_all(&m).await.unwrap();
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.unwrap();
        let mut body = vec![0u8; i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4];
        s.read_exact(&mut body).await.unwrap();
        let text = String::from_utf8_lossy(&body).into_owned();
        let nonce = text.split(',').find_map(|f| f.strip_prefix("r=")).unwrap().to_string();
        let server_first = format!("r={nonce}srv,s=c2FsdHNhbHQ=,i={iterations}");
        let mut m = vec![b'R'];
        m.extend_from_slice(&((8 + server_first.len()) as i32).to_be_bytes());
        m.extend_from_slice(&11i32.to_be_bytes());
        m.extend_from_slice(server_first.as_bytes());
        s.write_all(&m).await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    addr
}

/// An upstream asking for four billion PBKDF2 rounds used to pin the connection's worker
/// (and every session on it) for hours; now the login fails at once with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_asking_for_endless_scram_work_is_refused() {
    let s = Services::load();
    let upstream = scram_upstream(s.server_tls(), 4_000_000_000).await;
    let secrets = tempfile::tempdir().unwrap();
    let password_ref = common::secret_file(secrets.path(), "password", "stand-in");
    let extra = format!("[databases.upstream_tls]\nca = \"{}/ca.crt\"\n[databases.auth]\npassword = {password_ref}\n", s.get("CERTS"));
    let (addr, _root, stop, task) = proxy_to(upstream, &extra).await;
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), connect_alice(addr)).await;
    let err = outcome.expect("the login hung on the upstream's PBKDF2 demand").unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("4000000000 PBKDF2 iterations"), "{err:?}");
    let _ = stop.send(());
    task.await.unwrap();
}

/// A self-hosted PostgreSQL with a self-signed certificate (which carries CA:TRUE): psql
/// accepts it with `sslmode=verify-full` when that certificate is its root file, and so must
/// dbtape when `upstream_tls.ca` is exactly that certificate. Any other CA still fails, and
/// says what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_upstream_certificate_is_accepted_when_pinned() {
    let s = Services::load();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("self.crt"), dir.path().join("self.key"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let password_ref = common::secret_file(dir.path(), "password", "pinned-secret");
    let tls = |ca: &std::path::Path| {
        format!("[databases.upstream_tls]\nca = \"{}\"\n[databases.auth]\npassword = {password_ref}\n", ca.display())
    };
    let self_signed = dbtape::proxy::tls::server_config(&dbtape::config::ClientTlsConfig {
        mode: None,
        cert: Some(cert.clone()),
        key: Some(key.clone()),
        client_ca: None,
    })
    .unwrap()
    .unwrap()
    .config;

    let (upstream, password) = fake_upstream(Some(self_signed.clone())).await;
    let (addr, _root, stop, task) = proxy_to(upstream, &tls(&cert)).await;
    connect_alice(addr).await.unwrap();
    assert_eq!(password.await.unwrap().as_deref(), Some("pinned-secret"));
    let _ = stop.send(());
    task.await.unwrap();

    let (upstream, password) = fake_upstream(Some(self_signed)).await;
    let other_ca = std::path::PathBuf::from(format!("{}/ca.crt", s.get("CERTS")));
    let (addr, _root, stop, task) = proxy_to(upstream, &tls(&other_ca)).await;
    let err = connect_alice(addr).await.unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("set upstream_tls.ca to a file holding exactly that certificate"), "{err:?}");
    // The stand-in saw its handshake refused: no password reached it.
    assert!(!matches!(password.await, Ok(Some(_))));
    let _ = stop.send(());
    task.await.unwrap();
}
