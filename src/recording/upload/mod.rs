//! Sealed recordings to S3. The recordings folder is the queue: a sealed recording (it has
//! a signed manifest) without an `.uploaded.json` marker is pending, so nothing is lost when
//! the process or S3 fails; the next pass, or the next run, picks it up. A multipart upload
//! keeps a checkpoint beside the recording (upload id and parts sent) and resumes from it.
//! A recording counts as uploaded only once S3 confirmed every object's MD5.

mod checkpoint;
mod multipart;
pub mod remote;
mod sweeper;

use crate::util::sync::lock;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use sweeper::SweepReport;

use super::store::{write_atomic, RecordingState, RecordingStore, StoreError};
use crate::config::S3Storage;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    S3(#[from] crate::s3::S3Error),
}

/// Written beside a recording once every object of it is confirmed in the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadedMarker {
    pub bucket: String,
    pub keys: Vec<String>,
    /// The recording object's ETag as S3 confirmed it.
    pub etag: String,
    /// The multipart upload that carried it, if it went up in parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    pub uploaded_at: chrono::DateTime<chrono::Utc>,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    pub uploaded: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub swept: SweepReport,
}

pub struct Uploader {
    settings: S3Storage,
    /// Every object goes up through it: Content-MD5 sent, ETag checked. Its client also
    /// lists and reads what the sweeper needs.
    objects: crate::s3::ObjectWriter,
    store: RecordingStore,
    /// This instance's public signing key, published beside its recordings.
    public_key: PathBuf,
    server_id: String,
    /// Multipart checkpoints this process wrote or checked against the file, by session id.
    checkpoints: std::sync::Mutex<std::collections::HashMap<String, checkpoint::Checkpoint>>,
    last_sweep: std::sync::Mutex<Option<std::time::Instant>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// `dbtape upload`'s progress bar, counting recording bytes confirmed.
    progress: Option<indicatif::ProgressBar>,
}

/// The folder's upload lock (`<recordings>/upload.lock`), held for one pass: two processes
/// sharing a folder never upload, checkpoint or mark the same recording at once.
fn take_lock(store: &RecordingStore, wait: bool) -> Result<Option<std::fs::File>, StoreError> {
    let path = store.dir().join("upload.lock");
    let io = |source: std::io::Error| StoreError::Io { path: path.clone(), source };
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    if wait {
        file.lock().map_err(io)?;
        return Ok(Some(file));
    }
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

pub fn marker_path(store: &RecordingStore, sid: &str) -> PathBuf {
    store.dir().join(format!("{sid}.uploaded.json"))
}

/// Written beside a segment once it is confirmed in the bucket.
pub fn segment_marker_path(segment: &Path) -> PathBuf {
    let mut path = segment.as_os_str().to_os_string();
    path.push(".uploaded.json");
    PathBuf::from(path)
}

/// `<prefix>segments/<yyyy>/<mm>/<dd>/<name>`, the day the segment was opened (its name
/// starts `segment-<yyyymmdd>`), so a bucket lists segments by date too.
pub fn segment_key(prefix: &str, name: &str) -> String {
    let day = name.strip_prefix("segment-").and_then(|rest| rest.get(..8)).filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
    match day {
        Some(d) => format!("{prefix}segments/{}/{}/{}/{name}", &d[..4], &d[4..6], &d[6..]),
        None => format!("{prefix}segments/{name}"),
    }
}

/// `<prefix><yyyy>/<mm>/<dd>/<sid>`: the session's start day (UTC), so a bucket lists by date.
pub fn key_base(prefix: &str, sid: &str, start_ms: i64) -> String {
    let day = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(start_ms).unwrap_or_default();
    format!("{prefix}{}/{sid}", day.format("%Y/%m/%d"))
}

/// Where an instance publishes its public key: `<prefix>keys/<server_id>-<key id>.pub`. The
/// key id keeps two instances that share a `server_id` (the host name, by default) from
/// overwriting each other's key; the name is made safe as one path segment.
pub fn public_key_key(prefix: &str, server_id: &str, key_id: &str) -> String {
    let safe = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
    };
    let id = key_id.strip_prefix("ed25519:").unwrap_or(key_id);
    format!("{prefix}keys/{}-{}.pub", safe(server_id), safe(id))
}

