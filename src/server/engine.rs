//! The small interface every protocol implements, and what the server core hands it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::audit::{ConnectionMeta, DatabaseMeta, Protocol, ServerMeta, SessionContext, UserMeta};
use crate::auth::{Directory, SharedDirectory};
use crate::config::{AuthMethod, Config, DatabaseConfig};
use crate::recording::AuditPort;
use crate::recording::{Recorder, RecordingError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub struct Connection {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    /// The connection's log context (database, peer). Engines enter it for the handshake
    /// and log the relay with it as the explicit parent: entering a span on every poll of a
    /// busy relay costs more than the rest of the bookkeeping on that path.
    pub span: tracing::Span,
    /// Counts against the listener's pre-login limits until the engine calls `logged_in`;
    /// the server core closes the connection if its deadline passes first.
    pub login: super::LoginSlot,
}

impl Connection {
    pub fn info(&self) -> ConnectionInfo {
        ConnectionInfo { peer: self.peer, local: self.local }
    }
}

/// A connection's addresses, kept after its socket has moved on (e.g. into TLS).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
}

/// A protocol implementation. `handle` serves one client connection to the end: it
/// authenticates, opens a session through `ListenerContext::open_session`, relays, and sends
/// errors to the client in the protocol's own wire format. It must watch
/// `ListenerContext::shutdown` and end the session (recording its end) when it fires.
pub trait Engine: Send + Sync + 'static {
    fn protocol(&self) -> Protocol;
    fn handle(&self, conn: Connection, ctx: Arc<ListenerContext>) -> BoxFuture<'static, ()>;
    /// State that must outlive a configuration reload, handed to the engine built from the
    /// new configuration (PostgreSQL: the cancel keys of sessions still open).
    fn carried_state(&self) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        None
    }
}

/// Built at startup (and again at each reload) and passed in; never global.
#[derive(Clone)]
pub struct EngineRegistry {
    engines: HashMap<Protocol, Arc<dyn Engine>>,
}

impl EngineRegistry {
    pub fn new(engines: HashMap<Protocol, Arc<dyn Engine>>) -> Self {
        EngineRegistry { engines }
    }

    pub fn register(&mut self, engine: Arc<dyn Engine>) {
        self.engines.insert(engine.protocol(), engine);
    }

    pub fn get(&self, protocol: Protocol) -> Option<Arc<dyn Engine>> {
        self.engines.get(&protocol).cloned()
    }
}

/// Why the upstream password cannot be had; the session is refused with this reason.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamPasswordError {
    #[error("no upstream password is configured (databases.auth.password)")]
    NotConfigured,
    #[error("cannot read the upstream password (databases.auth.password, {from}): {cause}")]
    Unreadable { from: String, cause: String },
}

/// A login an engine turned down, before any session began: who the client claimed to be
/// (as far as it got) and why. Every engine refuses through this one type and
/// `ListenerContext::refuse`; only the reply to the client is its protocol's own.
#[derive(Debug, Clone, Default)]
pub struct Refusal {
    pub identity: SessionIdentity,
    pub reason: String,
}

impl Refusal {
    pub fn new(identity: SessionIdentity, reason: impl Into<String>) -> Self {
        Refusal { identity, reason: reason.into() }
    }

    /// A refusal of `user` (as far as the client named one), for `reason`.
    pub fn of_user(user: &str, reason: impl Into<String>) -> Self {
        Refusal::new(SessionIdentity { user: user.to_string(), ..Default::default() }, reason)
    }
}

/// Who a session is for, as the engine established it.
#[derive(Debug, Clone, Default)]
pub struct SessionIdentity {
    pub user: String,
    pub db_user: String,
    pub db_name: String,
    pub aws_role_arn: String,
    pub user_agent: String,
}

/// Everything an engine needs for one listener.
pub struct ListenerContext {
    config: Arc<Config>,
    database: Arc<DatabaseConfig>,
    protocol: Protocol,
    recorder: Arc<Recorder>,
    shutdown: CancellationToken,
    login_secret: [u8; 32],
    directory: Arc<SharedDirectory>,
    refusals: Arc<super::refusals::RefusalLog>,
    failed_logins: Arc<super::refusals::FailedLogins>,
}

impl ListenerContext {
    pub fn new(
        config: Arc<Config>,
        database: Arc<DatabaseConfig>,
        protocol: Protocol,
        recorder: Arc<Recorder>,
        shutdown: CancellationToken,
        login_secret: [u8; 32],
        directory: Arc<SharedDirectory>,
    ) -> Self {
        let refusals = Arc::new(super::refusals::RefusalLog::new(recorder.clone()));
        let failed_logins = Arc::new(super::refusals::FailedLogins::new(config.server.max_failed_logins_per_source));
        ListenerContext { config, database, protocol, recorder, shutdown, login_secret, directory, refusals, failed_logins }
    }

    /// This listener's context under a reloaded configuration: the same recorder, refused-
    /// logins log and failed-login counts (a reload does not forgive a source).
    pub fn successor(&self, config: Arc<Config>, database: Arc<DatabaseConfig>) -> ListenerContext {
        ListenerContext {
            config,
            database,
            protocol: self.protocol,
            recorder: self.recorder.clone(),
            shutdown: self.shutdown.clone(),
            login_secret: self.login_secret,
            directory: self.directory.clone(),
            refusals: self.refusals.clone(),
            failed_logins: self.failed_logins.clone(),
        }
    }

    /// Failed logins per source, which the server core consults at accept.
    pub fn failed_logins(&self) -> &Arc<super::refusals::FailedLogins> {
        &self.failed_logins
    }

