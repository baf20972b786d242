//! Short sessions packed into segments once sealed: every reader finds them as before, each
//! still verifies on its own, and a crash or damage loses nothing else.

mod common;

use std::path::Path;

use common::{block_on, context, read_lines, recorder};
use dbtape::audit::{EventBody, Protocol, Status};
use dbtape::recording::events::StreamEnd;
use dbtape::recording::segment::SegmentSettings;
use dbtape::recording::store::RecordingState;
use dbtape::recording::verify::{verify_recording, Verdict};

fn packing(max_session_bytes: u64) -> impl FnOnce(&mut dbtape::recording::RecorderConfig) {
    move |c| {
        c.segments = Some(SegmentSettings { max_session_bytes, max_segment_bytes: 16 << 20, max_age: std::time::Duration::from_secs(3600) })
    }
}

/// One short session: start, one statement, its result, end. Returns its sid.
fn short_session(rec: &common::TestRecorder, statement: &str) -> String {
    let ctx = context(Protocol::Postgres);
    let sid = ctx.sid.clone();
    let log = rec.recorder.open(ctx).unwrap();
    let at = 1_790_000_000_000i64;
    log.append(&EventBody::SessionStart { status: Status::ok(), postgres_pid: Some(4242), upstream_reused: None }, at).unwrap();
    log.append(&EventBody::Query { query: statement.into(), parameters: vec![], db_name: None }, at).unwrap();
    log.append(&EventBody::Result { status: Status::ok(), affected_records: 1, query_ei: Some(1) }, at).unwrap();
    let moment = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(at).unwrap();
    log.append(&EventBody::SessionEnd { session_start: moment, session_stop: moment }, at).unwrap();
    block_on(log.close()).unwrap();
    sid
}

fn own_files(dir: &Path, sid: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(sid))
        .collect()
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "dseg")).collect())
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn short_sessions_are_packed_and_every_reader_finds_them() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), packing(64 * 1024));
    let sids: Vec<String> = (0..40).map(|i| short_session(&rec, &format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i};"))).collect();
    // A long session stays in its own files.
    let long = {
        let ctx = context(Protocol::Postgres);
        let sid = ctx.sid.clone();
        let log = rec.recorder.open(ctx).unwrap();
        for i in 0..3000 {
            let q = format!("INSERT INTO audit_trail VALUES ({i}, '{}')", uuid::Uuid::new_v4());
            log.append(&EventBody::Query { query: q, parameters: vec![], db_name: None }, 1_790_000_000_000 + i).unwrap();
        }
        block_on(log.close()).unwrap();
        sid
    };
    let store = rec.store();
    for sid in &sids {
        assert!(own_files(&rec.dir, sid).is_empty(), "{sid} kept its own files: {:?}", own_files(&rec.dir, sid));
        assert_eq!(store.find(sid).unwrap(), *sid);
        let summary = store.read_summary(sid).unwrap();
        assert_eq!((summary.state, summary.events, summary.queries), (RecordingState::Sealed, 4, 1));
        let (lines, end) = read_lines(&store, sid);
        assert_eq!((lines.len(), end), (4, StreamEnd::Sealed));
        let query: serde_json::Value = serde_json::from_slice(&lines[1]).unwrap();
        assert_eq!(query["sid"], sid.as_str());
        assert!(query["db_query"].as_str().unwrap().starts_with("SELECT abalance"));
        let report = verify_recording(&store, sid, Some(&rec.public_key()));
        assert_eq!(report.verdict, Verdict::Ok, "{report:?}");
        assert!(dbtape::recording::verify::check_signed_file(&store, sid, &keyring(&rec)).is_ok());
    }
    assert_eq!(own_files(&rec.dir, &long).len(), 3, "the long session keeps its recording, manifest and sidecar");
    assert_eq!(verify_recording(&store, &long, Some(&rec.public_key())).verdict, Verdict::Ok);
    let mut listed = store.session_ids().unwrap();
    listed.sort();
    let mut want: Vec<String> = sids.iter().cloned().chain([long.clone()]).collect();
    want.sort();
    assert_eq!(listed, want);
    let segments = segment_files(&rec.dir);
    assert_eq!(segments.len(), 1, "{segments:?}");
    let bytes = std::fs::metadata(&segments[0]).unwrap().len();
    eprintln!("{} bytes per packed session", bytes / 40);
    assert!(bytes / 40 < 1024, "{} bytes per packed session", bytes / 40);
    assert!(!store.segments()[0].closed, "the segment stays open until it is full, old or the recorder stops");
    rec.recorder.shutdown();
    let after = dbtape::recording::RecordingStore::new(&rec.dir);
    let segments = after.segments();
    assert!(segments[0].closed && segments[0].sessions == 40, "{segments:?}");
}

fn keyring(rec: &common::TestRecorder) -> dbtape::recording::verify::KeyRing {
    let mut keys = dbtape::recording::verify::KeyRing::default();
    keys.add(rec.public_key(), "test", true);
    keys
}
