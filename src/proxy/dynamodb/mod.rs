//! The DynamoDB path: an HTTP/1.1 relay that verifies each request's SigV4 signature
//! against the key dbtape issued its user, records it, re-signs it with the credentials of
//! the user's IAM role (STS AssumeRole, optionally chained) and streams DynamoDB's answer
//! back unchanged. Each message is parsed once (`proxy::http1`), on its way through.

mod auth;
mod capture;
mod errors;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod session;
mod summary;
mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::Protocol;
use crate::aws::credentials::CredentialCache;
use crate::config::{ClientTlsMode, Config};
use crate::proxy::http1::{Wire, WireError};
use crate::proxy::setup::{bad_upstream, per_database, EngineSetupError};
use crate::server::{BoxFuture, Connection, Engine, ListenerContext};

/// How long a connection may wait for a request's head to arrive whole, idle time between
/// requests included.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long closing a client connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-database state built once at start-up.
pub struct DbState {
    server_tls: Option<crate::proxy::tls::ServerTls>,
    client_tls_mode: ClientTlsMode,
    endpoint: upstream::Endpoint,
    roles: CredentialCache,
    max_request_bytes: usize,
    /// KiB of request bodies being read at once, over all connections.
    body_budget: tokio::sync::Semaphore,
    /// SigV4 signing keys, for the clients' signatures and the endpoint's: derived once a
    /// day per secret, not twice per request.
    signing_keys: crate::aws::sigv4::SigningKeys,
}

/// Request bodies buffered at once per database: four of the largest, at least 64 MiB.
fn body_budget_kib(max_request_bytes: usize) -> usize {
    session::kib(max_request_bytes.saturating_mul(4).max(64 << 20)) as usize
}

pub struct DynamoEngine {
    databases: HashMap<String, Arc<DbState>>,
}

impl DynamoEngine {
    pub fn new(config: &Config) -> Result<Self, EngineSetupError> {
        let databases = per_database(config, Protocol::DynamoDb, |db, setup| {
            let endpoint =
                upstream::Endpoint::parse(&db.upstream, &db.aws.region, setup.upstream_tls, db.upstream_tls.server_name.as_deref())
                    .ok_or_else(|| bad_upstream(db, "http(s)://host[:port]"))?;
            Ok(DbState {
                server_tls: setup.server_tls,
                client_tls_mode: setup.client_tls_mode,
                endpoint,
                roles: setup.aws,
                max_request_bytes: db.max_request_bytes,
                body_budget: tokio::sync::Semaphore::new(body_budget_kib(db.max_request_bytes).min(tokio::sync::Semaphore::MAX_PERMITS)),
                signing_keys: Default::default(),
            })
        })?;
        Ok(DynamoEngine { databases })
    }
}

impl Engine for DynamoEngine {
    fn protocol(&self) -> Protocol {
        Protocol::DynamoDb
    }

    fn handle(&self, conn: Connection, ctx: Arc<ListenerContext>) -> BoxFuture<'static, ()> {
        let state = self.databases.get(&ctx.database().name).cloned();
        Box::pin(async move {
            match state {
                Some(state) => run(conn, ctx, state).await,
                None => tracing::error!(parent: &conn.span, "no dynamodb state for this database"),
            }
        })
    }
}

async fn run(conn: Connection, ctx: Arc<ListenerContext>, state: Arc<DbState>) {
    let info = conn.info();
    let span = conn.span;
    let mut login_slot = conn.login;
    let accept = crate::proxy::net::accept_tls(conn.stream, state.server_tls.as_ref(), state.client_tls_mode);
    let Some(Some(stream)) = login_slot.before_deadline(&span, accept).await else { return };
    let mut client = Wire::new(stream);
    let mut session = session::Conn::new(ctx.clone(), state, info);
    let shutdown = ctx.shutdown().clone();
    let head_deadline = tokio::time::sleep(HEADER_READ_TIMEOUT);
    tokio::pin!(head_deadline);
    // Checked first as well: a client that keeps requests coming would otherwise win the
    // race below now and then.
    while !shutdown.is_cancelled() {
        head_deadline.as_mut().reset(tokio::time::Instant::now() + HEADER_READ_TIMEOUT);
        let head = tokio::select! {
            head = client.read_request_head() => head,
            () = head_deadline.as_mut() => {
                tracing::debug!(parent: &span, "no whole request head within {HEADER_READ_TIMEOUT:?}; connection closed");
                break;
            }
            () = login_slot.deadline_passed(), if !session.logged_in => {
                tracing::info!(parent: &span, "no signed request before the login deadline; connection closed");
                break;
            }
            _ = shutdown.cancelled() => break,
        };
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(WireError::Head(e)) => {
                tracing::info!(parent: &span, error = %e, "a DynamoDB client sent what is not an HTTP/1.1 request; connection closed");
                let _ = client.write_all(&bad_request(e.status(), &e.to_string())).await;
                break;
            }
            Err(e) => {
                tracing::debug!(parent: &span, error = %e, "DynamoDB client connection ended");
                break;
            }
        };
        let next = session.exchange(&mut client, head, shutdown.is_cancelled(), &mut login_slot).await;
        if next == session::Next::Close {
            break;
        }
    }
    // The client is let go before the session is sealed: sealing is dbtape's own work.
    // Bounded: a client that reads nothing could hold a TLS close back for ever.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, tokio::io::AsyncWriteExt::shutdown(&mut client.stream)).await;
    drop(client);
    session.finish().await;
}

/// dbtape's answer to bytes that are not a request it can read: DynamoDB's error shape, and
/// the connection closes after it.
fn bad_request(status: u16, message: &str) -> Vec<u8> {
    let mut response = errors::error_response(errors::ErrorKind::Validation, &format!("dbtape: {message}"));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    crate::proxy::http1::response_bytes(&response, true)
}
