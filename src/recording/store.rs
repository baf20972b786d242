//! The recordings folder: one `<sid>.dbt` per session, with a `<sid>.meta.json` sidecar that
//! `ls` reads instead of the recording and, once sealed, a signed `<sid>.manifest.json`; or,
//! for a short session packed once sealed, the same three in a segment (`segment`). Every
//! reader goes through here, so where a session is kept makes no difference to it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::segment::{PackedSession, SegmentIndex, SegmentInfo};
use crate::signing::Manifest;

pub const RECORDING_EXT: &str = "dbt";
pub const META_SUFFIX: &str = ".meta.json";
pub const MANIFEST_SUFFIX: &str = ".manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: unreadable ({reason})")]
    Parse { path: PathBuf, reason: String },
    #[error("{0}")]
    BadSessionId(String),
    #[error("no recording for session {sid} in {dir}")]
    NotFound { sid: String, dir: PathBuf },
}

/// Session ids are lowercase hyphenated UUIDs; anything else (paths included) is refused
/// before it gets near the filesystem.
pub fn validate_session_id(input: &str) -> Result<String, StoreError> {
    if input.is_empty() {
        return Err(StoreError::BadSessionId("session id is empty".into()));
    }
    if input.contains('/') || input.contains('\\') || input.contains("..") || input.starts_with('.') {
        return Err(StoreError::BadSessionId(format!(
            "{input:?} looks like a path; give a session id (a UUID such as 2f1c3e0a-5b7d-4c1e-9a8f-0123456789ab) as listed by `dbtape ls`"
        )));
    }
    match uuid::Uuid::try_parse(input) {
        Ok(id) if id.hyphenated().to_string() == input.to_ascii_lowercase() => Ok(id.hyphenated().to_string()),
        _ => Err(StoreError::BadSessionId(format!(
            "{input:?} is not a session id: expected a UUID such as 2f1c3e0a-5b7d-4c1e-9a8f-0123456789ab, as listed by `dbtape ls`"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Being written now.
    Live,
    /// Closed normally: trailer written and manifest signed.
    Sealed,
    /// Strict mode stopped the session because the recording could not be written.
    Failed,
    /// The writer died; crash recovery signed what was intact.
    Recovered,
    /// The writer died and recovery has not run yet.
    Unsealed,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Live => "live",
            RecordingState::Sealed => "sealed",
            RecordingState::Failed => "failed",
            RecordingState::Recovered => "recovered",
            RecordingState::Unsealed => "unsealed",
        }
    }
}

/// The sidecar: everything `ls` shows, without opening the recording.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionSummary {
    pub sid: String,
    pub user: String,
    pub db_service: String,
    pub db_protocol: String,
    pub db_name: String,
    pub db_user: String,
    pub remote_addr: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub events: u64,
    pub queries: u64,
    pub failed_queries: u64,
    pub lost_events: u64,
    pub bytes: u64,
    pub state: RecordingState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Refused logins the recording holds: non-zero only for a listener's refused-logins log.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused_logins: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SessionSummary {
    pub fn duration_ms(&self) -> Option<i64> {
        self.end_ms.map(|end| (end - self.start_ms).max(0))
    }
}

#[derive(Debug, Clone)]
pub struct RecordingStore {
    dir: PathBuf,
    segments: std::sync::Arc<SegmentIndex>,
}

/// A recording's bytes: its own file, or its copy in a segment.
pub enum RecordingFile {
    File(fs::File),
    Packed(std::io::Cursor<Vec<u8>>),
}

impl RecordingFile {
    /// A read buffer for this recording: up to 256 KiB, no larger than the recording. A
    /// buffered reader zeroes its whole buffer before its first read from a source that is
    /// not a plain file, and the indexer reads every packed session, a kilobyte or so, this
    /// way: a fixed 256 KiB buffer cost 4% of dbtape's CPU in a connection storm.
    pub fn read_buffer_size(&self) -> usize {
        const MAX: u64 = 256 * 1024;
        let len = match self {
            RecordingFile::File(f) => f.metadata().map_or(MAX, |m| m.len().max(16 * 1024)),
            RecordingFile::Packed(c) => c.get_ref().len() as u64,
        };
        len.clamp(64, MAX) as usize
    }
}

impl std::io::Read for RecordingFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            RecordingFile::File(f) => f.read(buf),
            RecordingFile::Packed(c) => c.read(buf),
        }
    }
}

impl std::io::Seek for RecordingFile {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        match self {
            RecordingFile::File(f) => f.seek(pos),
            RecordingFile::Packed(c) => c.seek(pos),
        }
    }
}

