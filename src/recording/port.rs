//! The audit port: the one thing a protocol engine holds to report what happened. It stamps
//! time, hands events to the session's recording, and enforces the recording mode.

use std::future::Future;

use chrono::{DateTime, Utc};

use super::{AppendTicket, FsyncPolicy, RecordingError, RecordingMode, SessionLog};
use crate::audit::{now_ms, EventBody, EventNotes, SessionContext, Status, Truncation};

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// Strict mode: the event could not be recorded, so the session must stop forwarding.
    #[error("session recording failed, so the session was stopped: {0}")]
    RecordingFailed(#[from] RecordingError),
}

impl AuditError {
    /// Text safe to show the client in its own protocol's error message.
    pub fn client_message(&self) -> &'static str {
        Self::client_message_text()
    }

    /// As `client_message`, for an engine that no longer holds the error.
    pub fn client_message_text() -> &'static str {
        "dbtape: the audit recording for this session cannot be written, so the session has been stopped"
    }
}

pub struct AuditPort {
    log: SessionLog,
}

impl AuditPort {
    pub fn new(log: SessionLog) -> Self {
        AuditPort { log }
    }

    pub fn context(&self) -> &SessionContext {
        self.log.context()
    }

    pub fn sid(&self) -> &str {
        self.log.sid()
    }

    pub fn session_start(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(self.log.start_ms()).unwrap_or_else(Utc::now)
    }

