//! The optional upstream session pool (`[databases.pool]`, pgbouncer's session mode): a
//! client session that ends at rest gives its upstream connection back, reset, and the next
//! session for the same db_user, database and startup parameters takes it instead of paying
//! for a new TCP, TLS and SCRAM login. A connection serves one client session at a time.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::codec::{message, read_message};
use crate::config::PoolConfig;
use crate::proxy::stream::Stream;
use crate::util::sync::lock;

/// How long a reset may take before the connection is given up.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);

/// An upstream connection after its login, and what that login told the client.
pub(super) struct Backend {
    pub(super) stream: Stream,
    /// The real BackendKeyData (pid, secret), for cancel requests.
    pub(super) key: Option<(i32, Vec<u8>)>,
    /// ParameterStatus as the server last reported it, replayed to each new client.
    pub(super) parameters: Vec<(String, String)>,
}

impl Backend {
    pub(super) fn pid(&self) -> Option<u32> {
        self.key.as_ref().map(|(pid, _)| *pid as u32)
    }

    fn set_parameter(&mut self, name: String, value: String) {
        match self.parameters.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.parameters.push((name, value)),
        }
    }
}

/// A client session's hold on one of the pool's `max_size` connections.
pub(super) struct Lease {
    permit: OwnedSemaphorePermit,
    params: Vec<(String, String)>,
}

struct Idle {
    params: Vec<(String, String)>,
    backend: Backend,
    permit: OwnedSemaphorePermit,
    since: Instant,
}

pub struct SessionPool {
    settings: PoolConfig,
    permits: Arc<Semaphore>,
    /// Most recently returned last, so a busy key reuses its warmest connection.
    idle: Mutex<Vec<Idle>>,
    /// Wakes sessions waiting for a slot when a connection is given back.
    returned: tokio::sync::Notify,
    sweeping: std::sync::atomic::AtomicBool,
}

impl SessionPool {
    pub fn new(settings: PoolConfig) -> Arc<Self> {
        let permits = Arc::new(Semaphore::new(settings.max_size));
        Arc::new(SessionPool {
            settings,
            permits,
            idle: Mutex::new(Vec::new()),
            returned: Default::default(),
            sweeping: Default::default(),
        })
    }

    /// A connection for these upstream startup parameters: an idle one that is still quiet
    /// (with `Some`), or a free slot to open one in. Waits while every slot is in use;
    /// an idle connection of other parameters gives its slot up first.
    pub(super) async fn take(self: &Arc<Self>, params: &[(String, String)]) -> Result<(Lease, Option<Backend>), PoolClosed> {
        let key = sorted(params);
        loop {
            // Registered before looking, so a connection given back meanwhile is not missed.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            let found = {
                let mut idle = lock(&self.idle);
                self.expire(&mut idle);
                idle.iter().rposition(|i| i.params == key).map(|at| idle.remove(at))
            };
            if let Some(mut entry) = found {
                if quiet(&mut entry.backend.stream).await {
                    return Ok((Lease { permit: entry.permit, params: key }, Some(entry.backend)));
                }
                // Closed by the server (a restart, pg_terminate_backend) or talking out of turn.
                tracing::info!(pid = ?entry.backend.pid(), "a pooled upstream connection was not idle; closed");
                retire(entry.backend);
                continue;
            }
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return Ok((Lease { permit, params: key }, None));
            }
            let oldest = {
                let mut idle = lock(&self.idle);
                (!idle.is_empty()).then(|| idle.remove(0))
            };
            if let Some(other) = oldest {
                // Every slot is taken and one sits idle for other parameters: free it.
                retire(other.backend);
                drop(other.permit);
                continue;
            }
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => {
                    return Ok((Lease { permit: permit.map_err(|_| PoolClosed)?, params: key }, None));
                }
                _ = returned => {}
            }
        }
    }

    /// Takes a connection back from a session that ended at rest: resets it and keeps it,
    /// or, when the reset fails, closes it.
    pub(super) async fn give_back(self: &Arc<Self>, lease: Lease, mut backend: Backend) {
        let pid = backend.pid();
        match tokio::time::timeout(RESET_TIMEOUT, reset(&mut backend, &self.settings.reset)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                tracing::warn!(?pid, %reason, "resetting a pooled upstream connection failed; closed");
                return retire(backend);
            }
            Err(_) => {
                tracing::warn!(?pid, "resetting a pooled upstream connection timed out; closed");
                return retire(backend);
            }
        }
        let Lease { permit, params } = lease;
        lock(&self.idle).push(Idle { params, backend, permit, since: Instant::now() });
        self.returned.notify_waiters();
        self.start_sweeping();
    }

    fn expire(&self, idle: &mut Vec<Idle>) {
        let timeout = self.settings.idle_timeout;
        let (keep, old): (Vec<Idle>, Vec<Idle>) = std::mem::take(idle).into_iter().partition(|i| i.since.elapsed() < timeout);
        *idle = keep;
        for entry in old {
            retire(entry.backend);
        }
    }

    /// Idle connections are closed on time even when no client comes: a background task
    /// that ends with the pool.
    fn start_sweeping(self: &Arc<Self>) {
        if self.sweeping.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let pool: Weak<SessionPool> = Arc::downgrade(self);
        let every = (self.settings.idle_timeout / 4).max(Duration::from_millis(250));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut idle = lock(&pool.idle);
                pool.expire(&mut idle);
            }
        });
    }
}

