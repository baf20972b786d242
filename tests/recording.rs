//! The recording log end to end: round trip, truncation, tampering, concurrency, sealing.

mod common;

use std::sync::Arc;

use common::{assert_schema_valid, block_on, context, read_lines, recorder};
use dbtape::audit::{EventBody, Protocol, RecordedEvent, Status};
use dbtape::recording::events::StreamEnd;
use dbtape::recording::format::{encode_frame, FrameHeader, FrameKind, FrameSpec, CRC_LEN, FILE_MAGIC, HEADER_LEN};
use dbtape::recording::reader::{FrameReader, Next, Tail};
use dbtape::recording::store::RecordingState;
use dbtape::recording::verify::{verify_recording, Verdict};
use dbtape::recording::{FsyncPolicy, RecordingMode};

fn query(i: u64) -> EventBody {
    EventBody::Query { query: format!("SELECT * FROM orders WHERE id = {i}"), parameters: vec![], db_name: None }
}

#[test]
fn hundred_thousand_events_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let ctx = context(Protocol::Postgres);
    let sid = ctx.sid.clone();
    let log = rec.recorder.open(ctx).unwrap();
    let base = 1_700_000_000_000i64;
    const N: u64 = 100_000;
    for i in 0..N {
        let body = match i % 4 {
            0 => query(i),
            1 => EventBody::Result { status: Status::ok(), affected_records: i % 7, query_ei: None },
            2 => EventBody::PostgresBind {
                statement_name: "s1".into(),
                portal_name: String::new(),
                parameters: vec![i.to_string()],
                parameter_formats: vec![],
                parameter_types: None,
            },
            _ => EventBody::Result {
                status: Status::failed(format!("ERROR: boom {i} (SQLSTATE 42000)"), ""),
                affected_records: 0,
                query_ei: None,
            },
        };
        log.append(&body, base + i as i64).unwrap();
    }
    block_on(log.close()).unwrap();

    let store = rec.store();
    let (lines, end) = read_lines(&store, &sid);
    assert_eq!(end, StreamEnd::Sealed);
    assert_eq!(lines.len() as u64, N);
    let mut uids = std::collections::HashSet::new();
    for (i, line) in lines.iter().enumerate() {
        let i = i as u64;
        let event: RecordedEvent = serde_json::from_slice(line).unwrap();
        assert_eq!(event.ei, i);
        assert_eq!(event.sid, sid);
        assert!(uids.insert(event.uid.clone()), "duplicate uid");
        assert_eq!(event.time_ms(), Some(base + i as i64));
        match i % 4 {
            0 => assert_eq!(event.db_query.as_deref(), Some(format!("SELECT * FROM orders WHERE id = {i}").as_str())),
            1 => assert_eq!(event.affected_records, i % 7),
            2 => assert_eq!(event.parameters, vec![i.to_string()]),
            _ => assert_eq!(event.error, format!("ERROR: boom {i} (SQLSTATE 42000)")),
        }
        if i.is_multiple_of(97) {
            assert_schema_valid(line);
        }
    }
    let summary = store.read_summary(&sid).unwrap();
    assert_eq!(summary.state, RecordingState::Sealed);
    assert_eq!(summary.events, N);
    assert_eq!(summary.queries, N / 4);
    let report = verify_recording(&store, &sid, Some(&rec.public_key()));
    assert_eq!(report.verdict, Verdict::Ok, "{report:?}");
    assert_eq!(report.events, N);
}

/// Writes a small sealed recording with several frames and returns (store dir, sid, bytes).
fn small_recording(tmp: &std::path::Path) -> (common::TestRecorder, String) {
    let rec = recorder(tmp, |c| c.frame_target_bytes = 600);
    let ctx = context(Protocol::Postgres);
    let sid = ctx.sid.clone();
    let log = rec.recorder.open(ctx).unwrap();
    for i in 0..12 {
        log.append(&query(i), 1_700_000_000_000 + i as i64).unwrap();
    }
    block_on(log.close()).unwrap();
    (rec, sid)
}

/// Frame boundaries of a well-formed file: the offset just past each frame.
fn frame_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = FILE_MAGIC.len();
    while at < bytes.len() {
        let head: [u8; HEADER_LEN] = bytes[at..at + HEADER_LEN].try_into().unwrap();
        let header = FrameHeader::decode(&head).unwrap();
        at += HEADER_LEN + header.payload_len as usize + CRC_LEN;
        ends.push(at);
    }
    ends
}

