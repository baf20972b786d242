//! What the player and the search page fetch: a session's screen steps a page at a time, one
//! event's JSON on demand, a live session's new steps as server-sent events, and exports as
//! NDJSON attachments. Everything is JSON or plain text the page inserts as text, never as
//! markup.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::accounts::Reviewer;
use super::http::{Authed, Console, Login};
use super::pages::{visible_session, SearchForm, SearchRow};
use super::text::visible;
use crate::recording::events::EventStream;
use crate::recording::{RecordingStore, SessionSummary};
use crate::replay::screen::ScreenSteps;

#[derive(Serialize)]
pub struct Step {
    pub ei: u64,
    pub time_ms: i64,
    pub text: String,
}

#[derive(Serialize)]
pub struct Steps {
    pub steps: Vec<Step>,
    /// The `from` of the next page; none at the end of what is recorded so far.
    pub next: Option<u64>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct StepsQuery {
    from: u64,
    limit: usize,
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such session, or not one you may see").into_response()
}

/// Why a look at a session is refused.
pub enum Denied {
    /// No such session, or not one the reviewer may see: the same answer for both.
    NotFound,
    /// The look could not be recorded.
    Unrecorded,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::NotFound => not_found(),
            Denied::Unrecorded => super::http::Unrecorded.into_response(),
        }
    }
}

/// The session `sid`, if the reviewer may see it, once the look is recorded as `action`.
pub fn look(console: &Console, login: &Login, sid: &str, action: &str, detail: &str) -> Result<SessionSummary, Denied> {
    let summary = visible_session(console, &login.reviewer, sid).ok_or(Denied::NotFound)?;
    login.audit(action, &summary.sid, detail).map_err(|_| Denied::Unrecorded)?;
    Ok(summary)
}

/// A page of the session's screen steps from `from`: at most `limit` (≤ 1,000), read a
/// frame at a time, so a million-event session's first page costs one frame.
pub async fn steps(
    State(console): State<Arc<Console>>,
    Authed(login): Authed,
    Path(sid): Path<String>,
    Query(query): Query<StepsQuery>,
) -> Response {
    let limit = if query.limit == 0 { 200 } else { query.limit.min(1000) };
    let summary = match look(&console, &login, &sid, "session.steps", &format!("from ei {} (at most {limit} steps)", query.from)) {
        Ok(summary) => summary,
        Err(denied) => return denied.into_response(),
    };
    let store = console.catalog.store().clone();
    let page = tokio::task::spawn_blocking(move || -> std::io::Result<Steps> {
        let stream = EventStream::open(&store, &summary.sid, false)?;
        let mut steps = Vec::new();
        let mut next = None;
        for step in ScreenSteps::new(stream, &summary.db_protocol, query.from) {
            let step = step?;
            if steps.len() == limit {
                next = Some(step.ei);
                break;
            }
            steps.push(Step { ei: step.ei, time_ms: step.time_ms, text: visible(&step.text) });
        }
        Ok(Steps { steps, next })
    })
    .await;
    match page {
        Ok(Ok(page)) => Json(page).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("the recording could not be read: {e}")).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the recording could not be read").into_response(),
    }
}

