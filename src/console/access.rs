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
}

impl AccessLog {
    pub fn start(dir: &std::path::Path, signer: Arc<Signer>, cluster_name: String, listen: String) -> Result<AccessLog, ConsoleError> {
        let recorder = Recorder::start(RecorderConfig::new(dir), signer).map_err(|e| ConsoleError::Config(e.to_string()))?;
        Ok(AccessLog { recorder, cluster_name, listen })
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

    /// A failed login: a recording of its own with the one refused attempt, sealed at once.
    pub async fn refused(&self, name: &str, remote_addr: &str, user_agent: &str) -> Result<(), ConsoleError> {
        let log = self.open(name, remote_addr, user_agent)?;
        record(&log, "login", "", "wrong name or password", false)?;
        log.close().await.map_err(|e| ConsoleError::Access(e.to_string()))
    }
}

/// Writes one access event and waits for nothing: the recorder's own durability applies.
pub fn record(log: &SessionLog, action: &str, session_id: &str, detail: &str, success: bool) -> Result<(), ConsoleError> {
    let body = EventBody::RecordingAccess { action: action.into(), session_id: session_id.into(), detail: detail.into(), success };
    log.append(&body, now_ms()).map(|_| ()).map_err(|e| ConsoleError::Access(e.to_string()))
}