    /// Records an event stamped now; returns its `ei` (none if best_effort dropped it).
    // This and the next two are plain functions that hand back `emit_captured_at`'s future:
    // as async fns each would nest that future inside one of its own, holding the event twice,
    // and callers keep these futures in their session's state.
    pub fn emit(&self, body: EventBody) -> impl Future<Output = Result<Option<u64>, AuditError>> + '_ {
        self.emit_at(body, now_ms())
    }

    /// Records an event. Strict mode returns an error when it cannot be recorded; with the
    /// `always` fsync policy it also waits until the event is on disk.
    pub fn emit_at(&self, body: EventBody, time_ms: i64) -> impl Future<Output = Result<Option<u64>, AuditError>> + '_ {
        self.emit_redacted_at(body, false, time_ms)
    }

    /// As `emit_at`, for an event whose captured text the engine has already stripped of
    /// secrets (`redacted`), which the event then says.
    pub fn emit_redacted_at(
        &self,
        body: EventBody,
        redacted: bool,
        time_ms: i64,
    ) -> impl Future<Output = Result<Option<u64>, AuditError>> + '_ {
        self.emit_captured_at(body, Vec::new(), redacted, time_ms)
    }

    /// As `emit_redacted_at`, for text the engine already cut while capturing it (`cut`
    /// names each cut field with the length and SHA-256 of its whole text).
    pub async fn emit_captured_at(
        &self,
        body: EventBody,
        cut: Vec<Truncation>,
        redacted: bool,
        time_ms: i64,
    ) -> Result<Option<u64>, AuditError> {
        let strict = self.log.mode() == RecordingMode::Strict;
        if strict && self.log.backlog_full() {
            // The disk is behind: the session waits (and so its client) rather than queue
            // without bound.
            // Boxed here and below: these waits are rare, and inline they would size every
            // emit future.
            Box::pin(self.log.wait_for_room()).await;
        }
        let ticket = self.append(body, cut, redacted, time_ms)?;
        if let Some(ticket) = ticket {
            if strict && self.log.fsync_policy() == FsyncPolicy::Always {
                Box::pin(self.log.wait_durable(ticket)).await?;
            }
        }
        Ok(ticket.map(|t| t.ei))
    }

    /// Records an event now if that needs no waiting (no full backlog in strict mode, no
    /// per-event fsync); otherwise gives the event back for `emit_at`. For callers that are
    /// not async, such as a response body finishing as it is polled.
    pub fn emit_now_or_return(&self, body: EventBody, time_ms: i64) -> Result<Result<Option<u64>, AuditError>, Box<EventBody>> {
        self.emit_redacted_now_or_return(body, false, time_ms)
    }

    /// As `emit_now_or_return`, for an event stripped of secrets as `emit_redacted_at` says.
    /// A relay emits this way and awaits `emit_redacted_at` only for an event given back, so
    /// that its own future, held for the session's life, does not hold an emit future.
    pub fn emit_redacted_now_or_return(
        &self,
        body: EventBody,
        redacted: bool,
        time_ms: i64,
    ) -> Result<Result<Option<u64>, AuditError>, Box<EventBody>> {
        let strict = self.log.mode() == RecordingMode::Strict;
        if strict && (self.log.backlog_full() || self.log.fsync_policy() == FsyncPolicy::Always) {
            return Err(Box::new(body));
        }
        Ok(self.append(body, Vec::new(), redacted, time_ms).map(|ticket| ticket.map(|t| t.ei)))
    }

    /// Caps the event's captured text and appends it. In best_effort mode a failure is
    /// logged and the event counted as not recorded (`None`).
    fn append(&self, mut body: EventBody, cut: Vec<Truncation>, redacted: bool, time_ms: i64) -> Result<Option<AppendTicket>, AuditError> {
        let mut truncated = cut;
        truncated.extend(body.cap_captured_text(self.log.max_query_bytes()));
        let notes = (redacted || !truncated.is_empty()).then_some(EventNotes { truncated, redacted });
        match self.log.append_noted(&body, notes.as_ref(), time_ms) {
            Ok(ticket) => Ok(Some(ticket)),
            Err(e) if self.log.mode() == RecordingMode::Strict => Err(e.into()),
            Err(e) => {
                tracing::warn!(sid = %self.sid(), error = %e, "best_effort: event not recorded");
                Ok(None)
            }
        }
    }

    /// The session began (TDB00I): the port to relay with. `postgres_pid` is the PostgreSQL
    /// backend's, where there is one. If even that cannot be recorded (strict mode), the
    /// recording is sealed here and the engine refuses the session with the error.
    pub async fn begin(self, postgres_pid: Option<u32>) -> Result<AuditPort, AuditError> {
        self.begin_on(postgres_pid, None).await
    }

    /// As `begin`, saying whether a pooled upstream connection was `reused`.
    pub async fn begin_on(self, postgres_pid: Option<u32>, upstream_reused: Option<bool>) -> Result<AuditPort, AuditError> {
        match self.emit(EventBody::SessionStart { status: Status::ok(), postgres_pid, upstream_reused }).await {
            Ok(_) => Ok(self),
            Err(e) => {
                self.seal().await;
                Err(e)
            }
        }
    }

    /// The session could not begin after its recording opened (TDB00W), and the recording is
    /// sealed. `error` is why (an upstream's refusal, say); `message` the kind of failure.
    pub async fn start_failed(self, error: String, message: &str) {
        let _ =
            self.emit(EventBody::SessionStart { status: Status::failed(error, message), postgres_pid: None, upstream_reused: None }).await;
        self.seal().await;
    }

    /// The largest captured text an event keeps (`recording.max_query_bytes`).
    pub fn max_query_bytes(&self) -> usize {
        self.log.max_query_bytes()
    }

    /// Seals the recording without an end event (a session that never started).
    pub async fn seal(self) {
        if let Err(e) = self.log.close().await {
            tracing::error!(error = %e, "sealing a refused session's recording failed");
        }
    }

    /// Records the end event and seals the recording.
    pub async fn end(self) -> Result<(), AuditError> {
        self.end_then(async {}).await
    }

    /// Records the end event, then runs `meanwhile` while the recording is sealed: sealing a
    /// short session waits for the writer's batch tick, which whatever the session still
    /// holds (a pooled upstream connection) should not.
    pub async fn end_then(self, meanwhile: impl std::future::Future<Output = ()>) -> Result<(), AuditError> {
        let stop = Utc::now();
        let emitted =
            self.emit_at(EventBody::SessionEnd { session_start: self.session_start(), session_stop: stop }, stop.timestamp_millis()).await;
        meanwhile.await;
        let sealed = self.log.close().await;
        emitted.map(|_| ())?;
        match sealed {
            Err(e) if matches!(e, RecordingError::Failed { .. }) => Err(e.into()),
            _ => Ok(()),
        }
    }
}
