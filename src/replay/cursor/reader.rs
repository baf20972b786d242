//! The reading half of a cursor export: what every recording gained since the cursor, in
//! batches of bounded size, merged in time order. Nothing here moves the cursor; a batch is
//! committed to it only once its sink has confirmed it.

use crate::recording::events::{peek_ei, peek_time_ms, EventStream, StreamEnd};
use crate::recording::reader::{event_lines, Position};
use crate::recording::RecordingStore;
use crate::replay::export::{matching_sessions, ExportFilter};
use crate::statement::enrich::Enricher;

use super::Cursor;

/// One event of a batch, as it will be written (enriched unless the export is raw).
#[derive(Debug, Clone)]
pub struct BatchLine {
    pub time_ms: i64,
    pub sid: String,
    pub ei: u64,
    /// The event's JSON and its line end.
    pub line: Vec<u8>,
}

/// How far a batch took one recording.
#[derive(Debug, Clone)]
pub(super) struct Advance {
    pub(super) sid: String,
    pub(super) next: u64,
    pub(super) finished: bool,
    pub(super) resume_at: Option<Position>,
}

/// Events to send and how far they take each recording.
#[derive(Debug, Default)]
pub struct Batch {
    /// In time order (then session and `ei`), so concurrent sessions interleave as they
    /// happened.
    pub lines: Vec<BatchLine>,
    pub(super) advanced: Vec<Advance>,
    /// The batch filled before every recording was read: another follows at once.
    pub more: bool,
}

impl Batch {
    /// Whether the batch moves the cursor at all (events, or a recording finished).
    pub fn advances(&self) -> bool {
        !self.advanced.is_empty()
    }
}

pub struct BatchReader<'a> {
    store: &'a RecordingStore,
    filter: &'a ExportFilter,
    enricher: Enricher,
    batch_bytes: usize,
}

impl<'a> BatchReader<'a> {
    /// Batches of about `batch_bytes` of events matching `filter`.
    pub fn new(store: &'a RecordingStore, filter: &'a ExportFilter, batch_bytes: usize) -> Self {
        BatchReader { store, filter, enricher: Enricher::for_export(filter.raw), batch_bytes }
    }

    /// What the recordings hold past `cursor`. Each live recording is read from where the
    /// cursor's last whole frame ended, not from its start, so following a session of
    /// millions of events costs only what it gained.
    pub fn next_batch(&mut self, cursor: &mut Cursor, warnings: &mut Vec<String>) -> std::io::Result<Batch> {
        let mut batch = Batch::default();
        let mut batch_bytes = 0usize;
        for session in matching_sessions(self.store, self.filter, warnings)? {
            let sid = session.sid.clone();
            if cursor.done.contains(&sid) {
                continue;
            }
            if batch_bytes >= self.batch_bytes {
                // The rest waits for the next batch, which follows at once.
                batch.more = true;
                break;
            }
            let from = cursor.next.get(&sid).copied().unwrap_or(0);
            let resume_at = cursor.resume.get(&sid).copied();
            let Ok(mut stream) = EventStream::open_at(self.store, &sid, resume_at) else { continue };
            let mut next = from;
            let mut cut_short = false;
            let mut whole_frames_end = resume_at;
            let (filter, enricher, limit) = (self.filter, &mut self.enricher, self.batch_bytes);
            let lines = &mut batch.lines;
            let end = stream.for_each_frame(|info, data| {
                for line in event_lines(data) {
                    let ei = peek_ei(line).unwrap_or(u64::MAX);
                    if ei < from {
                        continue;
                    }
                    if batch_bytes >= limit {
                        cut_short = true;
                        return Ok(false);
                    }
                    next = ei + 1;
                    let time = peek_time_ms(line);
                    if filter.wants_type(line) && time.is_none_or(|t| filter.time_in_range(t)) {
                        let mut owned = Vec::with_capacity(line.len() + 96);
                        enricher.write_line(line, &mut owned)?;
                        batch_bytes += owned.len();
                        lines.push(BatchLine { time_ms: time.unwrap_or_default(), sid: sid.clone(), ei, line: owned });
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
                !cut_short && (matches!(end, StreamEnd::Sealed) || (self.store.has_manifest(&sid) && !self.store.is_locked(&sid)));
            batch.more |= cut_short;
            if next != from || finished {
                batch.advanced.push(Advance { sid, next, finished, resume_at: whole_frames_end });
            }
        }
        batch.lines.sort_by(|a, b| (a.time_ms, &a.sid, a.ei).cmp(&(b.time_ms, &b.sid, b.ei)));
        Ok(batch)
    }
}
