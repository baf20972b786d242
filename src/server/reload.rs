//! Applying a reloaded configuration (SIGHUP, `dbtape reload`) without ending a session: who
//! may log in is replaced whole; every listener serves new connections with engines built
//! from the new file (certificates, keys, redaction patterns, upstreams) and its limits;
//! listeners added are bound, listeners removed stop accepting. Open sessions keep what
//! they started with. The caller checks the file first: a configuration with any error
//! never gets here.

use std::collections::HashMap;
use std::sync::Arc;

use super::accept::{ListenerSlot, Serving};
use super::{bind_shared, BoundListener, EngineRegistry, ListenerContext, Server};
use crate::audit::Protocol;
use crate::config::Config;

/// A configuration that passed every check, with what was built from it.
pub struct Reloaded {
    pub config: Arc<Config>,
    pub registry: EngineRegistry,
    pub directory: crate::auth::Directory,
    /// Settings changed in the file that only a restart applies.
    pub kept: Vec<&'static str>,
}

/// What a SIGHUP brought: a configuration to apply, or every error of the file.
pub enum Reload {
    Apply(Box<Reloaded>),
    Reject { file: String, problems: Vec<String> },
}

/// Writes the reload, applied or rejected, as a `dbtape.config.reload` event in a signed
/// recording of its own (db_protocol "dbtape"): who may log in is changed here as surely as
/// by a session, so it is audited like one.
pub(super) async fn audit(server: &Server, config: &Config, file: &str, success: bool, detail: String) {
    use crate::audit::{ConnectionMeta, DatabaseMeta, EventBody, ServerMeta, SessionContext, UserMeta};
    let ctx = SessionContext {
        sid: uuid::Uuid::new_v4().to_string(),
        cluster_name: config.server.cluster_name.clone(),
        user: UserMeta::default(),
        database: DatabaseMeta {
            service: "dbtape".into(),
            protocol: Protocol::Proxy,
            uri: file.to_string(),
            name: String::new(),
            user: String::new(),
            labels: Default::default(),
            aws_region: String::new(),
            db_type: "dbtape".into(),
        },
        server: ServerMeta {
            server_id: config.server.server_id.clone(),
            hostname: config.server.hostname.clone(),
            addr: String::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        connection: ConnectionMeta::default(),
    };
    let recorder = server.recorder.clone();
    let written = tokio::task::spawn_blocking(move || {
        let log = recorder.open(ctx)?;
        log.append(&EventBody::ConfigReload { success, detail }, crate::audit::now_ms())?;
        Ok::<_, crate::recording::writer::RecordingError>(log)
    })
    .await;
    match written {
        Ok(Ok(log)) => {
            if let Err(e) = log.close().await {
                tracing::error!(error = %e, "cannot seal the configuration reload's recording");
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot record the configuration reload"),
        Err(e) => tracing::error!(error = %e, "cannot record the configuration reload"),
    }
}

struct Listening {
    listen: String,
    protocol: Protocol,
    slot: Arc<ListenerSlot>,
}

/// The listeners now accepting, by database name.
#[derive(Default)]
pub(super) struct Slots(HashMap<String, Listening>);

impl Slots {
    pub fn insert(&mut self, slot: &Arc<ListenerSlot>) {
        let serving = slot.serving();
        let db = serving.context.database();
        self.0.insert(db.name.clone(), Listening { listen: db.listen.clone(), protocol: db.protocol, slot: slot.clone() });
    }
}

/// What a reload changes, for its audit event.
pub(super) fn summary(reloaded: &Reloaded) -> String {
    let config = &reloaded.config;
    let databases: Vec<&str> = config.databases.iter().map(|d| d.name.as_str()).collect();
    let users: Vec<&str> = config.users.iter().map(|u| u.name.as_str()).collect();
    let mut text = format!("applied to new connections: databases {databases:?}, users {users:?}");
    if !reloaded.kept.is_empty() {
        text.push_str(&format!("; changed but kept until a restart: {}", reloaded.kept.join(", ")));
    }
    text
}

/// Applies `reloaded`; returns the listeners it bound, for the caller to start accepting on.
pub(super) fn apply(server: &Server, slots: &mut Slots, reloaded: Reloaded) -> Vec<BoundListener> {
    let Reloaded { config, registry, directory, kept: _ } = reloaded;
    server.directory.replace(directory);
    let mut bound = Vec::new();
    let mut kept = std::collections::HashSet::new();
    for db in &config.databases {
        let Some(engine) = registry.get(db.protocol) else { continue };
        let database = Arc::new(db.clone());
        match slots.0.get(&db.name) {
            Some(existing) if existing.listen == db.listen && existing.protocol == db.protocol => {
                let context = existing.slot.serving().context.successor(config.clone(), database);
                existing.slot.replace(Serving::new(engine, Arc::new(context)));
                kept.insert(db.name.clone());
                continue;
            }
            Some(moved) => {
                tracing::info!(database = %db.name, from = %moved.listen, to = %db.listen, "reload: the listener moves");
                moved.slot.stop.cancel();
            }
            None => {}
        }
        let listener = match bind_shared(&db.listen) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(database = %db.name, listen = %db.listen, error = %e, "reload: cannot listen there; this database is not served until a reload fixes it");
                slots.0.remove(&db.name);
                continue;
            }
        };
        let context = ListenerContext::new(
            config.clone(),
            database,
            db.protocol,
            server.recorder.clone(),
            server.shutdown.clone(),
            server.login_secret,
            server.directory.clone(),
        );
        let slot = Arc::new(ListenerSlot::new(Serving::new(engine, Arc::new(context))));
        slots.insert(&slot);
        kept.insert(db.name.clone());
        tracing::info!(database = %db.name, listen = %db.listen, "reload: listener added");
        bound.push(BoundListener { listener, slot });
    }
    slots.0.retain(|name, listening| {
        let keep = kept.contains(name);
        if !keep {
            tracing::info!(database = %name, "reload: listener removed; its open sessions continue");
            listening.slot.stop.cancel();
        }
        keep
    });
    tracing::info!(
        databases = slots.0.len(),
        users = config.users.len(),
        "configuration reloaded: new connections use it; open sessions go on as they started"
    );
    bound
}
