//! `dbtape export --cursor FILE [--follow]`: export that remembers what it already sent. The
//! cursor holds, per recording, the next event to send and the recordings finished, plus
//! how long the output file was when it was saved. With `--out`, a restart first cuts the
//! output back to that length, so events written after the last saved cursor (and perhaps
//! torn by a SIGKILL) are written again exactly once: the file holds every event once, in
//! order, however often the exporter is killed. On standard output the guarantee is
//! at-least-once (each event's `uid` lets a collector drop a repeat). Each pass merges what
//! all recordings gained in time order; an event recorded after a later one was already
//! sent (a slow writer's frame) goes out in the next pass.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::export::{matching_sessions, ExportFilter};
use crate::recording::events::{peek_ei, peek_time_ms, EventStream, StreamEnd};
use crate::recording::reader::{event_lines, Position};
use crate::recording::store::write_atomic;
use crate::recording::RecordingStore;
use crate::statement::enrich::Enricher;

#[derive(Debug, Default, Serialize, Deserialize)]
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
    fn load(path: &Path) -> std::io::Result<Cursor> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
            Err(e) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }

    fn save(&self, path: &Path) -> std::io::Result<()> {
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
    let mut out: Box<dyn Write> = match &job.out {
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
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            // Whatever was written after the last saved cursor is written again below.
            file.set_len(cursor.out_len)?;
            Box::new(file)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sent = 0u64;
    let mut enricher = Enricher::for_export(filter.raw);
    loop {
        let mut full = false;
        // One pass reads what every recording gained since the last, then writes it merged
        // in time order, so concurrent sessions' events interleave as they happened.
        let mut warnings = Vec::new();
        let mut batch: Vec<(i64, String, u64, Vec<u8>)> = Vec::new();
        let mut advanced: Vec<(String, u64, bool, Option<Position>)> = Vec::new();
        let mut batch_bytes = 0usize;
        for session in matching_sessions(store, filter, &mut warnings)? {
            let sid = session.sid.clone();
            if cursor.done.contains(&sid) {
                continue;
            }
            if batch_bytes >= job.batch_bytes {
                // The rest waits for the next pass, which follows at once.
                full = true;
                break;
            }
            let from = cursor.next.get(&sid).copied().unwrap_or(0);
            let resume_at = cursor.resume.get(&sid).copied();
            let mut stream = match EventStream::open_at(store, &sid, resume_at) {
                Ok(stream) => stream,
                Err(_) => continue,
            };
            let mut next = from;
            let mut cut_short = false;
            let mut whole_frames_end = resume_at;
            let end = stream.for_each_frame(|info, data| {
                for line in event_lines(data) {
                    let ei = peek_ei(line).unwrap_or(u64::MAX);
                    if ei < from {
                        continue;
                    }
                    if batch_bytes >= job.batch_bytes {
                        cut_short = true;
                        return Ok(false);
                    }
                    next = ei + 1;
                    let time = peek_time_ms(line);
                    if filter.wants_type(line) && time.is_none_or(|t| filter.time_in_range(t)) {
                        let mut owned = Vec::with_capacity(line.len() + 96);
                        enricher.write_line(line, &mut owned)?;
                        batch_bytes += owned.len();
                        batch.push((time.unwrap_or_default(), sid.clone(), ei, owned));
                    }
                }
                whole_frames_end = info.after.or(whole_frames_end);
                Ok(true)
            })?;
            if matches!(end, StreamEnd::Damaged(_)) && resume_at.is_some() {
                // Perhaps the saved position no longer fits the file: read it whole next time.
                cursor.resume.remove(&sid);
            }
            let finished =
                !cut_short && (matches!(end, StreamEnd::Sealed) || (store.manifest_path(&sid).exists() && !store.is_locked(&sid)));
            full |= cut_short;
            if next != from || finished {
                advanced.push((sid, next, finished, whole_frames_end));
            }
        }
        if !advanced.is_empty() {
            batch.sort_by(|a, b| (a.0, &a.1, a.2).cmp(&(b.0, &b.1, b.2)));
            for (_, _, _, line) in &batch {
                out.write_all(line)?;
            }
            out.flush()?;
            sent += batch.len() as u64;
            for (sid, next, finished, resume_at) in advanced {
                if finished {
                    cursor.next.remove(&sid);
                    cursor.resume.remove(&sid);
                    cursor.done.insert(sid);
                } else {
                    cursor.next.insert(sid.clone(), next);
                    match resume_at {
                        Some(at) => cursor.resume.insert(sid, at),
                        None => cursor.resume.remove(&sid),
                    };
                }
            }
            if let Some(path) = &job.out {
                // The events reach the disk before the cursor says they were sent.
                let file = std::fs::OpenOptions::new().append(true).open(path)?;
                file.sync_data()?;
                cursor.out_len = file.metadata()?.len();
            }
            cursor.save(&job.cursor)?;
        }
        if full {
            continue;
        }
        if !job.follow || stop() {
            return Ok(sent);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
