//! Group-commit writer: the session-log API that protocols' audit ports append to.
//!
//! Sessions append events to their own in-memory buffer, serialised on the caller's thread
//! (`buffer`). One writer thread (`thread`) compresses the frames cut from those buffers,
//! writes them for every session and fsyncs them together, per the policy: `always` before
//! any waiter is released, `batch` once per interval, `never` only at seal; a failed write is
//! rolled back to the last whole frame. `seal` writes the trailer and the signed manifest.

mod buffer;
mod seal;
mod state;
mod thread;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::format::{encode_frame, FrameKind, FrameSpec, SessionHeader, FILE_MAGIC};
use super::store::{RecordingStore, StoreError};
use crate::audit::{EventBody, EventNotes, SessionContext};
use crate::signing::Signer;
use crate::util::sync::lock;
use buffer::{note_loss, push_event, take_frame};
use state::{Backlog, Control, FileIo, Inner, SessionState, Shared, Sink, Stats};
use thread::writer_loop;

pub use crate::config::{FsyncPolicy, RecordingMode, MAX_FRAME_TARGET_BYTES, MAX_QUERY_BYTES_LIMIT};

#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub dir: PathBuf,
    pub mode: RecordingMode,
    pub fsync: FsyncPolicy,
    /// How often `batch` (and `never`) write out partly filled frames; `batch` fsyncs then too.
    pub batch_interval: Duration,
    /// Uncompressed bytes at which a frame is cut.
    pub frame_target_bytes: usize,
    pub zstd_level: i32,
    /// Captured text (queries, parameters, error text) one event may carry; more is stored
    /// cut, with the full length and SHA-256.
    pub max_query_bytes: usize,
    /// Bytes of events appended but not yet written, over all sessions, before strict
    /// sessions wait and best_effort sessions drop (and later record a gap).
    pub max_backlog_bytes: usize,
    /// Pack short sessions into segments once sealed; None keeps every session in its own files.
    pub segments: Option<crate::recording::segment::SegmentSettings>,
}

/// No one event takes more than this many bytes of JSON. Frames are cut once they reach
/// their target (at most `MAX_FRAME_TARGET_BYTES`), so a frame stays under what every reader
/// accepts, whatever a client sends.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
const _: () = assert!(MAX_FRAME_TARGET_BYTES + MAX_EVENT_BYTES < super::format::MAX_FRAME_BYTES as usize);

impl From<&crate::config::RecordingSection> for RecorderConfig {
    fn from(section: &crate::config::RecordingSection) -> Self {
        RecorderConfig {
            dir: section.dir.clone(),
            mode: section.mode,
            fsync: section.fsync,
            batch_interval: section.batch_interval,
            frame_target_bytes: section.frame_target_bytes,
            zstd_level: section.zstd_level,
            max_query_bytes: section.max_query_bytes,
            max_backlog_bytes: section.max_backlog_bytes,
            segments: section.segments.clone(),
        }
    }
}

impl RecorderConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RecorderConfig {
            dir: dir.into(),
            mode: RecordingMode::Strict,
            fsync: FsyncPolicy::Batch,
            batch_interval: Duration::from_millis(200),
            frame_target_bytes: 256 * 1024,
            zstd_level: 1,
            max_query_bytes: 1024 * 1024,
            max_backlog_bytes: 256 * 1024 * 1024,
            segments: None,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordingError {
    #[error("recording {sid} failed: {reason}")]
    Failed { sid: String, reason: Arc<str> },
    #[error("recording {0} is already closed")]
    Closed(String),
    #[error("the recorder has shut down")]
    ShutDown,
    #[error("cannot create recording {path}: {reason}")]
    Create { path: PathBuf, reason: String },
    #[error("{0}")]
    LowDisk(String),
}

impl RecordingError {
    /// What the refused client is told: why, without paths or sizes of the proxy's disk.
    pub fn client_reason(&self) -> &'static str {
        match self {
            RecordingError::LowDisk(_) => "the session cannot be recorded: the recording disk is nearly full",
            _ => "the session cannot be recorded",
        }
    }
}

