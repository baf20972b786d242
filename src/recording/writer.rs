//! Group-commit writer.
//!
//! Sessions append events to their own in-memory buffer (serialised on the caller's thread,
//! and compressed there once a frame fills, so the work spreads over the cores). One writer
//! thread writes ready frames for every session and fsyncs them together, per the policy:
//! `always` before any waiter is released, `batch` once per interval, `never` only at seal.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::format::{encode_frame, hex, FrameKind, FrameSpec, SessionHeader, Trailer, FILE_MAGIC};
use super::signing::{ManifestBody, Signer};
use super::store::{RecordingState, RecordingStore, SessionSummary, StoreError};
use crate::audit::{AuditEvent, EventBody, EventNotes, SessionContext};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Batch,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingMode {
    /// A recording failure ends the session.
    Strict,
    /// The session goes on; a `dbtape.recording.gap` event records what was lost.
    BestEffort,
}

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
}

/// No one event takes more than this many bytes of JSON. Frames are cut once they reach
/// their target (at most `MAX_FRAME_TARGET_BYTES`), so a frame stays under what every reader
/// accepts, whatever a client sends.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// The largest `frame_target_bytes` the config accepts.
pub const MAX_FRAME_TARGET_BYTES: usize = 32 * 1024 * 1024;
/// The largest `max_query_bytes` the config accepts: escaped as JSON (up to six bytes per
/// byte of text), it still fits in `MAX_EVENT_BYTES` with room for the rest of the event.
pub const MAX_QUERY_BYTES_LIMIT: usize = 2 * 1024 * 1024;
const _: () = assert!(MAX_FRAME_TARGET_BYTES + MAX_EVENT_BYTES < super::format::MAX_FRAME_BYTES as usize);

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

/// Events taken off a session's pending buffer, not yet compressed.
struct RawFrame {
    seq: u32,
    events: u32,
    first_ei: u64,
    min_ms: i64,
    max_ms: i64,
    data: Vec<u8>,
    gap_reported: u64,
    zstd_level: i32,
    /// Events without the session's fixed fields (`FLAG_COMPACT`).
    compact: bool,
}

/// A compressed frame waiting to be written. Its chain link is computed when it is written,
/// by the one writer thread, in sequence order.
struct ReadyFrame {
    seq: u32,
    compressed: bool,
    compact: bool,
    raw_len: u32,
    events: u32,
    first_ei: u64,
    min_ms: i64,
    max_ms: i64,
    payload: Vec<u8>,
    /// Lost events reported by a gap event inside this frame; unreported again if it is lost.
    gap_reported: u64,
}

impl ReadyFrame {
    fn last_ei(&self) -> u64 {
        self.first_ei + u64::from(self.events).saturating_sub(1)
    }
}

#[derive(Default, Clone)]
struct Stats {
    events: u64,
    refused_logins: u64,
    queries: u64,
    failed_queries: u64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

struct Inner {
    pending: Vec<u8>,
    pending_events: u32,
    pending_first_ei: u64,
    pending_min_ms: i64,
    pending_max_ms: i64,
    /// `pending` holds whole events (some override the session's fixed fields) rather than
    /// compact ones; a frame holds one kind only, so a change of kind cuts the frame.
    pending_full: bool,
    /// Frames cut from `pending` and waiting for the writer thread, which compresses them:
    /// compressing a full frame takes a few hundred microseconds, too long to stall a
    /// connection's thread (and every other connection it serves) for.
    cut: Vec<RawFrame>,
    next_ei: u64,
    next_seq: u32,
    /// The chain and sequence as of the last frame known to be in the file, for rolling back
    /// frames whose write failed.
    written_seq: u32,
    written_chain: [u8; 32],
    /// Everything appended (written or not).
    stats: Stats,
    /// What is in the file.
    written_events: u64,
    written_first_ms: Option<i64>,
    written_last_ms: Option<i64>,
    /// best_effort: events lost since the last gap event that reached the file, and when
    /// the first and last of them happened.
    unreported_lost: u64,
    gap_error: String,
    gap_from_ms: Option<i64>,
    gap_until_ms: Option<i64>,
    failed: Option<Arc<str>>,
    /// best_effort: the file itself is unusable, so events are only counted.
    dead: bool,
    closing: bool,
    zstd_level: i32,
}

struct FileIo {
    file: File,
    len: u64,
    hasher: Sha256,
    dirty: bool,
    last_summary: Instant,
    summary_dirty: bool,
}

struct SessionState {
    ctx: Arc<SessionContext>,
    backlog: Arc<Backlog>,
    start_ms: i64,
    inner: Mutex<Inner>,
    io: Mutex<Option<FileIo>>,
    durable: watch::Sender<Durability>,
}

struct Control {
    sessions: Vec<Arc<SessionState>>,
    urgent: bool,
    shutdown: bool,
}

/// Bytes appended but not yet written, over all sessions: the writer's backlog, bounded so
/// that a disk slower than the sessions cannot grow the proxy's memory without end.
struct Backlog {
    queued: AtomicUsize,
    peak: AtomicUsize,
    limit: usize,
    /// Woken whenever the writer takes bytes off the backlog.
    room: tokio::sync::Notify,
}

impl Backlog {
    fn add(&self, bytes: usize) {
        let now = self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn remove(&self, bytes: usize) {
        let _ = self.queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(bytes)));
        self.room.notify_waiters();
    }

