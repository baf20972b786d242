//! The keys a review trusts.

use std::path::{Path, PathBuf};

use super::Located;
use crate::recording::verify::KeyRing;
use crate::signing::{load_public_key, public_key_path};

/// The keys passed explicitly (`--public-key`), or else this instance's own and the config's
/// `recording.trusted_keys`, as trusted. The keys instances published under `keys/` (copied
/// from the bucket) are added untrusted, so that each recording's signer can be named. Keys
/// that cannot be read come back as warnings.
pub fn key_ring(located: &Located, public_keys: Vec<PathBuf>) -> (KeyRing, Vec<String>) {
    let mut ring = KeyRing::default();
    let mut warnings = Vec::new();
    let trusted = if public_keys.is_empty() {
        let own =
            located.signing_key.as_deref().map(public_key_path).unwrap_or_else(|| public_key_path(Path::new("keys/recording-signing.key")));
        std::iter::once(own).chain(located.trusted_keys.iter().cloned()).collect()
    } else {
        public_keys
    };
    for path in trusted {
        match load_public_key(&path) {
            Ok(key) => ring.add(key, path.display().to_string(), true),
            Err(e) => warnings.push(format!("warning: {e}")),
        }
    }
    if let Ok(entries) = std::fs::read_dir(located.store.dir().join("keys")) {
        let mut published: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        published.sort();
        for path in published.into_iter().filter(|p| p.extension().is_some_and(|e| e == "pub")) {
            if let Ok(key) = load_public_key(&path) {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                ring.add(key, format!("published as keys/{name}"), false);
            }
        }
    }
    (ring, warnings)
}
