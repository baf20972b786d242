//! Ed25519 manifests: a signed statement of exactly which bytes the proxy wrote.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::util::hex::hex;

const SECRET_PREFIX: &str = "dbtape-ed25519-secret-v1:";
const PUBLIC_PREFIX: &str = "dbtape-ed25519-public-v1:";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a dbtape ed25519 key ({reason}); fix: restore the key from backup, or delete it to generate a new one")]
    BadKey { path: PathBuf, reason: String },
    #[error("cannot gather randomness for a new key: {0}")]
    Random(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SigningError + '_ {
    move |source| SigningError::Io { path: path.to_path_buf(), source }
}

/// Where a key's public half lives: beside it, with `.pub` appended.
pub fn public_key_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("ed25519:{}", hex(&digest[..8]))
}

pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl Signer {
    /// Loads the key, or creates it (mode 0600) with its `.pub` beside it on first run.
    pub fn load_or_generate(path: &Path) -> Result<Self, SigningError> {
        let key = if path.exists() {
            let text = fs::read_to_string(path).map_err(io_err(path))?;
            let encoded = text
                .trim()
                .strip_prefix(SECRET_PREFIX)
                .ok_or_else(|| SigningError::BadKey { path: path.to_path_buf(), reason: "missing header".into() })?;
            let bytes = B64.decode(encoded).map_err(|e| SigningError::BadKey { path: path.to_path_buf(), reason: e.to_string() })?;
            let seed: [u8; 32] =
                bytes.try_into().map_err(|_| SigningError::BadKey { path: path.to_path_buf(), reason: "wrong length".into() })?;
            SigningKey::from_bytes(&seed)
        } else {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed).map_err(|e| SigningError::Random(e.to_string()))?;
            let key = SigningKey::from_bytes(&seed);
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            write_private(path, &format!("{SECRET_PREFIX}{}\n", B64.encode(seed)))?;
            tracing::info!(path = %path.display(), "generated a new recording signing key");
            key
        };
        let public = public_key_path(path);
        let public_text = format!("{PUBLIC_PREFIX}{}\n", B64.encode(key.verifying_key().as_bytes()));
        if fs::read_to_string(&public).ok().as_deref() != Some(public_text.as_str()) {
            fs::write(&public, public_text).map_err(io_err(&public))?;
        }
        let key_id = key_id(&key.verifying_key());
        Ok(Signer { key, key_id })
    }

    /// A 32-byte secret for another purpose (`label` names it), derived from the signing
    /// key so that the proxy keeps one secret file, not one per use.
    pub fn derive_secret(&self, label: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"dbtape derived secret\0");
        h.update(label.as_bytes());
        h.update([0]);
        h.update(self.key.to_bytes());
        h.finalize().into()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn sign(&self, body: ManifestBody) -> Result<Manifest, serde_json::Error> {
        let bytes = serde_json::to_vec(&body)?;
        let signature = self.key.sign(&bytes);
        Ok(Manifest { body, signature: B64.encode(signature.to_bytes()) })
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), SigningError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(text.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

pub fn load_public_key(path: &Path) -> Result<VerifyingKey, SigningError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let bad = |reason: &str| SigningError::BadKey { path: path.to_path_buf(), reason: reason.into() };
    let encoded = text.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(|| bad("missing header"))?;
    let bytes = B64.decode(encoded).map_err(|e| bad(&e.to_string()))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("wrong length"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| bad(&e.to_string()))
}

/// What a manifest attests. Field order is the signed byte order: never reorder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestBody {
    pub format: String,
    pub sid: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub frames: u32,
    pub chain_head: String,
    pub event_count: u64,
    pub first_time_ms: Option<i64>,
    pub last_time_ms: Option<i64>,
    /// `sealed`, or `recovered` for a recording closed by crash recovery.
    pub state: String,
    /// Bytes of whole frames; less than `size` only for a recovered, torn recording.
    pub valid_length: u64,
    pub key_id: String,
    pub signed_at_ms: i64,
    /// For a recording whose proxy died before its `db.session.end`: the end event crash
    /// recovery rebuilt from the last recorded one, marked `"rebuilt": true`. It is signed
    /// here rather than appended, because recovery never modifies the recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuilt_end: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    #[serde(flatten)]
    pub body: ManifestBody,
    pub signature: String,
}

impl Manifest {
    /// Checks the signature against a trusted key (never a key the manifest carries).
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), String> {
        if self.body.key_id != key_id(key) {
            return Err(format!("signed by key {} but the trusted key is {}", self.body.key_id, key_id(key)));
        }
        let bytes = serde_json::to_vec(&self.body).map_err(|e| e.to_string())?;
        let raw = B64.decode(&self.signature).map_err(|e| format!("signature is not base64: {e}"))?;
        let raw: [u8; 64] = raw.try_into().map_err(|_| "signature has the wrong length".to_string())?;
        key.verify(&bytes, &Signature::from_bytes(&raw)).map_err(|_| "signature does not match the manifest".to_string())
    }
}
