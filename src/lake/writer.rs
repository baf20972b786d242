//! The lake writer in `dbtape serve` (and `dbtape lake backfill`): each pass reads what the
//! recordings gained (live ones included, up to their last whole frame) and, once the
//! oldest of it has waited `flush_interval` or it reaches `max_object_bytes`, writes it as
//! one batch: one Parquet object per UTC day it spans, across all sessions, so a fleet of
//! one-request DynamoDB sessions makes few objects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::{Journal, LakeLock, PendingBatch, Range};
use super::table::{parquet_object, Row};
use super::LakeError;
use crate::recording::events::{peek_ei, peek_time_ms, EventStream};
use crate::recording::reader::event_lines;
use crate::recording::RecordingStore;
use crate::replay::cursor::{BatchReader, Cursor, BATCH_BYTES};
use crate::replay::export::ExportFilter;
use crate::s3::ObjectWriter;
use crate::statement::enrich::Enricher;
use crate::tasks::Pass;

/// How often `serve` looks for new events; they are written per `flush_interval`.
pub const PASS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct LakeSettings {
    /// The table's folder in the bucket, ending in `/` (or empty).
    pub prefix: String,
    pub flush_interval: Duration,
    pub max_object_bytes: usize,
    /// Names this host's objects, so that proxies sharing a bucket never write one key.
    pub server_id: String,
    pub formats: Formats,
    /// `ext/<source>/region=<region>/accountId=<account>/`, for the OCSF objects.
    pub ocsf_path: String,
}

/// Which tables a batch is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    pub dbtape: bool,
    pub ocsf: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Dbtape,
    Ocsf,
}

impl LakeSettings {
    pub fn from_config(lake: &crate::config::LakeSection, server_id: &str, s3_region: &str) -> Self {
        let region = if lake.ocsf_region.is_empty() { s3_region } else { &lake.ocsf_region };
        LakeSettings {
            prefix: lake.prefix.clone(),
            flush_interval: lake.flush_interval,
            max_object_bytes: lake.max_object_bytes,
            server_id: server_id.replace(['/', '\\'], "_"),
            formats: Formats { dbtape: lake.formats.iter().any(|f| f == "dbtape"), ocsf: lake.formats.iter().any(|f| f == "ocsf") },
            ocsf_path: format!("ext/{}/region={region}/accountId={}/", lake.ocsf_source_name, lake.ocsf_account_id),
        }
    }

    /// The key of a batch's object of one format and UTC day (`YYYY-MM-DD`).
    pub fn object_key(&self, format: Format, day: &str, seq: u64) -> String {
        match format {
            Format::Dbtape => format!("{}events/event_date={day}/{}-{seq:010}.parquet", self.prefix, self.server_id),
            Format::Ocsf => {
                format!("{}{}eventDay={}/{}-{seq:010}.parquet", self.prefix, self.ocsf_path, day.replace('-', ""), self.server_id)
            }
        }
    }
}

/// Events read but not yet written.
#[derive(Default)]
struct Waiting {
    ranges: BTreeMap<String, Range>,
    bytes: usize,
    since: Option<Instant>,
}

pub struct LakeWriter {
    store: RecordingStore,
    settings: LakeSettings,
    objects: ObjectWriter,
    runtime: tokio::runtime::Runtime,
    journal: Journal,
    /// How far the recordings have been read: ahead of the journal's cursor by `waiting`.
    read: Cursor,
    waiting: Waiting,
    /// Kept from batch to batch: its cache of derived statement fields serves the same
    /// statements (prepared, or repeated) every batch meets again.
    enricher: Enricher,
    _lock: LakeLock,
}

/// What a pass or a catch-up wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub events: u64,
    pub objects: u64,
    pub bytes: u64,
}

