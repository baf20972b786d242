//! Where a review reads recordings: a local folder (`--dir`, else the config's
//! `recording.dir`) or the bucket of the config's `[storage.s3]`, copied into a local cache
//! first. Reading needs only `[recording]` and `[storage.s3]`, never the proxy's secrets.

use std::path::{Path, PathBuf};

use super::ReviewError;
use crate::config::{Config, S3Storage, DEFAULT_CONFIG_FILE};
use crate::recording::RecordingStore;

/// What the reviewer named.
#[derive(Debug, Clone)]
pub struct ReviewSource {
    pub config: PathBuf,
    /// Overrides the config's `recording.dir` (or, from the bucket, the cache folder).
    pub dir: Option<PathBuf>,
    pub from_bucket: bool,
}

/// The folder and (where known) the signing keys of the recordings a review reads.
#[derive(Debug, Clone)]
pub struct Located {
    pub store: RecordingStore,
    pub signing_key: Option<PathBuf>,
    pub trusted_keys: Vec<PathBuf>,
    /// What was copied from the bucket, for a reviewer watching.
    pub copied: Option<String>,
    /// What the reviewer must be told (that a session was read from the bucket, say).
    pub notes: Vec<String>,
}

pub fn locate(source: &ReviewSource) -> Result<Located, ReviewError> {
    let config_path = &source.config;
    let default_missing = config_path == Path::new(DEFAULT_CONFIG_FILE) && !config_path.exists();
    let recording = if default_missing { None } else { Some(Config::load_recording_settings(config_path)?) };
    let signing_key = recording.as_ref().map(|r| r.signing_key.clone());
    let trusted_keys = recording.as_ref().map(|r| r.trusted_keys.clone()).unwrap_or_default();
    if source.from_bucket {
        let s3 = Config::load_storage_settings(config_path)?.ok_or_else(|| {
            ReviewError::Usage(format!("{}: --source s3 needs a [storage.s3] section naming the bucket", config_path.display()))
        })?;
        let dir = source.dir.clone().unwrap_or_else(|| crate::recording::upload::remote::cache_dir(&s3));
        let copied = Some(copy_from_bucket(&s3, &dir)?);
        return Ok(Located { store: RecordingStore::new(dir), signing_key, trusted_keys, copied, notes: Vec::new() });
    }
    let dir = match (&source.dir, &recording) {
        (Some(dir), _) => dir.clone(),
        (None, Some(r)) => r.dir.clone(),
        (None, None) => PathBuf::from("recordings"),
    };
    Ok(Located { store: RecordingStore::new(dir), signing_key, trusted_keys, copied: None, notes: Vec::new() })
}

fn copy_from_bucket(s3: &S3Storage, dir: &Path) -> Result<String, ReviewError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let copied = runtime.block_on(crate::recording::upload::remote::sync(s3, dir))?;
    Ok(format!("{copied} file(s) copied from s3://{}/{} into {}", s3.bucket, s3.prefix, dir.display()))
}

/// The recording a session id names: in the local folder or, when it is not there (the
/// proxy deleted it after upload, or it was recorded on another instance) and the config
/// has a `[storage.s3]`, in the bucket.
pub fn locate_session(source: &ReviewSource, input: &str) -> Result<(Located, String), ReviewError> {
    let located = locate(source)?;
    let missing = match located.store.find(input) {
        Ok(sid) => return Ok((located, sid)),
        Err(e @ crate::recording::StoreError::NotFound { .. }) if !source.from_bucket => e,
        Err(e) => return Err(ReviewError::Usage(e.to_string())),
    };
    let config_path = &source.config;
    let s3 = match config_path.exists().then(|| Config::load_storage_settings(config_path)).transpose()? {
        Some(Some(s3)) => s3,
        _ => return Err(ReviewError::Usage(missing.to_string())),
    };
    let dir = crate::recording::upload::remote::cache_dir(&s3);
    let copied = copy_from_bucket(&s3, &dir)?;
    let store = RecordingStore::new(dir);
    let sid = store.find(input).map_err(|_| ReviewError::Usage(format!("{missing}, nor in s3://{}/{}", s3.bucket, s3.prefix)))?;
    let mut notes = located.notes;
    notes.push(format!("{sid} is not in the local recordings folder; reading it from s3://{}/{}", s3.bucket, s3.prefix));
    Ok((Located { store, copied: Some(copied), notes, ..located }, sid))
}
