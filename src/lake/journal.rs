//! The lake journal (`<recordings>/lake/journal.json`): how far the lake holds each
//! recording, and the batch being written. A batch's number (which names its objects) and
//! the `(sid, ei)` ranges it covers are fsynced before any of its objects is uploaded; the
//! cursor moves past them only once every object is confirmed. After a crash or an S3
//! outage the same batch is rebuilt from the same events under the same keys, so a retry
//! overwrites identical objects and no event is ever in the lake twice, or missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LakeError;
use crate::replay::cursor::Cursor;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Range {
    pub from: u64,
    /// One past the last `ei`.
    pub to: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PendingBatch {
    pub seq: u64,
    pub ranges: BTreeMap<String, Range>,
    /// Where the cursor goes once the batch is confirmed.
    pub after: Cursor,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Journal {
    /// Everything before it is in the lake.
    pub cursor: Cursor,
    /// The number the next batch takes.
    pub next_seq: u64,
    /// A batch recorded but not yet confirmed in the bucket.
    pub pending: Option<PendingBatch>,
}

pub fn lake_dir(recordings: &Path) -> PathBuf {
    recordings.join("lake")
}

fn journal_path(recordings: &Path) -> PathBuf {
    lake_dir(recordings).join("journal.json")
}

impl Journal {
    pub fn load(recordings: &Path) -> Result<Journal, LakeError> {
        let path = journal_path(recordings);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LakeError::Journal { path, cause: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(e) => Err(LakeError::Journal { path, cause: e.to_string() }),
        }
    }

    /// Writes the journal atomically and durably (the file and its directory entry).
    pub fn save(&self, recordings: &Path) -> Result<(), LakeError> {
        let path = journal_path(recordings);
        let fail = |cause: String| LakeError::Journal { path: path.clone(), cause };
        let dir = lake_dir(recordings);
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        let bytes = serde_json::to_vec(self).map_err(|e| fail(e.to_string()))?;
        crate::recording::store::write_atomic(&path, &bytes).map_err(|e| fail(e.to_string()))?;
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| fail(e.to_string()))
    }
}

/// Holds the lake's lock (`<recordings>/lake/lock`) for as long as it lives: one writer per
/// recordings folder, whether `serve` or `lake backfill`.
pub struct LakeLock {
    _file: std::fs::File,
}

impl LakeLock {
    pub fn take(recordings: &Path) -> Result<LakeLock, LakeError> {
        let dir = lake_dir(recordings);
        let path = dir.join("lock");
        let fail = |cause: String| LakeError::Journal { path: path.clone(), cause };
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| fail(e.to_string()))?;
        match file.try_lock() {
            Ok(()) => Ok(LakeLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(LakeError::Busy(path)),
            Err(std::fs::TryLockError::Error(e)) => Err(fail(e.to_string())),
        }
    }
}