impl LakeWriter {
    pub fn open(store: RecordingStore, s3: &crate::config::S3Storage, settings: LakeSettings) -> Result<LakeWriter, LakeError> {
        let lock = LakeLock::take(store.dir())?;
        let journal = Journal::load(store.dir())?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| LakeError::Upload(e.to_string()))?;
        let client = runtime.block_on(crate::s3::s3_client(s3));
        let objects = ObjectWriter::new(client, s3.clone());
        let read = journal.pending.as_ref().map_or_else(|| journal.cursor.clone(), |p| p.after.clone());
        Ok(LakeWriter {
            store,
            settings,
            objects,
            runtime,
            journal,
            read,
            waiting: Waiting::default(),
            enricher: Enricher::for_export(false),
            _lock: lock,
        })
    }

    /// One background pass: retries a batch left unconfirmed, reads what is new, and writes
    /// it when it is due.
    pub fn pass(&mut self) -> Pass {
        match self.step(false) {
            Ok(written) if written.events > 0 => {
                tracing::info!(events = written.events, objects = written.objects, bytes = written.bytes, "lake batch written");
                Pass::Worked
            }
            Ok(_) => Pass::Idle,
            Err(e) => {
                tracing::warn!(error = %e, "lake pass failed; the batch is retried at the next pass");
                Pass::Idle
            }
        }
    }

    /// Writes everything the recordings hold now, without waiting for `flush_interval`.
    pub fn catch_up(&mut self, mut progress: impl FnMut(Written)) -> Result<Written, LakeError> {
        let mut total = Written::default();
        loop {
            let written = self.step(true)?;
            if written.events == 0 && self.waiting.ranges.is_empty() && self.journal.pending.is_none() {
                return Ok(total);
            }
            total.events += written.events;
            total.objects += written.objects;
            total.bytes += written.bytes;
            progress(total);
        }
    }

    fn step(&mut self, now: bool) -> Result<Written, LakeError> {
        if self.journal.pending.is_some() {
            return self.write_pending();
        }
        self.read_new()?;
        let due = self.waiting.bytes >= self.settings.max_object_bytes
            || self.waiting.since.is_some_and(|since| now || since.elapsed() >= self.settings.flush_interval);
        if self.waiting.ranges.is_empty() {
            // Only recordings finished with nothing new: remember that, cheaply.
            if self.read.done.len() != self.journal.cursor.done.len() {
                self.journal.cursor = self.read.clone();
                self.journal.save(self.store.dir())?;
            }
            return Ok(Written::default());
        }
        if !due {
            return Ok(Written::default());
        }
        let waiting = std::mem::take(&mut self.waiting);
        self.journal.pending = Some(PendingBatch { seq: self.journal.next_seq, ranges: waiting.ranges, after: self.read.clone() });
        // Recorded before any object is uploaded: a crash from here on rebuilds this batch.
        self.journal.save(self.store.dir())?;
        self.write_pending()
    }

    /// Reads what the recordings gained, up to about `max_object_bytes`.
    fn read_new(&mut self) -> Result<(), LakeError> {
        let filter = ExportFilter { raw: true, ..ExportFilter::default() };
        let mut reader = BatchReader::new(&self.store, &filter, BATCH_BYTES);
        let mut warnings = Vec::new();
        while self.waiting.bytes < self.settings.max_object_bytes {
            let batch = reader.next_batch(&mut self.read, &mut warnings).map_err(|e| LakeError::Recordings(e.to_string()))?;
            if !batch.advances() {
                break;
            }
            for line in &batch.lines {
                let range = self.waiting.ranges.entry(line.sid.clone()).or_insert(Range { from: line.ei, to: line.ei + 1 });
                range.from = range.from.min(line.ei);
                range.to = range.to.max(line.ei + 1);
                self.waiting.bytes += line.line.len();
            }
            if !batch.lines.is_empty() && self.waiting.since.is_none() {
                self.waiting.since = Some(Instant::now());
            }
            self.read.commit(&batch, None);
            if !batch.more {
                break;
            }
        }
        for warning in warnings {
            tracing::debug!(%warning, "lake: recording skipped this pass");
        }
        Ok(())
    }

    /// Builds the pending batch from its ranges and uploads it; confirms it in the journal.
    fn write_pending(&mut self) -> Result<Written, LakeError> {
        let Some(pending) = &self.journal.pending else { return Ok(Written::default()) };
        let seq = pending.seq;
        let objects = build_batch(&self.store, &self.journal.cursor, &pending.ranges, &self.settings, &mut self.enricher)?;
        let mut written = Written::default();
        for object in objects {
            let key = self.settings.object_key(object.format, &object.day, seq);
            if object.format == Format::Dbtape || !self.settings.formats.dbtape {
                written.events += object.rows;
            }
            written.objects += 1;
            written.bytes += object.parquet.len() as u64;
            self.runtime
                .block_on(self.objects.put(&key, object.parquet, "application/vnd.apache.parquet"))
                .map_err(|e| LakeError::Upload(format!("{key}: {e}")))?;
        }
        if let Some(pending) = self.journal.pending.take() {
            self.journal.cursor = pending.after;
            self.journal.next_seq = seq + 1;
        }
        self.journal.save(self.store.dir())?;
        Ok(written)
    }
}

