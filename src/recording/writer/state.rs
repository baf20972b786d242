//! The state the session-log API and the writer thread share: each session's buffer and
//! file, the sessions the writer serves, and the backlog bound.

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::util::sync::lock;
use std::time::Instant;

use sha2::Sha256;
use tokio::sync::watch;

use super::{Durability, RecorderConfig};
use crate::audit::SessionContext;
use crate::recording::store::RecordingStore;
use crate::signing::Signer;

/// Events taken off a session's pending buffer, not yet compressed.
pub(super) struct RawFrame {
    pub(super) seq: u32,
    pub(super) events: u32,
    pub(super) first_ei: u64,
    pub(super) min_ms: i64,
    pub(super) max_ms: i64,
    pub(super) data: Vec<u8>,
    pub(super) gap_reported: u64,
    pub(super) zstd_level: i32,
    /// Events without the session's fixed fields (`FLAG_COMPACT`).
    pub(super) compact: bool,
}

/// A compressed frame waiting to be written. Its chain link is computed when it is written,
/// by the one writer thread, in sequence order.
pub(super) struct ReadyFrame {
    pub(super) seq: u32,
    pub(super) compressed: bool,
    pub(super) compact: bool,
    pub(super) raw_len: u32,
    pub(super) events: u32,
    pub(super) first_ei: u64,
    pub(super) min_ms: i64,
    pub(super) max_ms: i64,
    pub(super) payload: Vec<u8>,
    /// Lost events reported by a gap event inside this frame; unreported again if it is lost.
    pub(super) gap_reported: u64,
}

impl ReadyFrame {
    pub(super) fn last_ei(&self) -> u64 {
        self.first_ei + u64::from(self.events).saturating_sub(1)
    }
}

#[derive(Default, Clone)]
pub(super) struct Stats {
    pub(super) events: u64,
    pub(super) refused_logins: u64,
    pub(super) queries: u64,
    pub(super) failed_queries: u64,
    pub(super) first_ms: Option<i64>,
    pub(super) last_ms: Option<i64>,
}

pub(super) struct Inner {
    pub(super) pending: Vec<u8>,
    pub(super) pending_events: u32,
    pub(super) pending_first_ei: u64,
    pub(super) pending_min_ms: i64,
    pub(super) pending_max_ms: i64,
    /// `pending` holds whole events (some override the session's fixed fields) rather than
    /// compact ones; a frame holds one kind only, so a change of kind cuts the frame.
    pub(super) pending_full: bool,
    /// Frames cut from `pending` and waiting for the writer thread, which compresses them:
    /// compressing a full frame takes a few hundred microseconds, too long to stall a
    /// connection's thread (and every other connection it serves) for.
    pub(super) cut: Vec<RawFrame>,
    pub(super) next_ei: u64,
    pub(super) next_seq: u32,
    /// The chain and sequence as of the last frame known to be in the file, for rolling back
    /// frames whose write failed.
    pub(super) written_seq: u32,
    pub(super) written_chain: [u8; 32],
    /// Everything appended (written or not).
    pub(super) stats: Stats,
    /// What is in the file.
    pub(super) written_events: u64,
    pub(super) written_first_ms: Option<i64>,
    pub(super) written_last_ms: Option<i64>,
    /// best_effort: events lost since the last gap event that reached the file, and when
    /// the first and last of them happened.
    pub(super) unreported_lost: u64,
    pub(super) gap_error: String,
    pub(super) gap_from_ms: Option<i64>,
    pub(super) gap_until_ms: Option<i64>,
    pub(super) failed: Option<Arc<str>>,
    /// best_effort: the file itself is unusable, so events are only counted.
    pub(super) dead: bool,
    pub(super) closing: bool,
    pub(super) zstd_level: i32,
}

/// Where a session's recording bytes go. A session starts in memory when its recording may
/// end up packed into a segment: most sessions of a connection storm end before the
/// writer's next batch tick and are packed straight from memory, never costing a file
/// created, read back and removed. The tick gives every session still live its own file
/// before the fsync, so the loss window stays the policy's.
pub(super) enum Sink {
    File(File),
    Memory(Vec<u8>),
}

impl Sink {
    pub(super) fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(file) => std::io::Write::write_all(file, bytes),
            Sink::Memory(buffer) => {
                buffer.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Cuts the recording back to `len` bytes, after a write that failed part way.
    pub(super) fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        match self {
            Sink::File(file) => file.set_len(len),
            Sink::Memory(buffer) => {
                buffer.truncate(usize::try_from(len).unwrap_or(usize::MAX));
                Ok(())
            }
        }
    }

