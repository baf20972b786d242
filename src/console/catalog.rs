//! The sessions the console lists: every recording's sidecar, held in memory newest first
//! and reloaded in the background, so a page filters on the server in microseconds rather
//! than reading a hundred thousand files per request. Pages are keyset-paged on
//! `(start, sid)`, so any range pages in constant time and a page never shifts when new
//! sessions arrive. Integrity is computed by the same code as `dbtape verify`, cached per
//! recording size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use super::accounts::Reviewer;
use crate::recording::verify::{verify_with, KeyRing, Verdict, VerifyReport};
use crate::recording::{RecordingState, RecordingStore, SessionSummary};

/// A sidecar's modification time (seconds, nanoseconds) and size.
type SidecarStamp = (i64, i64, u64);

/// What the reviewer filters on, as the page's query string carries it.
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
#[serde(default)]
pub struct SessionFilter {
    pub since: String,
    pub until: String,
    pub user: String,
    pub db: String,
    pub protocol: String,
    pub state: String,
    /// "1": only sessions with failed queries.
    pub failed: String,
    /// "1": only refused-logins logs.
    pub refused: String,
    /// The keyset cursor: the last row of the previous page, `<start_ms>.<sid>`.
    pub after: String,
}

pub struct Catalog {
    store: RecordingStore,
    sessions: RwLock<Arc<Vec<SessionSummary>>>,
    /// Each sidecar as last read, by its modification time and size, so a reload reads only
    /// the sidecars that changed (and live sessions' locks) rather than every file.
    read: Mutex<HashMap<String, (SidecarStamp, SessionSummary)>>,
    integrity: Mutex<HashMap<String, (FileStamp, Arc<VerifyReport>)>>,
    keys: KeyRing,
}

/// A page of sessions, and where the next one starts.
pub struct Page {
    pub rows: Vec<SessionSummary>,
    pub next: Option<String>,
}

impl Catalog {
    pub fn new(store: RecordingStore, keys: KeyRing) -> Catalog {
        let catalog = Catalog {
            store,
            sessions: RwLock::new(Arc::new(Vec::new())),
            read: Mutex::new(HashMap::new()),
            integrity: Mutex::new(HashMap::new()),
            keys,
        };
        catalog.reload();
        catalog
    }

    pub fn store(&self) -> &RecordingStore {
        &self.store
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Brings the list up to date with the folder: reads the sidecars that changed since the
    /// last reload, and every live session's (its lock says whether its writer still runs).
    /// Runs on a blocking thread, every few seconds. Says whether a recording was sealed,
    /// added or removed since the last reload (what the search index must catch up with).
    pub fn reload(&self) -> bool {
        let ids = match self.store.session_ids() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "console: cannot list the recordings");
                return false;
            }
        };
        let Ok(mut read) = self.read.lock() else { return false };
        let mut changed = false;
        let mut all = Vec::with_capacity(ids.len());
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for sid in ids {
            let Some(stamp) = self.store.summary_stamp(&sid) else { continue };
            let cached = read.get(&sid).filter(|(s, summary)| *s == stamp && summary.state != RecordingState::Live);
            let summary = match cached {
                Some((_, summary)) => summary.clone(),
                None => match self.store.read_summary(&sid) {
                    Ok(mut summary) => {
                        if summary.state == RecordingState::Live && !self.store.is_locked(&sid) {
                            summary.state = RecordingState::Unsealed;
                        }
                        changed |= summary.state != RecordingState::Live;
                        read.insert(sid.clone(), (stamp, summary.clone()));
                        summary
                    }
                    Err(_) => continue,
                },
            };
            seen.insert(sid);
            all.push(summary);
        }
        let before = read.len();
        read.retain(|sid, _| seen.contains(sid));
        changed |= read.len() != before;
        drop(read);
        all.sort_by(|a, b| (b.start_ms, &b.sid).cmp(&(a.start_ms, &a.sid)));
        if let Ok(mut sessions) = self.sessions.write() {
            *sessions = Arc::new(all);
        }
        changed
    }

    pub fn summary(&self, sid: &str) -> Option<SessionSummary> {
        let sessions = self.sessions.read().ok()?.clone();
        sessions.iter().find(|s| s.sid == sid).cloned().or_else(|| self.store.read_summary(sid).ok())
    }

    /// One page of the sessions `reviewer` may see that `filter` matches.
    pub fn page(&self, reviewer: &Reviewer, filter: &SessionFilter, range: (Option<i64>, Option<i64>), size: usize) -> Page {
        let sessions = match self.sessions.read() {
            Ok(s) => s.clone(),
            Err(_) => return Page { rows: Vec::new(), next: None },
        };
        let after = parse_cursor(&filter.after);
        // Newest first: skip straight past the cursor with a binary search on (start, sid).
        let start = match &after {
            Some((ms, sid)) => sessions.partition_point(|s| (s.start_ms, s.sid.as_str()) >= (*ms, sid.as_str())),
            None => 0,
        };
        let (since, until) = range;
        let now = chrono::Utc::now().timestamp_millis();
        let mut rows = Vec::with_capacity(size);
        let mut more = false;
        for s in &sessions[start..] {
            if until.is_some_and(|u| s.start_ms > u) {
                continue;
            }
            if !matches(s, reviewer, filter, since, now) {
                continue;
            }
            if rows.len() == size {
                more = true;
                break;
            }
            rows.push(s.clone());
        }
        let next = more.then(|| rows.last().map(|s| format!("{}.{}", s.start_ms, s.sid))).flatten();
        Page { rows, next }
    }

    /// The recording's verification, as `dbtape verify` computes it; recomputed when the
    /// recording or its manifest has changed in any way since (see `FileStamp`).
    pub fn integrity(&self, sid: &str) -> Arc<VerifyReport> {
        let size = FileStamp::of(&self.store.recording_path(sid), &self.store.manifest_path(sid));
        if let Ok(cache) = self.integrity.lock() {
            if let Some((cached, report)) = cache.get(sid) {
                if *cached == size {
                    return report.clone();
                }
            }
        }
        let report = Arc::new(verify_with(&self.store, sid, &self.keys));
        if let Ok(mut cache) = self.integrity.lock() {
            cache.insert(sid.to_string(), (size, report.clone()));
        }
        report
    }
}

