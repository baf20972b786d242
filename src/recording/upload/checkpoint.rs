//! A multipart upload in progress, kept beside its recording so a restart resumes it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::recording::store::{write_atomic, RecordingStore, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    pub number: u32,
    pub etag: String,
    pub md5: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub key: String,
    pub upload_id: String,
    pub part_size: u64,
    /// Parts S3 confirmed, in order.
    pub parts: Vec<Part>,
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
}
