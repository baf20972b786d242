//! A recording disk that fills up, on a real (tmpfs) filesystem: strict mode stops the
//! session; best_effort goes on and records the gap. Mounting needs root, as CI has.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{block_on, context, read_lines, recorder};
use dbtape::audit::{EventBody, Protocol, RecordedEvent};
use dbtape::recording::scan::{scan_recording, ScanEnd};
use dbtape::recording::store::RecordingState;
use dbtape::recording::verify::{verify_recording, Verdict};
use dbtape::recording::AuditPort;
use dbtape::recording::RecordingMode;

struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).status().unwrap();
        assert!(status.success(), "mounting a tmpfs failed: these tests need root (CI runs as root)");
        Tmpfs { path: path.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem, leaving about `leave` bytes free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let filler = dir.join("filler");
    let stat = Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().unwrap();
    let avail: u64 = String::from_utf8_lossy(&stat.stdout).lines().nth(1).unwrap().trim().parse().unwrap();
    std::fs::write(&filler, vec![0u8; avail.saturating_sub(leave) as usize]).unwrap();
    filler
}

fn query(i: u64) -> EventBody {
    // Incompressible text, so the disk fills quickly.
    EventBody::Query { query: format!("SELECT '{}' -- {i}", uuid::Uuid::new_v4().simple()), parameters: vec![], db_name: None }
}

#[test]
fn strict_mode_stops_the_session_when_the_disk_is_full() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = Tmpfs::mount(&tmp.path().join("mnt"), "512k");
    let rec = recorder(&mnt.path, |c| {
        c.mode = RecordingMode::Strict;
        c.frame_target_bytes = 4096;
    });
    let filler = fill(&mnt.path, 64 * 1024);
    let ctx = context(Protocol::Postgres);
    let sid = ctx.sid.clone();
    let port = AuditPort::new(rec.recorder.open(ctx).unwrap());
    let mut refused_at = None;
    block_on(async {
        for i in 0..200_000u64 {
            if port.emit(query(i)).await.is_err() {
                refused_at = Some(i);
                break;
            }
            if i % 64 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    });
    let refused_at = refused_at.expect("strict mode must refuse events once the disk is full");
    assert!(refused_at > 10);
    // Every later event is refused too: nothing more may be forwarded.
    assert!(block_on(port.emit(query(0))).is_err());
    std::fs::remove_file(filler).unwrap();
    let _ = block_on(port.end());

    let store = rec.store();
    let scan = scan_recording(&store.recording_path(&sid), &sid).unwrap();
    assert!(!matches!(scan.end, ScanEnd::Damaged(_)), "torn frames must be rolled back: {:?}", scan.end);
    let summary = store.read_summary(&sid).unwrap();
    assert_eq!(summary.state, RecordingState::Failed);
    assert!(summary.error.contains("write failed") || summary.error.contains("fsync failed"), "{}", summary.error);
    // What was written is intact and signed.
    let report = verify_recording(&store, &sid, Some(&rec.public_key()));
    assert_eq!(report.verdict, Verdict::Ok, "{report:?}");
}

#[test]
fn best_effort_mode_continues_and_records_the_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = Tmpfs::mount(&tmp.path().join("mnt"), "512k");
    let rec = recorder(&mnt.path, |c| {
        c.mode = RecordingMode::BestEffort;
        c.frame_target_bytes = 4096;
    });
    let filler = fill(&mnt.path, 64 * 1024);
    let ctx = context(Protocol::Postgres);
    let sid = ctx.sid.clone();
    let log = rec.recorder.open(ctx).unwrap();
    let mut appended = 0u64;
    let mut freed = false;
    for i in 0..4_000u64 {
        log.append(&query(i), 1_700_000_000_000 + i as i64).expect("best_effort never refuses");
        appended += 1;
        if i % 64 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if i == 3_000 {
            std::fs::remove_file(&filler).unwrap();
            freed = true;
        }
    }
    assert!(freed);
    block_on(log.close()).unwrap();

    let store = rec.store();
    let (lines, _) = read_lines(&store, &sid);
    let events: Vec<RecordedEvent> = lines
        .iter()
        .map(|l| {
            common::assert_schema_valid(l);
            serde_json::from_slice(l).unwrap()
        })
        .collect();
    let gaps: Vec<&RecordedEvent> = events.iter().filter(|e| e.event == "dbtape.recording.gap").collect();
    assert!(!gaps.is_empty(), "the disk filled, so a gap must be recorded");
    let lost: u64 = gaps.iter().map(|g| g.lost_events.unwrap()).sum();
    assert!(gaps[0].error.contains("write failed"), "{}", gaps[0].error);
    // The gap says when the lost events happened, within the session's own times.
    let (from, until) = (gaps[0].lost_from.clone().unwrap(), gaps[0].lost_until.clone().unwrap());
    assert!(from <= until && from >= events[0].time, "{from}..{until}");
    let last_ei = events.last().unwrap().ei;
    // Every event index is accounted for: written, or counted in a gap.
    assert_eq!(events.len() as u64 + lost, last_ei + 1);
    assert!(last_ei + 1 >= appended);
    for pair in events.windows(2) {
        assert!(pair[0].ei < pair[1].ei);
    }
    let report = verify_recording(&store, &sid, Some(&rec.public_key()));
    assert_eq!(report.verdict, Verdict::Ok, "{report:?}");
    assert_eq!(store.read_summary(&sid).unwrap().lost_events, lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_new_sessions_below_the_free_space_minimum() {
    // A minimum far above what this disk has free: the guard must refuse, and say why.
    let free = dbtape::recording::disk::free_bytes(&std::env::temp_dir()).unwrap();
    let mut proxy = common::proxy::Proxy::start_with(&format!("min_free_bytes = {}", free + (64 << 30))).await;
    let (ok, _, stderr) =
        proxy.psql(proxy.conninfo("alice", ""), Some(common::proxy::ALICE_PASSWORD), vec!["-c".into(), "SELECT 'never runs'".into()]).await;
    assert!(!ok);
    assert!(stderr.contains("the recording disk is nearly full"), "the client hears why: {stderr}");
    proxy.stop().await;
    let sessions = proxy.sessions();
    assert!(sessions.iter().flatten().all(|e| e["db_query"].is_null()), "no session ran: {sessions:?}");
    let out = common::dbtape_bin().args(["ls", "--failed", "--format", "json", "--dir"]).arg(proxy.store.dir()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["user"], "alice");
    assert!(refused[0]["error"].as_str().unwrap().contains("recording.min_free_bytes"), "{refused:?}");
}
