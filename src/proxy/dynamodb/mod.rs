//! The DynamoDB path: an HTTP/1.1 proxy (hyper) that verifies each request's SigV4
//! signature against the key dbtape issued its user, records it, re-signs it with the
//! credentials of the user's IAM role (STS AssumeRole, optionally chained) and streams
//! DynamoDB's answer back unchanged.

mod auth;
mod errors;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod session;
mod summary;
mod tee;
mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};

use crate::audit::Protocol;
use crate::aws::credentials::CredentialCache;
use crate::config::{ClientTlsMode, Config};
use crate::proxy::setup::{bad_upstream, per_database, EngineSetupError};
use crate::server::{BoxFuture, Connection, Engine, ListenerContext};

/// How long a client may take to send a request's headers, once it has started one.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    let (session, mut logged_in) = session::Conn::new(ctx.clone(), state.clone(), info);
    let service = {
        let session = session.clone();
        hyper::service::service_fn(move |request| session::serve(session.clone(), request))
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let shutdown = ctx.shutdown().clone();
    let mut login_pending = true;
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(parent: &span, error = %e, "DynamoDB client connection ended");
                }
                break;
            }
            changed = logged_in.changed(), if login_pending => {
                if changed.is_ok() && *logged_in.borrow() {
                    login_pending = false;
                    login_slot.logged_in();
                }
            }
            () = login_slot.deadline_passed(), if login_pending => {
                tracing::info!(parent: &span, "no signed request before the login deadline; connection closed");
                break;
            }
            _ = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    session.finish().await;
}