impl Uploader {
    pub async fn new(
        settings: &S3Storage,
        store: RecordingStore,
        public_key: PathBuf,
        server_id: String,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        let client = crate::s3::s3_client(settings).await;
        Uploader {
            settings: settings.clone(),
            objects: crate::s3::ObjectWriter::new(client, settings.clone()),
            store,
            public_key,
            server_id,
            checkpoints: Default::default(),
            last_sweep: Default::default(),
            metrics,
            progress: None,
        }
    }

    fn key_base(&self, sid: &str, start_ms: i64) -> String {
        key_base(&self.settings.prefix, sid, start_ms)
    }

    fn recording_key(&self, sid: &str, start_ms: i64) -> String {
        format!("{}.{}", self.key_base(sid, start_ms), super::store::RECORDING_EXT)
    }

    /// Recordings being written now, by this process or another one on this folder.
    fn live(&self) -> Vec<String> {
        let Ok(ids) = self.store.file_session_ids() else { return Vec::new() };
        ids.into_iter().filter(|sid| !marker_path(&self.store, sid).exists() && self.store.is_locked(sid)).collect()
    }

    pub fn show_progress(&mut self, bar: indicatif::ProgressBar) {
        self.progress = Some(bar);
    }

    fn progressed(&self, bytes: u64) {
        if let Some(bar) = &self.progress {
            bar.inc(bytes);
        }
    }

    /// Puts every sealed recording whose local copy is still here back in the queue, by
    /// setting its upload marker aside (as `<sid>.uploaded.json.previous`).
    pub fn forget_uploads(&self) {
        let Ok(ids) = self.store.file_session_ids() else { return };
        let segments = self.store.segments().into_iter().map(|s| segment_marker_path(&s.path));
        for marker in ids.iter().map(|sid| marker_path(&self.store, sid)).chain(segments) {
            if marker.exists() {
                let mut previous = marker.clone().into_os_string();
                previous.push(".previous");
                if let Err(e) = std::fs::rename(&marker, previous) {
                    tracing::warn!(marker = %marker.display(), error = %e, "cannot requeue a recording for upload");
                }
            }
        }
    }

    /// Sealed recordings with no upload marker, oldest first.
    pub fn pending(&self) -> Result<Vec<String>, StoreError> {
        let mut pending = Vec::new();
        for sid in self.store.file_session_ids()? {
            if marker_path(&self.store, &sid).exists() || self.store.is_locked(&sid) {
                continue;
            }
            let Ok(summary) = self.store.read_summary(&sid) else { continue };
            if summary.state == RecordingState::Unsealed && summary.error.starts_with("damaged") {
                self.quarantine(&sid);
                continue;
            }
            let sealed = matches!(summary.state, RecordingState::Sealed | RecordingState::Recovered);
            if sealed && self.store.manifest_path(&sid).exists() {
                pending.push((summary.start_ms, sid));
            }
        }
        pending.sort();
        Ok(pending.into_iter().map(|(_, sid)| sid).collect())
    }

