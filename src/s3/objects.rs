//! Objects written whole or in parts. Every body is sent with its Content-MD5 (S3 refuses
//! one that does not match) and S3's ETag is checked against it; a multipart object's ETag
//! against the MD5 of its parts' MD5s.

use aws_sdk_s3::primitives::ByteStream;
use base64::Engine as _;
use md5::{Digest, Md5};

use super::{request_error, S3Error};
use crate::config::S3Storage;

pub fn md5_hex(bytes: &[u8]) -> String {
    crate::util::hex::hex(&Md5::digest(bytes))
}

fn md5_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(bytes))
}

/// A multipart ETag: the MD5 of the parts' MD5s, then "-" and the part count.
pub fn multipart_etag<'a>(part_md5s: impl Iterator<Item = &'a str>) -> String {
    let mut concatenated = Vec::new();
    let mut count = 0;
    for md5 in part_md5s {
        concatenated.extend(crate::util::hex::unhex::<16>(md5).into_iter().flatten());
        count += 1;
    }
    format!("{}-{count}", md5_hex(&concatenated))
}

/// What S3 confirmed of one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartReceipt {
    pub etag: String,
    pub md5: String,
}

/// Writes objects into the configured bucket, with its encryption and Object Lock.
#[derive(Clone)]
pub struct ObjectWriter {
    client: aws_sdk_s3::Client,
    settings: S3Storage,
}

impl ObjectWriter {
    pub fn new(client: aws_sdk_s3::Client, settings: S3Storage) -> Self {
        ObjectWriter { client, settings }
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Whether S3 returns MD5 ETags for our objects (not with SSE-KMS).
    pub fn etag_is_md5(&self) -> bool {
        self.settings.server_side_encryption != "aws:kms"
    }

    /// One whole object. Returns its ETag.
    pub async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<String, S3Error> {
        let want = md5_hex(&bytes);
        let request = self
            .client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .content_type(content_type)
            .content_md5(md5_b64(&bytes))
            .body(ByteStream::from(bytes));
        let output =
            super::client::with_protection(request, &self.settings).send().await.map_err(|e| request_error("PutObject", key, &e))?;
        self.checked("PutObject", key, unquoted(output.e_tag()), want)
    }

    /// Begins a multipart upload; returns its id.
    pub async fn create_multipart(&self, key: &str, content_type: &str) -> Result<String, S3Error> {
        let request = self.client.create_multipart_upload().bucket(&self.settings.bucket).key(key).content_type(content_type);
        let output = super::client::with_protection_mpu(request, &self.settings)
            .send()
            .await
            .map_err(|e| request_error("CreateMultipartUpload", key, &e))?;
        Ok(output.upload_id().unwrap_or_default().to_string())
    }

    /// Part `number` (from 1) of an upload.
    pub async fn put_part(&self, key: &str, upload_id: &str, number: u32, bytes: Vec<u8>) -> Result<PartReceipt, S3Error> {
        let md5 = md5_hex(&bytes);
        let output = self
            .client
            .upload_part()
            .bucket(&self.settings.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .content_md5(md5_b64(&bytes))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| request_error("UploadPart", key, &e))?;
        let etag = self.checked("UploadPart", key, unquoted(output.e_tag()), md5.clone())?;
        Ok(PartReceipt { etag, md5 })
    }

    /// Completes an upload from its parts (number and receipt, in order) and checks the
    /// whole object's ETag where every part's MD5 is known.
    pub async fn complete(&self, key: &str, upload_id: &str, parts: &[(u32, PartReceipt)]) -> Result<String, S3Error> {
        let completed: Vec<_> = parts
            .iter()
            .map(|(n, p)| aws_sdk_s3::types::CompletedPart::builder().part_number(*n as i32).e_tag(format!("\"{}\"", p.etag)).build())
            .collect();
        let output = self
            .client
            .complete_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await
            .map_err(|e| request_error("CompleteMultipartUpload", key, &e))?;
        let etag = unquoted(output.e_tag());
        if parts.iter().any(|(_, p)| p.md5.is_empty()) {
            // Parts known only by their ETags (swept up after another host): nothing to check.
            return Ok(etag);
        }
        self.checked("CompleteMultipartUpload", key, etag, multipart_etag(parts.iter().map(|(_, p)| p.md5.as_str())))
    }

    /// Sets the configured Object Lock on `key` again, for stores that drop the lock a
    /// multipart upload was created with (extending a lock is always allowed). Nothing
    /// without Object Lock.
    pub async fn renew_retention(&self, key: &str) -> Result<(), S3Error> {
        if self.settings.object_lock_mode.is_empty() {
            return Ok(());
        }
        let retention = aws_sdk_s3::types::ObjectLockRetention::builder()
            .mode(aws_sdk_s3::types::ObjectLockRetentionMode::from(self.settings.object_lock_mode.as_str()))
            .retain_until_date(super::lock_until(&self.settings))
            .build();
        self.client
            .put_object_retention()
            .bucket(&self.settings.bucket)
            .key(key)
            .retention(retention)
            .send()
            .await
            .map_err(|e| request_error("PutObjectRetention", key, &e))?;
        Ok(())
    }

    /// `etag` if it is the MD5 `want` of what was sent (or S3 gives no MD5 ETags here).
    fn checked(&self, operation: &'static str, key: &str, etag: String, want: String) -> Result<String, S3Error> {
        if self.etag_is_md5() && etag != want {
            return Err(S3Error::Mismatch { operation, key: key.into(), got: etag, want });
        }
        Ok(etag)
    }

    /// Abandons an upload; its parts are deleted.
    pub async fn abort(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| request_error("AbortMultipartUpload", key, &e))?;
        Ok(())
    }
}

fn unquoted(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multipart_etag_is_the_md5_of_the_part_md5s() {
        // Two parts "a" and "b": MD5(MD5("a") ‖ MD5("b")), then the count.
        let parts = [md5_hex(b"a"), md5_hex(b"b")];
        let mut both = Md5::digest(b"a").to_vec();
        both.extend(Md5::digest(b"b"));
        assert_eq!(multipart_etag(parts.iter().map(String::as_str)), format!("{}-2", md5_hex(&both)));
    }
}
