//! Protocol engines. Each plugs into `server::Engine`; none touches recordings directly.

pub mod chunk_reader;
pub mod dynamodb;
pub mod http1;
pub mod mongodb;
pub mod net;
pub mod postgres;
pub mod setup;
pub mod stream;
pub mod tls;
pub mod tls_stream;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::server::EngineRegistry;

pub use setup::EngineSetupError;

/// The engines this build ships, set up for the databases in `config`. It lives here, not in
/// the server core, so that the core names no protocol.
pub fn builtin_engines(config: &Config) -> Result<EngineRegistry, EngineSetupError> {
    builtin_engines_after(config, None)
}

/// The engines for a reloaded configuration: certificates, keys, redaction patterns and
/// upstreams read again, with what must outlive the reload taken from `previous`.
pub fn builtin_engines_after(config: &Config, previous: Option<&EngineRegistry>) -> Result<EngineRegistry, EngineSetupError> {
    let mut registry = EngineRegistry::new(HashMap::new());
    let carried = previous.and_then(|r| r.get(crate::audit::Protocol::Postgres)).and_then(|e| e.carried_state());
    registry.register(Arc::new(postgres::PostgresEngine::after(config, carried)?));
    registry.register(Arc::new(mongodb::MongoEngine::new(config)?));
    registry.register(Arc::new(dynamodb::DynamoEngine::new(config)?));
    Ok(registry)
}