impl Drop for SessionPool {
    fn drop(&mut self) {
        for entry in std::mem::take(&mut *lock(&self.idle)) {
            retire(entry.backend);
        }
    }
}

/// Every slot of the pool is gone (it is being dropped).
#[derive(Debug)]
pub(super) struct PoolClosed;

fn sorted(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut key = params.to_vec();
    key.sort();
    key
}

/// Whether the connection has nothing to say: an idle backend sends nothing unasked, so
/// bytes or an end of stream mean it cannot be handed out.
async fn quiet(stream: &mut Stream) -> bool {
    let mut probe = [0u8; 1];
    let mut read = std::pin::pin!(stream.read(&mut probe));
    // Polled once, then dropped. Not with a timeout of zero: tokio's timer rounds that up to
    // its next millisecond tick, which every pooled login would wait for.
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(read.as_mut(), cx).is_pending())).await
}

async fn reset(backend: &mut Backend, statement: &str) -> Result<(), String> {
    let mut body = statement.as_bytes().to_vec();
    body.push(0);
    backend.stream.write_all(&message(b'Q', &body)).await.map_err(|e| e.to_string())?;
    backend.stream.flush().await.map_err(|e| e.to_string())?;
    let mut failure = None;
    loop {
        let (ty, body) = read_message(&mut backend.stream, 1 << 20).await.map_err(|e| e.to_string())?;
        match ty {
            b'E' => failure = Some(super::messages::error_text(&body)),
            b'S' => {
                if let Some((name, value)) = parameter_status(&body) {
                    backend.set_parameter(name, value);
                }
            }
            b'Z' => {
                return match (failure, body.first()) {
                    (Some(error), _) => Err(error),
                    (None, Some(b'I')) => Ok(()),
                    (None, status) => Err(format!("still in a transaction after the reset (status {:?})", status.map(|s| *s as char))),
                };
            }
            // CommandComplete, notices, notifications a LISTEN left queued: nobody's now.
            _ => {}
        }
    }
}

/// A ParameterStatus message's name and value.
pub(super) fn parameter_status(body: &[u8]) -> Option<(String, String)> {
    let mut fields = body.split(|b| *b == 0).map(|f| String::from_utf8_lossy(f).into_owned());
    Some((fields.next()?, fields.next()?))
}

/// Closes a connection politely (Terminate), off the caller's path.
fn retire(backend: Backend) {
    let mut stream = backend.stream;
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    handle.spawn(async move {
        let close = async {
            let _ = stream.write_all(&message(b'X', &[])).await;
            let _ = stream.shutdown().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_matched_whatever_their_order() {
        let a = sorted(&[("user".into(), "app".into()), ("application_name".into(), "psql".into())]);
        let b = sorted(&[("application_name".into(), "psql".into()), ("user".into(), "app".into())]);
        assert_eq!(a, b);
        assert_ne!(a, sorted(&[("user".into(), "app".into()), ("application_name".into(), "pgbench".into())]));
    }
}
