//! `dbtape verify`: proves a recording is whole and is the one the proxy signed.

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::scan::{scan_recording, ScanEnd};
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
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.verdict != Verdict::Failed
    }
}

pub fn verify_recording(store: &RecordingStore, sid: &str, key: Option<&VerifyingKey>) -> VerifyReport {
    let mut report =
        VerifyReport { sid: sid.to_string(), verdict: Verdict::Failed, frames: 0, events: 0, problems: Vec::new(), notes: Vec::new() };
    let path = store.recording_path(sid);
    let scan = match scan_recording(&path, sid) {
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
    match key {
        Some(key) => {
            if let Err(e) = manifest.verify(key) {
                report.problems.push(format!("manifest: {e}"));
            }
        }
        None => report.problems.push("no trusted public key to check the signature with (pass --public-key or --config)".into()),
    }
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
