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

/// Applies `reloaded`; returns the listeners it bound, for the caller to start accepting on.
pub(super) fn apply(server: &Server, slots: &mut Slots, reloaded: Reloaded) -> Vec<BoundListener> {
    let Reloaded { config, registry, directory } = reloaded;
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
