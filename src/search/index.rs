//! The search index: a tantivy index in `<recordings>/index/`, one document per recorded
//! event holding only what a search filters on and where the event is, `(sid, ei)`. What a
//! search prints is read back from the recording itself (see `search::query`), so the index
//! is never the authority: a tampered index can hide a hit, never invent or alter one.
//! One more document per recording records that it was indexed and how many events it
//! held, for `dbtape index verify`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tantivy::collector::DocSetCollector;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, Value as _, FAST, INDEXED, STORED, STRING, TEXT};
use tantivy::{doc, Index, IndexWriter, TantivyDocument, Term};

use super::classify::classify_event;
use crate::recording::RecordingStore;
use crate::replay::events::EventStream;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("search index in {path}: {cause}")]
    Index { path: PathBuf, cause: String },
    #[error("recording {sid}: {cause}")]
    Recording { sid: String, cause: String },
}

/// Writer memory: tantivy's floor is 15 MB per indexing thread, and one thread is enough
/// for work that runs in the background.
const WRITER_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone, Copy)]
pub(super) struct Fields {
    pub kind: Field,
    pub sid: Field,
    pub ei: Field,
    pub time: Field,
    pub user: Field,
    pub db: Field,
    pub db_user: Field,
    pub db_name: Field,
    pub protocol: Field,
    pub event: Field,
    pub code: Field,
    pub failed: Field,
    pub class: Field,
    pub table: Field,
    pub fingerprint: Field,
    pub text: Field,
    pub events: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        kind: b.add_text_field("kind", STRING),
        sid: b.add_text_field("sid", STRING | STORED),
        ei: b.add_u64_field("ei", INDEXED | STORED),
        time: b.add_i64_field("time", INDEXED | STORED | FAST),
        user: b.add_text_field("user", STRING),
        db: b.add_text_field("db", STRING),
        db_user: b.add_text_field("db_user", STRING),
        db_name: b.add_text_field("db_name", STRING),
        protocol: b.add_text_field("protocol", STRING),
        event: b.add_text_field("event", STRING),
        code: b.add_text_field("code", STRING),
        failed: b.add_text_field("failed", STRING),
        class: b.add_text_field("class", STRING),
        table: b.add_text_field("table", STRING),
        fingerprint: b.add_text_field("fingerprint", STRING),
        // The default tokenizer: words split on punctuation, lower-cased, with positions
        // for phrase queries.
        text: b.add_text_field("text", TEXT),
        events: b.add_u64_field("events", STORED),
    };
    (b.build(), fields)
}

pub struct SearchIndex {
    pub(super) index: Index,
    pub(super) fields: Fields,
    path: PathBuf,
}

/// The index folder of a recordings folder.
pub fn index_dir(recordings: &Path) -> PathBuf {
    recordings.join("index")
}

impl SearchIndex {
    /// Opens the index beside the recordings, creating it if there is none.
    pub fn open(recordings: &Path) -> Result<SearchIndex, IndexError> {
        let path = index_dir(recordings);
        let fail = |cause: String| IndexError::Index { path: path.clone(), cause };
        std::fs::create_dir_all(&path).map_err(|e| fail(e.to_string()))?;
        let (schema, fields) = schema();
        let dir = tantivy::directory::MmapDirectory::open(&path).map_err(|e| fail(e.to_string()))?;
        let index = Index::open_or_create(dir, schema).map_err(|e| fail(format!("{e}; `dbtape index rebuild` makes a new one")))?;
        Ok(SearchIndex { index, fields, path })
    }

    fn error(&self, cause: impl std::fmt::Display) -> IndexError {
        IndexError::Index { path: self.path.clone(), cause: cause.to_string() }
    }

    pub(super) fn searcher(&self) -> Result<tantivy::Searcher, IndexError> {
        Ok(self.index.reader().map_err(|e| self.error(e))?.searcher())
    }

    /// Recordings the index covers, with the events it took from each.
    pub fn covered(&self) -> Result<HashMap<String, u64>, IndexError> {
        let searcher = self.searcher()?;
        let query = TermQuery::new(Term::from_field_text(self.fields.kind, "recording"), IndexRecordOption::Basic);
        let docs = searcher.search(&query, &DocSetCollector).map_err(|e| self.error(e))?;
        let mut covered = HashMap::new();
        for address in docs {
            let doc: TantivyDocument = searcher.doc(address).map_err(|e| self.error(e))?;
            let sid = doc.get_first(self.fields.sid).and_then(|v| v.as_str().map(str::to_string));
            let events = doc.get_first(self.fields.events).and_then(|v| v.as_u64());
            if let (Some(sid), Some(events)) = (sid, events) {
                covered.insert(sid, events);
            }
        }
        Ok(covered)
    }

    /// Sealed (or recovered) recordings the index does not cover yet.
    pub fn missing(&self, store: &RecordingStore) -> Result<Vec<String>, IndexError> {
        let covered = self.covered()?;
        let mut missing: Vec<String> = indexable(store).into_iter().filter(|sid| !covered.contains_key(sid)).collect();
        missing.sort();
        Ok(missing)
    }

