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
    let sids: Vec<String> =
        (0..40).map(|i| short_session(&rec, &format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i};"))).collect();
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

/// Byte offsets of each block in a segment file, and the sessions it holds.
fn blocks(path: &Path) -> Vec<(u64, u64, Vec<String>)> {
    use dbtape::recording::segment::format::{read_record, Record};
    let bytes = std::fs::read(path).unwrap();
    let len = bytes.len() as u64;
    let mut at = 8u64;
    let mut out = Vec::new();
    loop {
        let mut cursor = std::io::Cursor::new(&bytes[at as usize..]);
        match read_record(&mut cursor, at, len).unwrap() {
            Record::Block(h) => {
                out.push((h.payload_offset(), h.end(), h.sids.iter().map(|s| s.to_string()).collect()));
                at = h.end();
            }
            _ => return out,
        }
    }
}

#[test]
fn a_damaged_block_fails_only_its_own_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), packing(64 * 1024));
    let sids: Vec<String> = (0..6).map(|i| short_session(&rec, &format!("DELETE FROM payroll WHERE id = {i}"))).collect();
    rec.recorder.shutdown();
    let segment = segment_files(&rec.dir).remove(0);
    // `DBTAPE_SEGMENT_SEED=fuzz/corpus/segment/seed-6-sessions` writes the fuzz target's seed.
    if let Some(seed) = std::env::var_os("DBTAPE_SEGMENT_SEED") {
        std::fs::copy(&segment, seed).unwrap();
    }
    let found = blocks(&segment);
    assert_eq!(found.iter().map(|b| b.2.len()).sum::<usize>(), sids.len());
    // Damage the third block's payload.
    let (payload_at, _, damaged) = found[2].clone();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[payload_at as usize + 3] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    let store = dbtape::recording::RecordingStore::new(&rec.dir);
    for sid in &sids {
        let report = verify_recording(&store, sid, Some(&rec.public_key()));
        if damaged.contains(sid) {
            assert_eq!(report.verdict, Verdict::Failed, "{report:?}");
            assert!(!report.problems.is_empty());
        } else {
            assert_eq!(report.verdict, Verdict::Ok, "{sid}: {report:?}");
        }
    }
    // Still listed, so the damage shows rather than the session vanishing.
    let listed = store.session_ids().unwrap();
    assert!(sids.iter().all(|s| listed.contains(s)));
}

#[test]
fn a_dead_writers_segment_is_closed_at_its_last_whole_block_and_leftovers_go() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), packing(64 * 1024));
    let sids: Vec<String> = (0..5).map(|i| short_session(&rec, &format!("SELECT {i}"))).collect();
    rec.recorder.shutdown();
    let segment = segment_files(&rec.dir).remove(0);
    let found = blocks(&segment);
    let store = dbtape::recording::RecordingStore::new(&rec.dir);
    // As a crash leaves it: no end record, a torn block after the last whole one, and the
    // last packed session's own files not yet removed.
    let last = found.last().unwrap().2[0].clone();
    let packed = store.packed(&last).unwrap();
    std::fs::write(rec.dir.join(format!("{last}.dbt")), &packed.recording).unwrap();
    std::fs::write(rec.dir.join(format!("{last}.meta.json")), &packed.summary).unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.truncate(found.last().unwrap().1 as usize);
    let whole = bytes.len();
    bytes.extend_from_slice(b"DSBK\x10\x00\x00\x00partial");
    std::fs::write(&segment, &bytes).unwrap();

    let fresh = dbtape::recording::RecordingStore::new(&rec.dir);
    let signer = dbtape::signing::Signer::load_or_generate(&rec.key_path).unwrap();
    let outcomes = dbtape::recording::recover::recover_unsealed(&fresh, &signer).unwrap();
    assert!(outcomes.is_empty(), "nothing needed signing again: {outcomes:?}");
    assert!(own_files(&rec.dir, &last).is_empty(), "the leftover copy went");
    let closed = std::fs::read(&segment).unwrap();
    assert_eq!(closed.len(), whole + 48, "torn tail cut, end record written");
    let reread = dbtape::recording::RecordingStore::new(&rec.dir);
    assert!(reread.segments()[0].closed);
    for sid in &sids {
        assert_eq!(verify_recording(&reread, sid, Some(&rec.public_key())).verdict, Verdict::Ok, "{sid}");
    }
    // Recovery again changes nothing.
    dbtape::recording::recover::recover_unsealed(&reread, &signer).unwrap();
    assert_eq!(std::fs::read(&segment).unwrap(), closed);
}

