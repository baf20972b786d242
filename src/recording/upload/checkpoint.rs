//! A multipart upload in progress, kept beside its recording so a restart resumes it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::recording::store::{write_atomic, RecordingStore, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Part {
    pub number: u32,
    /// The bytes of the recording this part holds: `offset..offset + len`.
    pub offset: u64,
    pub len: u64,
    pub etag: String,
    pub md5: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    pub key: String,
    pub upload_id: String,
    /// Parts S3 confirmed, in order and contiguous from byte 0.
    pub parts: Vec<Part>,
}

impl Checkpoint {
    /// Bytes of the recording the confirmed parts cover.
    pub fn sent(&self) -> u64 {
        self.parts.last().map_or(0, |p| p.offset + p.len)
    }
}

pub fn path(store: &RecordingStore, sid: &str) -> PathBuf {
    store.dir().join(format!("{sid}.upload.json"))
}

impl Checkpoint {
    pub fn load(store: &RecordingStore, sid: &str) -> Option<Checkpoint> {
        let bytes = std::fs::read(path(store, sid)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn save(&self, store: &RecordingStore, sid: &str) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        write_atomic(&path(store, sid), &bytes)
    }

    /// Upload ids of every checkpoint in the folder: the multipart uploads this host owns.
    pub fn owned_upload_ids(store: &RecordingStore) -> std::collections::HashSet<String> {
        let Ok(entries) = std::fs::read_dir(store.dir()) else { return Default::default() };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".upload.json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Checkpoint>(&b).ok())
            .map(|c| c.upload_id)
            .collect()
    }
}
