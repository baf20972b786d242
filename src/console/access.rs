//! "Who looked at this recording": every view, search and export a reviewer makes in the
//! console becomes a `session.recording.access` event in a reviewer-access recording, one
//! per login, in the same signed, chained format as a database session. It is written to the
//! recordings folder by default, so `ls`, `verify`, `export`, uploads and the lake cover it.

use std::sync::Arc;

use super::ConsoleError;
use crate::audit::{now_ms, ConnectionMeta, DatabaseMeta, EventBody, Protocol, ServerMeta, SessionContext, UserMeta};
use crate::recording::writer::SessionLog;
use crate::recording::{Recorder, RecorderConfig};
use crate::signing::Signer;

/// The `db_service` of reviewer-access recordings.
pub const ACCESS_SERVICE: &str = "review-console";

pub struct AccessLog {
    recorder: Recorder,
    cluster_name: String,
    listen: String,
    /// One recording for every refused login, opened at the first: a recording each would
    /// let a stranger fill the disk with failed logins.
    refused: std::sync::Mutex<Option<SessionLog>>,
}

/// Failed logins one address may make in a minute before the console stops checking its
/// passwords (each check is a PBKDF2 derivation) and answers 429.
pub const FAILED_LOGINS_PER_MINUTE: u32 = 10;

/// Failed logins per client address, in one-minute windows.
#[derive(Default)]
pub struct LoginLimiter {
    failures: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, i64)>>,
}

impl LoginLimiter {
    /// Whether `ip` has used up its failed logins for this minute.
    pub fn blocked(&self, ip: std::net::IpAddr, now_ms: i64) -> bool {
        let Ok(failures) = self.failures.lock() else { return true };
        failures.get(&ip).is_some_and(|(count, since)| now_ms - since < 60_000 && *count >= FAILED_LOGINS_PER_MINUTE)
    }

    pub fn failed(&self, ip: std::net::IpAddr, now_ms: i64) {
        let Ok(mut failures) = self.failures.lock() else { return };
        // Old windows go, so strangers cannot grow the table without bound.
        if failures.len() > 100_000 {
            failures.retain(|_, (_, since)| now_ms - *since < 60_000);
        }
        let entry = failures.entry(ip).or_insert((0, now_ms));
        if now_ms - entry.1 >= 60_000 {
            *entry = (0, now_ms);
        }
        entry.0 += 1;
    }
}

impl AccessLog {
    pub fn start(dir: &std::path::Path, signer: Arc<Signer>, cluster_name: String, listen: String) -> Result<AccessLog, ConsoleError> {
        let recorder = Recorder::start(RecorderConfig::new(dir), signer).map_err(|e| ConsoleError::Config(e.to_string()))?;
        Ok(AccessLog { recorder, cluster_name, listen, refused: std::sync::Mutex::new(None) })
    }

    /// Opens the reviewer-access recording of one login.
    pub fn open(&self, reviewer: &str, remote_addr: &str, user_agent: &str) -> Result<SessionLog, ConsoleError> {
        let ctx = SessionContext {
            sid: uuid::Uuid::new_v4().to_string(),
            cluster_name: self.cluster_name.clone(),
            user: UserMeta { user: reviewer.to_string(), aws_role_arn: String::new() },
            database: DatabaseMeta {
                service: ACCESS_SERVICE.into(),
                protocol: Protocol::Review,
                uri: format!("https://{}", self.listen),
                name: String::new(),
                user: String::new(),
                labels: Default::default(),
                aws_region: String::new(),
                db_type: "review".into(),
            },
            server: ServerMeta::default(),
            connection: ConnectionMeta { local_addr: self.listen.clone(), remote_addr: remote_addr.into(), user_agent: user_agent.into() },
        };
        self.recorder.open(ctx).map_err(|e| ConsoleError::Access(e.to_string()))
    }

    /// A failed login, in the console's one refused-logins recording (`user` there is
    /// empty; the name tried is in the event's `message`, with the address it came from).
    pub fn refused(&self, name: &str, remote_addr: &str, user_agent: &str) -> Result<(), ConsoleError> {
        self.refused_because(name, remote_addr, user_agent, "wrong name or password")
    }

    /// A refused login and why (`why` is kept as written; the name tried is quoted).
    pub fn refused_because(&self, name: &str, remote_addr: &str, user_agent: &str, why: &str) -> Result<(), ConsoleError> {
        let mut refused = self.refused.lock().map_err(|_| ConsoleError::Access("refused-logins recording".into()))?;
        if refused.is_none() {
            *refused = Some(self.open("", &self.listen, "")?);
        }
        let log = refused.as_ref().ok_or_else(|| ConsoleError::Access("refused-logins recording".into()))?;
        let name = serde_json::to_string(name).unwrap_or_default();
        let agent = serde_json::to_string(user_agent).unwrap_or_default();
        record(log, "login", "", &format!("{why} for {name} from {remote_addr} ({agent})"), false)
    }

    /// Seals the refused-logins recording, at shutdown.
    pub async fn close(&self) {
        let log = self.refused.lock().ok().and_then(|mut r| r.take());
        if let Some(log) = log {
            let _ = log.close().await;
        }
    }
}

/// Writes one access event and waits for nothing: the recorder's own durability applies.
pub fn record(log: &SessionLog, action: &str, session_id: &str, detail: &str, success: bool) -> Result<(), ConsoleError> {
    let body = EventBody::RecordingAccess { action: action.into(), session_id: session_id.into(), detail: detail.into(), success };
    log.append(&body, now_ms()).map(|_| ()).map_err(|e| ConsoleError::Access(e.to_string()))
}