/// Where a session's durability stands, published to waiters.
#[derive(Debug, Clone, Default)]
pub struct Durability {
    /// Every event with `ei` up to and including this is on disk per the fsync policy.
    pub through: Option<u64>,
    pub failed: Option<Arc<str>>,
    pub sealed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendTicket {
    pub ei: u64,
}

/// One per process: owns the writer thread.
pub struct Recorder {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Recorder {
    pub fn start(config: RecorderConfig, signer: Arc<Signer>) -> Result<Self, StoreError> {
        let store = RecordingStore::new(config.dir.clone());
        store.ensure_dir()?;
        let segments = config.segments.clone().map(|settings| crate::recording::segment::SegmentWriter::new(&config.dir, settings));
        let shared = Arc::new(Shared {
            backlog: Arc::new(Backlog {
                queued: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                limit: config.max_backlog_bytes,
                room: tokio::sync::Notify::new(),
            }),
            config,
            store,
            signer,
            control: Mutex::new(Control { sessions: Vec::new(), urgent: false, shutdown: false }),
            wake: Condvar::new(),
            metrics: Arc::default(),
            new_names: Default::default(),
            packer: Mutex::new(segments),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dbtape-recorder".into())
            .spawn(move || {
                if worker.config.fsync != FsyncPolicy::Always {
                    crate::tasks::lower_this_threads_priority();
                }
                writer_loop(&worker)
            })
            .map_err(|source| StoreError::Io { path: PathBuf::from("<writer thread>"), source })?;
        Ok(Recorder { shared, thread: Mutex::new(Some(thread)) })
    }

    pub fn store(&self) -> &RecordingStore {
        &self.shared.store
    }

    pub fn config(&self) -> &RecorderConfig {
        &self.shared.config
    }

    /// The process's counters, for the admin listener.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.shared.metrics
    }

    /// The most bytes the writer's backlog has held since start-up.
    pub fn peak_backlog_bytes(&self) -> usize {
        self.shared.backlog.peak.load(Ordering::Relaxed)
    }

    /// Creates the session's recording file (frame 0 holds its context) and registers it.
    pub fn open(&self, ctx: SessionContext) -> Result<SessionLog, RecordingError> {
        self.open_at(ctx, chrono::Utc::now().timestamp_millis())
    }

    /// As `open`, for a session that started at `start_ms` (e.g. when the client connected).
    pub fn open_at(&self, ctx: SessionContext, start_ms: i64) -> Result<SessionLog, RecordingError> {
        if lock(&self.shared.control).shutdown {
            return Err(RecordingError::ShutDown);
        }
        let create = |reason: String| RecordingError::Create { path: self.shared.store.recording_path(&ctx.sid), reason };
        let uid_seed = *uuid::Uuid::new_v4().as_bytes();
        let header = SessionHeader {
            format: 3,
            sid: ctx.sid.clone(),
            created: crate::audit::format_time(start_ms),
            user: ctx.user.user.clone(),
            db_service: ctx.database.service.clone(),
            db_protocol: ctx.database.protocol.as_str().to_string(),
            db_uri: ctx.database.uri.clone(),
            db_name: ctx.database.name.clone(),
            db_user: ctx.database.user.clone(),
            remote_addr: ctx.connection.remote_addr.clone(),
            fixed: String::from_utf8_lossy(&crate::audit::fixed_fields_json(&ctx)).into_owned(),
            uid_seed: crate::util::hex::hex(&uid_seed),
        };
        let payload = serde_json::to_vec(&header).map_err(|e| create(e.to_string()))?;
        let mut bytes = FILE_MAGIC.to_vec();
        let seed = super::format::chain_seed(&ctx.sid);
        let chain = encode_frame(
            &FrameSpec {
                kind: FrameKind::Session,
                seq: 0,
                compressed: false,
                compact: false,
                raw_len: payload.len() as u32,
                events: 0,
                first_ei: 0,
                min_time_ms: start_ms,
                max_time_ms: start_ms,
                payload: &payload,
            },
            &seed,
            &mut bytes,
        );
        let mut hasher = Sha256::new();
        hasher.update(&bytes);
        let len = bytes.len() as u64;
        let mut sink = Sink::Memory(bytes);
        if !self.opens_in_memory() {
            self.shared.own_file(&ctx.sid, &mut sink).map_err(|e| create(e.to_string()))?;
        }
        let state = Arc::new(SessionState {
            ctx: Arc::new(ctx),
            uid_seed,
            backlog: self.shared.backlog.clone(),
            start_ms,
            inner: Mutex::new(Inner {
                // Grows as events come: an idle session costs almost nothing.
                pending: Vec::new(),
                pending_events: 0,
                pending_first_ei: 0,
                pending_min_ms: i64::MAX,
                pending_max_ms: i64::MIN,
                pending_full: false,
                cut: Vec::new(),
                next_ei: 0,
                next_seq: 1,
                written_seq: 1,
                written_chain: chain,
                stats: Stats::default(),
                written_events: 0,
                written_first_ms: None,
                written_last_ms: None,
                unreported_lost: 0,
                gap_error: String::new(),
                gap_from_ms: None,
                gap_until_ms: None,
                failed: None,
                dead: false,
                closing: false,
                zstd_level: self.shared.config.zstd_level,
            }),
            in_memory: std::sync::atomic::AtomicBool::new(sink.in_memory()),
            io: Mutex::new(Some(FileIo { sink, len, hasher, dirty: true, last_summary: None, summary_dirty: true })),
            durable: watch::channel(Durability::default()).0,
        });
        // The live sidecar waits for the writer's next pass: a session that ends before then
        // (most, in a connection storm) never has one, which saves it a file written,
        // renamed and removed. Until then readers summarize the recording itself
        // (`RecordingStore::read_summary`), and crash recovery rebuilds it as before.
        // The recording's name is as durable as its first frames: at once when every event
        // is fsynced, else with the next batch's fsync (a crash loses at most that batch,
        // as it does of any session's events). A recording in memory gets its name at that
        // batch, just before the fsync.
        match self.shared.config.fsync {
            FsyncPolicy::Always => self.shared.sync_dir(),
            FsyncPolicy::Batch if !self.opens_in_memory() => self.shared.new_names.store(true, std::sync::atomic::Ordering::Release),
            FsyncPolicy::Batch | FsyncPolicy::Never => {}
        }
        if counts_as_session(&state.ctx) {
            self.shared.metrics.session_opened(state.ctx.database.protocol);
        }
        lock(&self.shared.control).sessions.push(state.clone());
        Ok(SessionLog { state, shared: self.shared.clone(), closed: false })
    }

    /// Whether `open` starts a recording in memory, touching no file: then it is cheap
    /// enough to call on a connection's own thread. A recording that may be packed starts
    /// there, unless every event is fsynced at once; the writer's next batch tick gives it
    /// its own file if it is still live (see `Sink`).
    pub fn opens_in_memory(&self) -> bool {
        self.shared.config.segments.is_some() && self.shared.config.fsync != FsyncPolicy::Always
    }

    /// Seals every open recording and stops the writer thread.
    pub fn shutdown(&self) {
        {
            let mut control = lock(&self.shared.control);
            control.shutdown = true;
            for session in &control.sessions {
                lock(&session.inner).closing = true;
            }
        }
        self.shared.wake.notify_all();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A listener's refused-logins log is a recording with no user; it is not a session.
pub(super) fn counts_as_session(ctx: &SessionContext) -> bool {
    !ctx.user.user.is_empty()
}

/// A session's handle on its recording. Dropping it seals the recording.
pub struct SessionLog {
    state: Arc<SessionState>,
    shared: Arc<Shared>,
    closed: bool,
}

impl SessionLog {
    pub fn context(&self) -> &SessionContext {
        &self.state.ctx
    }

    pub fn sid(&self) -> &str {
        &self.state.ctx.sid
    }

    pub fn mode(&self) -> RecordingMode {
        self.shared.config.mode
    }

    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.shared.config.fsync
    }

    pub fn start_ms(&self) -> i64 {
        self.state.start_ms
    }

    pub fn max_query_bytes(&self) -> usize {
        self.shared.config.max_query_bytes
    }

    /// Stamps `ei`, `uid` and `time` on the event and queues it. In strict mode an error
    /// means the event is not recorded and the session must stop.
    pub fn append(&self, body: &EventBody, time_ms: i64) -> Result<AppendTicket, RecordingError> {
        self.append_noted(body, None, time_ms)
    }

    /// As `append`, with what was done to the body before (see `EventBody::cap_captured_text`).
    pub fn append_noted(&self, body: &EventBody, notes: Option<&EventNotes>, time_ms: i64) -> Result<AppendTicket, RecordingError> {
        let config = &self.shared.config;
        let mut inner = lock(&self.state.inner);
        if inner.closing {
            return Err(RecordingError::Closed(self.state.ctx.sid.clone()));
        }
        if let Some(reason) = &inner.failed {
            return Err(RecordingError::Failed { sid: self.state.ctx.sid.clone(), reason: reason.clone() });
        }
        if inner.dead {
            let ei = inner.next_ei;
            inner.next_ei += 1;
            inner.stats.events += 1;
            return Ok(AppendTicket { ei });
        }
        if self.shared.backlog.full() && config.mode == RecordingMode::BestEffort {
            // The writer is behind and best_effort never waits: drop, and say so later.
            let ei = inner.next_ei;
            inner.next_ei += 1;
            inner.stats.events += 1;
            note_loss(
                &mut inner,
                1,
                time_ms,
                time_ms,
                "the recording backlog was full (recording.max_backlog_bytes): the disk is slower than the sessions",
            );
            drop(inner);
            self.shared.nudge();
            return Ok(AppendTicket { ei });
        }
        let full = body.overrides_fields_of(&self.state.ctx);
        if full != inner.pending_full {
            if let Some(raw) = take_frame(&mut inner, &self.state) {
                inner.cut.push(raw);
            }
            inner.pending_full = full;
        }
        let counted = (inner.stats.queries, inner.stats.failed_queries);
        let ei = push_event(&mut inner, &self.state, body, notes, time_ms);
        let (queries, failed) = (inner.stats.queries - counted.0, inner.stats.failed_queries - counted.1);
        if queries + failed > 0 {
            self.shared.metrics.queries(self.state.ctx.database.protocol, queries, failed);
        }
        let frame_full = inner.pending.len() >= config.frame_target_bytes;
        if frame_full {
            if let Some(raw) = take_frame(&mut inner, &self.state) {
                inner.cut.push(raw);
            }
        }
        drop(inner);
        if frame_full || config.fsync == FsyncPolicy::Always || self.shared.backlog.pressing() {
            self.shared.nudge();
        }
        Ok(AppendTicket { ei })
    }

    /// Whether the writer's backlog is at its bound.
    pub fn backlog_full(&self) -> bool {
        self.shared.backlog.full()
    }

    /// Waits until the writer's backlog is below its bound: how strict sessions slow down
    /// to the disk's pace instead of queueing without end.
    pub async fn wait_for_room(&self) {
        loop {
            let room = self.shared.backlog.room.notified();
            if !self.shared.backlog.full() {
                return;
            }
            self.shared.nudge();
            // A bounded wait as well: a notification between the check and the wait is
            // not lost for notify_waiters, but a writer that stopped is noticed this way.
            let _ = tokio::time::timeout(Duration::from_millis(100), room).await;
            if lock(&self.state.inner).closing || lock(&self.shared.control).shutdown {
                return;
            }
        }
    }

    /// Resolves once the event is durable per the fsync policy (or the recording failed).
    pub async fn wait_durable(&self, ticket: AppendTicket) -> Result<(), RecordingError> {
        let mut rx = self.state.durable.subscribe();
        let outcome = rx.wait_for(|d| d.failed.is_some() || d.sealed || d.through.is_some_and(|t| t >= ticket.ei)).await.map(|d| d.clone());
        match outcome {
            Ok(d) => match d.failed {
                Some(reason) if self.shared.config.mode == RecordingMode::Strict => {
                    Err(RecordingError::Failed { sid: self.state.ctx.sid.clone(), reason })
                }
                _ => Ok(()),
            },
            Err(_) => Err(RecordingError::ShutDown),
        }
    }

    /// Seals the recording: trailer, fsync, signed manifest, final sidecar.
    pub async fn close(mut self) -> Result<(), RecordingError> {
        self.closed = true;
        self.request_close();
        let mut rx = self.state.durable.subscribe();
        let _ = rx.wait_for(|d| d.sealed).await;
        let failed = self.state.durable.borrow().failed.clone();
        match failed {
            Some(reason) if self.shared.config.mode == RecordingMode::Strict => {
                Err(RecordingError::Failed { sid: self.state.ctx.sid.clone(), reason })
            }
            _ => Ok(()),
        }
    }

    fn request_close(&self) {
        lock(&self.state.inner).closing = true;
        // A recording still in memory is packed, or given its own file, at the writer's
        // next batch tick whatever a pass before then does: waking the writer for it now
        // would cost a pass and two context switches per session of a connection storm.
        if !self.state.in_memory.load(Ordering::Acquire) {
            self.shared.nudge();
        }
    }
}

impl Drop for SessionLog {
    fn drop(&mut self) {
        if !self.closed {
            self.request_close();
        }
    }
}