    fn full(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.limit
    }

    fn pressing(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.limit / 2
    }
}

struct Shared {
    backlog: Arc<Backlog>,
    config: RecorderConfig,
    store: RecordingStore,
    signer: Arc<Signer>,
    control: Mutex<Control>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug elsewhere; the data is still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dbtape-recorder".into())
            .spawn(move || {
                if worker.config.fsync != FsyncPolicy::Always {
                    lower_this_threads_priority();
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
        let path = self.shared.store.recording_path(&ctx.sid);
        let create = |reason: String| RecordingError::Create { path: path.clone(), reason };
        let header = SessionHeader {
            format: 2,
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
        let mut file = OpenOptions::new().append(true).create_new(true).open(&path).map_err(|e| create(e.to_string()))?;
        file.try_lock().map_err(|e| create(format!("cannot lock: {e}")))?;
        file.write_all(&bytes).map_err(|e| create(e.to_string()))?;
        let mut hasher = Sha256::new();
        hasher.update(&bytes);
        let state = Arc::new(SessionState {
            ctx: Arc::new(ctx),
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
            io: Mutex::new(Some(FileIo {
                file,
                len: bytes.len() as u64,
                hasher,
                dirty: true,
                last_summary: Instant::now(),
                summary_dirty: false,
            })),
            durable: watch::channel(Durability::default()).0,
        });
        let summary = summary_of(&state, &lock(&state.inner), bytes.len() as u64, RecordingState::Live);
        if let Err(e) = self.shared.store.write_summary(&summary) {
            tracing::warn!(sid = %state.ctx.sid, error = %e, "cannot write the recording's sidecar");
        }
        // Sync the directory entry now, so a crash never leaves an audited session nameless.
        if self.shared.config.fsync != FsyncPolicy::Never {
            if let Ok(dir) = File::open(self.shared.store.dir()) {
                let _ = dir.sync_all();
            }
        }
        lock(&self.shared.control).sessions.push(state.clone());
        Ok(SessionLog { state, shared: self.shared.clone(), closed: false })
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
        let full = body.overrides_session_fields();
        if full != inner.pending_full {
            if let Some(raw) = take_frame(&mut inner, &self.state) {
                inner.cut.push(raw);
            }
            inner.pending_full = full;
        }
        let ei = push_event(&mut inner, &self.state, body, notes, time_ms);
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
        self.shared.nudge();
    }
}

impl Drop for SessionLog {
    fn drop(&mut self) {
        if !self.closed {
            self.request_close();
        }
    }
}

impl Shared {
    fn nudge(&self) {
        lock(&self.control).urgent = true;
        self.wake.notify_one();
    }
}

thread_local! {
    /// One compression context per thread, shared by every session that cuts frames on it,
    /// rather than one per session.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match slot.as_mut() {
            Some((_, compressor)) => compressor.compress(data),
            None => Err(std::io::Error::other("no compressor")),
        }
    })
}

