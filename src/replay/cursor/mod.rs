//! `dbtape export --cursor FILE [--follow]`: export that remembers what it already sent. The
//! cursor holds, per recording, the next event to send and the recordings finished, plus
//! how long the output file was when it was saved. With `--out`, a restart first cuts the
//! output back to that length, so events written after the last saved cursor (and perhaps
//! torn by a SIGKILL) are written again exactly once: the file holds every event once, in
//! order, however often the exporter is killed. On standard output the guarantee is
//! at-least-once (each event's `uid` lets a collector drop a repeat). Each pass merges what
//! all recordings gained in time order; an event recorded after a later one was already
//! sent (a slow writer's frame) goes out in the next pass.
//!
//! The loop is a reader (`BatchReader`, which never moves the cursor) and a sink
//! (`BatchSink`: the file or standard output here, S3 objects for the event lake); the
//! cursor is committed past a batch only after its sink has confirmed it.

mod reader;
mod sink;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use reader::{Batch, BatchLine, BatchReader};
pub use sink::{BatchSink, FileSink, StdoutSink};

use super::export::ExportFilter;
use crate::recording::reader::Position;
use crate::recording::store::write_atomic;
use crate::recording::RecordingStore;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Cursor {
    /// The next `ei` to send, for recordings begun but not finished.
    pub next: BTreeMap<String, u64>,
    /// Recordings sent to their end (sealed or recovered).
    pub done: BTreeSet<String>,
    /// The output file's length when this cursor was saved.
    pub out_len: u64,
    /// For recordings in `next`: where the last whole frame sent ends, so the next pass
    /// reads only what a live recording gained rather than all of it again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resume: BTreeMap<String, Position>,
}

impl Cursor {
    /// Moves past what `batch` held, once its sink has confirmed it (`sink_len`: what the
    /// sink holds now, where it can say).
    pub fn commit(&mut self, batch: &Batch, sink_len: Option<u64>) {
        for advance in &batch.advanced {
            let sid = advance.sid.clone();
            if advance.finished {
                self.next.remove(&sid);
                self.resume.remove(&sid);
                self.done.insert(sid);
            } else {
                self.next.insert(sid.clone(), advance.next);
                match advance.resume_at {
                    Some(at) => self.resume.insert(sid, at),
                    None => self.resume.remove(&sid),
                };
            }
        }
        if let Some(len) = sink_len {
            self.out_len = len;
        }
    }

    pub fn load(path: &Path) -> std::io::Result<Cursor> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
            Err(e) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        write_atomic(path, &bytes).map_err(std::io::Error::other)
    }
}

/// Events held before a pass writes them and saves the cursor: a first run over months of
/// recordings goes out in passes of this size rather than all at once from memory.
pub const BATCH_BYTES: usize = 8 * 1024 * 1024;

pub struct CursorExport {
    pub cursor: PathBuf,
    /// Where events go; standard output if none.
    pub out: Option<PathBuf>,
    pub follow: bool,
    /// At most about this many bytes of events per pass (`BATCH_BYTES`).
    pub batch_bytes: usize,
}

/// Sends what the cursor has not sent yet; with `follow`, keeps doing so until `stop` says.
pub fn export_from_cursor(
    store: &RecordingStore,
    filter: &ExportFilter,
    job: &CursorExport,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<u64> {
    let fresh = !job.cursor.exists();
    let mut cursor = Cursor::load(&job.cursor)?;
    let mut sink: Box<dyn BatchSink> = match &job.out {
        Some(path) => {
            // A new cursor starts the file from nothing: never cut a file it did not write.
            if fresh && std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
                return Err(std::io::Error::other(format!(
                    "{} already holds data and {} does not exist: give a new --out file, or the --cursor that wrote this one",
                    path.display(),
                    job.cursor.display()
                )));
            }
            if fresh {
                // Saved before anything is written, so that a crash in the first pass finds
                // this cursor, not a file it would refuse to cut.
                cursor.save(&job.cursor)?;
            }
            // Whatever was written after the last saved cursor is written again below.
            Box::new(FileSink::open(path, cursor.out_len)?)
        }
        None => Box::new(StdoutSink),
    };
    follow_into(store, filter, job, &mut cursor, sink.as_mut(), stop)
}

/// The export loop over any sink: read a batch, have the sink confirm it, then save the
/// cursor past it. A crash between the two sends the batch again; none loses it.
pub fn follow_into(
    store: &RecordingStore,
    filter: &ExportFilter,
    job: &CursorExport,
    cursor: &mut Cursor,
    sink: &mut dyn BatchSink,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<u64> {
    let mut reader = BatchReader::new(store, filter, job.batch_bytes);
    let mut sent = 0u64;
    loop {
        let mut warnings = Vec::new();
        let batch = reader.next_batch(cursor, &mut warnings)?;
        if batch.advances() {
            sink.write_batch(&batch.lines)?;
            sent += batch.lines.len() as u64;
            cursor.commit(&batch, sink.committed_len());
            cursor.save(&job.cursor)?;
        }
        if batch.more {
            continue;
        }
        if !job.follow || stop() {
            return Ok(sent);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
