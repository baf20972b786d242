//! `dbtape export`: JSON Lines for a SIEM, streamed in constant memory. Sessions go out in
//! order of their start time, each session's events in `ei` order.

use std::io::Write;

use crate::recording::events::{peek_event_type, peek_time_ms, EventStream, StreamEnd};
use crate::recording::{RecordingStore, SessionSummary};
use crate::statement::enrich::Enricher;

#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub user: Option<String>,
    pub db: Option<String>,
    pub protocol: Option<String>,
    pub event_types: Vec<String>,
    pub session: Option<String>,
    /// Events exactly as recorded, without the statement fields derived on reading
    /// (`db_statement_class`, `db_tables`, `db_query_fingerprint`: see `enrich`).
    pub raw: bool,
}

impl ExportFilter {
    pub fn session_matches(&self, s: &SessionSummary) -> bool {
        let now = chrono::Utc::now().timestamp_millis();
        self.user.as_ref().is_none_or(|u| *u == s.user)
            && self.db.as_ref().is_none_or(|d| *d == s.db_service)
            && self.protocol.as_ref().is_none_or(|p| *p == s.db_protocol)
            && self.session.as_ref().is_none_or(|sid| *sid == s.sid)
            && self.until_ms.is_none_or(|until| s.start_ms <= until)
            && self.since_ms.is_none_or(|since| s.end_ms.unwrap_or(now) >= since)
    }

    pub(crate) fn time_in_range(&self, t: i64) -> bool {
        self.since_ms.is_none_or(|s| t >= s) && self.until_ms.is_none_or(|u| t <= u)
    }

    /// Whether an event line is of a type the filter asks for (any, if it names none).
    pub(crate) fn wants_type(&self, line: &[u8]) -> bool {
        self.event_types.is_empty() || peek_event_type(line).is_some_and(|kind| self.event_types.iter().any(|t| *t == kind))
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExportStats {
    pub sessions: u64,
    pub events: u64,
    pub warnings: Vec<String>,
}

/// Sessions matching the filter, oldest first. Sidecars that cannot be read are reported.
pub fn matching_sessions(
    store: &RecordingStore,
    filter: &ExportFilter,
    warnings: &mut Vec<String>,
) -> std::io::Result<Vec<SessionSummary>> {
    let mut sessions = Vec::new();
    for summary in store.summaries().map_err(std::io::Error::other)? {
        match summary {
            Ok(s) if filter.session_matches(&s) => sessions.push(s),
            Ok(_) => {}
            Err(e) => warnings.push(format!("warning: {e}")),
        }
    }
    sessions.sort_by(|a, b| (a.start_ms, &a.sid).cmp(&(b.start_ms, &b.sid)));
    Ok(sessions)
}

pub fn export(store: &RecordingStore, filter: &ExportFilter, out: &mut impl Write) -> std::io::Result<ExportStats> {
    export_reporting(store, filter, out, |_, _| {})
}

/// As `export`, calling `progress(done, of)` as each matching session is finished.
pub fn export_reporting(
    store: &RecordingStore,
    filter: &ExportFilter,
    out: &mut impl Write,
    mut progress: impl FnMut(usize, usize),
) -> std::io::Result<ExportStats> {
    let mut stats = ExportStats::default();
    let sessions = matching_sessions(store, filter, &mut stats.warnings)?;
    let total = sessions.len();
    let mut enricher = Enricher::for_export(filter.raw);
    for (done, session) in sessions.into_iter().enumerate() {
        progress(done, total);
        let mut stream = match EventStream::open(store, &session.sid, false) {
            Ok(s) => s,
            Err(e) => {
                stats.warnings.push(format!("warning: recording {}: {e}", session.sid));
                continue;
            }
        };
        stats.sessions += 1;
        let end = stream.for_each_frame(|info, data| {
            let whole_frame_in_range = filter.time_in_range(info.min_time_ms) && filter.time_in_range(info.max_time_ms);
            let frame_outside =
                filter.until_ms.is_some_and(|u| info.min_time_ms > u) || filter.since_ms.is_some_and(|s| info.max_time_ms < s);
            if frame_outside {
                return Ok(true);
            }
            if whole_frame_in_range && filter.event_types.is_empty() {
                // Fast path: the frame is already JSON Lines.
                enricher.write_frame(data, out)?;
                stats.events += u64::from(info.events);
                return Ok(true);
            }
            for line in crate::recording::reader::event_lines(data) {
                if !filter.wants_type(line) {
                    continue;
                }
                if !whole_frame_in_range && !peek_time_ms(line).is_some_and(|t| filter.time_in_range(t)) {
                    continue;
                }
                enricher.write_line(line, out)?;
                stats.events += 1;
            }
            Ok(true)
        })?;
        if let Some(warning) = end.warning(&session.sid) {
            if end != StreamEnd::Unsealed {
                stats.warnings.push(warning);
            }
        }
    }
    progress(total, total);
    out.flush()?;
    Ok(stats)
}
