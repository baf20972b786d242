//! `dbtape serve`.

use std::path::Path;
use std::sync::Arc;

use super::Failure;
use crate::config::{Config, LogFormat};
use crate::proxy::builtin_engines;
use crate::server::{shutdown_signal, Server};

pub fn run(config_path: &Path) -> Result<(), Failure> {
    let config = Config::load(config_path)?;
    super::init_logging(true, config.server.log_format == LogFormat::Json);
    // Sessions run on the server's own worker threads; this runtime only accepts and signals.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let registry = builtin_engines(&config)?;
        let server = Server::bind(Arc::new(config), &registry).await?;
        for (name, addr) in server.local_addrs() {
            tracing::info!(database = %name, %addr, "serving");
        }
        tracing::info!("dbtape ready");
        server.run(shutdown_signal()).await;
        Ok::<(), Failure>(())
    })
}
