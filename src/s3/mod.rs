//! The bucket: an S3 client configured from `[storage.s3]`, and one object writer every
//! upload goes through (recordings today, the event lake's objects tomorrow), so each object
//! is sent with Content-MD5 and confirmed by its ETag the same way.

mod client;
mod objects;

pub use client::{lock_until, s3_client};
pub use objects::{md5_hex, multipart_etag, ObjectWriter, PartReceipt};

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 {operation} {key}: {cause}")]
    Request { operation: &'static str, key: String, cause: String },
    #[error("S3 {operation} {key}: its ETag {got} is not the MD5 {want} of what was sent")]
    Mismatch { operation: &'static str, key: String, got: String, want: String },
}

impl S3Error {
    /// Whether the multipart upload is gone (aborted, or completed by someone else).
    pub fn is_no_such_upload(&self) -> bool {
        matches!(self, S3Error::Request { cause, .. } if cause.contains("NoSuchUpload"))
    }
}

/// An SDK error as an `S3Error` naming the operation and key.
pub fn request_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
    operation: &'static str,
    key: &str,
    e: &aws_sdk_s3::error::SdkError<E, R>,
) -> S3Error {
    S3Error::Request { operation, key: key.to_string(), cause: aws_sdk_s3::error::DisplayErrorContext(e).to_string() }
}