impl RecordingStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RecordingStore { dir: dir.into(), segments: Default::default() }
    }

    /// The session as packed into a segment, if it is: looked up in the index, which is
    /// brought up to date first when it does not know the session.
    pub fn packed(&self, sid: &str) -> Option<PackedSession> {
        let id = uuid::Uuid::try_parse(sid).ok()?;
        if !self.knows(&id) {
            return None;
        }
        match self.segments.read(&self.dir, &id) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(sid, error = %e, "cannot read a session from its segment");
                None
            }
        }
    }

    /// Whether a segment holds the session (without reading it).
    pub fn is_packed(&self, sid: &str) -> bool {
        uuid::Uuid::try_parse(sid).is_ok_and(|id| self.knows(&id))
    }

    /// Whether the segment index holds `id`, brought up to date first if it does not.
    fn knows(&self, id: &uuid::Uuid) -> bool {
        if !self.segments.contains(id) {
            self.segments.refresh(&self.dir);
        }
        self.segments.contains(id)
    }

    /// The folder's segments, as of now.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments.refresh(&self.dir);
        self.segments.segments(&self.dir)
    }

    /// Opens the recording wherever it is kept.
    pub fn open_recording(&self, sid: &str) -> std::io::Result<RecordingFile> {
        match fs::File::open(self.recording_path(sid)) {
            Ok(file) => Ok(RecordingFile::File(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.packed(sid) {
                Some(packed) => Ok(RecordingFile::Packed(std::io::Cursor::new(packed.recording))),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Whether the recording is sealed or recovered: it has a signed manifest.
    pub fn has_manifest(&self, sid: &str) -> bool {
        self.manifest_path(sid).exists() || self.is_packed(sid)
    }

    /// Whether the session is sealed and no writer holds it, as far as the segment index
    /// knew at its last refresh (`session_ids` refreshes it). A packed session, which a
    /// folder may hold by the million, costs no file look-up; a live one costs no refresh of
    /// the segment index, unlike `has_manifest`.
    pub fn is_sealed_at_rest(&self, sid: &str) -> bool {
        if uuid::Uuid::try_parse(sid).is_ok_and(|id| self.segments.contains(&id)) {
            return true;
        }
        self.manifest_path(sid).exists() && !self.is_locked(sid)
    }

    /// What changes whenever the session's summary does: its sidecar's; fixed for a packed
    /// session, whose sidecar never changes again; the recording's own for a session that
    /// has no sidecar yet (its summary is read from the recording).
    pub fn summary_stamp(&self, sid: &str) -> Option<(i64, i64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let stamp = |meta: fs::Metadata| (meta.mtime(), meta.mtime_nsec(), meta.len());
        match fs::metadata(self.meta_path(sid)) {
            Ok(meta) => Some(stamp(meta)),
            Err(_) if self.is_packed(sid) => Some((0, 0, 0)),
            Err(_) => fs::metadata(self.recording_path(sid)).ok().map(stamp),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ensure_dir(&self) -> Result<(), StoreError> {
        fs::create_dir_all(&self.dir).map_err(|source| StoreError::Io { path: self.dir.clone(), source })
    }

    pub fn recording_path(&self, sid: &str) -> PathBuf {
        self.dir.join(format!("{sid}.{RECORDING_EXT}"))
    }

    pub fn meta_path(&self, sid: &str) -> PathBuf {
        self.dir.join(format!("{sid}{META_SUFFIX}"))
    }

    pub fn manifest_path(&self, sid: &str) -> PathBuf {
        self.dir.join(format!("{sid}{MANIFEST_SUFFIX}"))
    }

    /// Resolves user input to an existing recording's session id.
    pub fn find(&self, input: &str) -> Result<String, StoreError> {
        let sid = validate_session_id(input)?;
        if self.recording_path(&sid).exists() || self.is_packed(&sid) {
            Ok(sid)
        } else {
            Err(StoreError::NotFound { sid, dir: self.dir.clone() })
        }
    }

    /// A sidecar's bytes, as the file holds them and as they go up to S3.
    pub fn sidecar_bytes(&self, summary: &SessionSummary) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec_pretty(summary).map_err(|e| StoreError::Parse { path: self.meta_path(&summary.sid), reason: e.to_string() })
    }

    pub fn write_summary(&self, summary: &SessionSummary) -> Result<(), StoreError> {
        write_atomic(&self.meta_path(&summary.sid), &self.sidecar_bytes(summary)?)
    }

    /// A sidecar replaced atomically but not fsynced: it is derived data, and start-up
    /// recovery rebuilds one a power loss took or left stale, from the recording. An fsync
    /// here cost every busy session a journal commit every two seconds, and every short
    /// session two more.
    pub fn refresh_summary(&self, summary: &SessionSummary) -> Result<(), StoreError> {
        let path = self.meta_path(&summary.sid);
        let bytes = self.sidecar_bytes(summary)?;
        let io = |source| StoreError::Io { path: path.clone(), source };
        let tmp = tmp_path(&path);
        fs::write(&tmp, &bytes).map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)
    }

    pub fn read_summary(&self, sid: &str) -> Result<SessionSummary, StoreError> {
        let path = self.meta_path(sid);
        match read_json(&path) {
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => match self.packed(sid) {
                Some(packed) => parse_json(&packed.summary, &packed.segment),
                None => self.summarize_unlisted(sid).ok_or(StoreError::Io { path, source }),
            },
            other => other,
        }
    }

    /// A live session's summary before the writer has written its first sidecar:
    /// read from the recording itself, which is a frame or two then.
    fn summarize_unlisted(&self, sid: &str) -> Option<SessionSummary> {
        let scan = super::scan::scan_recording(&self.recording_path(sid), sid).ok()?;
        let mut summary = super::recover::blank_summary(sid, &scan);
        summary.state = RecordingState::Live;
        // Whole frames only, as the writer counts them: a live upload sends no torn bytes.
        summary.bytes = scan.valid_length;
        Some(summary)
    }

    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let path = self.manifest_path(&manifest.body.sid);
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Parse { path: path.clone(), reason: e.to_string() })?;
        write_atomic(&path, &bytes)
    }

    pub fn read_manifest(&self, sid: &str) -> Result<Option<Manifest>, StoreError> {
        let path = self.manifest_path(sid);
        if !path.exists() {
            return match self.packed(sid) {
                Some(packed) => parse_json(&packed.manifest, &packed.segment).map(Some),
                None => Ok(None),
            };
        }
        read_json(&path).map(Some)
    }

    /// Session ids of every recording, in its own files or packed, in no particular order.
    pub fn session_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut ids = self.file_session_ids()?;
        self.segments.refresh(&self.dir);
        let packed = self.segments.session_ids();
        if !packed.is_empty() {
            let own: std::collections::HashSet<String> = ids.iter().cloned().collect();
            ids.extend(packed.into_iter().map(|id| id.hyphenated().to_string()).filter(|sid| !own.contains(sid)));
        }
        Ok(ids)
    }

    /// Session ids packed since `mark` (0, or what an earlier call returned), after a look at
    /// the segments folder, and the mark for the next call: a reader that asks at every pass
    /// costs what was packed since, not every session ever kept.
    pub fn packed_since(&self, mark: u64) -> (Vec<String>, u64) {
        self.segments.refresh(&self.dir);
        let (ids, next) = self.segments.arrived_since(mark);
        (ids.into_iter().map(|id| id.hyphenated().to_string()).collect(), next)
    }

    /// Session ids of the recordings that have their own files (live ones, long ones, and
    /// any not packed), in no particular order.
    pub fn file_session_ids(&self) -> Result<Vec<String>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { path: self.dir.clone(), source }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io { path: self.dir.clone(), source })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(&format!(".{RECORDING_EXT}")) {
                if let Ok(sid) = validate_session_id(stem) {
                    out.push(sid);
                }
            }
        }
        Ok(out)
    }

    /// Summaries from the sidecars, with `Live` corrected to `Unsealed` when no writer holds
    /// the recording's lock any more (the proxy died).
    pub fn summaries(&self) -> Result<Vec<Result<SessionSummary, StoreError>>, StoreError> {
        let ids = self.session_ids()?;
        Ok(ids
            .into_iter()
            .map(|sid| {
                let mut summary = self.read_summary(&sid)?;
                if summary.state == RecordingState::Live && !self.is_locked(&sid) {
                    summary.state = RecordingState::Unsealed;
                }
                Ok(summary)
            })
            .collect())
    }

    /// Whether a live writer holds the recording open.
    pub fn is_locked(&self, sid: &str) -> bool {
        let Ok(file) = fs::File::open(self.recording_path(sid)) else { return false };
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(_) => true,
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
    parse_json(&bytes, path)
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Parse { path: path.to_path_buf(), reason: e.to_string() })
}

/// Write to a temporary name, fsync, then rename: readers see the old or the new file, never half.
/// The name is the process's own, so that two processes sharing the folder (a proxy and
/// another's start-up recovery) never rename each other's half-written file.
fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(tmp)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    let tmp = tmp_path(path);
    let mut file = fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_data().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}