/// One object of a batch: its day's rows of one format as Parquet.
pub struct DayObject {
    pub format: Format,
    pub day: String,
    pub rows: u64,
    pub parquet: Vec<u8>,
}

/// A batch's objects, one per UTC day, built from the events in `ranges` as `export` would
/// write them (derived fields included). `cursor` says where each recording's read may
/// start. The same events give the same bytes.
pub fn build_batch(
    store: &RecordingStore,
    cursor: &Cursor,
    ranges: &BTreeMap<String, Range>,
    settings: &LakeSettings,
    enricher: &mut Enricher,
) -> Result<Vec<DayObject>, LakeError> {
    let (server_id, formats) = (settings.server_id.as_str(), settings.formats);
    // By day number: naming each row's day cost a string per row.
    let mut days: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
    for (sid, range) in ranges {
        let shared_sid: Arc<str> = Arc::from(sid.as_str());
        let resume = cursor.resume.get(sid).copied();
        let mut stream = EventStream::open_at(store, sid, resume).map_err(|e| LakeError::Recordings(format!("{sid}: {e}")))?;
        stream
            .for_each_frame(|_, data| {
                for line in event_lines(data) {
                    let ei = peek_ei(line).unwrap_or(u64::MAX);
                    if ei < range.from || ei >= range.to {
                        continue;
                    }
                    let time_ms = peek_time_ms(line).unwrap_or_default();
                    let mut enriched = Vec::with_capacity(line.len() + 96);
                    enricher.write_line(line, &mut enriched)?;
                    enriched.pop();
                    days.entry(time_ms.div_euclid(DAY_MS)).or_default().push(Row { time_ms, sid: shared_sid.clone(), ei, line: enriched });
                }
                Ok(true)
            })
            .map_err(|e| LakeError::Recordings(format!("{sid}: {e}")))?;
    }
    let mut objects = Vec::new();
    for (day, mut rows) in days {
        let day = utc_day(day * DAY_MS);
        if formats.ocsf {
            let events: Vec<serde_json::Value> = rows.iter().filter_map(|row| serde_json::from_slice(&row.line).ok()).collect();
            let mut ocsf = super::ocsf::rows(&events, server_id);
            if !ocsf.is_empty() {
                let parquet = super::ocsf::parquet_object(&mut ocsf)?;
                objects.push(DayObject { format: Format::Ocsf, day: day.clone(), rows: ocsf.len() as u64, parquet });
            }
        }
        if formats.dbtape {
            let parquet = parquet_object(&mut rows, server_id)?;
            objects.push(DayObject { format: Format::Dbtape, day, rows: rows.len() as u64, parquet });
        }
    }
    Ok(objects)
}

const DAY_MS: i64 = 86_400_000;

/// `YYYY-MM-DD` of a time in milliseconds, in UTC: the partition an event goes to.
pub fn utc_day(time_ms: i64) -> String {
    let (year, month, day) = crate::audit::time::civil_from_days(time_ms.div_euclid(DAY_MS));
    format!("{year:04}-{month:02}-{day:02}")
}
