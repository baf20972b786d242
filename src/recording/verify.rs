//! `dbtape verify`: proves a recording is whole and is the one the proxy signed.

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::scan::{scan_reader, ScanEnd};
use super::store::RecordingStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Sealed, every check passed, signature valid.
    Ok,
    /// Closed by crash recovery: the intact prefix is signed; the torn tail is noted.
    Recovered,
    /// Still being written; the frames so far are intact. Not yet signed.
    Live,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub sid: String,
    pub verdict: Verdict,
    pub frames: u32,
    pub events: u64,
    /// The key id the manifest names, and where the reviewer's key ring found that key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_origin: Option<String>,
    pub key_trusted: bool,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// A public key the reviewer knows, and whether they trust it.
#[derive(Debug, Clone)]
pub struct KnownKey {
    pub key: VerifyingKey,
    /// Where it came from: a file the reviewer named, or one a fleet member published.
    pub origin: String,
    pub trusted: bool,
}

/// The keys a review checks signatures with. A fleet's instances each sign with their own
/// key and publish it in the bucket; a published key identifies the signer, but only a key
/// the reviewer's own config names is trusted, since whoever can write to the bucket can
/// publish a key too.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: Vec<KnownKey>,
}

impl KeyRing {
    pub fn add(&mut self, key: VerifyingKey, origin: impl Into<String>, trusted: bool) {
        let origin = origin.into();
        if let Some(known) = self.keys.iter_mut().find(|k| k.key == key) {
            known.trusted |= trusted;
            if !known.origin.contains(&origin) {
                known.origin = format!("{}; {origin}", known.origin);
            }
            return;
        }
        self.keys.push(KnownKey { key, origin, trusted });
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn find(&self, key_id: &str) -> Option<&KnownKey> {
        self.keys.iter().find(|k| crate::signing::key_id(&k.key) == key_id)
    }
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.verdict != Verdict::Failed
    }
}

/// Verifies against one trusted key.
pub fn verify_recording(store: &RecordingStore, sid: &str, key: Option<&VerifyingKey>) -> VerifyReport {
    let mut ring = KeyRing::default();
    if let Some(key) = key {
        ring.add(*key, "the trusted key", true);
    }
    verify_with(store, sid, &ring)
}

pub fn verify_with(store: &RecordingStore, sid: &str, keys: &KeyRing) -> VerifyReport {
    let mut report = VerifyReport {
        sid: sid.to_string(),
        verdict: Verdict::Failed,
        frames: 0,
        events: 0,
        signed_by: None,
        key_origin: None,
        key_trusted: false,
        problems: Vec::new(),
        notes: Vec::new(),
    };
    let path = store.recording_path(sid);
    let scan = match store.open_recording(sid).and_then(|file| scan_reader(file, sid)) {
        Ok(scan) => scan,
        Err(e) => {
            report.problems.push(format!("{}: {e}", path.display()));
            return report;
        }
    };
    report.frames = scan.frames;
    report.events = scan.tally.events;
    let live = store.is_locked(sid);
    let manifest = match store.read_manifest(sid) {
        Ok(m) => m,
        Err(e) => {
            report.problems.push(e.to_string());
            None
        }
    };
    let mut expect_recovered = false;
    match &scan.end {
        ScanEnd::Sealed(_) => {}
        ScanEnd::Damaged(problem) => report.problems.push(problem.clone()),
        ScanEnd::Open if live => {
            report.verdict = Verdict::Live;
            report.notes.push(format!("live: {} frames and {} events intact so far; signed when sealed", scan.frames, scan.tally.events));
            return report;
        }
        ScanEnd::Open => expect_recovered = true,
        ScanEnd::Truncated { offset, torn_bytes } => {
            expect_recovered = true;
            report.notes.push(format!(
                "truncated at byte {offset}: a torn frame of {torn_bytes} bytes follows frame {}",
                scan.frames.saturating_sub(1)
            ));
        }
    }
    let Some(manifest) = manifest else {
        report.problems.push(if expect_recovered {
            "not sealed and not yet recovered: no signed manifest (start `dbtape serve` to run crash recovery)".to_string()
        } else {
            "signed manifest is missing".to_string()
        });
        return report;
    };
    let body = &manifest.body;
    report.signed_by = Some(body.key_id.clone());
    if let Some(known) = keys.find(&body.key_id) {
        report.key_origin = Some(known.origin.clone());
        report.key_trusted = known.trusted;
    }
    report.problems.extend(signature_problem(&manifest, keys));
    let mut mismatch = |what: &str, signed: String, found: String| {
        if signed != found {
            report.problems.push(format!("manifest: signed {what} {signed}, file has {found}"));
        }
    };
    mismatch("sid", body.sid.clone(), sid.to_string());
    mismatch("size", body.size.to_string(), scan.size.to_string());
    mismatch("sha256", body.sha256.clone(), scan.sha256.clone());
    mismatch("valid length", body.valid_length.to_string(), scan.valid_length.to_string());
    mismatch("event count", body.event_count.to_string(), scan.tally.events.to_string());
    mismatch("frame count", body.frames.to_string(), scan.frames.to_string());
    mismatch("chain head", body.chain_head.clone(), scan.chain_head.clone());
    let state = if expect_recovered { "recovered" } else { "sealed" };
    mismatch("state", body.state.clone(), state.to_string());
    if report.problems.is_empty() {
        report.verdict = if expect_recovered { Verdict::Recovered } else { Verdict::Ok };
    }
    report
}

/// Why a manifest's signature is not one this review accepts: no key, a bad signature, or
/// a key found only where anyone could have published it. None when it is.
fn signature_problem(manifest: &crate::signing::Manifest, keys: &KeyRing) -> Option<String> {
    let key_id = &manifest.body.key_id;
    match keys.find(key_id) {
        Some(known) => match manifest.verify(&known.key) {
            Err(e) => Some(format!("manifest: {e}")),
            Ok(()) if !known.trusted => Some(format!(
                "signed by key {key_id} ({}), which this review does not trust: if that instance is yours, add its public key to recording.trusted_keys or pass it with --public-key",
                known.origin
            )),
            Ok(()) => None,
        },
        None if keys.is_empty() => Some("no trusted public key to check the signature with (pass --public-key or --config)".into()),
        None => Some(format!("signed by key {key_id}, which is neither trusted nor published under keys/ (pass its public key with --public-key)")),
    }
}

/// The quick proof that a file is the recording its manifest signed: a trusted key's valid
/// signature over the manifest, and the file's size and SHA-256 as signed. It skips the
/// frame-by-frame checks of `verify_with` (which a full verify still runs), for readers
/// that only need to know the bytes are the signed ones, such as `dbtape search`.
pub fn check_signed_file(store: &RecordingStore, sid: &str, keys: &KeyRing) -> Result<(), String> {
    use sha2::Digest;
    let manifest = store.read_manifest(sid).map_err(|e| e.to_string())?.ok_or("no signed manifest")?;
    if let Some(problem) = signature_problem(&manifest, keys) {
        return Err(problem);
    }
    let path = store.recording_path(sid);
    let mut file = store.open_recording(sid).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(|e| format!("{}: {e}", path.display()))?;
    if size != manifest.body.size || crate::util::hex::hex(&hasher.finalize()) != manifest.body.sha256 {
        return Err("the file is not the one the manifest signed".into());
    }
    Ok(())
}