/// The background indexer takes each sealed session once, packed or not, leaves live ones
/// for later, and notices what another writer (a `dbtape index` run) added to the index.
#[test]
fn the_background_indexer_takes_each_sealed_session_once_and_sees_other_writers() {
    use dbtape::search::indexer::Indexer;
    use dbtape::search::SearchIndex;
    use dbtape::tasks::Pass;
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), packing(64 * 1024));
    let first: Vec<String> = (0..5).map(|i| short_session(&rec, &format!("SELECT {i};"))).collect();
    let live = {
        let ctx = context(Protocol::Postgres);
        let sid = ctx.sid.clone();
        let log = rec.recorder.open(ctx).unwrap();
        log.append(&EventBody::Query { query: "SELECT 'still running'".into(), parameters: vec![], db_name: None }, 1_790_000_000_000)
            .unwrap();
        (sid, log)
    };
    let store = rec.store();
    let packed = |sids: &[String]| sids.iter().all(|sid| own_files(&rec.dir, sid).is_empty());
    for _ in 0..200 {
        if packed(&first) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(packed(&first), "the recorder packs short sessions at its tick");
    let mut indexer = Indexer::default();
    assert_eq!(indexer.pass(&store), Pass::Worked);
    let index = SearchIndex::open(&rec.dir).unwrap();
    let covered = index.covered().unwrap();
    assert_eq!(covered.len(), 5, "the live session waits: {covered:?}");
    assert!(first.iter().all(|sid| covered.contains_key(sid)) && !covered.contains_key(&live.0));
    assert_eq!(indexer.pass(&store), Pass::Idle, "nothing is indexed twice");
    let mut covered = dbtape::search::index::Covered::default();
    assert_eq!(index.catch_up_with(&store, &mut covered).unwrap().0, 0);

    // Another writer indexes a session first; the indexer sees the index changed under it.
    let second = short_session(&rec, "SELECT 'second';");
    block_on(live.1.close()).unwrap();
    let both = [second.clone(), live.0.clone()];
    for _ in 0..200 {
        if packed(&both) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(packed(&both));
    SearchIndex::open(&rec.dir).unwrap().add(&store, std::slice::from_ref(&second)).unwrap();
    assert_eq!(index.catch_up_with(&store, &mut covered).unwrap().0, 1, "only the session nobody indexed yet");
    index.refresh().unwrap();
    let covered = index.covered().unwrap();
    assert_eq!(covered.len(), 7, "{covered:?}");
    assert!(covered.contains_key(&live.0) && covered.contains_key(&second));
    assert_eq!(indexer.pass(&store), Pass::Idle, "the other indexer's cache sees both writers' work");

    // Past its whole first look, a pass takes what was packed since its last.
    let third: Vec<String> = (0..3).map(|i| short_session(&rec, &format!("SELECT 'third {i}';"))).collect();
    for _ in 0..200 {
        if packed(&third) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(packed(&third));
    assert_eq!(indexer.pass(&store), Pass::Worked);
    index.refresh().unwrap();
    let covered = index.covered().unwrap();
    assert_eq!(covered.len(), 10, "{covered:?}");
    assert!(third.iter().all(|sid| covered.contains_key(sid)));
    assert_eq!(indexer.pass(&store), Pass::Idle, "the packed sessions are behind its mark now");
    rec.recorder.shutdown();
}

/// A short session that lived past its first second has a live sidecar; once packed,
/// its recording and that sidecar both go. (One that ended before has no sidecar to remove.)
#[test]
fn a_packed_session_leaves_no_file_of_its_own_whether_or_not_it_had_a_sidecar() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), packing(64 * 1024));
    let (sid, log) = open_with_query(&rec, "SELECT pg_sleep(3)");
    let sidecar = rec.dir.join(format!("{sid}.meta.json"));
    wait_for("the writer's pass writes a live session's sidecar", || sidecar.exists());
    block_on(log.close()).unwrap();
    let quick = short_session(&rec, "SELECT 1;");
    wait_for("both sessions are packed", || [&sid, &quick].iter().all(|s| own_files(&rec.dir, s).is_empty()));
    for s in [&sid, &quick] {
        assert_eq!(own_files(&rec.dir, s), Vec::<String>::new(), "{s}");
        assert_eq!(rec.store().read_summary(s).unwrap().state, RecordingState::Sealed);
    }
    rec.recorder.shutdown();
}

fn incompressible(len: usize) -> String {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

fn append_query(log: &dbtape::recording::SessionLog, query: String) {
    log.append(&EventBody::Query { query, parameters: vec![], db_name: None }, 1_790_000_000_000).unwrap();
}

/// A new session with one statement recorded: its sid and its log, still open.
fn open_with_query(rec: &common::TestRecorder, statement: &str) -> (String, dbtape::recording::SessionLog) {
    let ctx = context(Protocol::Postgres);
    let sid = ctx.sid.clone();
    let log = rec.recorder.open(ctx).unwrap();
    append_query(&log, statement.to_string());
    (sid, log)
}

fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(done(), "{what}");
}

