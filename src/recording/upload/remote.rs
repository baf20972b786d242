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

/// Where a listed object goes in `dir`: recordings by their file name, published keys
/// under `keys/`. Anything else, or a key outside the prefix (a store that ignores the
/// listing's prefix), is skipped. Keys come from the bucket: only plain file names are
/// written, never paths.
fn local_target(prefix: &str, key: &str, dir: &Path) -> Option<PathBuf> {
    let relative = key.strip_prefix(prefix)?;
    let name = relative.rsplit('/').next()?;
    let is_key = relative.starts_with("keys/") && name.ends_with(".pub");
    let is_recording = name.ends_with(".dbt") || name.ends_with(".meta.json") || name.ends_with(".manifest.json");
    let is_segment = relative.starts_with("segments/") && name.ends_with(&format!(".{}", crate::recording::segment::format::SEGMENT_EXT));
    if !(is_key || is_recording || is_segment) || name.is_empty() || name.contains('\\') || name.starts_with('.') {
        return None;
    }
    Some(if is_key {
        dir.join("keys").join(name)
    } else if is_segment {
        crate::recording::segment::segments_dir(dir).join(name)
    } else {
        dir.join(name)
    })
}

/// Copies every recording object (and the published public keys, into `keys/`) into `dir`.
/// Returns how many files were fetched.
pub async fn sync(s3: &S3Storage, dir: &Path) -> Result<usize, UploadError> {
    let client = crate::s3::s3_client(s3).await;
    std::fs::create_dir_all(dir.join("keys")).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
    let segments = crate::recording::segment::segments_dir(dir);
    std::fs::create_dir_all(&segments).map_err(|source| StoreError::Io { path: segments, source })?;
    let mut token = None;
    let mut copied = 0;
    loop {
        let mut list = client.list_objects_v2().bucket(&s3.bucket).prefix(&s3.prefix);
        if let Some(t) = token.take() {
            list = list.continuation_token(t);
        }
        let page = list.send().await.map_err(|e| crate::s3::request_error("ListObjectsV2", &s3.prefix, &e))?;
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
            let Some(target) = local_target(&s3.prefix, key, dir) else { continue };
            let size = object.size().unwrap_or(-1);
            if std::fs::metadata(&target).is_ok_and(|m| m.len() as i64 == size) {
                continue;
            }
            let output =
                client.get_object().bucket(&s3.bucket).key(key).send().await.map_err(|e| crate::s3::request_error("GetObject", key, &e))?;
            let bytes = output
                .body
                .collect()
                .await
                .map_err(|e| crate::s3::S3Error::Request { operation: "GetObject", key: key.into(), cause: e.to_string() })?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_keys_outside_the_prefix_are_skipped_not_sliced() {
        let dir = Path::new("/cache");
        // Shorter than the prefix, and one cutting a multi-byte character at the prefix's
        // length: slicing by length panicked on both.
        assert_eq!(local_target("team/recordings/", "a.dbt", dir), None);
        assert_eq!(local_target("ab/", "aé.dbt", dir), None);
        assert_eq!(local_target("p/", "other/2026/01/02/x.dbt", dir), None);
        assert_eq!(local_target("p/", "p/2026/01/02/x.dbt", dir), Some(dir.join("x.dbt")));
        assert_eq!(local_target("p/", "p/keys/host-1.pub", dir), Some(dir.join("keys/host-1.pub")));
        assert_eq!(local_target("p/", "p/2026/keys/host-1.pub", dir), None);
        assert_eq!(local_target("p/", "p/2026/.hidden.dbt", dir), None);
        assert_eq!(local_target("p/", "p/2026/a\\b.dbt", dir), None);
        assert_eq!(local_target("p/", "p/segments/2026/12/04/segment-1.dseg", dir), Some(dir.join("segments/segment-1.dseg")));
        assert_eq!(local_target("p/", "p/2026/12/04/segment-1.dseg", dir), None);
    }
}
