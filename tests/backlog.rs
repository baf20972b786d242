//! A disk slower than the sessions: the writer's backlog stays bounded. Strict sessions wait
//! (and with them their clients); best_effort sessions drop and record the gap, with the
//! lost count and time range, in the same recording. The writer here is slowed for real by
//! compressing at zstd level 15, several times slower than the events arrive.

mod common;

use common::{block_on, context, read_lines, recorder};
use dbtape::audit::{EventBody, Protocol, RecordedEvent};
use dbtape::recording::AuditPort;
use dbtape::recording::RecordingMode;

const LIMIT: usize = 1024 * 1024;
const SESSIONS: usize = 2;
const FRAME: usize = 64 * 1024;
const EVENTS: u64 = 6_000;

fn query(i: u64) -> EventBody {
    // Incompressible, so the slow compressor has real work.
    let noise: String = (0..4).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
    EventBody::Query { query: format!("SELECT '{noise}' -- {i}"), parameters: vec![], db_name: None }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()).unwrap()
}

/// Floods `SESSIONS` sessions from their own threads; returns their ids.
fn flood(rec: &common::TestRecorder) -> Vec<String> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..SESSIONS)
            .map(|_| {
                scope.spawn(|| {
                    let ctx = context(Protocol::Postgres);
                    let sid = ctx.sid.clone();
                    let port = AuditPort::new(rec.recorder.open(ctx).unwrap());
                    block_on(async {
                        for i in 0..EVENTS {
                            port.emit(query(i)).await.unwrap();
                        }
                        port.end().await.unwrap();
                    });
                    sid
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn events_of(rec: &common::TestRecorder, sid: &str) -> Vec<RecordedEvent> {
    read_lines(&rec.store(), sid)
        .0
        .iter()
        .map(|l| {
            common::assert_schema_valid(l);
            serde_json::from_slice(l).unwrap()
        })
        .collect()
}

#[test]
fn strict_sessions_wait_for_a_slow_writer_and_lose_nothing() {
    let root = tempfile::tempdir().unwrap();
    let rec = recorder(root.path(), |c| {
        c.mode = RecordingMode::Strict;
        c.zstd_level = 15;
        c.frame_target_bytes = FRAME;
        c.max_backlog_bytes = LIMIT;
    });
    let sids = flood(&rec);
    let peak = rec.recorder.peak_backlog_bytes();
    eprintln!("strict: peak backlog {peak} bytes (limit {LIMIT}), peak RSS {} KiB", peak_rss_kib());
    // Each session may pass the check with one frame in hand.
    assert!(peak <= LIMIT + SESSIONS * FRAME, "backlog reached {peak} bytes");
    assert!(peak >= LIMIT / 2, "the writer never fell behind ({peak} bytes), so nothing was tested");
    for sid in sids {
        let events = events_of(&rec, &sid);
        assert_eq!(events.len() as u64, EVENTS + 1, "strict mode lost events");
        assert!(events.iter().all(|e| e.event != "dbtape.recording.gap"));
    }
}

#[test]
fn best_effort_sessions_drop_under_a_slow_writer_and_record_the_gap() {
    let root = tempfile::tempdir().unwrap();
    let rec = recorder(root.path(), |c| {
        c.mode = RecordingMode::BestEffort;
        c.zstd_level = 15;
        c.frame_target_bytes = FRAME;
        c.max_backlog_bytes = LIMIT;
    });
    let sids = flood(&rec);
    let peak = rec.recorder.peak_backlog_bytes();
    eprintln!("best_effort: peak backlog {peak} bytes (limit {LIMIT}), peak RSS {} KiB", peak_rss_kib());
    assert!(peak <= LIMIT + SESSIONS * FRAME, "backlog reached {peak} bytes");
    let mut any_gap = false;
    for sid in sids {
        let events = events_of(&rec, &sid);
        let gaps: Vec<&RecordedEvent> = events.iter().filter(|e| e.event == "dbtape.recording.gap").collect();
        let lost: u64 = gaps.iter().map(|g| g.lost_events.unwrap()).sum();
        // Every event index is accounted for: written, or counted in a gap.
        assert_eq!(events.len() as u64 + lost, events.last().unwrap().ei + 1);
        for gap in &gaps {
            assert!(gap.error.contains("backlog"), "{}", gap.error);
            let (from, until) = (gap.lost_from.clone().unwrap(), gap.lost_until.clone().unwrap());
            assert!(from <= until, "{from} > {until}");
        }
        any_gap |= !gaps.is_empty();
    }
    assert!(any_gap, "the writer was slower than the flood, so events must have been dropped");
}