/// A recording that may be packed starts in memory. Until the writer's batch tick (an hour
/// here) only outgrowing what memory holds gives it a file; at the stop, sessions that never
/// had one are packed straight from memory, and every one is whole and verifies.
#[test]
fn a_recording_in_memory_gets_a_file_only_when_it_outgrows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |c| {
        packing(64 * 1024)(c);
        c.batch_interval = std::time::Duration::from_secs(3600);
        c.frame_target_bytes = 16 * 1024;
    });
    let (ended, log) = open_with_query(&rec, "SELECT 1");
    drop(log);
    let (live, live_log) = open_with_query(&rec, "SELECT 2");
    let big_query = incompressible(20 * 1024);
    let (big, big_log) = open_with_query(&rec, &big_query);
    append_query(&big_log, "SELECT 3".into());
    // The big session's frame filled, was written, and took it past memory's share.
    wait_for("the big session gets its own file", || own_files(&rec.dir, &big) == [format!("{big}.dbt")]);
    for sid in [&ended, &live] {
        assert_eq!(own_files(&rec.dir, sid), Vec::<String>::new(), "{sid} has no file before the tick");
    }
    rec.recorder.shutdown();
    drop((live_log, big_log));
    let store = rec.store();
    for (sid, events) in [(&ended, 1), (&live, 1), (&big, 2)] {
        assert_eq!(own_files(&rec.dir, sid), Vec::<String>::new(), "{sid} is packed");
        let (lines, end) = read_lines(&store, sid);
        assert_eq!((lines.len(), end), (events, StreamEnd::Sealed), "{sid}");
        let report = verify_recording(&store, sid, Some(&rec.public_key()));
        assert_eq!(report.verdict, Verdict::Ok, "{report:?}");
    }
    let (lines, _) = read_lines(&store, &big);
    let first: serde_json::Value = serde_json::from_slice(&lines[0]).unwrap();
    assert_eq!(first["db_query"], big_query.as_str());
    assert_eq!(store.segments().iter().map(|s| s.sessions as u64).sum::<u64>(), 3);
}

/// A session still live at the writer's batch tick gets its own file there, holding every
/// event so far, so that the tick's fsync covers it as before; once sealed it is packed and
/// that file goes.
#[test]
fn a_recording_still_live_at_the_batch_tick_gets_its_own_file_with_every_event() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |c| {
        packing(64 * 1024)(c);
        c.batch_interval = std::time::Duration::from_millis(100);
    });
    let (sid, log) = open_with_query(&rec, "SELECT 'before the tick'");
    wait_for("the live session gets its own file at the tick", || own_files(&rec.dir, &sid).contains(&format!("{sid}.dbt")));
    let store = rec.store();
    let (lines, end) = read_lines(&store, &sid);
    assert_eq!((lines.len(), end), (1, StreamEnd::Unsealed));
    append_query(&log, "SELECT 'after it'".into());
    block_on(log.close()).unwrap();
    wait_for("the sealed session is packed and its own files go", || own_files(&rec.dir, &sid).is_empty());
    let (lines, end) = read_lines(&store, &sid);
    assert_eq!((lines.len(), end), (2, StreamEnd::Sealed));
    assert_eq!(verify_recording(&store, &sid, Some(&rec.public_key())).verdict, Verdict::Ok);
    rec.recorder.shutdown();
}

/// A session that cannot be packed (here its id is not a UUID, which no engine makes) falls
/// back to its own files; one that never left memory takes every byte there with it.
#[test]
fn a_session_in_memory_that_cannot_be_packed_keeps_every_byte_in_its_own_file() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |c| {
        packing(64 * 1024)(c);
        c.batch_interval = std::time::Duration::from_secs(3600);
    });
    let mut ctx = context(Protocol::Postgres);
    ctx.sid = "not-a-uuid".into();
    let log = rec.recorder.open(ctx).unwrap();
    append_query(&log, "SELECT 'kept'".into());
    drop(log);
    rec.recorder.shutdown();
    let bytes = std::fs::read(rec.dir.join("not-a-uuid.dbt")).expect("the session's own recording");
    assert!(bytes.starts_with(dbtape::recording::format::FILE_MAGIC), "{} bytes", bytes.len());
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(rec.dir.join("not-a-uuid.manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["size"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(manifest["event_count"].as_u64(), Some(1));
    assert!(rec.store().segments().iter().all(|s| s.sessions == 0));
}