#[test]
fn truncation_at_every_byte_keeps_every_whole_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, sid) = small_recording(tmp.path());
    let bytes = std::fs::read(rec.store().recording_path(&sid)).unwrap();
    let ends = frame_ends(&bytes);
    assert!(ends.len() >= 5, "want several frames, got {}", ends.len());
    let (all_lines, _) = read_lines(&rec.store(), &sid);
    for cut in 0..=bytes.len() {
        let mut reader = FrameReader::new(&bytes[..cut], &sid).unwrap();
        let mut frames = 0;
        let mut events = Vec::new();
        let mut session: Option<dbtape::recording::format::SessionHeader> = None;
        let tail = loop {
            match reader.next_frame() {
                Ok(Next::Frame(frame)) => {
                    frames += 1;
                    if frame.header.kind == FrameKind::Session {
                        session = Some(serde_json::from_slice(&frame.data).unwrap());
                    }
                    if frame.header.kind == FrameKind::Events {
                        // Compact frames leave the session's fixed fields to frame 0.
                        let compact = frame.header.flags & dbtape::recording::format::FLAG_COMPACT != 0;
                        for line in dbtape::recording::reader::event_lines(&frame.data) {
                            let mut whole = Vec::new();
                            session.as_ref().unwrap().expand_line(line, compact, &mut whole);
                            whole.pop();
                            events.push(whole);
                        }
                    }
                }
                Ok(Next::End(tail)) => break tail,
                Err(e) => panic!("cut at {cut}: unexpected error {e}"),
            }
        };
        let whole = ends.iter().filter(|end| **end <= cut).count();
        assert_eq!(frames, whole, "cut at {cut}");
        assert_eq!(events[..], all_lines[..events.len()], "cut at {cut}: events differ");
        let boundary = ends.iter().rev().find(|e| **e <= cut).copied().unwrap_or(FILE_MAGIC.len().min(cut));
        let at_boundary = cut == boundary && cut >= FILE_MAGIC.len();
        match tail {
            Tail::Clean => assert!(at_boundary, "cut at {cut} reported clean"),
            Tail::Truncated { offset, torn_bytes } => {
                assert!(!at_boundary, "cut at {cut} at a boundary reported truncated");
                let frame_start = if cut < FILE_MAGIC.len() { 0 } else { boundary };
                assert_eq!(offset as usize, frame_start, "cut at {cut}");
                assert_eq!(offset + torn_bytes, cut as u64, "cut at {cut}");
            }
        }
    }
}

#[test]
fn a_flipped_byte_fails_verify_and_names_the_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, sid) = small_recording(tmp.path());
    let path = rec.store().recording_path(&sid);
    let mut bytes = std::fs::read(&path).unwrap();
    let ends = frame_ends(&bytes);
    let target = ends[1] + HEADER_LEN + 5; // inside frame 2's payload
    bytes[target] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let report = verify_recording(&rec.store(), &sid, Some(&rec.public_key()));
    assert_eq!(report.verdict, Verdict::Failed);
    let text = report.problems.join("\n");
    assert!(text.contains("frame 2 at byte"), "{text}");
    assert!(text.contains("CRC mismatch"), "{text}");

    let out = common::dbtape_bin()
        .args(["verify", &sid, "--dir"])
        .arg(&rec.dir)
        .arg("--public-key")
        .arg(dbtape::signing::public_key_path(&rec.key_path))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED") && stdout.contains("frame 2 at byte"), "{stdout}");
}