    /// The context of a refused-logins recording: the listener's, with no one's address.
    fn refusals_context(&self, conn: ConnectionInfo) -> SessionContext {
        let mut ctx = self.session_context(SessionIdentity::default(), conn);
        ctx.connection.remote_addr.clear();
        ctx
    }

    /// Audits a refused login (TDB00W) in the listener's refused-logins log, and counts it
    /// against its source address. The engine tells the client in its own wire format; call
    /// this first, so that a client retrying at once meets the count its failure made.
    pub async fn refuse(&self, refusal: Refusal, conn: ConnectionInfo) {
        let remote_addr = conn.peer.to_string();
        let shuts_out = self.failed_logins.record(conn.peer.ip()) == super::refusals::Failure::ShutsOut;
        self.record_refusal(refusal.identity, conn, refusal.reason, "access denied").await;
        if shuts_out {
            let limit = self.config.server.max_failed_logins_per_source;
            tracing::warn!(source = %conn.peer.ip(), limit, "too many failed logins from one source; closing its connections for a minute");
            let notice = super::refusals::RefusedLogin {
                remote_addr,
                reason: format!(
                    "{} failed logins from {} within a minute (server.max_failed_logins_per_source): its new connections are closed unaudited for the rest of the minute",
                    limit,
                    conn.peer.ip()
                ),
                ..Default::default()
            };
            self.refusals.record(notice, "source shut out", || self.refusals_context(conn)).await;
        }
    }

    /// Audits a refusal without counting it against the connection's source: for a
    /// balancer's bad PROXY header, where the source is the balancer, not a client.
    pub(super) async fn refuse_uncounted(&self, refusal: Refusal, conn: ConnectionInfo) {
        self.record_refusal(refusal.identity, conn, refusal.reason, "access denied").await;
    }

    /// A TDB00W in the listener's refused-logins log.
    async fn record_refusal(&self, identity: SessionIdentity, conn: ConnectionInfo, reason: String, message: &str) {
        let refusal = super::refusals::RefusedLogin {
            user: identity.user,
            db_user: identity.db_user,
            db_name: identity.db_name,
            user_agent: identity.user_agent,
            remote_addr: conn.peer.to_string(),
            reason,
        };
        self.refusals.record(refusal, message, || self.refusals_context(conn)).await;
    }

    /// A server secret for login exchanges, e.g. the stand-in SCRAM salt of unknown users;
    /// stable across restarts, never sent or recorded.
    pub fn login_secret(&self) -> &[u8; 32] {
        &self.login_secret
    }

    /// Who may log in, as of now: a login keeps the directory it took to its end.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.current()
    }

    /// The configured upstream password (`auth.method = "password"`), read now so that a
    /// rotated file takes effect at the next login. None for other methods.
    pub fn upstream_password(&self) -> Result<Option<String>, UpstreamPasswordError> {
        let auth = &self.database.auth;
        if auth.method != AuthMethod::Password {
            return Ok(None);
        }
        let source = auth.password.as_ref().ok_or(UpstreamPasswordError::NotConfigured)?;
        source.read().map(Some).map_err(|e| UpstreamPasswordError::Unreadable { from: source.describe(), cause: e.to_string() })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn database(&self) -> &DatabaseConfig {
        &self.database
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Opens a recording for a new session and returns its audit port.
    pub async fn open_session(&self, identity: SessionIdentity, conn: ConnectionInfo) -> Result<AuditPort, RecordingError> {
        let recording = &self.config.recording;
        if let Some(shortage) = crate::recording::disk::shortage(&recording.dir, recording.min_free_bytes) {
            if recording.mode == crate::recording::RecordingMode::Strict {
                tracing::error!(reason = %shortage, "refusing a new session: too little free space to record it");
                self.recorder.metrics().refused_low_disk();
                // Audited like a refused login, but not counted against the client's address:
                // the disk filling up is not its doing.
                self.record_refusal(identity, conn, shortage.clone(), "recording disk nearly full").await;
                return Err(RecordingError::LowDisk(shortage));
            }
            tracing::warn!(reason = %shortage, "recording disk nearly full; best_effort mode records what it still can");
        }
        let ctx = self.session_context(identity, conn);
        // A recording that starts in memory is opened here: a hop to a blocking thread and
        // back would cost more than the open.
        let log = if self.recorder.opens_in_memory() {
            self.recorder.open(ctx)?
        } else {
            let recorder = self.recorder.clone();
            tokio::task::spawn_blocking(move || recorder.open(ctx)).await.map_err(|_| RecordingError::ShutDown)??
        };
        Ok(AuditPort::new(log))
    }

    pub fn session_context(&self, identity: SessionIdentity, conn: ConnectionInfo) -> SessionContext {
        let db = &self.database;
        SessionContext {
            sid: uuid::Uuid::new_v4().to_string(),
            cluster_name: self.config.server.cluster_name.clone(),
            user: UserMeta { user: identity.user, aws_role_arn: identity.aws_role_arn },
            database: DatabaseMeta {
                service: db.name.clone(),
                protocol: self.protocol,
                uri: db.upstream.clone(),
                name: identity.db_name,
                user: identity.db_user,
                labels: db.labels.clone(),
                aws_region: db.aws.region.clone(),
                db_type: db.db_type.clone(),
            },
            server: ServerMeta {
                server_id: self.config.server.server_id.clone(),
                hostname: self.config.server.hostname.clone(),
                addr: conn.local.map(|a| a.to_string()).unwrap_or_default(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            connection: ConnectionMeta {
                local_addr: conn.local.map(|a| a.to_string()).unwrap_or_default(),
                remote_addr: conn.peer.to_string(),
                user_agent: identity.user_agent,
            },
        }
    }
}