/// One event as `export` writes it, for the player's "JSON" view.
pub async fn event(State(console): State<Arc<Console>>, Authed(login): Authed, Path((sid, ei)): Path<(String, u64)>) -> Response {
    let summary = match look(&console, &login, &sid, "session.event", &format!("ei {ei}")) {
        Ok(summary) => summary,
        Err(denied) => return denied.into_response(),
    };
    let store = console.catalog.store().clone();
    let found = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<u8>>> {
        let mut stream = EventStream::open(&store, &summary.sid, false)?;
        let mut enricher = crate::statement::enrich::Enricher::new();
        let mut found = None;
        stream.for_each_frame(|info, data| {
            if info.events == 0 {
                return Ok(true);
            }
            for line in crate::recording::reader::event_lines(data) {
                if crate::recording::events::peek_ei(line) == Some(ei) {
                    found = Some(enricher.enriched(line));
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        Ok(found)
    })
    .await;
    match found {
        Ok(Ok(Some(line))) => {
            let mut response = line.into_response();
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, "no such event").into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "the recording could not be read").into_response(),
    }
}

/// A live session's steps from `from` on, as server-sent events, until it ends.
pub async fn follow(
    State(console): State<Arc<Console>>,
    Authed(login): Authed,
    Path(sid): Path<String>,
    Query(query): Query<StepsQuery>,
) -> Response {
    let summary = match look(&console, &login, &sid, "session.follow", &format!("from ei {}", query.from)) {
        Ok(summary) => summary,
        Err(denied) => return denied.into_response(),
    };
    let store = console.catalog.store().clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(256);
    tokio::task::spawn_blocking(move || {
        let Ok(stream) = EventStream::open(&store, &summary.sid, true) else { return };
        for step in ScreenSteps::new(stream, &summary.db_protocol, query.from) {
            let Ok(step) = step else { break };
            let step = Step { ei: step.ei, time_ms: step.time_ms, text: visible(&step.text) };
            let Ok(data) = serde_json::to_string(&step) else { continue };
            // The reviewer closed the page: stop reading.
            if tx.blocking_send(Ok(Event::default().event("step").data(data))).is_err() {
                return;
            }
        }
        let _ = tx.blocking_send(Ok(Event::default().event("end").data("ended")));
    });
    Sse::new(tokio_stream_of(rx)).keep_alive(KeepAlive::default()).into_response()
}

fn tokio_stream_of<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct ExportQuery {
    sid: String,
}

/// One session's events as an NDJSON download (never shown in the page), streamed.
pub async fn export(State(console): State<Arc<Console>>, Authed(login): Authed, Query(query): Query<ExportQuery>) -> Response {
    let summary = match look(&console, &login, &query.sid, "export", "NDJSON") {
        Ok(summary) => summary,
        Err(denied) => return denied.into_response(),
    };
    let store = console.catalog.store().clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    let sid = summary.sid.clone();
    tokio::task::spawn_blocking(move || {
        let filter = crate::replay::export::ExportFilter { session: Some(sid), ..Default::default() };
        let mut writer = ChannelWriter { tx: tx.clone(), buffer: Vec::with_capacity(64 * 1024) };
        let outcome = crate::replay::export::export(&store, &filter, &mut writer);
        let _ = std::io::Write::flush(&mut writer);
        if let Err(e) = outcome {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let mut response = axum::body::Body::from_stream(tokio_stream_of(rx)).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{}.ndjson\"", summary.sid)) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    response
}

struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    buffer: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(64 * 1024));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the download was closed"))
    }
}

/// Runs a search for the search page: the hits the reviewer may see, each rendered as
/// `play` shows it. Returns (rows, whether there were more than a page).
pub fn run_search(
    console: &Console,
    store: &RecordingStore,
    reviewer: &Reviewer,
    form: &SearchForm,
) -> Result<(Vec<SearchRow>, bool), String> {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let query = crate::review::SearchQuery {
        user: opt(&form.user),
        db: opt(&form.db),
        since: opt(&form.since),
        until: opt(&form.until),
        class: opt(&form.class),
        table: opt(&form.table),
        fingerprint: opt(&form.fingerprint),
        text: opt(&form.text),
        ..Default::default()
    };
    let filter = query.filter().map_err(|e| e.to_string())?;
    let index = console.index.as_ref().ok_or("this console has no search index (see its log)")?;
    let text = |event: &serde_json::Value, key: &str| event.get(key).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
    let may_see = |event: &serde_json::Value| reviewer.may_see(&text(event, "db_service"), &text(event, "db_protocol"));
    let limit = super::pages::SEARCH_HITS + 1;
    let outcome = crate::search::search_first(store, index, &filter, console.catalog.keys(), limit, &may_see).map_err(|e| e.to_string())?;
    let more = outcome.hits.len() > super::pages::SEARCH_HITS;
    let mut rows = Vec::new();
    for hit in outcome.hits.iter().take(super::pages::SEARCH_HITS) {
        let field = |key: &str| text(&hit.event, key);
        let what = crate::replay::screen::render_event(&field("db_protocol"), &hit.line).unwrap_or_else(|| field("event"));
        rows.push(SearchRow {
            sid: hit.sid.clone(),
            ei: hit.ei,
            time: chrono::DateTime::<chrono::Utc>::from_timestamp_millis(hit.time_ms)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default(),
            user: visible(&field("user")),
            db: visible(&field("db_service")),
            what: visible(what.trim_end()),
        });
    }
    Ok((rows, more))
}
