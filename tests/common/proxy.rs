//! Runs dbtape in-process in front of the services' PostgreSQL.

use std::net::SocketAddr;
use std::sync::Arc;

use dbtape::config::Config;
use dbtape::proxy::builtin_engines;
use dbtape::recording::RecordingStore;
use dbtape::server::Server;

use super::services::Services;

pub const ALICE_PASSWORD: &str = "alice-password";

/// Parses `config_text`, binds dbtape with the built-in engines and runs it until the
/// returned sender fires; returns the first database's address.
pub async fn run_server(
    config_text: &str,
    root: &std::path::Path,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (addr, _, stop, task) = run_server_with_directory(config_text, root).await;
    (addr, stop, task)
}

/// As `run_server`, also giving the server's identity directory (to swap it as a reload does).
pub async fn run_server_with_directory(
    config_text: &str,
    root: &std::path::Path,
) -> (SocketAddr, Arc<dbtape::auth::SharedDirectory>, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let config = Arc::new(Config::parse(config_text, &root.join("dbtape.toml")).unwrap());
    let registry = builtin_engines(&config).unwrap();
    let server = Server::bind(config, &registry).await.unwrap();
    let addr = server.local_addrs()[0].1;
    let directory = server.directory();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (addr, directory, stop, task)
}
pub const BOB_PASSWORD: &str = "bob-password";

/// A dbtape server the tests run in-process, until `stop`.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn new(stop: tokio::sync::oneshot::Sender<()>, task: tokio::task::JoinHandle<()>) -> Self {
        Running { stop: Some(stop), task: Some(task) }
    }

    /// Stops the server, sealing every recording.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    /// The running server's identity directory.
    pub directory: Arc<dbtape::auth::SharedDirectory>,
    pub store: RecordingStore,
    pub root: tempfile::TempDir,
    pub services: Services,
    server: Running,
}

pub fn verifier(password: &str) -> String {
    dbtape::auth::scram::Verifier::generate(password, 4096).unwrap().to_string()
}

impl Proxy {
    pub async fn start() -> Proxy {
        Self::start_with("").await
    }

    /// `extra_recording` is added to the [recording] section (e.g. `mode = "best_effort"`).
    pub async fn start_with(extra_recording: &str) -> Proxy {
        Self::start_custom("", extra_recording).await
    }

    /// As `start_with`, with `extra_server` added to the [server] section.
    pub async fn start_custom(extra_server: &str, extra_recording: &str) -> Proxy {
        Self::start_configured(extra_server, extra_recording, None).await
    }

    /// As `start_custom`; `client_tls_tail` replaces the [client_tls] section's `client_ca`
    /// line (the listener's certificate and key stay).
    pub async fn start_configured(extra_server: &str, extra_recording: &str, client_tls_tail: Option<&str>) -> Proxy {
        Self::start_full(extra_server, extra_recording, client_tls_tail, "").await
    }

    /// As `start`, with `pool` as the database's `[databases.pool]` section's body.
    pub async fn start_pooled(pool: &str) -> Proxy {
        Self::start_pooled_recording(pool, "").await
    }

    /// As `start_pooled`, with `extra_recording` added to the [recording] section.
    pub async fn start_pooled_recording(pool: &str, extra_recording: &str) -> Proxy {
        Self::start_full("", extra_recording, None, &format!("[databases.pool]\n{pool}")).await
    }

    async fn start_full(extra_server: &str, extra_recording: &str, client_tls_tail: Option<&str>, extra_database: &str) -> Proxy {
        let services = Services::load();
        let root = tempfile::tempdir().unwrap();
        let certs = services.get("CERTS").to_string();
        let client_tls_tail = client_tls_tail.map_or_else(|| format!("client_ca = \"{certs}/ca.crt\""), str::to_string);
        let pg_password = super::secret_file(root.path(), "pg-password", services.get("PG_PASSWORD"));
        let text = format!(
            r#"
[server]
shutdown_grace = "2s"
# More workers than the CI machine's default, so sessions, cancels and shutdown cross workers.
workers = 3
{extra_server}
[recording]
dir = "{root}/recordings"
signing_key = "{root}/key"
{batch_interval}
{extra_recording}
[[databases]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:0"
upstream = "postgres://127.0.0.1:{port}/postgres"
[databases.client_tls]
cert = "{certs}/server.crt"
key = "{certs}/server.key"
{client_tls_tail}
[databases.upstream_tls]
ca = "{certs}/ca.crt"
[databases.auth]
method = "password"
password = {pg_password}
{extra_database}

[[users]]
name = "alice"
scram_verifier = "{alice}"
[[users.grants]]
database = "pg"
db_users = ["postgres"]

[[users]]
name = "bob"
scram_verifier = "{bob}"
[[users.grants]]
database = "pg"
db_users = ["reporting"]

[[users]]
name = "dave"
scram_verifier = "{bob}"
[[users.grants]]
database = "pg"
db_users = ["postgres"]
db_names = ["app"]

[[users]]
name = "carol"
cert_cn = "carol"
[[users.grants]]
database = "pg"
db_users = ["postgres"]
"#,
            root = root.path().display(),
            port = services.get("PG_PORT"),
            alice = verifier(ALICE_PASSWORD),
            bob = verifier(BOB_PASSWORD),
            batch_interval = if extra_recording.contains("batch_interval") { "" } else { "batch_interval = \"10ms\"" },
        );
        let (addr, directory, stop, task) = run_server_with_directory(&text, root.path()).await;
        let store = RecordingStore::new(root.path().join("recordings"));
        Proxy { addr, directory, store, root, services, server: Running::new(stop, task) }
    }

    /// Stops the proxy, sealing every recording.
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }

    pub fn conninfo(&self, user: &str, extra: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname=postgres sslmode=disable {extra}", self.addr.port())
    }

    /// Runs psql with the given connection string, returning (success, stdout, stderr).
    pub async fn psql(&self, conninfo: String, password: Option<&str>, args: Vec<String>) -> (bool, String, String) {
        let mut cmd = std::process::Command::new("psql");
        cmd.arg(conninfo).args(["-X", "-q", "-v", "ON_ERROR_STOP=0"]).args(args).env_remove("PGPASSWORD");
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        }
        super::output(cmd).await
    }

    /// Events of every recording, sessions in start order.
    pub fn sessions(&self) -> Vec<Vec<serde_json::Value>> {
        super::sessions_in(&self.store)
    }
}

/// A compact view of an event for exact assertions: type plus its telling field.
pub fn brief(event: &serde_json::Value) -> String {
    let kind = event["event"].as_str().unwrap_or_default();
    match kind {
        "db.session.query" => format!("query {}", event["db_query"].as_str().unwrap_or_default()),
        "db.session.result" if event["success"] == false => format!("error {}", event["error"].as_str().unwrap_or_default()),
        "db.session.result" => format!("result {}", event["affected_records"].as_u64().unwrap_or(0)),
        "db.session.start" => {
            format!("start {} {}", event["code"].as_str().unwrap_or_default(), event["error"].as_str().unwrap_or_default())
                .trim_end()
                .to_string()
        }
        "db.session.postgres.statements.parse" => format!("parse {}", event["query"].as_str().unwrap_or_default()),
        "db.session.postgres.statements.bind" => format!("bind {}", serde_json::to_string(&event["parameters"]).unwrap_or_default()),
        "db.session.postgres.statements.execute" => "execute".to_string(),
        "db.session.postgres.statements.close" => "close".to_string(),
        "db.session.end" => "end".to_string(),
        other => other.to_string(),
    }
}
