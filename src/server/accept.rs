//! Accepting connections: who is let in before any protocol byte is read (per-source
//! limits, sources shut out for failed logins, the PROXY protocol header behind a load
//! balancer), and the hand-off to a worker thread that runs the engine.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::proxy_protocol::{read_header, Header, ProxyProtocol};
use super::{BoundListener, Connection, ConnectionInfo, Engine, GateRefusal, ListenerContext, LoginGate, LoginSlot, Refusal, WorkerPool};
use crate::util::cidr::Cidr;
use crate::util::sync::lock;

/// How long after the login deadline the server core closes a connection its engine has
/// not ended.
const LOGIN_DEADLINE_GRACE: Duration = Duration::from_secs(1);
/// A balancer sends its header at once; a connection that has not within this is refused.
const PROXY_HEADER_DEADLINE: Duration = Duration::from_secs(5);

/// The listener's PROXY protocol settings, when it has them.
struct ProxyPolicy {
    version: ProxyProtocol,
    trusted: Vec<Cidr>,
}

impl ProxyPolicy {
    fn of(context: &ListenerContext) -> Option<ProxyPolicy> {
        let db = context.database();
        (db.proxy_protocol != ProxyProtocol::Off).then(|| ProxyPolicy {
            version: db.proxy_protocol,
            // Validation refused any block that does not parse.
            trusted: db.trusted_proxies.iter().filter_map(|b| b.parse().ok()).collect(),
        })
    }

    fn trusts(&self, peer: SocketAddr) -> bool {
        self.trusted.iter().any(|block| block.contains(peer.ip()))
    }
}

/// What a listener serves new connections with; replaced whole by a reload, while the
/// sessions already open keep the one they started with.
#[derive(Clone)]
pub(super) struct Serving {
    pub engine: Arc<dyn Engine>,
    pub context: Arc<ListenerContext>,
    gate: Arc<LoginGate>,
    proxy: Option<Arc<ProxyPolicy>>,
}

impl Serving {
    pub fn new(engine: Arc<dyn Engine>, context: Arc<ListenerContext>) -> Serving {
        let gate = Arc::new(LoginGate::new(super::LoginLimits::from_config(&context.config().server)));
        let proxy = ProxyPolicy::of(&context).map(Arc::new);
        Serving { engine, context, gate, proxy }
    }

    /// A login slot for a connection from `peer` (the client's own address, the balancer's
    /// header read), or `None` if it is to be closed unaudited.
    fn admit(&self, peer: SocketAddr, turned_away: &Mutex<TurnedAwayLog>) -> Option<LoginSlot> {
        let database = &self.context.database().name;
        if self.context.failed_logins().shut_out(peer.ip()) {
            lock(turned_away).note(database, peer, GateRefusal::ShutOut);
            return None;
        }
        match self.gate.admit(peer.ip()) {
            Ok(slot) => Some(slot),
            Err(why) => {
                lock(turned_away).note(database, peer, why);
                None
            }
        }
    }
}

/// One listener's current `Serving`, and the token that stops it accepting (a reload that
/// removes or moves it).
pub(super) struct ListenerSlot {
    current: std::sync::RwLock<Serving>,
    pub stop: CancellationToken,
}

impl ListenerSlot {
    pub fn new(serving: Serving) -> ListenerSlot {
        ListenerSlot { current: std::sync::RwLock::new(serving), stop: CancellationToken::new() }
    }

    pub fn serving(&self) -> Serving {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn replace(&self, serving: Serving) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = serving;
    }
}