    /// Moves a recording crash recovery found damaged (so never signed, never uploaded) into
    /// `quarantine/`, out of the queue's way. It is kept, never deleted: it may still be
    /// evidence.
    fn quarantine(&self, sid: &str) {
        let dir = self.store.dir().join("quarantine");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::error!(sid, error = %e, "cannot create the quarantine folder");
            return;
        }
        for path in [self.store.recording_path(sid), self.store.meta_path(sid), self.store.manifest_path(sid)] {
            if let Some(name) = path.file_name() {
                if path.exists() {
                    if let Err(e) = std::fs::rename(&path, dir.join(name)) {
                        tracing::error!(sid, error = %e, "cannot move a damaged recording into quarantine");
                    }
                }
            }
        }
        tracing::warn!(sid, "damaged recording moved to quarantine/ (kept, not uploaded)");
    }

    /// Uploads every pending recording once (with retries); failures wait for the next pass.
    /// One upload pass, unless another process sharing the folder (the old `dbtape serve`
    /// during a restart, or `dbtape upload`) is in one: then this one is skipped, and the
    /// next finds what is left.
    pub async fn pass(&self) -> PassReport {
        match self.take_pass_lock(false) {
            Ok(Some(_lock)) => self.pass_locked().await,
            Ok(None) => {
                tracing::debug!("another process is uploading this recordings folder; pass skipped");
                PassReport::default()
            }
            Err(e) => PassReport { failed: vec![(String::new(), e.to_string())], ..Default::default() },
        }
    }

    /// As `pass`, waiting for another process's pass to end first (`dbtape upload`).
    pub async fn pass_waiting(&self) -> PassReport {
        let store = self.store.clone();
        let lock = tokio::task::spawn_blocking(move || take_lock(&store, true)).await;
        match lock {
            Ok(Ok(Some(_lock))) => self.pass_locked().await,
            Ok(Ok(None)) => PassReport::default(),
            Ok(Err(e)) => PassReport { failed: vec![(String::new(), e.to_string())], ..Default::default() },
            Err(e) => PassReport { failed: vec![(String::new(), e.to_string())], ..Default::default() },
        }
    }

    fn take_pass_lock(&self, wait: bool) -> Result<Option<std::fs::File>, StoreError> {
        take_lock(&self.store, wait)
    }

    async fn pass_locked(&self) -> PassReport {
        let mut report = PassReport::default();
        let pending = match self.pending() {
            Ok(p) => p,
            Err(e) => {
                report.failed.push((String::new(), e.to_string()));
                return report;
            }
        };
        self.metrics.upload_backlog(pending.len());
        let total = pending.len();
        for sid in pending {
            match self.upload_with_retries(&sid).await {
                Ok(()) => {
                    report.uploaded.push(sid);
                    self.metrics.upload_backlog(total - report.uploaded.len());
                }
                Err(e) => {
                    tracing::warn!(sid, error = %e, "upload failed; the recording stays queued");
                    report.failed.push((sid, e.to_string()));
                }
            }
        }
        for segment in self.pending_segments() {
            let label = format!("segments/{}", segment.name);
            match self.with_retries(&label, || self.upload_segment(&segment)).await {
                Ok(()) => report.uploaded.push(label),
                Err(e) => {
                    tracing::warn!(segment = %segment.name, error = %e, "segment upload failed; it stays queued");
                    report.failed.push((label, e.to_string()));
                }
            }
        }
        // Long sessions still running: their whole parts go up now, not only once sealed.
        for sid in self.live() {
            if let Err(e) = self.upload_live_parts(&sid).await {
                tracing::info!(sid, error = %e, "sending a live recording's parts failed; retried at the next pass");
            }
        }
        if self.sweep_due() {
            match self.sweep().await {
                Ok(swept) => report.swept = swept,
                Err(e) => tracing::info!(error = %e, "sweeping orphaned multipart uploads failed; retried later"),
            }
        }
        report
    }

    /// Sweeps run at most every half `stale_upload_after` (and at least every 10 minutes).
    fn sweep_due(&self) -> bool {
        let every = (self.settings.stale_upload_after / 2).min(Duration::from_secs(600));
        let mut last = lock(&self.last_sweep);
        if last.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }

    /// Runs passes every `scan_interval` until `shutdown`, then one last pass.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        if let Err(e) = self.publish_public_key().await {
            tracing::warn!(error = %e, "publishing the public signing key failed; retried at the next start");
        }
        loop {
            let report = self.pass().await;
            if !report.uploaded.is_empty() {
                tracing::info!(uploaded = report.uploaded.len(), failed = report.failed.len(), "upload pass");
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.scan_interval) => {}
                () = shutdown.cancelled() => break,
            }
        }
        // Sessions sealed during shutdown: one bounded last pass; the rest stays queued.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.pass()).await;
    }

    async fn publish_public_key(&self) -> Result<(), UploadError> {
        let bytes = std::fs::read(&self.public_key).map_err(|source| StoreError::Io { path: self.public_key.clone(), source })?;
        let key_id = crate::signing::load_public_key(&self.public_key)
            .map(|k| crate::signing::key_id(&k))
            .map_err(|e| StoreError::Parse { path: self.public_key.clone(), reason: e.to_string() })?;
        let key = public_key_key(&self.settings.prefix, &self.server_id, &key_id);
        self.put(&key, bytes, "application/octet-stream").await.map(|_| ())
    }

    async fn upload_with_retries(&self, sid: &str) -> Result<(), UploadError> {
        self.with_retries(sid, || self.upload_one(sid)).await
    }

    async fn with_retries<'a, F, Fut>(&'a self, what: &str, attempt_once: F) -> Result<(), UploadError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), UploadError>> + 'a,
    {
        let attempts = self.settings.upload_retries.max(1);
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match attempt_once().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= attempts => {
                    self.metrics.upload_failed();
                    return Err(e);
                }
                Err(e) => {
                    self.metrics.upload_failed();
                    tracing::info!(what, attempt, error = %e, "upload attempt failed; retrying");
                    // Exponential backoff with full jitter, capped at 30 s.
                    let jitter = rand_fraction();
                    tokio::time::sleep(delay.mul_f64(0.5 + jitter / 2.0)).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    attempt += 1;
                }
            }
        }
    }

    async fn upload_one(&self, sid: &str) -> Result<(), UploadError> {
        let summary = self.store.read_summary(sid)?;
        let base = self.key_base(sid, summary.start_ms);
        let recording_key = self.recording_key(sid, summary.start_ms);
        let recording = self.store.recording_path(sid);
        let size = std::fs::metadata(&recording).map_err(|source| StoreError::Io { path: recording.clone(), source })?.len();
        let in_parts = size as usize > self.settings.part_size || checkpoint::path(&self.store, sid).exists();
        let (etag, upload_id) = if in_parts {
            let (etag, id) = self.upload_multipart(sid, &recording, &recording_key, size).await?;
            (etag, Some(id))
        } else {
            let bytes = read_file(&recording)?;
            let etag = self.put(&recording_key, bytes, "application/octet-stream").await?;
            self.progressed(size);
            (etag, None)
        };
        // The manifest and sidecar follow the recording, so whoever finds a manifest in the
        // bucket also finds what it signs.
        let manifest_key = format!("{base}{}", super::store::MANIFEST_SUFFIX);
        self.put(&manifest_key, read_file(&self.store.manifest_path(sid))?, "application/json").await?;
        let meta_key = format!("{base}{}", super::store::META_SUFFIX);
        self.put(&meta_key, read_file(&self.store.meta_path(sid))?, "application/json").await?;
        let marker = UploadedMarker {
            bucket: self.settings.bucket.clone(),
            keys: vec![recording_key, manifest_key, meta_key],
            etag,
            upload_id,
            uploaded_at: chrono::Utc::now(),
        };
        let bytes = serde_json::to_vec_pretty(&marker).unwrap_or_default();
        write_atomic(&marker_path(&self.store, sid), &bytes)?;
        let _ = std::fs::remove_file(checkpoint::path(&self.store, sid));
        if self.settings.local_retention == "delete" {
            for path in [recording, self.store.manifest_path(sid), self.store.meta_path(sid)] {
                let _ = std::fs::remove_file(path);
            }
        }
        self.metrics.uploaded(size);
        tracing::info!(sid, bucket = %self.settings.bucket, "recording uploaded");
        Ok(())
    }

    /// Closed segments with no upload marker, oldest first (their names start with the time).
    fn pending_segments(&self) -> Vec<crate::recording::segment::SegmentInfo> {
        let mut pending: Vec<_> =
            self.store.segments().into_iter().filter(|s| s.closed && !segment_marker_path(&s.path).exists()).collect();
        pending.sort_by(|a, b| a.name.cmp(&b.name));
        pending
    }

    /// Bytes of the closed segments waiting for upload.
    pub fn pending_segment_bytes(&self) -> u64 {
        self.pending_segments().iter().map(|s| s.bytes).sum()
    }

    /// A closed segment goes up as one object: every session in it, with its manifest and
    /// sidecar, for one PUT.
    async fn upload_segment(&self, segment: &crate::recording::segment::SegmentInfo) -> Result<(), UploadError> {
        let key = segment_key(&self.settings.prefix, &segment.name);
        let bytes = read_file(&segment.path)?;
        let size = bytes.len() as u64;
        let etag = self.put(&key, bytes, "application/octet-stream").await?;
        self.progressed(size);
        let marker = UploadedMarker {
            bucket: self.settings.bucket.clone(),
            keys: vec![key],
            etag,
            upload_id: None,
            uploaded_at: chrono::Utc::now(),
        };
        let bytes = serde_json::to_vec_pretty(&marker).unwrap_or_default();
        write_atomic(&segment_marker_path(&segment.path), &bytes)?;
        if self.settings.local_retention == "delete" {
            let _ = std::fs::remove_file(&segment.path);
        }
        self.metrics.uploaded(size);
        tracing::info!(segment = %segment.name, sessions = segment.sessions, bucket = %self.settings.bucket, "segment uploaded");
        Ok(())
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<String, UploadError> {
        Ok(self.objects.put(key, bytes, content_type).await?)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })
}

fn read_range(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact(&mut bytes).map_err(io)?;
    Ok(bytes)
}

fn rand_fraction() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}
