//! The search index: a tantivy index in `<recordings>/index/`, one document per recorded
//! event holding only what a search filters on and where the event is, `(sid, ei)`. What a
//! search prints is read back from the recording itself (see `search::query`), so the index
//! is never the authority: a tampered index can hide a hit, never invent or alter one.
//! One more document per recording records that it was indexed and how many events it
//! held, for `dbtape index verify`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tantivy::collector::{Count, DocSetCollector};
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema};
use tantivy::{doc, Index, IndexWriter, TantivyDocument, Term};

use crate::recording::events::EventStream;
use crate::recording::RecordingStore;
use crate::statement::classify::classify_event;

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
    use tantivy::schema::{NumericOptions, TextFieldIndexing, TextOptions};
    // Nothing is scored, so no field keeps norms (a byte per document per field otherwise),
    // and nothing is stored: where an event is comes from columns.
    let keyword = || {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default().set_tokenizer("raw").set_index_option(IndexRecordOption::Basic).set_fieldnorms(false),
        )
    };
    let column = || NumericOptions::default().set_fast();
    let mut b = Schema::builder();
    let fields = Fields {
        kind: b.add_text_field("kind", keyword()),
        sid: b.add_text_field("sid", keyword().set_fast("raw")),
        ei: b.add_u64_field("ei", column()),
        time: b.add_i64_field("time_s", column()),
        user: b.add_text_field("user", keyword()),
        db: b.add_text_field("db", keyword()),
        db_user: b.add_text_field("db_user", keyword()),
        db_name: b.add_text_field("db_name", keyword()),
        protocol: b.add_text_field("protocol", keyword()),
        event: b.add_text_field("event", keyword()),
        code: b.add_text_field("code", keyword()),
        failed: b.add_text_field("failed", keyword()),
        class: b.add_text_field("class", keyword()),
        table: b.add_text_field("table", keyword()),
        fingerprint: b.add_text_field("fingerprint", keyword()),
        // Words split on punctuation and lower-cased, without positions or long numbers
        // (`fields::indexed_text`): phrases and numbers are checked on read-back.
        text: b.add_text_field(
            "text",
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default().set_tokenizer("default").set_index_option(IndexRecordOption::Basic).set_fieldnorms(false),
            ),
        ),
        events: b.add_u64_field("events", column()),
    };
    (b.build(), fields)
}

/// A document's recording and event, or for a recording's own document, its event count.
struct Located {
    sid: String,
    ei: u64,
    /// Whole seconds.
    time: i64,
    events: Option<u64>,
}

/// Reads where documents are from the columns of each segment.
struct Locator<'a> {
    searcher: &'a tantivy::Searcher,
    columns: HashMap<u32, SegmentColumns>,
}

struct SegmentColumns {
    sid: Option<tantivy::columnar::StrColumn>,
    ei: tantivy::columnar::Column<u64>,
    time: tantivy::columnar::Column<i64>,
    events: tantivy::columnar::Column<u64>,
}

impl<'a> Locator<'a> {
    fn new(searcher: &'a tantivy::Searcher) -> Self {
        Locator { searcher, columns: HashMap::new() }
    }

    fn columns(&mut self, segment: u32) -> tantivy::Result<&SegmentColumns> {
        if !self.columns.contains_key(&segment) {
            let fast = self.searcher.segment_reader(segment).fast_fields();
            let columns =
                SegmentColumns { sid: fast.str("sid")?, ei: fast.u64("ei")?, time: fast.i64("time_s")?, events: fast.u64("events")? };
            self.columns.insert(segment, columns);
        }
        Ok(&self.columns[&segment])
    }

    /// Where one document points.
    fn locate(&mut self, address: tantivy::DocAddress) -> tantivy::Result<Option<Located>> {
        let columns = self.columns(address.segment_ord)?;
        let doc = address.doc_id;
        let Some(sid_column) = &columns.sid else { return Ok(None) };
        let Some(ord) = sid_column.term_ords(doc).next() else { return Ok(None) };
        let mut sid = String::new();
        if !sid_column.ord_to_str(ord, &mut sid)? {
            return Ok(None);
        }
        Ok(Some(Located {
            sid,
            ei: columns.ei.first(doc).unwrap_or_default(),
            time: columns.time.first(doc).unwrap_or_default(),
            events: columns.events.first(doc),
        }))
    }
}

