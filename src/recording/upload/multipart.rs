//! Multipart uploads: parts sent while a session is still running (so a host that dies takes
//! at most one part's worth with it), resumed from the checkpoint after a restart, and
//! completed once the recording is sealed. A part is always a byte range of the append-only
//! recording; on resume every confirmed part is read and hashed again, and an upload whose
//! parts no longer match the file is aborted and started over.

use std::path::Path;

use super::checkpoint::{self, Checkpoint, Part};
use super::{read_range, UploadError, Uploader};
use crate::recording::store::{RecordingState, StoreError};
use crate::s3::{md5_hex, PartReceipt};

impl Uploader {
    /// For a recording still being written: once whole parts of it are on disk (as far as its
    /// writer has confirmed them), start its multipart upload and send them.
    pub(super) async fn upload_live_parts(&self, sid: &str) -> Result<(), UploadError> {
        let summary = self.store.read_summary(sid)?;
        if summary.state != RecordingState::Live {
            return Ok(());
        }
        let path = self.store.recording_path(sid);
        let on_disk = std::fs::metadata(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?.len();
        // Only bytes the writer counted as written: a failed write's torn bytes are cut off
        // again, so they must never go up.
        let stable = summary.bytes.min(on_disk);
        let part_size = self.settings.part_size as u64;
        let key = self.recording_key(sid, summary.start_ms);
        let known = super::lock(&self.checkpoints).get(sid).cloned();
        if known.is_none() && Checkpoint::load(&self.store, sid).is_none() && stable < part_size {
            return Ok(());
        }
        let mut cp = self.checkpoint_for(sid, &path, &key, on_disk).await?;
        if cp.parts.is_empty() {
            // The sidecar goes up with the first part, so that a reviewer can list the
            // session even if this host never comes back. It is the summary just read: a
            // session younger than a second has no sidecar file yet.
            let meta_key = format!("{}{}", self.key_base(sid, summary.start_ms), crate::recording::store::META_SUFFIX);
            self.put(&meta_key, self.store.sidecar_bytes(&summary)?, "application/json").await?;
        }
        while cp.sent() + part_size <= stable {
            self.send_part(sid, &path, &mut cp, part_size).await?;
            // The checkpoint beside the parts, after each one: whoever sweeps them up after
            // this host is gone can complete the upload even where the store's ListParts
            // cannot be read.
            let bytes = serde_json::to_vec(&cp).unwrap_or_default();
            self.put(&bucket_checkpoint_key(&cp.key), bytes, "application/json").await?;
        }
        Ok(())
    }

    /// A sealed recording's multipart upload: the parts not yet sent, then completion.
    /// Returns the object's ETag and the upload id.
    pub(super) async fn upload_multipart(&self, sid: &str, path: &Path, key: &str, size: u64) -> Result<(String, String), UploadError> {
        let part_size = self.settings.part_size as u64;
        let mut cp = self.checkpoint_for(sid, path, key, size).await?;
        if cp.parts.is_empty() {
            tracing::info!(sid, upload_id = %cp.upload_id, "multipart upload started");
        } else {
            tracing::info!(sid, upload_id = %cp.upload_id, parts = cp.parts.len(), "resuming multipart upload");
            self.progressed(cp.sent());
        }
        while cp.sent() < size {
            let len = part_size.min(size - cp.sent());
            self.send_part(sid, path, &mut cp, len).await?;
        }
        let etag = self.complete(key, &cp.upload_id, &cp.parts).await?;
        // S3 applies the lock the upload was created with; some S3-compatible stores do not.
        self.objects.renew_retention(key).await?;
        super::lock(&self.checkpoints).remove(sid);
        Ok((etag, cp.upload_id))
    }

    /// The checkpoint this process already trusts, or the one on disk once each of its parts
    /// is checked against the file, or a new upload.
    async fn checkpoint_for(&self, sid: &str, path: &Path, key: &str, size: u64) -> Result<Checkpoint, UploadError> {
        if let Some(cp) = super::lock(&self.checkpoints).get(sid).filter(|c| c.key == key) {
            return Ok(cp.clone());
        }
        if let Some(cp) = Checkpoint::load(&self.store, sid) {
            match parts_match(path, &cp, size) {
                Ok(()) if cp.key == key => {
                    super::lock(&self.checkpoints).insert(sid.to_string(), cp.clone());
                    return Ok(cp);
                }
                outcome => {
                    let why = outcome.err().unwrap_or_else(|| format!("it was for {}", cp.key));
                    tracing::warn!(sid, upload_id = %cp.upload_id, why, "multipart checkpoint no longer matches; starting over");
                    let _ = self.objects.abort(&cp.key, &cp.upload_id).await;
                }
            }
        }
        let upload_id = self.objects.create_multipart(key, "application/octet-stream").await?;
        let cp = Checkpoint { key: key.to_string(), upload_id, parts: Vec::new() };
        cp.save(&self.store, sid)?;
        super::lock(&self.checkpoints).insert(sid.to_string(), cp.clone());
        Ok(cp)
    }

    /// The next `len` bytes as the next part. Read again from the file on every attempt, and
    /// the file never changes below what was confirmed, so a retried part is the same bytes.
    async fn send_part(&self, sid: &str, path: &Path, cp: &mut Checkpoint, len: u64) -> Result<(), UploadError> {
        let offset = cp.sent();
        let number = cp.parts.len() as u32 + 1;
        let bytes = read_range(path, offset, len)?;
        let PartReceipt { etag, md5 } = match self.objects.put_part(&cp.key, &cp.upload_id, number, bytes).await {
            Ok(receipt) => receipt,
            Err(e) => {
                if e.is_no_such_upload() {
                    // Aborted (or completed by another instance's sweeper): start over.
                    let _ = std::fs::remove_file(checkpoint::path(&self.store, sid));
                    super::lock(&self.checkpoints).remove(sid);
                }
                return Err(e.into());
            }
        };
        cp.parts.push(Part { number, offset, len, etag, md5 });
        self.progressed(len);
        cp.save(&self.store, sid)?;
        super::lock(&self.checkpoints).insert(sid.to_string(), cp.clone());
        Ok(())
    }

    /// Completes an upload from its parts and checks the ETag S3 gives the whole.
    pub(super) async fn complete(&self, key: &str, upload_id: &str, parts: &[Part]) -> Result<String, UploadError> {
        let receipts: Vec<(u32, PartReceipt)> =
            parts.iter().map(|p| (p.number, PartReceipt { etag: p.etag.clone(), md5: p.md5.clone() })).collect();
        Ok(self.objects.complete(key, upload_id, &receipts).await?)
    }
}

/// `<base>.upload.json` beside `<base>.dbt`.
pub(super) fn bucket_checkpoint_key(recording_key: &str) -> String {
    let base = recording_key.strip_suffix(&format!(".{}", crate::recording::store::RECORDING_EXT)).unwrap_or(recording_key);
    format!("{base}.upload.json")
}

/// Whether every confirmed part is still, byte for byte, the file's range it claims.
fn parts_match(path: &Path, cp: &Checkpoint, size: u64) -> Result<(), String> {
    let mut expected_offset = 0;
    for part in &cp.parts {
        if part.offset != expected_offset || part.offset + part.len > size {
            return Err(format!("part {} (bytes {}+{}) is not in the {size}-byte file", part.number, part.offset, part.len));
        }
        let bytes = read_range(path, part.offset, part.len).map_err(|e| e.to_string())?;
        if md5_hex(&bytes) != part.md5 {
            return Err(format!("part {} no longer has the bytes that were sent", part.number));
        }
        expected_offset += part.len;
    }
    Ok(())
}
