//! A search: filters turned into an index query, and every hit read back from its signed
//! recording and checked against the same filters there. An index entry the recording does
//! not bear out (a tampered or stale index) is dropped and reported, never printed.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde_json::Value;
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::Term;

use super::fields::{event_time_ms, is_failure, is_indexed_word, searchable_text, words};
use super::index::{IndexError, SearchIndex};
use crate::recording::events::{peek_ei, EventStream};
use crate::recording::verify::{check_signed_file, KeyRing};
use crate::recording::RecordingStore;
use crate::statement::classify::{classify_event, StatementClass};

/// Filters that combine (all must hold).
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    pub user: Option<String>,
    pub db: Option<String>,
    pub db_user: Option<String>,
    pub db_name: Option<String>,
    pub protocol: Option<String>,
    pub events: Vec<String>,
    pub codes: Vec<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub sid: Option<String>,
    /// Failed queries and results with errors, refused logins.
    pub failed: bool,
    pub class: Option<StatementClass>,
    /// A table or collection name.
    pub table: Option<String>,
    pub fingerprint: Option<String>,
    /// Words (all must appear) and "quoted phrases".
    pub text: Option<String>,
    /// A regular expression over the statement: the slower fallback, applied on read-back.
    pub regex: Option<regex::Regex>,
}

/// One hit, as the recording has it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub sid: String,
    pub ei: u64,
    pub time_ms: i64,
    pub event: Value,
    /// The recorded JSON line, byte for byte as `export` writes it.
    pub line: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct SearchOutcome {
    pub hits: Vec<Hit>,
    /// Why index entries were dropped, or whole recordings skipped.
    pub warnings: Vec<String>,
}

/// `--text` split into phrases: a quoted run is one phrase, every other word its own.
fn phrases(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, part) in text.split('"').enumerate() {
        if i % 2 == 1 {
            let phrase = words(part);
            if !phrase.is_empty() {
                out.push(phrase);
            }
        } else {
            out.extend(words(part).into_iter().map(|w| vec![w]));
        }
    }
    out
}

impl SearchFilter {
    fn index_query(&self, index: &SearchIndex) -> Box<dyn Query> {
        let f = index.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let term = |field: Field, value: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(Term::from_field_text(field, value), IndexRecordOption::Basic))
        };
        let any_of = |field: Field, values: &[String]| -> Box<dyn Query> {
            Box::new(BooleanQuery::new(values.iter().map(|v| (Occur::Should, term(field, v))).collect()))
        };
        for (field, value) in [
            (f.user, &self.user),
            (f.db, &self.db),
            (f.db_user, &self.db_user),
            (f.db_name, &self.db_name),
            (f.protocol, &self.protocol),
            (f.sid, &self.sid),
            (f.fingerprint, &self.fingerprint),
        ] {
            if let Some(value) = value {
                clauses.push((Occur::Must, term(field, value)));
            }
        }
        if !self.events.is_empty() {
            clauses.push((Occur::Must, any_of(f.event, &self.events)));
        }
        if !self.codes.is_empty() {
            clauses.push((Occur::Must, any_of(f.code, &self.codes)));
        }
        if self.failed {
            clauses.push((Occur::Must, term(f.failed, "1")));
        }
        if let Some(class) = self.class {
            clauses.push((Occur::Must, term(f.class, class.as_str())));
        }
        if let Some(table) = &self.table {
            clauses.push((Occur::Must, term(f.table, &table.to_lowercase())));
        }
        if self.since_ms.is_some() || self.until_ms.is_some() {
            // The index holds whole seconds; the read-back applies the milliseconds.
            let second = |t: i64| Term::from_field_i64(f.time, t.div_euclid(1000));
            let lower = self.since_ms.map_or(Bound::Unbounded, |t| Bound::Included(second(t)));
            let upper = self.until_ms.map_or(Bound::Unbounded, |t| Bound::Included(second(t)));
            clauses.push((Occur::Must, Box::new(RangeQuery::new(lower, upper))));
        }
        // The index keeps words without their positions, and not long numbers: it narrows
        // the candidates to events holding every indexed word, and the read-back checks the
        // phrases, numbers included, against the recorded statement.
        for phrase in phrases(self.text.as_deref().unwrap_or_default()) {
            for word in phrase.iter().filter(|w| is_indexed_word(w)) {
                clauses.push((Occur::Must, term(f.text, word)));
            }
        }
        if clauses.is_empty() {
            return Box::new(tantivy::query::AllQuery);
        }
        Box::new(BooleanQuery::new(clauses))
    }

    /// The same filters, checked against the event as recorded.
    pub fn matches(&self, sid: &str, event: &Value) -> bool {
        let field = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or_default();
        let equal = |want: &Option<String>, key: &str| want.as_ref().is_none_or(|w| w == field(key));
        if !(equal(&self.user, "user")
            && equal(&self.db, "db_service")
            && equal(&self.db_user, "db_user")
            && equal(&self.db_name, "db_name")
            && equal(&self.protocol, "db_protocol")
            && self.sid.as_ref().is_none_or(|s| s == sid))
        {
            return false;
        }
        if !self.events.is_empty() && !self.events.iter().any(|e| e == field("event")) {
            return false;
        }
        if !self.codes.is_empty() && !self.codes.iter().any(|c| c == field("code")) {
            return false;
        }
        if self.failed && !is_failure(event) {
            return false;
        }
        let time = event_time_ms(event).unwrap_or_default();
        if self.since_ms.is_some_and(|s| time < s) || self.until_ms.is_some_and(|u| time > u) {
            return false;
        }
        if self.class.is_some() || self.table.is_some() || self.fingerprint.is_some() {
            let Some(classified) = classify_event(event) else { return false };
            if self.class.is_some_and(|c| !classified.classes.contains(&c))
                || self.table.as_ref().is_some_and(|t| !classified.tables.contains(&t.to_lowercase()))
                || self.fingerprint.as_ref().is_some_and(|fp| *fp != classified.fingerprint)
            {
                return false;
            }
        }
        let text = searchable_text(event);
        if let Some(wanted) = &self.text {
            let have = words(&text);
            let found = |phrase: &Vec<String>| have.windows(phrase.len()).any(|w| w == phrase.as_slice());
            if !phrases(wanted).iter().all(found) {
                return false;
            }
        }
        self.regex.as_ref().is_none_or(|r| r.is_match(&text))
    }
}