    /// Indexes these recordings in one commit. Returns the events indexed.
    pub fn add(&self, store: &RecordingStore, sids: &[String]) -> Result<u64, IndexError> {
        if sids.is_empty() {
            return Ok(0);
        }
        let mut writer: IndexWriter = self
            .index
            .writer_with_num_threads(1, WRITER_BYTES)
            .map_err(|e| self.error(format!("{e} (is another `dbtape serve` or `dbtape index` writing it?)")))?;
        let mut total = 0;
        for sid in sids {
            // A recording indexed before (a rebuild, or two indexers) is replaced whole.
            writer.delete_term(Term::from_field_text(self.fields.sid, sid));
            match self.add_recording(&writer, store, sid) {
                Ok(events) => total += events,
                Err(e) => tracing::warn!(sid, error = %e, "recording not indexed"),
            }
        }
        writer.commit().map_err(|e| self.error(e))?;
        Ok(total)
    }

    /// Empties the index and indexes every sealed recording again.
    pub fn rebuild(&self, store: &RecordingStore) -> Result<(usize, u64), IndexError> {
        {
            let mut writer: IndexWriter = self.index.writer_with_num_threads(1, WRITER_BYTES).map_err(|e| self.error(e))?;
            writer.delete_all_documents().map_err(|e| self.error(e))?;
            writer.commit().map_err(|e| self.error(e))?;
        }
        let mut sids = indexable(store);
        sids.sort();
        let events = self.add(store, &sids)?;
        Ok((sids.len(), events))
    }

    fn add_recording(&self, writer: &IndexWriter, store: &RecordingStore, sid: &str) -> Result<u64, IndexError> {
        let fail = |cause: String| IndexError::Recording { sid: sid.to_string(), cause };
        let mut stream = EventStream::open(store, sid, false).map_err(|e| fail(e.to_string()))?;
        let f = self.fields;
        let mut events = 0u64;
        let mut added: Result<(), String> = Ok(());
        stream
            .for_each_event(|line| {
                events += 1;
                let Ok(event) = serde_json::from_slice::<Value>(line) else { return Ok(true) };
                if let Err(e) = writer.add_document(self.event_document(sid, &event)) {
                    added = Err(e.to_string());
                    return Ok(false);
                }
                Ok(true)
            })
            .map_err(|e| fail(e.to_string()))?;
        added.map_err(fail)?;
        writer.add_document(doc!(f.kind => "recording", f.sid => sid, f.events => events)).map_err(|e| fail(e.to_string()))?;
        Ok(events)
    }

    fn event_document(&self, sid: &str, event: &Value) -> TantivyDocument {
        let f = self.fields;
        let text_of = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or_default();
        let mut doc = doc!(
            f.kind => "event",
            f.sid => sid,
            f.ei => event.get("ei").and_then(Value::as_u64).unwrap_or_default(),
            f.time => super::query::event_time_ms(event).unwrap_or_default(),
            f.user => text_of("user"),
            f.db => text_of("db_service"),
            f.db_user => text_of("db_user"),
            f.db_name => text_of("db_name"),
            f.protocol => text_of("db_protocol"),
            f.event => text_of("event"),
            f.code => text_of("code"),
        );
        if super::query::is_failure(event) {
            doc.add_text(f.failed, "1");
        }
        if let Some(classified) = classify_event(event) {
            for class in &classified.classes {
                doc.add_text(f.class, class.as_str());
            }
            for table in &classified.tables {
                doc.add_text(f.table, table);
            }
            if !classified.fingerprint.is_empty() {
                doc.add_text(f.fingerprint, &classified.fingerprint);
            }
        }
        let text = super::query::searchable_text(event);
        if !text.is_empty() {
            doc.add_text(f.text, &text);
        }
        doc
    }

    /// `(sid, ei, time)` of every event document matching `query` (with kind = event).
    pub(super) fn hits(&self, query: Box<dyn Query>) -> Result<Vec<(String, u64, i64)>, IndexError> {
        let searcher = self.searcher()?;
        let f = self.fields;
        let events_only: Box<dyn Query> = Box::new(TermQuery::new(Term::from_field_text(f.kind, "event"), IndexRecordOption::Basic));
        let query = BooleanQuery::new(vec![(Occur::Must, events_only), (Occur::Must, query)]);
        let docs = searcher.search(&query, &DocSetCollector).map_err(|e| self.error(e))?;
        let mut hits = Vec::with_capacity(docs.len());
        for address in docs {
            let doc: TantivyDocument = searcher.doc(address).map_err(|e| self.error(e))?;
            let sid = doc.get_first(f.sid).and_then(|v| v.as_str().map(str::to_string));
            let ei = doc.get_first(f.ei).and_then(|v| v.as_u64());
            let time = doc.get_first(f.time).and_then(|v| v.as_i64());
            if let (Some(sid), Some(ei), Some(time)) = (sid, ei, time) {
                hits.push((sid, ei, time));
            }
        }
        hits.sort_by(|a, b| (a.2, &a.0, a.1).cmp(&(b.2, &b.0, b.1)));
        Ok(hits)
    }
}

/// Recordings an index takes: sealed or recovered, that is, with a signed manifest.
fn indexable(store: &RecordingStore) -> Vec<String> {
    store.session_ids().unwrap_or_default().into_iter().filter(|sid| store.manifest_path(sid).exists() && !store.is_locked(sid)).collect()
}
