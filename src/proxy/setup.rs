//! What every engine builds for each of its databases at start-up, built one way: the
//! listener's TLS and mode, the upstream's TLS and server name, and the database's AWS
//! credential cache. An engine adds only what its protocol needs.

use std::collections::HashMap;
use std::sync::Arc;

use crate::audit::Protocol;
use crate::aws::credentials::CredentialCache;
use crate::config::{ClientTlsMode, Config, DatabaseConfig};
use crate::proxy::tls::{client_config, server_config, ServerTls, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum EngineSetupError {
    #[error("database {database:?}: {source}")]
    Tls { database: String, source: TlsError },
    #[error("database {database:?}: upstream {uri:?} is not {expected}")]
    Upstream { database: String, uri: String, expected: &'static str },
    #[error("recording.redact_patterns: {0}")]
    RedactPattern(#[from] regex::Error),
}

/// One database's common parts.
pub struct DatabaseSetup {
    /// The client leg's TLS; none when `client_tls` has no certificate or is disabled.
    pub server_tls: Option<ServerTls>,
    pub client_tls_mode: ClientTlsMode,
    /// The upstream leg's TLS; none with `upstream_tls.mode = "disable"`.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    pub aws: CredentialCache,
}

impl DatabaseSetup {
    fn of(db: &DatabaseConfig) -> Result<DatabaseSetup, EngineSetupError> {
        let tls_err = |source| EngineSetupError::Tls { database: db.name.clone(), source };
        Ok(DatabaseSetup {
            server_tls: server_config(&db.client_tls).map_err(tls_err)?,
            client_tls_mode: db.client_tls.effective_mode(),
            upstream_tls: client_config(&db.upstream_tls).map_err(tls_err)?,
            aws: CredentialCache::new(db.aws.clone()),
        })
    }

    /// The name the upstream's certificate must carry: `upstream_tls.server_name`, else the
    /// host the upstream URI names.
    pub fn server_name(db: &DatabaseConfig, host: &str) -> String {
        db.upstream_tls.server_name.clone().unwrap_or_else(|| host.to_string())
    }
}

/// The upstream URI did not parse as the protocol's (`expected` says what it should be).
pub fn bad_upstream(db: &DatabaseConfig, expected: &'static str) -> EngineSetupError {
    EngineSetupError::Upstream { database: db.name.clone(), uri: db.upstream.clone(), expected }
}

/// Each `protocol` database in `config`, set up with its common parts and then `build`, by
/// name.
pub fn per_database<S>(
    config: &Config,
    protocol: Protocol,
    mut build: impl FnMut(&DatabaseConfig, DatabaseSetup) -> Result<S, EngineSetupError>,
) -> Result<HashMap<String, Arc<S>>, EngineSetupError> {
    let mut databases = HashMap::new();
    for db in config.databases.iter().filter(|d| d.protocol == protocol) {
        let state = build(db, DatabaseSetup::of(db)?)?;
        databases.insert(db.name.clone(), Arc::new(state));
    }
    Ok(databases)
}