pub(super) async fn accept_loop(bound: BoundListener, tracker: TaskTracker, workers: Arc<WorkerPool>, stop_accepting: CancellationToken) {
    let BoundListener { listener, slot } = bound;
    let turned_away = Arc::new(Mutex::new(TurnedAwayLog::default()));
    let first = slot.serving();
    let database = first.context.database().name.clone();
    tracing::info!(database = %database, addr = ?listener.local_addr().ok(), protocol = %first.context.protocol(), proxy_protocol = ?first.context.database().proxy_protocol, "listening");
    drop(first);
    loop {
        let accepted = tokio::select! {
            _ = stop_accepting.cancelled() => break,
            _ = slot.stop.cancelled() => {
                tracing::info!(database = %database, "listener closed by a reload; its open sessions continue");
                break;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually EMFILE; back off instead of spinning.
                tracing::error!(database = %database, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let local = stream.local_addr().ok();
        let serving = slot.serving();
        let context = &serving.context;
        // Without a balancer in front, the limits apply here, before a worker is involved.
        // Behind one, the client's address is only known from its header.
        let login = match &serving.proxy {
            None => match serving.admit(peer, &turned_away) {
                Some(slot) => Some(slot),
                None => continue,
            },
            Some(policy) if !policy.trusts(peer) => {
                // Nothing is read from it: a stranger must not name a client address. Each
                // is audited and counted, so a flood is shut out like failed logins are.
                if context.failed_logins().shut_out(peer.ip()) {
                    lock(&turned_away).note(&database, peer, GateRefusal::ShutOut);
                    continue;
                }
                let (context, conn) = (context.clone(), ConnectionInfo { peer, local });
                tracker.spawn(async move {
                    let reason = format!("a connection from {} sent no PROXY header from a trusted address (trusted_proxies)", peer.ip());
                    context.refuse(Refusal::of_user("", reason), conn).await;
                });
                continue;
            }
            Some(_) => None,
        };
        let _ = stream.set_nodelay(true);
        // The socket moves to a worker's reactor, so it leaves this one first.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(database = %database, error = %e, "cannot hand an accepted connection to a worker");
                continue;
            }
        };
        let (database, turned_away) = (database.clone(), turned_away.clone());
        let token = tracker.token();
        workers.spawn(move || async move {
            let _token = token;
            let mut stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(database = %database, error = %e, "a worker could not take an accepted connection");
                    return;
                }
            };
            let (peer, login) = match (login, &serving.proxy) {
                (Some(login), _) => (peer, login),
                (None, Some(policy)) => {
                    let Some(client) = proxied_client(&mut stream, policy.version, peer, local, &serving.context).await else { return };
                    match serving.admit(client, &turned_away) {
                        Some(login) => (client, login),
                        None => return,
                    }
                }
                (None, None) => return,
            };
            let span = tracing::info_span!("conn", database = %database, peer = %peer);
            // The engine ends a late login itself at the deadline (PostgreSQL closes it); this
            // is the backstop for one that does not.
            let expired = login.expiry(LOGIN_DEADLINE_GRACE);
            tokio::select! {
                () = serving.engine.handle(Connection { stream, peer, local, span: span.clone(), login }, serving.context.clone()) => {}
                () = expired => tracing::info!(parent: &span, "login deadline passed; connection closed"),
            }
        });
    }
}

/// The client a trusted balancer's header names (or the balancer itself, for its own
/// health checks). A header that is missing, malformed or late is refused and audited.
async fn proxied_client(
    stream: &mut tokio::net::TcpStream,
    version: ProxyProtocol,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    context: &ListenerContext,
) -> Option<SocketAddr> {
    let problem = match tokio::time::timeout(PROXY_HEADER_DEADLINE, read_header(stream, version)).await {
        Ok(Ok(Header::Proxied { source, .. })) => return Some(source),
        Ok(Ok(Header::Local)) => return Some(peer),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no PROXY header within {} s", PROXY_HEADER_DEADLINE.as_secs()),
    };
    let reason = format!("PROXY protocol from {}: {problem}", peer.ip());
    tracing::warn!(database = %context.database().name, %peer, %reason, "connection refused");
    context.refuse_uncounted(Refusal::of_user("", reason), ConnectionInfo { peer, local }).await;
    None
}

/// Logs connections turned away at accept at most once a second per listener, with a
/// count: a flood must not become a flood of log lines.
#[derive(Default)]
struct TurnedAwayLog {
    since_last: u64,
    last: Option<std::time::Instant>,
}

impl TurnedAwayLog {
    fn note(&mut self, database: &str, peer: SocketAddr, why: GateRefusal) {
        self.since_last += 1;
        if self.last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        let reason = match why {
            GateRefusal::ListenerFull => "server.max_pending_logins",
            GateRefusal::SourceFull => "server.max_pending_logins_per_source",
            GateRefusal::ShutOut => "server.max_failed_logins_per_source",
        };
        tracing::warn!(database = %database, %peer, limit = reason, refused = self.since_last, "too many connections still logging in; closing new ones");
        self.since_last = 0;
        self.last = Some(std::time::Instant::now());
    }
}