    /// Only a session whose file could not be created is still in memory at an fsync; its
    /// loss is already counted, so there is nothing to make durable.
    pub(super) fn sync_data(&self) -> std::io::Result<()> {
        match self {
            Sink::File(file) => file.sync_data(),
            Sink::Memory(_) => Ok(()),
        }
    }

    /// Seal's fsync of a recording `Shared::own_file` has just given a file.
    pub(super) fn sync_all(&self) -> std::io::Result<()> {
        match self {
            Sink::File(file) => file.sync_all(),
            Sink::Memory(_) => Err(std::io::Error::other("the recording has no file")),
        }
    }

    pub(super) fn in_memory(&self) -> bool {
        matches!(self, Sink::Memory(_))
    }
}

pub(super) struct FileIo {
    pub(super) sink: Sink,
    pub(super) len: u64,
    pub(super) hasher: Sha256,
    pub(super) dirty: bool,
    /// When the sidecar was last written; `None` until the first, which waits for the
    /// batch pass after the session opened.
    pub(super) last_summary: Option<Instant>,
    pub(super) summary_dirty: bool,
}

pub(super) struct SessionState {
    pub(super) ctx: Arc<SessionContext>,
    /// Each event's uid is derived from this and its ei (format 3), never stored in
    /// compact frames.
    pub(super) uid_seed: [u8; 16],
    pub(super) backlog: Arc<Backlog>,
    pub(super) start_ms: i64,
    pub(super) inner: Mutex<Inner>,
    pub(super) io: Mutex<Option<FileIo>>,
    /// Whether the recording may still be in memory (`Sink::Memory`), readable without the
    /// `io` lock, which the writer holds across fsyncs: a connection closing its session
    /// must not wait on one.
    pub(super) in_memory: std::sync::atomic::AtomicBool,
    pub(super) durable: watch::Sender<Durability>,
}

pub(super) struct Control {
    pub(super) sessions: Vec<Arc<SessionState>>,
    pub(super) urgent: bool,
    pub(super) shutdown: bool,
}

/// Bytes appended but not yet written, over all sessions: the writer's backlog, bounded so
/// that a disk slower than the sessions cannot grow the proxy's memory without end.
pub(super) struct Backlog {
    pub(super) queued: AtomicUsize,
    pub(super) peak: AtomicUsize,
    pub(super) limit: usize,
    /// Woken whenever the writer takes bytes off the backlog.
    pub(super) room: tokio::sync::Notify,
}

impl Backlog {
    pub(super) fn add(&self, bytes: usize) {
        let now = self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if now > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    pub(super) fn remove(&self, bytes: usize) {
        let _ = self.queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(bytes)));
        self.room.notify_waiters();
    }

    pub(super) fn full(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.limit
    }

    pub(super) fn pressing(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.limit / 2
    }
}

pub(super) struct Shared {
    pub(super) backlog: Arc<Backlog>,
    pub(super) config: RecorderConfig,
    pub(super) store: RecordingStore,
    pub(super) signer: Arc<Signer>,
    pub(super) control: Mutex<Control>,
    pub(super) wake: Condvar,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    /// A recording was created since the folder was last fsynced: its name is made durable
    /// by the next batch's fsync, with its first frames, not by one fsync per session.
    pub(super) new_names: std::sync::atomic::AtomicBool,
    /// The open segment short sessions are packed into at seal, if packing is on.
    pub(super) packer: Mutex<Option<crate::recording::segment::SegmentWriter>>,
}

impl Shared {
    /// Makes the names of recordings created so far durable.
    pub(super) fn sync_dir(&self) {
        if let Ok(dir) = std::fs::File::open(self.store.dir()) {
            let _ = dir.sync_all();
        }
    }

    /// Gives a recording still in memory its own file, holding every byte so far, locked
    /// (removed again if it cannot be locked or written). The caller makes its name durable.
    pub(super) fn own_file(&self, sid: &str, sink: &mut Sink) -> std::io::Result<()> {
        let Sink::Memory(bytes) = sink else { return Ok(()) };
        let path = self.store.recording_path(sid);
        let mut file = std::fs::OpenOptions::new().append(true).create_new(true).open(&path)?;
        let written = file
            .try_lock()
            .map_err(|e| std::io::Error::other(format!("cannot lock: {e}")))
            .and_then(|()| std::io::Write::write_all(&mut file, bytes));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        *sink = Sink::File(file);
        Ok(())
    }

    pub(super) fn nudge(&self) {
        lock(&self.control).urgent = true;
        self.wake.notify_one();
    }
}