/// Stamps `ei` and `uid`, serialises the event onto the pending buffer and counts it.
fn push_event(inner: &mut Inner, session: &SessionState, body: &EventBody, notes: Option<&EventNotes>, time_ms: i64) -> u64 {
    let ei = inner.next_ei;
    let before = inner.pending.len();
    let full = inner.pending_full;
    let write = |pending: &mut Vec<u8>, body: &EventBody, notes: Option<&EventNotes>| {
        let event = AuditEvent { index: ei, uid: uuid::Uuid::new_v4(), time_ms, context: &session.ctx, body, notes };
        if full {
            event.write_json(pending);
        } else {
            event.write_compact(pending);
        }
    };
    write(&mut inner.pending, body, notes);
    let mut written = inner.pending.len() - before;
    if written > MAX_EVENT_BYTES {
        // Only reachable if captured text escaped past the cap's worst case; the event is
        // lost rather than the readability of everything after it.
        inner.pending.truncate(before);
        let error = format!("a {} event of {written} bytes exceeds the {MAX_EVENT_BYTES}-byte event limit", body.event_type().as_str());
        tracing::error!(sid = %session.ctx.sid, %error, "event not recorded");
        let at = chrono::Utc::now().timestamp_millis();
        write(
            &mut inner.pending,
            &EventBody::RecordingGap { lost_events: 1, error, lost_from_ms: Some(at), lost_until_ms: Some(at) },
            None,
        );
        written = inner.pending.len() - before;
    }
    inner.pending.push(b'\n');
    session.backlog.add(written + 1);
    inner.next_ei += 1;
    if inner.pending_events == 0 {
        inner.pending_first_ei = ei;
    }
    inner.pending_events += 1;
    inner.pending_min_ms = inner.pending_min_ms.min(time_ms);
    inner.pending_max_ms = inner.pending_max_ms.max(time_ms);
    let stats = &mut inner.stats;
    stats.events += 1;
    stats.first_ms.get_or_insert(time_ms);
    stats.last_ms = Some(time_ms);
    let (queries, failed) = body.query_counts();
    stats.refused_logins += u64::from(matches!(body, EventBody::RefusedStart { .. }));
    stats.queries += queries;
    stats.failed_queries += failed;
    ei
}

/// Takes the pending events as the next frame, ending it with a gap event when earlier
/// events were lost (best_effort). Cheap: compression happens in `compress_frame`.
fn take_frame(inner: &mut Inner, session: &SessionState) -> Option<RawFrame> {
    let mut gap_reported = 0;
    if inner.unreported_lost > 0 {
        let gap = EventBody::RecordingGap {
            lost_events: inner.unreported_lost,
            error: inner.gap_error.clone(),
            lost_from_ms: inner.gap_from_ms.take(),
            lost_until_ms: inner.gap_until_ms.take(),
        };
        push_event(inner, session, &gap, None, chrono::Utc::now().timestamp_millis());
        gap_reported = std::mem::take(&mut inner.unreported_lost);
    }
    if inner.pending_events == 0 {
        return None;
    }
    let capacity = inner.pending.len();
    let raw = RawFrame {
        seq: inner.next_seq,
        events: inner.pending_events,
        first_ei: inner.pending_first_ei,
        min_ms: inner.pending_min_ms,
        max_ms: inner.pending_max_ms,
        data: std::mem::replace(&mut inner.pending, Vec::with_capacity(capacity)),
        gap_reported,
        zstd_level: inner.zstd_level,
        compact: !inner.pending_full,
    };
    inner.next_seq += 1;
    inner.pending_events = 0;
    inner.pending_min_ms = i64::MAX;
    inner.pending_max_ms = i64::MIN;
    Some(raw)
}

fn compress_frame(raw: RawFrame) -> ReadyFrame {
    let (payload, compressed) = match compress(&raw.data, raw.zstd_level) {
        Ok(c) => (c, true),
        Err(e) => {
            tracing::error!(error = %e, "zstd compression failed; storing the frame uncompressed");
            (raw.data.clone(), false)
        }
    };
    ReadyFrame {
        seq: raw.seq,
        compressed,
        compact: raw.compact,
        raw_len: raw.data.len() as u32,
        events: raw.events,
        first_ei: raw.first_ei,
        min_ms: raw.min_ms,
        max_ms: raw.max_ms,
        payload,
        gap_reported: raw.gap_reported,
    }
}

