//! Crash recovery: a recording whose writer died is read up to its last whole frame, and that
//! prefix is signed as `recovered`. The file itself is never modified or deleted.

use super::scan::{scan_recording, ScanEnd};
use super::store::{RecordingState, RecordingStore, SessionSummary, StoreError};
use crate::signing::{ManifestBody, Signer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryOutcome {
    Recovered {
        sid: String,
        events: u64,
        torn_bytes: u64,
    },
    /// Damaged beyond a torn tail; left in place, unsigned, for a human.
    Damaged {
        sid: String,
        problem: String,
    },
}

/// Recovers every recording that is neither sealed nor held open by a live writer, after
/// closing the segments a dead writer left open.
pub fn recover_unsealed(store: &RecordingStore, signer: &Signer) -> Result<Vec<RecoveryOutcome>, StoreError> {
    let segments = super::segment::segments_dir(store.dir());
    super::segment::close_crashed(store.dir()).map_err(|source| StoreError::Io { path: segments, source })?;
    let mut outcomes = Vec::new();
    for sid in store.file_session_ids()? {
        if store.is_locked(&sid) {
            continue;
        }
        if !store.manifest_path(&sid).exists() && drop_packed_copy(store, &sid) {
            continue;
        }
        if let Some(manifest) = store.read_manifest(&sid).ok().flatten() {
            resummarize_sealed(store, &sid, &manifest.body)?;
            continue;
        }
        let summary = store.read_summary(&sid).ok();
        if summary.as_ref().is_some_and(|s| s.state != RecordingState::Live) {
            continue;
        }
        outcomes.push(recover_one(store, signer, &sid, summary)?);
    }
    Ok(outcomes)
}

/// A session the writer packed, whose own files a crash (or a lost unlink) left behind: the
/// segment's copy is the sealed one, so its own files go, once the copy reads back whole.
fn drop_packed_copy(store: &RecordingStore, sid: &str) -> bool {
    let Some(packed) = store.packed(sid) else { return false };
    let own = std::fs::read(store.recording_path(sid)).unwrap_or_default();
    if !packed.recording.starts_with(&own) {
        tracing::warn!(sid, "a packed session's own recording differs from its segment copy; both kept");
        return false;
    }
    for path in [store.recording_path(sid), store.meta_path(sid)] {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!(sid, segment = %packed.segment.display(), "removed a packed session's own files left by a crash");
    true
}

/// A sealed recording's last sidecar is written without an fsync (it is derived data): after
/// a power loss it may be missing or still say live. Rebuilt from the recording here.
fn resummarize_sealed(store: &RecordingStore, sid: &str, manifest: &ManifestBody) -> Result<(), StoreError> {
    let summary = store.read_summary(sid).ok();
    if summary.as_ref().is_some_and(|s| s.state != RecordingState::Live) {
        return Ok(());
    }
    let path = store.recording_path(sid);
    let scan = scan_recording(&path, sid).map_err(|source| StoreError::Io { path: path.clone(), source })?;
    let mut summary = summary.unwrap_or_else(|| blank_summary(sid, &scan));
    summary.events = manifest.event_count;
    summary.queries = scan.tally.queries;
    summary.failed_queries = scan.tally.failed_queries;
    summary.end_ms = manifest.last_time_ms.or(Some(summary.start_ms));
    summary.bytes = manifest.size;
    summary.state = if manifest.state == "sealed" { RecordingState::Sealed } else { RecordingState::Recovered };
    tracing::info!(sid, "rebuilt a sealed recording's sidecar");
    store.write_summary(&summary)
}

fn recover_one(store: &RecordingStore, signer: &Signer, sid: &str, summary: Option<SessionSummary>) -> Result<RecoveryOutcome, StoreError> {
    let path = store.recording_path(sid);
    let scan = scan_recording(&path, sid).map_err(|source| StoreError::Io { path: path.clone(), source })?;
    let torn_bytes = match &scan.end {
        ScanEnd::Open => 0,
        ScanEnd::Truncated { torn_bytes, .. } => *torn_bytes,
        ScanEnd::Sealed(_) => 0,
        ScanEnd::Damaged(problem) => {
            tracing::error!(sid, problem, "recording is damaged; left in place unsigned");
            let mut summary = summary.unwrap_or_else(|| blank_summary(sid, &scan));
            summary.state = RecordingState::Unsealed;
            summary.error = format!("damaged: {problem}");
            store.write_summary(&summary)?;
            return Ok(RecoveryOutcome::Damaged { sid: sid.to_string(), problem: problem.clone() });
        }
    };
    let state = if matches!(scan.end, ScanEnd::Sealed(_)) { "sealed" } else { "recovered" };
    let body = ManifestBody {
        format: "dbtape-manifest-v1".into(),
        sid: sid.to_string(),
        file: format!("{sid}.{}", super::store::RECORDING_EXT),
        size: scan.size,
        sha256: scan.sha256.clone(),
        frames: scan.frames,
        chain_head: scan.chain_head.clone(),
        event_count: scan.tally.events,
        first_time_ms: scan.tally.first_ms,
        last_time_ms: scan.tally.last_ms,
        state: state.into(),
        valid_length: scan.valid_length,
        key_id: signer.key_id().to_string(),
        signed_at_ms: chrono::Utc::now().timestamp_millis(),
        rebuilt_end: if state == "recovered" { rebuild_end_event(&path, sid) } else { None },
    };
    let manifest = signer.sign(body).map_err(|e| StoreError::Parse { path: store.manifest_path(sid), reason: e.to_string() })?;
    store.write_manifest(&manifest)?;
    let mut summary = summary.unwrap_or_else(|| blank_summary(sid, &scan));
    summary.events = scan.tally.events;
    summary.queries = scan.tally.queries;
    summary.failed_queries = scan.tally.failed_queries;
    summary.end_ms = scan.tally.last_ms.or(Some(summary.start_ms));
    summary.bytes = scan.size;
    summary.state = if state == "sealed" { RecordingState::Sealed } else { RecordingState::Recovered };
    if torn_bytes > 0 {
        summary.error = format!("writer died; {torn_bytes} torn bytes after the last whole frame");
    }
    store.write_summary(&summary)?;
    tracing::warn!(sid, events = scan.tally.events, torn_bytes, "recovered an unsealed recording");
    Ok(RecoveryOutcome::Recovered { sid: sid.to_string(), events: scan.tally.events, torn_bytes })
}

/// The `db.session.end` a dead proxy never wrote: the session's fields from its start event,
/// the time of its last recorded event, and `"rebuilt": true`. None when the session never
/// started (a refused login) or its end is already recorded.
fn rebuild_end_event(path: &std::path::Path, sid: &str) -> Option<serde_json::Value> {
    use serde_json::{Map, Value};
    let mut start: Option<Map<String, Value>> = None;
    let mut last: Option<Vec<u8>> = None;
    let mut stream = crate::recording::events::EventStream::open_path(path, sid).ok()?;
    stream
        .for_each_event(|line| {
            if start.is_none() && crate::recording::events::peek_event_type(line).as_deref() == Some("db.session.start") {
                start = serde_json::from_slice(line).ok();
            }
            last = Some(line.to_vec());
            Ok(true)
        })
        .ok()?;
    let start = start?;
    let last: Map<String, Value> = serde_json::from_slice(&last?).ok()?;
    if start.get("success") == Some(&Value::Bool(false)) || last.get("event").and_then(Value::as_str) == Some("db.session.end") {
        return None;
    }
    let last_time = last.get("time")?.clone();
    let mut end = Map::new();
    end.insert("ei".into(), Value::from(last.get("ei")?.as_u64()? + 1));
    end.insert("event".into(), Value::from(crate::audit::EventType::SessionEnd.as_str()));
    end.insert("uid".into(), Value::from(uuid::Uuid::new_v4().to_string()));
    end.insert("code".into(), Value::from(crate::audit::EventCode::SessionEnd.as_str()));
    end.insert("time".into(), last_time.clone());
    for field in [
        "cluster_name",
        "user",
        "aws_role_arn",
        "sid",
        "db_service",
        "db_protocol",
        "db_uri",
        "db_name",
        "db_user",
        "db_labels",
        "db_aws_region",
        "db_type",
        "addr.local",
        "addr.remote",
    ] {
        if let Some(value) = start.get(field) {
            end.insert(field.into(), value.clone());
        }
    }
    end.insert("session_start".into(), start.get("time")?.clone());
    end.insert("session_stop".into(), last_time);
    end.insert("rebuilt".into(), Value::Bool(true));
    Some(Value::Object(end))
}

/// What the recording alone says of a session whose sidecar is missing.
pub(super) fn blank_summary(sid: &str, scan: &super::scan::ScanReport) -> SessionSummary {
    let header = scan.header.clone();
    let field = |f: fn(&super::format::SessionHeader) -> &String| header.as_ref().map(f).cloned().unwrap_or_default();
    SessionSummary {
        sid: sid.to_string(),
        user: field(|h| &h.user),
        db_service: field(|h| &h.db_service),
        db_protocol: field(|h| &h.db_protocol),
        db_name: field(|h| &h.db_name),
        db_user: field(|h| &h.db_user),
        remote_addr: field(|h| &h.remote_addr),
        start_ms: header
            .as_ref()
            .and_then(|h| chrono::DateTime::parse_from_rfc3339(&h.created).ok())
            .map(|t| t.timestamp_millis())
            .or(scan.tally.first_ms)
            .unwrap_or_default(),
        end_ms: scan.tally.last_ms,
        events: scan.tally.events,
        queries: scan.tally.queries,
        failed_queries: scan.tally.failed_queries,
        lost_events: 0,
        bytes: scan.size,
        state: RecordingState::Unsealed,
        error: String::new(),
        refused_logins: 0,
    }
}
