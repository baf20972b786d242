//! One client connection from first byte to last: the login (`login.rs`), then the audited
//! relay (`relay.rs`); and the per-database state and cancel keys they share.

use crate::util::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::redact::Redactor;
use super::upstream::UpstreamTarget;
use crate::config::ClientTlsMode;
use crate::proxy::stream::Stream;
use crate::server::{Connection, ListenerContext};

/// Per-database state built once at start-up.
pub struct DbState {
    pub server_tls: Option<crate::proxy::tls::ServerTls>,
    pub upstream: UpstreamTarget,
    pub client_tls_mode: ClientTlsMode,
    /// For `aws_iam`: made on first use, then shared by every session of this database.
    pub aws_credentials: crate::aws::credentials::CredentialCache,
    /// `[databases.pool]`: upstream connections kept between client sessions.
    pub pool: Option<Arc<super::pool::SessionPool>>,
}

impl DbState {
    /// An RDS IAM auth token for `db_user`, from cached (assumed-role) credentials.
    pub(super) async fn iam_token(&self, ctx: &ListenerContext, db_user: &str) -> Result<String, String> {
        let aws = &ctx.database().aws;
        let identity = self.aws_credentials.identity().await.map_err(|e| e.to_string())?;
        let creds = identity.credentials;
        crate::aws::rds_token::generate(&self.upstream.host, self.upstream.port, db_user, &aws.region, &creds, std::time::SystemTime::now())
            .map_err(|e| e.to_string())
    }
}

/// The real backend behind a synthetic cancel key.
#[derive(Clone)]
pub struct CancelTarget {
    pub(super) upstream: UpstreamTarget,
    pub(super) pid: i32,
    pub(super) key: Vec<u8>,
}

/// Synthetic (pid, key) → real target. Keys never leave this map: not logged, not recorded.
pub type CancelMap = Arc<Mutex<HashMap<(i32, Vec<u8>), CancelTarget>>>;

/// Bound on captured client messages (queries, binds): bigger ones are refused as malformed.
pub(super) const MAX_CAPTURED: usize = 64 * 1024 * 1024;

pub(super) fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    if getrandom::getrandom(&mut out).is_err() {
        // Without randomness a synthetic key is guessable; use the clock rather than fail
        // the session, since the key only maps back through this proxy.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        for (i, b) in out.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8;
        }
    }
    out
}

pub(super) async fn send<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) {
    let _ = w.write_all(bytes).await;
    let _ = w.flush().await;
}

pub async fn run(conn: Connection, ctx: Arc<ListenerContext>, state: Arc<DbState>, cancels: CancelMap, redactor: Arc<Redactor>) {
    let info = conn.info();
    let span = conn.span;
    let mut login = conn.login;
    let client = Stream::Plain(conn.stream);
    // Boxed: the login's state machine (TLS accept, SCRAM, the upstream's TLS and login) is
    // some 15 KiB, and inline it would size this future, held for the session's whole life.
    let Some(handshake) = login.before_deadline(&span, Box::pin(handshake(client, &ctx, &state, &cancels, info))).await else { return };
    login.logged_in();
    if let Some((client, established)) = handshake {
        let Established { port, upstream, synthetic, pooled } = established;
        if let Some((pid, key)) = upstream.key.clone() {
            lock(&cancels).insert(synthetic.clone(), CancelTarget { upstream: state.upstream.clone(), pid, key });
        }
        let super::pool::Backend { stream, key, parameters } = upstream;
        let (kept, port) = relay_session(client, stream, port, pooled.is_some(), &ctx, &span, &redactor).await;
        // Before the connection can serve anyone else: a late cancel from this client must
        // not reach the next one's query.
        lock(&cancels).remove(&synthetic);
        let give_back = async {
            if let (Some(stream), Some(lease), Some(pool)) = (kept, pooled, &state.pool) {
                pool.give_back(lease, super::pool::Backend { stream, key, parameters }).await;
            }
        };
        if let Err(e) = port.end_then(give_back).await {
            tracing::error!(parent: &span, error = %e, "could not record the session end");
        }
    }
}

use super::login::{handshake, Established};
use super::relay::relay_session;
