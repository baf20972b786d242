//! Review from the bucket: the objects under `[storage.s3]`'s prefix copied into a local
//! folder, so `ls`, `play`, `export` and `verify` read them exactly as they read the proxy's
//! own folder. Objects already copied (same name and size) are not fetched again.

use std::path::{Path, PathBuf};

use super::UploadError;
use crate::config::S3Storage;
use crate::recording::store::StoreError;

/// `$XDG_CACHE_HOME/dbtape/s3/<bucket>/<prefix>` (or under `~/.cache`).
pub fn cache_dir(s3: &S3Storage) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let prefix: String = s3.prefix.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    base.join("dbtape").join("s3").join(&s3.bucket).join(prefix)
}

/// Copies every recording object (and the published public keys, into `keys/`) into `dir`.
/// Returns how many files were fetched.
pub async fn sync(s3: &S3Storage, dir: &Path) -> Result<usize, UploadError> {
    let client = super::s3_client(s3).await;
    std::fs::create_dir_all(dir.join("keys")).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
    let mut token = None;
    let mut copied = 0;
    loop {
        let mut list = client.list_objects_v2().bucket(&s3.bucket).prefix(&s3.prefix);
        if let Some(t) = token.take() {
            list = list.continuation_token(t);
        }
        let page = list.send().await.map_err(|e| super::s3_error("ListObjectsV2", &s3.prefix, &e))?;
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
            let Some(name) = key.rsplit('/').next() else { continue };
            let is_key = key[s3.prefix.len()..].starts_with("keys/") && name.ends_with(".pub");
            let is_recording = name.ends_with(".dbt") || name.ends_with(".meta.json") || name.ends_with(".manifest.json");
            // Names come from the bucket: only plain file names are written, never paths.
            if !(is_key || is_recording) || name.contains(['/', '\\']) || name.starts_with('.') {
                continue;
            }
            let target = if is_key { dir.join("keys").join(name) } else { dir.join(name) };
            let size = object.size().unwrap_or(-1);
            if std::fs::metadata(&target).is_ok_and(|m| m.len() as i64 == size) {
                continue;
            }
            let output = client.get_object().bucket(&s3.bucket).key(key).send().await.map_err(|e| super::s3_error("GetObject", key, &e))?;
            let bytes = output
                .body
                .collect()
                .await
                .map_err(|e| UploadError::S3 { operation: "GetObject", key: key.into(), cause: e.to_string() })?
                .into_bytes();
            crate::recording::store::write_atomic(&target, &bytes)?;
            copied += 1;
        }
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(copied)
}
