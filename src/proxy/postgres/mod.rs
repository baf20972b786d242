//! The PostgreSQL path: an audited proxy that terminates client authentication (SCRAM or
//! mTLS), logs in upstream as the granted db_user, and records every query and result.

mod codec;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod login;
mod messages;
mod pairing;
pub mod redact;
mod relay;
mod session;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use crate::auth::split_login;
pub use messages::{affected_rows, error_text};
use session::{CancelMap, DbState};
use upstream::UpstreamTarget;

use crate::audit::Protocol;
use crate::config::Config;
use crate::proxy::tls::{client_config, server_config, TlsError};
use crate::server::{BoxFuture, Connection, Engine, ListenerContext};

#[derive(Debug, thiserror::Error)]
pub enum PostgresSetupError {
    #[error("database {database:?}: {source}")]
    Tls { database: String, source: TlsError },
    #[error("database {database:?}: upstream {uri:?} is not postgres://host[:port][/database]")]
    Upstream { database: String, uri: String },
    #[error("recording.redact_patterns: {0}")]
    RedactPattern(#[from] regex::Error),
}

pub struct PostgresEngine {
    databases: HashMap<String, Arc<DbState>>,
    cancels: CancelMap,
    redactor: Arc<redact::Redactor>,
}

impl PostgresEngine {
    /// Loads TLS material and upstream targets for every postgres database in the config.
    pub fn new(config: &Config) -> Result<Self, PostgresSetupError> {
        let mut databases = HashMap::new();
        for db in config.databases.iter().filter(|d| d.protocol == Protocol::Postgres) {
            let tls_err = |source| PostgresSetupError::Tls { database: db.name.clone(), source };
            let server_tls = server_config(&db.client_tls).map_err(tls_err)?;
            let client_tls = client_config(&db.upstream_tls).map_err(tls_err)?;
            let (host, port, database) = UpstreamTarget::parse(&db.upstream)
                .ok_or_else(|| PostgresSetupError::Upstream { database: db.name.clone(), uri: db.upstream.clone() })?;
            let server_name = db.upstream_tls.server_name.clone().unwrap_or_else(|| host.clone());
            let upstream = UpstreamTarget { host, port, database, tls: client_tls, server_name };
            databases.insert(
                db.name.clone(),
                Arc::new(DbState {
                    server_tls,
                    upstream,
                    client_tls_mode: db.client_tls.effective_mode(),
                    aws_credentials: crate::aws::credentials::CredentialCache::new(db.aws.clone()),
                }),
            );
        }
        let redactor = Arc::new(redact::Redactor::new(&config.recording.redact_patterns)?);
        Ok(PostgresEngine { databases, cancels: Arc::new(Mutex::new(HashMap::new())), redactor })
    }
}

impl Engine for PostgresEngine {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
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