fn summary_of(state: &SessionState, inner: &Inner, bytes: u64, recording_state: RecordingState) -> SessionSummary {
    let ctx = &state.ctx;
    SessionSummary {
        sid: ctx.sid.clone(),
        user: ctx.user.user.clone(),
        db_service: ctx.database.service.clone(),
        db_protocol: ctx.database.protocol.as_str().to_string(),
        db_name: ctx.database.name.clone(),
        db_user: ctx.database.user.clone(),
        remote_addr: ctx.connection.remote_addr.clone(),
        start_ms: state.start_ms,
        end_ms: match recording_state {
            RecordingState::Live => None,
            _ => Some(inner.stats.last_ms.unwrap_or(state.start_ms)),
        },
        events: inner.written_events,
        queries: inner.stats.queries,
        failed_queries: inner.stats.failed_queries,
        lost_events: inner.stats.events.saturating_sub(inner.written_events),
        bytes,
        state: recording_state,
        error: inner.failed.as_deref().unwrap_or_default().to_string(),
        refused_logins: inner.stats.refused_logins,
    }
}

/// The writer's compression and file I/O are background work unless sessions wait on it
/// (fsync `always`): at a lower priority it fills the gaps the relay leaves instead of
/// preempting a connection thread in the middle of a batch. Nice 10 still gives it about a
/// tenth of a contended CPU, many times what it needs, so it cannot starve. Raising a
/// thread's own nice value needs no privilege.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on this thread's own id, with no pointers involved.
        let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
        if done != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the recorder thread's priority");
        }
    }
}

const SUMMARY_REFRESH: Duration = Duration::from_secs(2);

fn writer_loop(shared: &Shared) {
    let config = &shared.config;
    let mut next_tick = Instant::now() + config.batch_interval;
    loop {
        let (shutdown, sessions) = {
            let mut control = lock(&shared.control);
            while !control.urgent && !control.shutdown {
                let now = Instant::now();
                if now >= next_tick {
                    break;
                }
                let (guard, _) = shared.wake.wait_timeout(control, next_tick - now).unwrap_or_else(|poisoned| poisoned.into_inner());
                control = guard;
            }
            control.urgent = false;
            (control.shutdown, control.sessions.clone())
        };
        let now = Instant::now();
        let tick = now >= next_tick;
        if tick {
            next_tick = now + config.batch_interval;
        }
        let flush_all = tick || shutdown || config.fsync == FsyncPolicy::Always || shared.backlog.pressing();
        let fsync = match config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Batch => tick || shutdown,
            FsyncPolicy::Never => false,
        };
        let sealed = write_pass(shared, &sessions, flush_all, fsync);
        let remaining = {
            let mut control = lock(&shared.control);
            control.sessions.retain(|s| !sealed.iter().any(|done| Arc::ptr_eq(done, s)));
            control.sessions.len()
        };
        if shutdown && remaining == 0 {
            break;
        }
    }
}

/// One group commit over all sessions. Returns the sessions it sealed.
fn write_pass(shared: &Shared, sessions: &[Arc<SessionState>], flush_all: bool, fsync: bool) -> Vec<Arc<SessionState>> {
    let mut written: Vec<(Arc<SessionState>, Option<u64>)> = Vec::new();
    let mut closing = Vec::new();
    for session in sessions {
        let (cut, is_closing) = {
            let mut inner = lock(&session.inner);
            let mut cut = std::mem::take(&mut inner.cut);
            if flush_all || inner.closing {
                cut.extend(take_frame(&mut inner, session));
            }
            (cut, inner.closing)
        };
        // Compress outside the session's lock, so its connection never waits on it; frames
        // cut meanwhile get later sequence numbers and go out in the next pass.
        let frames: Vec<ReadyFrame> = cut.into_iter().map(compress_frame).collect();
        let raw_bytes: usize = frames.iter().map(|f| f.raw_len as usize).sum();
        let last_ei = write_frames(shared, session, frames);
        if raw_bytes > 0 {
            session.backlog.remove(raw_bytes);
        }
        written.push((session.clone(), last_ei));
        if is_closing {
            closing.push(session.clone());
        }
    }
    if fsync {
        for (session, _) in &written {
            let synced = match lock(&session.io).as_mut().filter(|io| io.dirty) {
                Some(io) => io.file.sync_data().map(|()| io.dirty = false),
                None => Ok(()),
            };
            if let Err(e) = synced {
                fail_session(shared, session, format!("fsync failed: {e}"));
            }
        }
    }
    for (session, last_ei) in &written {
        if let Some(ei) = last_ei {
            if fsync || shared.config.fsync != FsyncPolicy::Always {
                session.durable.send_modify(|d| d.through = Some(d.through.map_or(*ei, |t| t.max(*ei))));
            }
        }
        refresh_summary(shared, session);
    }
    for session in &closing {
        seal(shared, session);
    }
    closing
}

