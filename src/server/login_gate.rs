//! Bounds on connections that have not logged in yet.
//!
//! Before login a connection is a stranger's: it costs a socket, a task and buffers, and
//! without limits a few thousand idle sockets (or ones that send a byte a second) would hold
//! the proxy's descriptors and memory forever. Each listener admits only so many at once,
//! and so many from one source address, and each must finish its login by a deadline.

use crate::util::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub timeout: Duration,
    pub max_pending: usize,
    pub max_pending_per_source: usize,
}

impl LoginLimits {
    pub fn from_config(server: &crate::config::ServerSection) -> Self {
        LoginLimits {
            timeout: server.login_timeout,
            max_pending: server.max_pending_logins,
            max_pending_per_source: server.max_pending_logins_per_source,
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One per listener.
pub struct LoginGate {
    limits: LoginLimits,
    counts: Arc<Mutex<Counts>>,
}

/// Why a connection was turned away at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateRefusal {
    ListenerFull,
    SourceFull,
    /// The source failed too many logins this minute.
    ShutOut,
}

impl LoginGate {
    pub fn new(limits: LoginLimits) -> Self {
        LoginGate { limits, counts: Arc::default() }
    }

    /// Admits a new connection from `source`, or says why not.
    pub fn admit(&self, source: IpAddr) -> Result<LoginSlot, GateRefusal> {
        let mut counts = lock(&self.counts);
        if counts.total >= self.limits.max_pending {
            return Err(GateRefusal::ListenerFull);
        }
        let from_source = counts.by_source.entry(source).or_insert(0);
        if *from_source >= self.limits.max_pending_per_source {
            return Err(GateRefusal::SourceFull);
        }
        *from_source += 1;
        counts.total += 1;
        Ok(LoginSlot {
            counts: Some(self.counts.clone()),
            source,
            deadline: Instant::now() + self.limits.timeout,
            timeout: self.limits.timeout,
            done: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn pending(&self) -> usize {
        lock(&self.counts).total
    }
}

/// A connection's place among those still logging in. Released when the engine says the
/// login is done, or when the connection ends.
pub struct LoginSlot {
    counts: Option<Arc<Mutex<Counts>>>,
    source: IpAddr,
    deadline: Instant,
    timeout: Duration,
    done: Arc<AtomicBool>,
}

impl LoginSlot {
    /// Runs `login` (in `span`) to its end or to the deadline, whichever comes first. At the
    /// deadline it is dropped, closing what it held, as PostgreSQL's authentication_timeout
    /// closes a login; none then.
    pub async fn before_deadline<F: std::future::Future>(&self, span: &tracing::Span, login: F) -> Option<F::Output> {
        match tokio::time::timeout_at(self.deadline, tracing::Instrument::instrument(login, span.clone())).await {
            Ok(done) => Some(done),
            Err(_) => {
                tracing::info!(parent: span, timeout = ?self.timeout, "login unfinished at the deadline; connection closed");
                None
            }
        }
    }

    /// Resolves at the deadline, for an engine whose login ends inside a longer exchange
    /// (DynamoDB's first signed request on a keep-alive connection).
    pub async fn deadline_passed(&self) {
        tokio::time::sleep_until(self.deadline).await;
    }

    /// The client is logged in: the connection no longer counts against the limits and the
    /// deadline no longer applies.
    pub fn logged_in(&mut self) {
        self.done.store(true, Ordering::Release);
        self.release();
    }

    /// A watch the server core keeps: resolves if the deadline passes (plus `grace`, for
    /// the engine to answer in its own protocol first) before the login is done.
    pub(super) fn expiry(&self, grace: Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
        let done = self.done.clone();
        let at = self.deadline + grace;
        async move {
            tokio::time::sleep_until(at).await;
            if done.load(Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
        }
    }

    fn release(&mut self) {
        let Some(counts) = self.counts.take() else { return };
        let mut counts = lock(&counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_per_listener_and_per_source_and_releases() {
        let gate = LoginGate::new(LoginLimits { timeout: Duration::from_secs(1), max_pending: 3, max_pending_per_source: 2 });
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = gate.admit(a).unwrap();
        let mut second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(GateRefusal::SourceFull));
        let _third = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(GateRefusal::ListenerFull));
        second.logged_in();
        assert_eq!(gate.pending(), 2);
        drop(first);
        assert_eq!(gate.pending(), 1);
        let _again = gate.admit(a).unwrap();
    }
}