/// Rewrites frame `index`'s payload through `edit`, recomputing its CRC, and optionally
/// re-chaining every frame after it as a forger would.
fn forge(bytes: &[u8], sid: &str, index: usize, rechain: bool, edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = FILE_MAGIC.to_vec();
    let mut reader = FrameReader::new(bytes, sid).unwrap();
    let mut chain = dbtape::recording::format::chain_seed(sid);
    let mut i = 0;
    while let Ok(Next::Frame(frame)) = reader.next_frame() {
        let h = frame.header;
        let compressed = h.flags & 1 == 1;
        let mut raw = frame.data.clone();
        if i == index {
            edit(&mut raw);
        }
        let payload = if compressed { zstd::bulk::compress(&raw, 3).unwrap() } else { raw.clone() };
        let spec = FrameSpec {
            kind: h.kind,
            seq: h.seq,
            compressed,
            compact: h.flags & dbtape::recording::format::FLAG_COMPACT != 0,
            raw_len: raw.len() as u32,
            events: h.events,
            first_ei: h.first_ei,
            min_time_ms: h.min_time_ms,
            max_time_ms: h.max_time_ms,
            payload: &payload,
        };
        if i == index && !rechain {
            // Keep the original chain link but fix the CRC, as a careless forger would.
            let mut header = FrameHeader { chain: h.chain, ..h };
            header.payload_len = payload.len() as u32;
            header.raw_len = raw.len() as u32;
            let head = header.encode();
            out.extend_from_slice(&head);
            out.extend_from_slice(&payload);
            out.extend_from_slice(&dbtape::recording::format::frame_crc(&head, &payload).to_le_bytes());
            chain = h.chain;
        } else if i >= index && rechain {
            let mut edited = raw.clone();
            if h.kind == FrameKind::Trailer {
                let mut t: dbtape::recording::format::Trailer = serde_json::from_slice(&edited).unwrap();
                t.chain_head = dbtape::util::hex::hex(&chain);
                edited = serde_json::to_vec(&t).unwrap();
            }
            let payload = if compressed { zstd::bulk::compress(&edited, 3).unwrap() } else { edited.clone() };
            chain = encode_frame(&FrameSpec { payload: &payload, raw_len: edited.len() as u32, ..spec }, &chain, &mut out);
        } else {
            out.extend_from_slice(&bytes[frame.offset as usize..frame.offset as usize + HEADER_LEN + h.payload_len as usize + CRC_LEN]);
            chain = h.chain;
        }
        i += 1;
    }
    out
}

fn change_query(raw: &mut Vec<u8>) {
    let text = String::from_utf8(raw.clone()).unwrap();
    let changed = text.replacen("orders WHERE id = 1", "orders WHERE id = 9", 1);
    assert_ne!(text, changed, "nothing to change");
    *raw = changed.into_bytes();
}

#[test]
fn an_edit_with_a_fixed_crc_breaks_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, sid) = small_recording(tmp.path());
    let path = rec.store().recording_path(&sid);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, forge(&bytes, &sid, 1, false, change_query)).unwrap();
    let report = verify_recording(&rec.store(), &sid, Some(&rec.public_key()));
    assert_eq!(report.verdict, Verdict::Failed);
    let text = report.problems.join("\n");
    assert!(text.contains("frame 1") && text.contains("hash chain broken"), "{text}");
}

#[test]
fn a_fully_rechained_forgery_fails_the_signature_check() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, sid) = small_recording(tmp.path());
    let path = rec.store().recording_path(&sid);
    let bytes = std::fs::read(&path).unwrap();
    let forged = forge(&bytes, &sid, 1, true, change_query);
    std::fs::write(&path, &forged).unwrap();
    // Every CRC and link is consistent, so only the signed manifest can tell.
    let scan = dbtape::recording::scan::scan_recording(&path, &sid).unwrap();
    assert!(matches!(scan.end, dbtape::recording::scan::ScanEnd::Sealed(_)), "{:?}", scan.end);
    let report = verify_recording(&rec.store(), &sid, Some(&rec.public_key()));
    assert_eq!(report.verdict, Verdict::Failed);
    let text = report.problems.join("\n");
    assert!(text.contains("signed sha256") && text.contains("signed chain head"), "{text}");

    // A forger who also rewrites the manifest needs the private key: signing with another
    // key is caught.
    let other = dbtape::signing::Signer::load_or_generate(&tmp.path().join("other.key")).unwrap();
    let mut manifest = rec.store().read_manifest(&sid).unwrap().unwrap();
    manifest.body.sha256 = scan.sha256.clone();
    manifest.body.chain_head = scan.chain_head.clone();
    manifest.body.key_id = rec.store().read_manifest(&sid).unwrap().unwrap().body.key_id;
    let resigned = other.sign(manifest.body.clone()).unwrap();
    rec.store().write_manifest(&resigned).unwrap();
    let report = verify_recording(&rec.store(), &sid, Some(&rec.public_key()));
    assert_eq!(report.verdict, Verdict::Failed);
    assert!(report.problems.join("\n").contains("signature does not match"), "{:?}", report.problems);
}