pub struct SearchIndex {
    pub(super) index: Index,
    pub(super) fields: Fields,
    path: PathBuf,
    /// Opened at the first search and kept: opening one reads every segment's files, which
    /// a long-running reader (the console) should not pay per search. `refresh` brings it
    /// up to date with commits, this process's or another's.
    reader: std::sync::Mutex<Option<tantivy::IndexReader>>,
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
        let open = |schema: Schema| -> Result<Index, tantivy::TantivyError> {
            let dir = tantivy::directory::MmapDirectory::open(&path).map_err(|e| tantivy::TantivyError::SystemError(e.to_string()))?;
            // Documents store nothing, but the store still keeps an entry for each: in large
            // zstd blocks that costs next to nothing.
            let settings = tantivy::IndexSettings {
                docstore_compression: tantivy::store::Compressor::Zstd(tantivy::store::ZstdCompressor::default()),
                docstore_blocksize: 1 << 18,
                ..Default::default()
            };
            Index::builder().schema(schema).settings(settings).open_or_create(dir)
        };
        let index = match open(schema.clone()) {
            Ok(index) => index,
            // An index another dbtape version laid out differently: it is only derived
            // data, so it is made again (the next pass or search fills it).
            Err(tantivy::TantivyError::SchemaError(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "search index has another layout; starting a new one");
                std::fs::remove_dir_all(&path).and_then(|()| std::fs::create_dir_all(&path)).map_err(|e| fail(e.to_string()))?;
                open(schema).map_err(|e| fail(e.to_string()))?
            }
            Err(e) => return Err(fail(format!("{e}; remove the folder and run `dbtape index rebuild`"))),
        };
        Ok(SearchIndex { index, fields, path, reader: std::sync::Mutex::new(None) })
    }

    fn error(&self, cause: impl std::fmt::Display) -> IndexError {
        IndexError::Index { path: self.path.clone(), cause: cause.to_string() }
    }

    pub(super) fn searcher(&self) -> Result<tantivy::Searcher, IndexError> {
        let mut reader = self.reader.lock().map_err(|_| self.error("the index reader's lock is poisoned"))?;
        if reader.is_none() {
            let opened = self.index.reader_builder().reload_policy(tantivy::ReloadPolicy::Manual).try_into().map_err(|e| self.error(e))?;
            *reader = Some(opened);
        }
        reader.as_ref().map(|r| r.searcher()).ok_or_else(|| self.error("no index reader"))
    }

    /// Lets the next search see what has been committed since the last one.
    pub fn refresh(&self) -> Result<(), IndexError> {
        let reader = self.reader.lock().map_err(|_| self.error("the index reader's lock is poisoned"))?;
        match reader.as_ref() {
            Some(reader) => reader.reload().map_err(|e| self.error(e)),
            None => Ok(()),
        }
    }

    /// Recordings the index covers, with the events it took from each.
    pub fn covered(&self) -> Result<HashMap<String, u64>, IndexError> {
        let searcher = self.searcher()?;
        let query = TermQuery::new(Term::from_field_text(self.fields.kind, "recording"), IndexRecordOption::Basic);
        let docs = searcher.search(&query, &DocSetCollector).map_err(|e| self.error(e))?;
        let mut covered = HashMap::new();
        let mut locator = Locator::new(&searcher);
        for address in docs {
            if let Some(Located { sid, events: Some(events), .. }) = locator.locate(address).map_err(|e| self.error(e))? {
                covered.insert(sid, events);
            }
        }
        Ok(covered)
    }

    /// Sealed (or recovered) recordings the index does not cover yet.
    pub fn missing(&self, store: &RecordingStore) -> Result<Vec<String>, IndexError> {
        let covered = self.covered()?.into_keys().collect();
        let mut missing = indexable(store, &covered);
        missing.sort();
        Ok(missing)
    }

    /// How many recordings the index holds, counted from its postings alone.
    fn recordings_held(&self) -> Result<usize, IndexError> {
        let query = TermQuery::new(Term::from_field_text(self.fields.kind, "recording"), IndexRecordOption::Basic);
        self.searcher()?.search(&query, &Count).map_err(|e| self.error(e))
    }

    /// Indexes every sealed recording not covered yet. Returns how many recordings and
    /// events it added.
    pub fn catch_up(&self, store: &RecordingStore) -> Result<(usize, u64), IndexError> {
        self.catch_up_with(store, &mut Covered::default())
    }

    /// As `catch_up`, for an indexer that passes again and again: what the index covers is
    /// kept in `covered` between passes rather than read back from every recording's
    /// document each time, and read again only when the index holds another number of
    /// recordings than this indexer left it with (another process wrote to it).
    pub fn catch_up_with(&self, store: &RecordingStore, covered: &mut Covered) -> Result<(usize, u64), IndexError> {
        // Another process (a `dbtape index` run, say) may have committed since.
        self.refresh()?;
        let held = self.recordings_held()?;
        let whole = covered.recordings != Some(held);
        if whole {
            let sids: HashSet<String> = self.covered()?.into_keys().collect();
            // Documents without an event count are indexed again, as before; the count then
            // never matches and the cache is not trusted.
            covered.recordings = (sids.len() == held).then_some(held);
            covered.sids = sids;
        }
        // After a whole look, only what was packed since, and the sessions in their own files.
        let (packed, mark) = store.packed_since(if whole { 0 } else { covered.packed_mark });
        let own: HashSet<String> = store.file_session_ids().unwrap_or_default().into_iter().collect();
        // Packed ones first and in the order found, block by block, so that indexing them
        // decompresses each block once; then own files the list does not hold already (one
        // being packed can be in both).
        let mut missing: Vec<String> = packed.into_iter().filter(|sid| !covered.sids.contains(sid)).collect();
        let listed: HashSet<&str> = missing.iter().map(String::as_str).collect();
        let unpacked: Vec<String> =
            own.iter().filter(|sid| !covered.sids.contains(*sid) && !listed.contains(sid.as_str())).cloned().collect();
        missing.extend(unpacked);
        missing.retain(|sid| store.is_sealed_at_rest(sid));
        let events = self.add(store, &missing)?;
        let now = self.recordings_held()?;
        if covered.recordings.is_some_and(|before| now == before + missing.len()) {
            covered.recordings = Some(now);
            covered.packed_mark = mark;
            // Packed sessions are behind the mark from now on; only those in their own files
            // are remembered (one still there may be packed later), so this stays small.
            covered.sids.retain(|sid| own.contains(sid));
            covered.sids.extend(missing.iter().filter(|sid| own.contains(*sid)).cloned());
        } else {
            // A recording failed to index, or another writer raced this one: read it all
            // again at the next pass.
            covered.recordings = None;
        }
        Ok((missing.len(), events))
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
        // Let the segments this pass wrote merge: fewer, larger segments are smaller on disk
        // and faster to search.
        writer.wait_merging_threads().map_err(|e| self.error(e))?;
        self.refresh()?;
        Ok(total)
    }

    /// Empties the index and indexes every sealed recording again.
    pub fn rebuild(&self, store: &RecordingStore) -> Result<(usize, u64), IndexError> {
        {
            let mut writer: IndexWriter = self.index.writer_with_num_threads(1, WRITER_BYTES).map_err(|e| self.error(e))?;
            writer.delete_all_documents().map_err(|e| self.error(e))?;
            writer.commit().map_err(|e| self.error(e))?;
        }
        self.refresh()?;
        let mut sids = indexable(store, &HashSet::new());
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
                // A successful result holds nothing a question asks about that its query does
                // not (the rows it touched are in `play` and `export`): leaving these out
                // halves the index. Failed results are kept for --failed.
                if event.get("event").and_then(Value::as_str) == Some("db.session.result") && !super::fields::is_failure(&event) {
                    return Ok(true);
                }
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
            f.sid => sid,
            f.ei => event.get("ei").and_then(Value::as_u64).unwrap_or_default(),
            // Seconds: the column compresses to a third of milliseconds, and the read-back
            // applies the exact time filter and order.
            f.time => super::fields::event_time_ms(event).unwrap_or_default().div_euclid(1000),
            f.user => text_of("user"),
            f.db => text_of("db_service"),
            f.db_user => text_of("db_user"),
            f.db_name => text_of("db_name"),
            f.protocol => text_of("db_protocol"),
            f.event => text_of("event"),
            f.code => text_of("code"),
        );
        if super::fields::is_failure(event) {
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
        let text = super::fields::indexed_text(event);
        if !text.is_empty() {
            doc.add_text(f.text, &text);
        }
        doc
    }

    /// `(sid, ei, time)` of every event document matching `query`.
    pub(super) fn hits(&self, query: Box<dyn Query>) -> Result<Vec<(String, u64, i64)>, IndexError> {
        let searcher = self.searcher()?;
        let f = self.fields;
        // Only the per-recording documents carry a kind.
        let recordings: Box<dyn Query> = Box::new(TermQuery::new(Term::from_field_text(f.kind, "recording"), IndexRecordOption::Basic));
        let query = BooleanQuery::new(vec![(Occur::Must, query), (Occur::MustNot, recordings)]);
        let docs = searcher.search(&query, &DocSetCollector).map_err(|e| self.error(e))?;
        let mut hits = Vec::with_capacity(docs.len());
        let mut locator = Locator::new(&searcher);
        for address in docs {
            if let Some(found) = locator.locate(address).map_err(|e| self.error(e))? {
                hits.push((found.sid, found.ei, found.time));
            }
        }
        hits.sort_by(|a, b| (a.2, &a.0, a.1).cmp(&(b.2, &b.0, b.1)));
        Ok(hits)
    }
}

/// Recordings an index takes (sealed or recovered, that is, with a signed manifest) other
/// than those in `covered`, which are skipped before any file of theirs is looked at. In the
/// store's order: packed sessions come block by block, so that indexing them decompresses
/// each block once, not once per session. A whole look, for one-off runs (`dbtape index`);
/// the background indexer asks only for what is new (`catch_up_with`).
fn indexable(store: &RecordingStore, covered: &HashSet<String>) -> Vec<String> {
    let sids = store.session_ids().unwrap_or_default();
    sids.into_iter().filter(|sid| !covered.contains(sid) && store.is_sealed_at_rest(sid)).collect()
}

/// What an indexer knows the index covers, between its passes (`catch_up_with`).
#[derive(Default)]
pub struct Covered {
    /// The index's count of recordings when this was last true of it; `None` until read.
    recordings: Option<usize>,
    /// Indexed sessions that had their own files at the last pass (every indexed session,
    /// just after a whole look).
    sids: HashSet<String>,
    /// Packed sessions up to here are indexed (`RecordingStore::packed_since`).
    packed_mark: u64,
}
