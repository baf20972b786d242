//! Orphaned multipart uploads: ones no checkpoint in this folder owns and that began longer
//! ago than `stale_upload_after`, typically a live session's upload whose proxy host died.
//! A recording's upload is completed from the parts it has, so what reached the bucket
//! becomes readable (its sidecar went up with the first part); anything else is aborted.

use std::time::SystemTime;

use super::checkpoint::{Checkpoint, Part};
use super::{UploadError, Uploader};

/// What one sweep did.
#[derive(Debug, Default, PartialEq)]
pub struct SweepReport {
    pub completed: Vec<String>,
    pub aborted: Vec<String>,
}

impl Uploader {
    pub async fn sweep(&self) -> Result<SweepReport, UploadError> {
        let mut report = SweepReport::default();
        let owned = Checkpoint::owned_upload_ids(&self.store);
        let cutoff = SystemTime::now() - self.settings.stale_upload_after;
        let bucket = &self.settings.bucket;
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .objects
                .client()
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(&self.settings.prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| crate::s3::request_error("ListMultipartUploads", &self.settings.prefix, &e))?;
            for upload in page.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else { continue };
                let started = upload.initiated().and_then(|t| SystemTime::try_from(*t).ok());
                if owned.contains(id) || started.is_none_or(|t| t > cutoff) {
                    continue;
                }
                let parts = match self.listed_parts(key, id).await {
                    Ok(parts) => parts,
                    Err(e) => match self.bucket_checkpoint(key, id).await {
                        Some(parts) => parts,
                        None => {
                            tracing::warn!(key, upload_id = id, error = %e, "cannot list an orphaned upload's parts; left for a later sweep");
                            continue;
                        }
                    },
                };
                let is_recording = key.ends_with(&format!(".{}", crate::recording::store::RECORDING_EXT));
                if is_recording && !parts.is_empty() {
                    self.complete(key, id, &parts).await?;
                    tracing::warn!(
                        key,
                        upload_id = id,
                        parts = parts.len(),
                        "completed an orphaned multipart upload from the parts it had"
                    );
                    report.completed.push(key.to_string());
                } else {
                    self.objects.abort(key, id).await?;
                    tracing::warn!(key, upload_id = id, "aborted an orphaned multipart upload");
                    report.aborted.push(key.to_string());
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(report)
    }

    /// The parts the dead host's checkpoint in the bucket names, if it is for this upload.
    async fn bucket_checkpoint(&self, key: &str, upload_id: &str) -> Option<Vec<Part>> {
        let object = self
            .objects
            .client()
            .get_object()
            .bucket(&self.settings.bucket)
            .key(super::multipart::bucket_checkpoint_key(key))
            .send()
            .await
            .ok()?;
        let bytes = object.body.collect().await.ok()?.into_bytes();
        let checkpoint: Checkpoint = serde_json::from_slice(&bytes).ok()?;
        (checkpoint.upload_id == upload_id && checkpoint.key == key).then_some(checkpoint.parts)
    }

    /// The parts S3 holds for an upload, in order, up to the first gap (S3 would refuse to
    /// complete around one, and the bytes after it could not be read anyway).
    async fn listed_parts(&self, key: &str, upload_id: &str) -> Result<Vec<Part>, UploadError> {
        let mut parts = Vec::new();
        let mut marker = None::<String>;
        loop {
            let page = self
                .objects
                .client()
                .list_parts()
                .bucket(&self.settings.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(|e| crate::s3::request_error("ListParts", key, &e))?;
            for p in page.parts() {
                let number = p.part_number().unwrap_or_default() as u32;
                if number != parts.len() as u32 + 1 {
                    return Ok(parts);
                }
                let len = p.size().unwrap_or_default().max(0) as u64;
                let offset = parts.last().map_or(0, |l: &Part| l.offset + l.len);
                let etag = p.e_tag().unwrap_or_default().trim_matches('"').to_string();
                // The ETag of a part is its MD5 unless SSE-KMS hides it; then none is checked.
                let md5 = if self.objects.etag_is_md5() { etag.clone() } else { String::new() };
                parts.push(Part { number, offset, len, etag, md5 });
            }
            if page.is_truncated() != Some(true) {
                return Ok(parts);
            }
            marker = page.next_part_number_marker().map(str::to_string);
            if marker.is_none() {
                return Ok(parts);
            }
        }
    }
}