#[test]
fn concurrent_writers_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = Arc::new(recorder(tmp.path(), |c| c.frame_target_bytes = 8 * 1024));
    const SESSIONS: usize = 16;
    const EVENTS: u64 = 4_000;
    let mut handles = Vec::new();
    for _ in 0..SESSIONS {
        let rec = rec.clone();
        handles.push(std::thread::spawn(move || {
            let ctx = context(Protocol::MongoDb);
            let sid = ctx.sid.clone();
            let log = rec.recorder.open(ctx).unwrap();
            for i in 0..EVENTS {
                log.append(&query(i), 1_700_000_000_000 + i as i64).unwrap();
                if i % 1000 == 0 {
                    std::thread::yield_now();
                }
            }
            block_on(log.close()).unwrap();
            sid
        }));
    }
    let sids: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let store = rec.store();
    for sid in &sids {
        let (lines, end) = read_lines(&store, sid);
        assert_eq!(end, StreamEnd::Sealed);
        assert_eq!(lines.len() as u64, EVENTS, "{sid}");
        for (i, line) in lines.iter().enumerate() {
            let event: RecordedEvent = serde_json::from_slice(line).unwrap();
            assert_eq!(event.ei, i as u64);
            assert_eq!(event.db_query.unwrap(), format!("SELECT * FROM orders WHERE id = {i}"));
        }
        assert_eq!(verify_recording(&store, sid, Some(&rec.public_key())).verdict, Verdict::Ok);
    }
}

#[test]
fn always_fsync_waits_for_durability_and_shutdown_seals_open_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |c| c.fsync = FsyncPolicy::Always);
    let ctx = context(Protocol::Postgres);
    let sid = ctx.sid.clone();
    let log = rec.recorder.open(ctx).unwrap();
    let ticket = log.append(&query(1), 1_700_000_000_000).unwrap();
    block_on(log.wait_durable(ticket)).unwrap();
    // Durable means it is in the file now, before any seal.
    let (lines, end) = read_lines(&rec.store(), &sid);
    assert_eq!(lines.len(), 1);
    assert_eq!(end, StreamEnd::Unsealed);
    assert!(rec.store().is_locked(&sid));
    assert_eq!(rec.store().summaries().unwrap()[0].as_ref().unwrap().state, RecordingState::Live);

    rec.recorder.shutdown();
    assert!(!rec.store().is_locked(&sid));
    assert_eq!(rec.store().read_summary(&sid).unwrap().state, RecordingState::Sealed);
    assert_eq!(verify_recording(&rec.store(), &sid, Some(&rec.public_key())).verdict, Verdict::Ok);
    assert!(rec.recorder.open(context(Protocol::Postgres)).is_err(), "no new sessions after shutdown");
    drop(log);
}

/// A session shorter than a second never has a live sidecar, however many writer passes
/// see it; until its first, readers summarize it from the recording, and sealing leaves
/// the final sidecar.
#[test]
fn a_session_is_listed_live_before_its_first_sidecar_and_sealed_after() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |c| c.batch_interval = std::time::Duration::from_millis(5));
    let ctx = context(Protocol::Postgres);
    let (sid, user) = (ctx.sid.clone(), ctx.user.user.clone());
    let log = rec.recorder.open(ctx).unwrap();
    let store = rec.store();
    log.append(&query(0), 1_700_000_000_000).unwrap();
    // Dozens of writer passes, well within the session's first second.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!store.meta_path(&sid).exists(), "no sidecar while the session is younger than a second");
    let early = store.summary_stamp(&sid);
    assert!(early.is_some(), "the console's catalogue lists the session from its recording meanwhile");
    let summaries = store.summaries().unwrap();
    let live = summaries[0].as_ref().unwrap();
    assert_eq!((live.sid.as_str(), live.state, live.user.as_str()), (sid.as_str(), RecordingState::Live, user.as_str()));
    log.append(&query(1), 1_700_000_000_000).unwrap();
    block_on(log.close()).unwrap();
    assert!(store.meta_path(&sid).exists());
    assert_ne!(store.summary_stamp(&sid), early, "the sidecar's stamp replaces the recording's");
    let sealed = store.read_summary(&sid).unwrap();
    assert_eq!((sealed.state, sealed.queries), (RecordingState::Sealed, 2));
    assert_eq!(verify_recording(&store, &sid, Some(&rec.public_key())).verdict, Verdict::Ok);
}

#[test]
fn best_effort_mode_is_configurable_and_strict_is_default() {
    let cfg = dbtape::recording::RecorderConfig::new("x");
    assert_eq!(cfg.mode, RecordingMode::Strict);
    assert_eq!(cfg.fsync, FsyncPolicy::Batch);
}

