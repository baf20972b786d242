//! Refused logins: every one audited, none able to fill the disk.
//!
//! A refusal (wrong password, unknown user, ungranted database) is a `db.session.start`
//! TDB00W event. Rather than a recording, sidecar and signed manifest each, with fsyncs,
//! a listener writes them all into one recording per UTC day (and per process run): the same
//! append-only, chained, signed format, so `export`, `verify` and `ls --failed` read them.
//! A source address that keeps failing is then shut out for the rest of the minute: its new
//! connections are closed at accept, and one event says so.

use crate::util::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::audit::{EventBody, SessionContext, Status};
use crate::recording::{Recorder, SessionLog};

/// The window over which failed logins per source are counted.
const WINDOW: Duration = Duration::from_secs(60);
/// Source addresses tracked at once, per listener.
const MAX_TRACKED: usize = 100_000;

/// Failed logins per source address in the current window.
pub struct FailedLogins {
    limit: u32,
    by_source: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// What one more failure from a source means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Recorded as usual.
    Counted,
    /// This failure reached the limit: recorded, and the source is shut out for the rest of
    /// the window.
    ShutsOut,
}

impl FailedLogins {
    /// `limit` failures per source per minute; 0 turns the shutting out off.
    pub fn new(limit: u32) -> Self {
        FailedLogins { limit, by_source: Mutex::new(HashMap::new()) }
    }

    pub fn record(&self, source: IpAddr) -> Failure {
        if self.limit == 0 {
            return Failure::Counted;
        }
        let now = Instant::now();
        let mut map = lock(&self.by_source);
        if map.len() >= MAX_TRACKED && !map.contains_key(&source) {
            // Many sources at once: forget the ones whose window has passed, and past the
            // bound track no more (their refusals are still recorded), so that memory stays
            // bounded however many addresses an attacker has.
            map.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if map.len() >= MAX_TRACKED {
                return Failure::Counted;
            }
        }
        let entry = map.entry(source).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 == self.limit {
            Failure::ShutsOut
        } else {
            Failure::Counted
        }
    }

    /// Whether the source has used up its failures for the current window.
    pub fn shut_out(&self, source: IpAddr) -> bool {
        if self.limit == 0 {
            return false;
        }
        let map = lock(&self.by_source);
        map.get(&source).is_some_and(|(start, n)| *n >= self.limit && start.elapsed() < WINDOW)
    }
}

/// A listener's log of refused logins, one recording per UTC day.
pub struct RefusalLog {
    recorder: Arc<Recorder>,
    current: tokio::sync::Mutex<Option<(String, Arc<SessionLog>)>>,
}

/// One refused login, as the refused-logins log records it.
#[derive(Default)]
pub(super) struct RefusedLogin {
    pub user: String,
    pub db_user: String,
    pub db_name: String,
    pub user_agent: String,
    pub remote_addr: String,
    pub reason: String,
}

impl RefusalLog {
    pub fn new(recorder: Arc<Recorder>) -> Self {
        RefusalLog { recorder, current: tokio::sync::Mutex::new(None) }
    }

    /// Appends the refusal to today's log, opening it (and sealing yesterday's) as needed.
    /// `context` is the listener's context for a new log.
    pub(super) async fn record(&self, refusal: RefusedLogin, message: &str, context: impl FnOnce() -> SessionContext) {
        let now_ms = crate::audit::now_ms();
        let day = crate::audit::format_time(now_ms).get(..10).unwrap_or_default().to_string();
        let log = {
            let mut current = self.current.lock().await;
            match current.as_ref() {
                Some((open_day, log)) if *open_day == day => log.clone(),
                _ => {
                    let recorder = self.recorder.clone();
                    let ctx = context();
                    let opened = tokio::task::spawn_blocking(move || recorder.open(ctx)).await;
                    let log = match opened {
                        Ok(Ok(log)) => Arc::new(log),
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, user = %refusal.user, reason = %refusal.reason, "cannot open the refused-logins log; this refusal is only logged");
                            return;
                        }
                        Err(_) => return,
                    };
                    // Yesterday's log is sealed when its last handle goes.
                    *current = Some((day, log.clone()));
                    log
                }
            }
        };
        let body = EventBody::RefusedStart {
            status: Status::failed(refusal.reason, message),
            user: refusal.user,
            db_user: refusal.db_user,
            db_name: refusal.db_name,
            remote_addr: refusal.remote_addr,
            user_agent: refusal.user_agent,
        };
        if let Err(e) = log.append(&body, now_ms) {
            tracing::error!(error = %e, "cannot record a refused login");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_shut_out_at_the_limit_and_others_are_not() {
        let failed = FailedLogins::new(3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(failed.record(a), Failure::Counted);
        assert_eq!(failed.record(a), Failure::Counted);
        assert!(!failed.shut_out(a));
        assert_eq!(failed.record(a), Failure::ShutsOut);
        assert!(failed.shut_out(a));
        assert!(!failed.shut_out(b));
        assert!(!FailedLogins::new(0).shut_out(a), "0 turns shutting out off");
    }
}