/// What tells a file changed: size, inode and the inode's change time of the recording and
/// its manifest. A byte rewritten in place keeps the size, and whoever rewrites it can set
/// the modification time back, but not the change time, which only the kernel sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp([(u64, u64, i64, i64); 2]);

impl FileStamp {
    fn of(recording: &std::path::Path, manifest: &std::path::Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let stamp =
            |path: &std::path::Path| std::fs::metadata(path).map(|m| (m.len(), m.ino(), m.ctime(), m.ctime_nsec())).unwrap_or((0, 0, 0, 0));
        FileStamp([stamp(recording), stamp(manifest)])
    }
}

fn matches(s: &SessionSummary, reviewer: &Reviewer, f: &SessionFilter, since: Option<i64>, now: i64) -> bool {
    let eq = |want: &str, have: &str| want.is_empty() || want == have;
    reviewer.may_see(&s.db_service, &s.db_protocol)
        && since.is_none_or(|since| s.end_ms.unwrap_or(now) >= since)
        && eq(&f.user, &s.user)
        && eq(&f.db, &s.db_service)
        && eq(&f.protocol, &s.db_protocol)
        && eq(&f.state, s.state.as_str())
        && (f.failed != "1" || s.failed_queries > 0)
        && (f.refused != "1" || s.refused_logins > 0)
}

fn parse_cursor(text: &str) -> Option<(i64, String)> {
    let (ms, sid) = text.split_once('.')?;
    Some((ms.parse().ok()?, crate::recording::validate_session_id(sid).ok()?))
}

/// How a session's integrity reads on a page.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrityView {
    /// "verified", "recovered", "live" or "TAMPERED / FAILED".
    pub label: &'static str,
    pub ok: bool,
    pub detail: String,
}

pub fn integrity_view(report: &VerifyReport) -> IntegrityView {
    let signer = match (&report.signed_by, report.key_trusted) {
        (Some(key), true) => format!("signed by trusted key {key}"),
        (Some(key), false) => format!("signed by key {key}, which this console does not trust"),
        (None, _) => "not signed yet".into(),
    };
    let (label, ok) = match report.verdict {
        Verdict::Ok if report.key_trusted => ("verified", true),
        Verdict::Ok => ("untrusted signer", false),
        Verdict::Recovered => ("recovered", true),
        Verdict::Live => ("live", true),
        Verdict::Failed => ("TAMPERED / FAILED", false),
    };
    let mut detail = format!("{signer}; {} frames, {} events chained", report.frames, report.events);
    for problem in &report.problems {
        detail.push_str("; ");
        detail.push_str(problem);
    }
    for note in &report.notes {
        detail.push_str("; ");
        detail.push_str(note);
    }
    IntegrityView { label, ok, detail }
}

/// Runs of one-request DynamoDB sessions by the same user and source within `gap_ms` of
/// each other, shown as one expandable row: an SDK opens a connection per call.
pub fn group_rows(rows: Vec<SessionSummary>, gap_ms: i64) -> Vec<Vec<SessionSummary>> {
    let mut groups: Vec<Vec<SessionSummary>> = Vec::new();
    for row in rows {
        let joins = groups.last().and_then(|g| g.last()).is_some_and(|last| {
            single_request(last)
                && single_request(&row)
                && last.user == row.user
                && last.db_service == row.db_service
                && last.db_user == row.db_user
                && source_host(&last.remote_addr) == source_host(&row.remote_addr)
                && (last.start_ms - row.start_ms).abs() <= gap_ms
        });
        match groups.last_mut() {
            Some(group) if joins => group.push(row),
            _ => groups.push(vec![row]),
        }
    }
    groups
}

fn single_request(s: &SessionSummary) -> bool {
    s.db_protocol == "dynamodb" && s.queries <= 1
}

/// The client's address without its port: each call comes from a new port.
fn source_host(addr: &str) -> &str {
    addr.rsplit_once(':').map(|(host, _)| host).unwrap_or(addr)
}