/// Runs a search: the index names candidates, each recording they are in is verified, and
/// each candidate is read back and checked again.
pub fn search(store: &RecordingStore, index: &SearchIndex, filter: &SearchFilter, keys: &KeyRing) -> Result<SearchOutcome, IndexError> {
    search_first(store, index, filter, keys, usize::MAX, &|_| true)
}

/// As `search`, but reads recordings only until `limit` hits that `keep` accepts are found,
/// earliest first: a page of results costs what the page shows, not what the index holds.
pub fn search_first(
    store: &RecordingStore,
    index: &SearchIndex,
    filter: &SearchFilter,
    keys: &KeyRing,
    limit: usize,
    keep: &dyn Fn(&Value) -> bool,
) -> Result<SearchOutcome, IndexError> {
    let mut outcome = SearchOutcome::default();
    let candidates = index.hits(filter.index_query(index))?;
    let mut rest = &candidates[..];
    while !rest.is_empty() && outcome.hits.len() < limit {
        let (chunk, tail) = rest.split_at((limit - outcome.hits.len()).min(rest.len()));
        rest = tail;
        let mut by_recording: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for (sid, ei, _) in chunk {
            by_recording.entry(sid).or_default().insert(*ei);
        }
        for (sid, wanted) in by_recording {
            read_hits(store, sid, &wanted, filter, keys, keep, &mut outcome);
        }
    }
    outcome.hits.sort_by(|a, b| (a.time_ms, &a.sid, a.ei).cmp(&(b.time_ms, &b.sid, b.ei)));
    Ok(outcome)
}

/// The events `wanted` of one recording, after its signature and file hash are checked.
fn read_hits(
    store: &RecordingStore,
    sid: &str,
    wanted: &BTreeSet<u64>,
    filter: &SearchFilter,
    keys: &KeyRing,
    keep: &dyn Fn(&Value) -> bool,
    outcome: &mut SearchOutcome,
) {
    if crate::recording::validate_session_id(sid).is_err() || store.find(sid).is_err() {
        outcome.warnings.push(format!("the index names a recording {sid:?} that is not in {}", store.dir().display()));
        return;
    }
    if let Err(problem) = check_signed_file(store, sid, keys) {
        outcome.warnings.push(format!("recording {sid} fails verification ({problem}); its {} hit(s) are not shown", wanted.len()));
        return;
    }
    let mut stream = match EventStream::open(store, sid, false) {
        Ok(s) => s,
        Err(e) => {
            outcome.warnings.push(format!("recording {sid}: {e}"));
            return;
        }
    };
    let mut seen = BTreeSet::new();
    let _ = stream.for_each_event(|line| {
        let ei = peek_ei(line).unwrap_or(u64::MAX);
        if wanted.contains(&ei) {
            let Ok(event) = serde_json::from_slice::<Value>(line) else { return Ok(true) };
            seen.insert(ei);
            if !filter.matches(sid, &event) {
                outcome.warnings.push(format!(
                    "index entry ({sid}, {ei}) does not match the recorded event: ignored (a stale or altered index; `dbtape index rebuild`)"
                ));
            } else if keep(&event) {
                let time_ms = event_time_ms(&event).unwrap_or_default();
                outcome.hits.push(Hit { sid: sid.to_string(), ei, time_ms, event, line: line.to_vec() });
            }
        }
        Ok(seen.len() < wanted.len())
    });
    for ei in wanted.difference(&seen) {
        outcome.warnings.push(format!("index entry ({sid}, {ei}) names no recorded event: ignored"));
    }
}