/// Writes frames in order; on failure rolls the file and chain back to the last good frame.
fn write_frames(shared: &Shared, session: &Arc<SessionState>, frames: Vec<ReadyFrame>) -> Option<u64> {
    if frames.is_empty() {
        return None;
    }
    let mut io_guard = lock(&session.io);
    let io = io_guard.as_mut()?;
    let mut last_ei = None;
    let mut done: usize = 0;
    let mut failure = None;
    let mut chain = lock(&session.inner).written_chain;
    let mut links = Vec::with_capacity(frames.len());
    let mut bytes = Vec::new();
    for frame in &frames {
        bytes.clear();
        let link = encode_frame(
            &FrameSpec {
                kind: FrameKind::Events,
                seq: frame.seq,
                compressed: frame.compressed,
                compact: frame.compact,
                raw_len: frame.raw_len,
                events: frame.events,
                first_ei: frame.first_ei,
                min_time_ms: frame.min_ms,
                max_time_ms: frame.max_ms,
                payload: &frame.payload,
            },
            &chain,
            &mut bytes,
        );
        if let Err(e) = io.file.write_all(&bytes) {
            failure = Some(e.to_string());
            break;
        }
        io.len += bytes.len() as u64;
        io.hasher.update(&bytes);
        io.dirty = true;
        io.summary_dirty = true;
        last_ei = Some(frame.last_ei());
        chain = link;
        links.push(link);
        done += 1;
    }
    {
        let mut inner = lock(&session.inner);
        for (frame, link) in frames.iter().zip(links) {
            inner.written_seq = frame.seq + 1;
            inner.written_chain = link;
            inner.written_events += u64::from(frame.events);
            inner.written_first_ms.get_or_insert(frame.min_ms);
            inner.written_last_ms = Some(frame.max_ms);
        }
    }
    let Some(reason) = failure else { return last_ei };
    // Cut off any torn bytes so later frames still follow a whole one.
    let rollback = io.file.set_len(io.len);
    drop(io_guard);
    let reason = format!("write failed: {reason}");
    let mut inner = lock(&session.inner);
    // Frames cut after the failed one link to it: drop them too and relink from the file's end.
    let drained: Vec<RawFrame> = inner.cut.drain(..).collect();
    session.backlog.remove(drained.iter().map(|f| f.data.len()).sum());
    let lost: u64 = frames.iter().skip(done).map(|f| u64::from(f.events) + f.gap_reported).sum::<u64>()
        + drained.iter().map(|f| u64::from(f.events) + f.gap_reported).sum::<u64>();
    let lost_from = frames.iter().skip(done).map(|f| f.min_ms).chain(drained.iter().map(|f| f.min_ms)).min().unwrap_or_default();
    let lost_until = frames.iter().skip(done).map(|f| f.max_ms).chain(drained.iter().map(|f| f.max_ms)).max().unwrap_or_default();
    inner.next_seq = inner.written_seq;
    tracing::error!(sid = %session.ctx.sid, error = %reason, lost_events = lost, "recording write failed");
    if shared.config.mode == RecordingMode::Strict || rollback.is_err() {
        drop(inner);
        fail_session(shared, session, reason);
        return last_ei;
    }
    // best_effort: the next frame written starts by reporting the loss.
    note_loss(&mut inner, lost, lost_from, lost_until, &reason);
    last_ei
}

/// best_effort: counts events lost (with when they happened) for the next gap event.
fn note_loss(inner: &mut Inner, count: u64, from_ms: i64, until_ms: i64, reason: &str) {
    inner.unreported_lost += count;
    inner.gap_from_ms = Some(inner.gap_from_ms.map_or(from_ms, |t| t.min(from_ms)));
    inner.gap_until_ms = Some(inner.gap_until_ms.map_or(until_ms, |t| t.max(until_ms)));
    if inner.gap_error != reason {
        inner.gap_error = reason.to_string();
    }
}

fn fail_session(shared: &Shared, session: &SessionState, reason: String) {
    let reason: Arc<str> = Arc::from(reason);
    {
        let mut inner = lock(&session.inner);
        if shared.config.mode == RecordingMode::Strict && inner.failed.is_none() {
            inner.failed = Some(reason.clone());
        }
        inner.dead = true;
    }
    session.durable.send_modify(|d| d.failed = Some(reason.clone()));
}

