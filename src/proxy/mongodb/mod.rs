//! The MongoDB path (self-hosted MongoDB and Amazon DocumentDB): an audited proxy that
//! terminates the client's login (SCRAM-SHA-256 against the same stored verifier the
//! PostgreSQL path uses, or an X.509 certificate), logs in upstream as the granted db_user
//! (SCRAM-SHA-256 or MONGODB-AWS), and records every command and reply.

mod client;
mod commands;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod login;
mod relay;
pub mod render;
mod upstream;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use upstream::UpstreamTarget;

use crate::audit::Protocol;
use crate::config::{ClientTlsMode, Config};
use crate::proxy::setup::{bad_upstream, per_database, DatabaseSetup, EngineSetupError};
use crate::server::{BoxFuture, Connection, Engine, ListenerContext};

/// Per-database state built once at start-up.
pub struct DbState {
    server_tls: Option<crate::proxy::tls::ServerTls>,
    upstream: UpstreamTarget,
    client_tls_mode: ClientTlsMode,
    /// dbtape's AWS identity and the IAM role db_users (DocumentDB) assumed from it.
    aws_credentials: crate::aws::credentials::CredentialCache,
    hello_cache: tokio::sync::Mutex<Option<(std::time::Instant, bson::RawDocumentBuf)>>,
    /// Unauthenticated driver monitors being served now, per source address.
    monitors: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
}

pub struct MongoEngine {
    databases: HashMap<String, Arc<DbState>>,
}

impl MongoEngine {
    pub fn new(config: &Config) -> Result<Self, EngineSetupError> {
        let databases = per_database(config, Protocol::MongoDb, |db, setup| {
            let (host, port, auth_source) = UpstreamTarget::parse(&db.upstream)
                .ok_or_else(|| bad_upstream(db, "mongodb://host[:port][/?authSource=…] with one host"))?;
            let server_name = DatabaseSetup::server_name(db, &host);
            Ok(DbState {
                server_tls: setup.server_tls,
                upstream: UpstreamTarget { host, port, auth_source, tls: setup.upstream_tls, server_name, salted: Default::default() },
                client_tls_mode: setup.client_tls_mode,
                aws_credentials: setup.aws,
                hello_cache: tokio::sync::Mutex::new(None),
                monitors: std::sync::Mutex::new(HashMap::new()),
            })
        })?;
        Ok(MongoEngine { databases })
    }
}

impl Engine for MongoEngine {
    fn protocol(&self) -> Protocol {
        Protocol::MongoDb
    }

    fn handle(&self, conn: Connection, ctx: Arc<ListenerContext>) -> BoxFuture<'static, ()> {
        let state = self.databases.get(&ctx.database().name).cloned();
        Box::pin(async move {
            match state {
                Some(state) => run(conn, ctx, state).await,
                None => tracing::error!(parent: &conn.span, "no mongodb state for this database"),
            }
        })
    }
}

async fn run(conn: Connection, ctx: Arc<ListenerContext>, state: Arc<DbState>) {
    let info = conn.info();
    let span = conn.span;
    let mut login_slot = conn.login;
    let handshake = async {
        let mut client = crate::proxy::net::accept_tls(conn.stream, state.server_tls.as_ref(), state.client_tls_mode).await?;
        let cn = crate::proxy::tls::client_certificate_cn(&client, state.server_tls.as_ref());
        let mut login = login::Login::new(&ctx, &state, info, cn);
        let outcome = login.run(&mut client).await;
        Some((client, outcome, login))
    };
    let Some(Some((mut client, outcome, login))) = login_slot.before_deadline(&span, handshake).await else { return };
    login_slot.logged_in();
    match outcome {
        login::Outcome::LoggedIn(established) => {
            drop(login);
            relay::run(client, established, &ctx).await;
        }
        login::Outcome::Monitor => login::serve_monitor(&mut client, &login, ctx.shutdown()).await,
        login::Outcome::Closed => {}
    }
}
