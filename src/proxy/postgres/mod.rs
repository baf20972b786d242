//! The PostgreSQL path: an audited proxy that terminates client authentication (SCRAM or
//! mTLS), logs in upstream as the granted db_user, and records every query and result.

mod codec;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod login;
mod messages;
mod pairing;
mod pool;
pub mod redact;
mod relay;
mod session;
mod statements;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use crate::auth::split_login;
pub use messages::{affected_rows, error_text};
use session::{CancelMap, DbState};
use upstream::UpstreamTarget;

use crate::audit::Protocol;
use crate::config::Config;
use crate::proxy::setup::{bad_upstream, per_database, DatabaseSetup, EngineSetupError};
use crate::server::{BoxFuture, Connection, Engine, ListenerContext};

pub struct PostgresEngine {
    databases: HashMap<String, Arc<DbState>>,
    cancels: CancelMap,
    redactor: Arc<redact::Redactor>,
}

impl PostgresEngine {
    /// Loads TLS material and upstream targets for every postgres database in the config.
    pub fn new(config: &Config) -> Result<Self, EngineSetupError> {
        let databases = per_database(config, Protocol::Postgres, |db, setup| {
            let (host, port, database) =
                UpstreamTarget::parse(&db.upstream).ok_or_else(|| bad_upstream(db, "postgres://host[:port][/database]"))?;
            let server_name = DatabaseSetup::server_name(db, &host);
            let salted = Default::default();
            let upstream = UpstreamTarget { host, port, database, tls: setup.upstream_tls, server_name, salted };
            let pool = db.pool.clone().map(pool::SessionPool::new);
            Ok(DbState { server_tls: setup.server_tls, upstream, client_tls_mode: setup.client_tls_mode, aws_credentials: setup.aws, pool })
        })?;
        let redactor = Arc::new(redact::Redactor::new(&config.recording.redact_patterns)?);
        Ok(PostgresEngine { databases, cancels: Arc::new(Mutex::new(HashMap::new())), redactor })
    }
}

impl PostgresEngine {
    /// As `new`, keeping `previous`'s cancel keys, so that a client of a session opened
    /// before a reload can still cancel its queries.
    pub fn after(config: &Config, previous: Option<Arc<dyn std::any::Any + Send + Sync>>) -> Result<Self, EngineSetupError> {
        let mut engine = Self::new(config)?;
        if let Some(cancels) = previous.and_then(|state| state.downcast::<Mutex<HashMap<(i32, Vec<u8>), session::CancelTarget>>>().ok()) {
            engine.cancels = cancels;
        }
        Ok(engine)
    }
}

impl Engine for PostgresEngine {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
    }

    fn carried_state(&self) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        Some(self.cancels.clone())
    }

    fn handle(&self, conn: Connection, ctx: Arc<ListenerContext>) -> BoxFuture<'static, ()> {
        let state = self.databases.get(&ctx.database().name).cloned();
        let cancels = self.cancels.clone();
        let redactor = self.redactor.clone();
        Box::pin(async move {
            match state {
                Some(state) => session::run(conn, ctx, state, cancels, redactor).await,
                None => tracing::error!(parent: &conn.span, "no postgres state for this database"),
            }
        })
    }
}