fn refresh_summary(shared: &Shared, session: &SessionState) {
    let mut io_guard = lock(&session.io);
    let Some(io) = io_guard.as_mut() else { return };
    if !io.summary_dirty || io.last_summary.elapsed() < SUMMARY_REFRESH {
        return;
    }
    io.summary_dirty = false;
    io.last_summary = Instant::now();
    let len = io.len;
    drop(io_guard);
    let summary = summary_of(session, &lock(&session.inner), len, RecordingState::Live);
    if let Err(e) = shared.store.write_summary(&summary) {
        tracing::warn!(sid = %session.ctx.sid, error = %e, "cannot refresh the recording's sidecar");
    }
}

/// Writes the trailer, fsyncs, signs the manifest and writes the final sidecar.
fn seal(shared: &Shared, session: &SessionState) {
    let sid = session.ctx.sid.clone();
    let mut io_guard = lock(&session.io);
    let mut inner = lock(&session.inner);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut final_state = if inner.failed.is_some() { RecordingState::Failed } else { RecordingState::Sealed };
    let mut len = 0;
    if let Some(mut io) = io_guard.take() {
        let trailer = Trailer {
            event_count: inner.written_events,
            first_time_ms: inner.written_first_ms,
            last_time_ms: inner.written_last_ms,
            chain_head: hex(&inner.written_chain),
            frames: inner.written_seq,
            lost_events: inner.stats.events.saturating_sub(inner.written_events),
            sealed_at_ms: now_ms,
        };
        let mut bytes = Vec::new();
        let written = serde_json::to_vec(&trailer).map_err(|e| e.to_string()).and_then(|payload| {
            let chain = encode_frame(
                &FrameSpec {
                    kind: FrameKind::Trailer,
                    seq: inner.written_seq,
                    compressed: false,
                    compact: false,
                    raw_len: payload.len() as u32,
                    events: 0,
                    first_ei: 0,
                    min_time_ms: trailer.first_time_ms.unwrap_or(now_ms),
                    max_time_ms: trailer.last_time_ms.unwrap_or(now_ms),
                    payload: &payload,
                },
                &inner.written_chain,
                &mut bytes,
            );
            io.file.write_all(&bytes).map_err(|e| e.to_string())?;
            io.hasher.update(&bytes);
            io.len += bytes.len() as u64;
            io.file.sync_all().map_err(|e| e.to_string())?;
            Ok((chain, inner.written_seq + 1))
        });
        len = io.len;
        match written {
            Ok((chain, frames)) => {
                let body = ManifestBody {
                    format: "dbtape-manifest-v1".into(),
                    sid: sid.clone(),
                    file: format!("{sid}.{}", super::store::RECORDING_EXT),
                    size: io.len,
                    sha256: hex(&io.hasher.clone().finalize()),
                    frames,
                    chain_head: hex(&chain),
                    event_count: inner.written_events,
                    first_time_ms: inner.written_first_ms,
                    last_time_ms: inner.written_last_ms,
                    state: "sealed".into(),
                    valid_length: io.len,
                    key_id: shared.signer.key_id().to_string(),
                    signed_at_ms: now_ms,
                };
                match shared
                    .signer
                    .sign(body)
                    .map_err(|e| e.to_string())
                    .and_then(|m| shared.store.write_manifest(&m).map_err(|e| e.to_string()))
                {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::error!(sid = %sid, error = %e, "cannot write the signed manifest");
                        inner.failed.get_or_insert_with(|| Arc::from(format!("cannot sign: {e}")));
                        final_state = RecordingState::Failed;
                    }
                }
            }
            Err(e) => {
                tracing::error!(sid = %sid, error = %e, "cannot seal the recording");
                inner.failed.get_or_insert_with(|| Arc::from(format!("cannot seal: {e}")));
                final_state = RecordingState::Failed;
            }
        }
        let _ = io.file.unlock();
    }
    let summary = summary_of(session, &inner, len, final_state);
    drop(inner);
    drop(io_guard);
    if let Err(e) = shared.store.write_summary(&summary) {
        tracing::error!(sid = %sid, error = %e, "cannot write the final sidecar");
    }
    if let Ok(dir) = fs::File::open(shared.store.dir()) {
        let _ = dir.sync_all();
    }
    session.durable.send_modify(|d| d.sealed = true);
}
