//! The server core: one listener per configured database, a protocol-keyed engine registry,
//! session bookkeeping, and graceful shutdown that seals every open recording.

mod accept;
pub mod admin;
mod engine;
mod login_gate;
pub mod proxy_protocol;
pub mod refusals;
mod reload;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use engine::{
    BoxFuture, Connection, ConnectionInfo, Engine, EngineRegistry, ListenerContext, Refusal, SessionIdentity, UpstreamPasswordError,
};
pub use login_gate::{GateRefusal, LoginGate, LoginLimits, LoginSlot};
pub use reload::{Reload, Reloaded};
pub use workers::WorkerPool;

use crate::config::Config;
use crate::recording::recover::{recover_unsealed, RecoveryOutcome};
use crate::recording::{Recorder, StoreError};
use crate::signing::Signer;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("database {database:?}: cannot listen on {addr}: {source}")]
    Bind { database: String, addr: String, source: std::io::Error },
    #[error("recording store: {0}")]
    Store(#[from] StoreError),
    #[error("recording signing key: {0}")]
    Signing(#[from] crate::signing::SigningError),
    #[error("users: {0}")]
    Directory(#[from] crate::auth::DirectoryError),
    #[error("cannot start connection worker threads: {0}")]
    Workers(std::io::Error),
}

/// A listener that is bound but not yet accepting.
struct BoundListener {
    listener: TcpListener,
    slot: Arc<accept::ListenerSlot>,
}

pub struct Server {
    listeners: Vec<BoundListener>,
    /// The configuration new connections get; replaced by each reload.
    config: Arc<Config>,
    login_secret: [u8; 32],
    /// Who may log in; replaced as a whole while sessions run (a reload).
    directory: Arc<crate::auth::SharedDirectory>,
    recorder: Arc<Recorder>,
    workers: Arc<WorkerPool>,
    shutdown_grace: Duration,
    shutdown: CancellationToken,
}

impl Server {
    /// Opens the recorder (recovering any recordings a crash left unsealed) and binds every
    /// database that has an engine. Bind errors surface here, before anything is accepted.
    pub async fn bind(config: Arc<Config>, registry: &EngineRegistry) -> Result<Server, ServerError> {
        // Secrets first: a user whose verifier cannot be read stops the start before anything
        // is recorded or bound.
        let directory = Arc::new(crate::auth::SharedDirectory::new(crate::auth::Directory::from_config(&config.users)?));
        let signer = Arc::new(Signer::load_or_generate(&config.recording.signing_key)?);
        let recorder_config = crate::recording::RecorderConfig::from(&config.recording);
        let store = crate::recording::RecordingStore::new(recorder_config.dir.clone());
        store.ensure_dir()?;
        for outcome in recover_unsealed(&store, &signer)? {
            match outcome {
                RecoveryOutcome::Recovered { sid, events, torn_bytes } => {
                    tracing::warn!(%sid, events, torn_bytes, "sealed a recording left open by a crash");
                }
                RecoveryOutcome::Damaged { sid, problem } => {
                    tracing::error!(%sid, %problem, "a recording is damaged; kept in place for review");
                }
            }
        }
        let login_secret = signer.derive_secret("login stand-ins");
        let recorder = Arc::new(Recorder::start(recorder_config, signer)?);
        let shutdown = CancellationToken::new();
        let mut listeners = Vec::new();
        for db in &config.databases {
            let protocol = db.protocol;
            let Some(engine) = registry.get(protocol) else {
                tracing::warn!(database = %db.name, %protocol, "this build has no engine for the protocol; database not served");
                continue;
            };
            let listener = bind_shared(&db.listen).map_err(|source| ServerError::Bind {
                database: db.name.clone(),
                addr: db.listen.clone(),
                source,
            })?;
            let context = Arc::new(ListenerContext::new(
                config.clone(),
                Arc::new(db.clone()),
                protocol,
                recorder.clone(),
                shutdown.clone(),
                login_secret,
                directory.clone(),
            ));
            listeners.push(BoundListener { listener, slot: Arc::new(accept::ListenerSlot::new(accept::Serving::new(engine, context))) });
        }
        let workers = Arc::new(WorkerPool::start(config.server.worker_count()).map_err(ServerError::Workers)?);
        tracing::debug!(workers = workers.len(), "connection workers started");
        Ok(Server {
            listeners,
            config: config.clone(),
            login_secret,
            directory,
            recorder,
            workers,
            shutdown_grace: config.server.shutdown_grace,
            shutdown,
        })
    }

    /// The address each served database actually listens on (useful with port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|l| l.listener.local_addr().ok().map(|a| (l.slot.serving().context.database().name.clone(), a)))
            .collect()
    }

    /// The identity directory every listener logs people in with: `replace` it to change who
    /// may log in without ending a session.
    pub fn directory(&self) -> Arc<crate::auth::SharedDirectory> {
        self.directory.clone()
    }

    pub fn recorder(&self) -> Arc<Recorder> {
        self.recorder.clone()
    }

    /// Accepts until `stop` resolves, then closes the listeners (a new process on the same
    /// ports takes the new connections), lets open sessions finish for up to the grace
    /// period, ends the rest, and seals every recording still open.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let (_keep, reloads) = tokio::sync::mpsc::channel::<Reload>(1);
        self.run_reloading(stop, reloads).await;
    }

    /// As `run`, applying each configuration that arrives on `reloads` (SIGHUP) to new
    /// connections, while open sessions go on with the one they started with.
    pub async fn run_reloading(mut self, stop: impl std::future::Future<Output = ()>, mut reloads: tokio::sync::mpsc::Receiver<Reload>) {
        let tracker = TaskTracker::new();
        let trimmer = tokio::spawn(crate::tasks::heap_trim::trim_when_quiet(self.workers.churn()));
        let stop_accepting = CancellationToken::new();
        let mut slots = reload::Slots::default();
        for bound in std::mem::take(&mut self.listeners) {
            slots.insert(&bound.slot);
            let tracker_inner = tracker.clone();
            tracker.spawn(accept::accept_loop(bound, tracker_inner, self.workers.clone(), stop_accepting.clone()));
        }
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                Some(reload) = reloads.recv() => match reload {
                    Reload::Apply(reloaded) => {
                        let config = reloaded.config.clone();
                        let file = config.source.display().to_string();
                        let detail = reload::summary(&reloaded);
                        for bound in reload::apply(&self, &mut slots, *reloaded) {
                            let tracker_inner = tracker.clone();
                            tracker.spawn(accept::accept_loop(bound, tracker_inner, self.workers.clone(), stop_accepting.clone()));
                        }
                        reload::audit(&self, &config, &file, true, detail).await;
                        self.config = config;
                    }
                    Reload::Reject { file, problems } => {
                        let config = self.config.clone();
                        reload::audit(&self, &config, &file, false, problems.join("\n")).await;
                    }
                },
            }
        }
        tracing::info!(grace = ?self.shutdown_grace, "stopping: no new connections; open sessions may finish within the grace period");
        stop_accepting.cancel();
        tracker.close();
        if tokio::time::timeout(self.shutdown_grace, tracker.wait()).await.is_err() {
            tracing::warn!(grace = ?self.shutdown_grace, "sessions still open after the grace period; ending them and sealing their recordings");
            self.shutdown.cancel();
            // Engines end their sessions (recording the end) at once; this bounds a stuck one.
            let _ = tokio::time::timeout(SESSION_END_BOUND, tracker.wait()).await;
        }
        self.shutdown.cancel();
        trimmer.abort();
        let recorder = self.recorder.clone();
        let _ = tokio::task::spawn_blocking(move || recorder.shutdown()).await;
        tracing::info!("all recordings sealed");
        // The accept loops are gone, so this is the last handle to the pool.
        if let Some(workers) = Arc::into_inner(self.workers) {
            let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
        }
    }
}

/// How long sessions ended at the grace period's close get to record their end.
const SESSION_END_BOUND: Duration = Duration::from_secs(5);

/// A listening socket other processes of this user may bind too (`SO_REUSEPORT`): a new
/// `dbtape serve` starts on the same addresses while the old one drains. The kernel only
/// lets sockets of the same user share a port.
pub fn bind_shared(listen: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = listen.parse().map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a socket address"))?;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, not when the future is
/// first polled, so a signal sent right after "dbtape ready" is never lost to the default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