#[test]
fn compact_frames_read_back_as_whole_events_and_overrides_keep_their_own_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let ctx = context(Protocol::Postgres);
    let sid = ctx.sid.clone();
    let log = rec.recorder.open(ctx.clone()).unwrap();
    let per_db = |i: u64| EventBody::Query { query: format!("find {i}"), parameters: vec![], db_name: Some("other_db".into()) };
    let bodies = [
        query(0),
        query(1),
        per_db(2),
        per_db(3),
        query(4),
        EventBody::Result { status: Status::ok(), affected_records: 1, query_ei: Some(4) },
    ];
    for (i, body) in bodies.iter().enumerate() {
        log.append(body, 1_700_000_000_000 + i as i64).unwrap();
    }
    block_on(log.close()).unwrap();

    // Each run of same-kind events is its own frame: compact, whole, compact.
    let bytes = std::fs::read(rec.store().recording_path(&sid)).unwrap();
    let mut reader = FrameReader::new(&bytes[..], &sid).unwrap();
    let mut kinds = Vec::new();
    while let Ok(Next::Frame(frame)) = reader.next_frame() {
        if frame.header.kind == FrameKind::Events {
            let compact = frame.header.flags & dbtape::recording::format::FLAG_COMPACT != 0;
            kinds.push((compact, frame.header.events));
            if compact {
                assert!(!String::from_utf8_lossy(&frame.data).contains(&sid), "a compact frame repeats the session's fields");
            }
        }
    }
    assert_eq!(kinds, [(true, 2), (false, 2), (true, 2)]);

    // Read back, every event is whole and equals what serde makes of it (uid aside).
    let (lines, end) = read_lines(&rec.store(), &sid);
    assert_eq!(end, StreamEnd::Sealed);
    assert_eq!(lines.len(), bodies.len());
    for (i, (line, body)) in lines.iter().zip(&bodies).enumerate() {
        let got = assert_schema_valid(line);
        let uid = uuid::Uuid::parse_str(got["uid"].as_str().unwrap()).unwrap();
        let event =
            dbtape::audit::AuditEvent { index: i as u64, uid, time_ms: 1_700_000_000_000 + i as i64, context: &ctx, body, notes: None };
        assert_eq!(got, serde_json::to_value(event).unwrap(), "event {i}");
    }
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&lines[2]).unwrap()["db_name"], "other_db");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&lines[4]).unwrap()["db_name"], ctx.database.name.as_str());
    let report = verify_recording(&rec.store(), &sid, Some(&rec.public_key()));
    assert_eq!(report.verdict, Verdict::Ok, "{report:?}");
}

#[test]
fn screen_steps_are_playback_as_data_one_frame_at_a_time() {
    use dbtape::replay::screen::ScreenSteps;
    let tmp = tempfile::tempdir().unwrap();
    // Small frames: the steps must come out across many of them, in order.
    let rec = recorder(tmp.path(), |c| c.frame_target_bytes = 4096);
    let ctx = context(Protocol::Postgres);
    let sid = ctx.sid.clone();
    let log = rec.recorder.open_at(ctx, 1_000).unwrap();
    log.append(&EventBody::SessionStart { status: Status::ok(), postgres_pid: None, upstream_reused: None }, 1_000).unwrap();
    for i in 0..250u64 {
        let query = format!("SELECT {i} /* \u{1b}[2K hidden? */");
        log.append(&EventBody::Query { query, parameters: vec![], db_name: None }, 1_000 + i as i64).unwrap();
        let result = EventBody::Result { status: Status::ok(), affected_records: 1, query_ei: Some(1 + 2 * i) };
        log.append(&result, 1_000 + i as i64).unwrap();
    }
    block_on(log.close()).unwrap();
    let stream = dbtape::recording::events::EventStream::open(&rec.store(), &sid, false).unwrap();
    let mut steps = ScreenSteps::new(stream, "postgres", 400);
    let taken: Vec<_> = steps.by_ref().map(Result::unwrap).collect();
    // Events before `from_ei` set the renderer's state but are not shown: query i is ei
    // 2i+1 and its result 2i+2, so the first step is query 199's result, then queries 200 on.
    let queries: Vec<&str> = taken.iter().filter(|s| s.text.contains("SELECT")).map(|s| s.text.as_str()).collect();
    assert_eq!(queries.len(), 50);
    assert_eq!(taken[0].ei, 400);
    assert!(taken[0].text.starts_with("SUCCESS"), "{:?}", taken[0]);
    assert!(queries[0].contains("SELECT 200"), "{}", queries[0]);
    assert!(taken.windows(2).all(|w| w[0].ei < w[1].ei && w[0].time_ms <= w[1].time_ms));
    assert!(taken.iter().all(|s| !s.text.contains('\u{1b}')), "terminal controls never reach a step");
    assert!(matches!(steps.end(), Some(dbtape::recording::events::StreamEnd::Sealed)), "{:?}", steps.end());
}
