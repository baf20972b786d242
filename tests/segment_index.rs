//! What the segment index costs a long-running proxy: every session ever packed and kept
//! locally is in it, so its memory per session is what a busy host pays for a year of
//! short sessions. A binary of its own, for its allocator counts the whole process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use dbtape::recording::segment::format::Entry;
use dbtape::recording::segment::{SegmentSettings, SegmentWriter};
use dbtape::recording::RecordingStore;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SESSIONS: usize = 200_000;
/// A storm's writer pass seals tens to hundreds of sessions into one block.
const PER_BLOCK: usize = 100;

fn recording_of(sid: &uuid::Uuid) -> Vec<u8> {
    format!("recording of {sid}").into_bytes()
}

/// Packs `count` sessions, `PER_BLOCK` to a block, into segments of at most 1 MiB.
fn pack(dir: &std::path::Path, count: usize) -> Vec<uuid::Uuid> {
    let settings =
        SegmentSettings { max_session_bytes: 64 * 1024, max_segment_bytes: 1 << 20, max_age: std::time::Duration::from_secs(3600) };
    let mut writer = SegmentWriter::new(dir, settings);
    let sids: Vec<uuid::Uuid> = (0..count).map(|_| uuid::Uuid::new_v4()).collect();
    for chunk in sids.chunks(PER_BLOCK) {
        let recordings: Vec<Vec<u8>> = chunk.iter().map(recording_of).collect();
        let entries: Vec<Entry<'_>> = chunk
            .iter()
            .zip(&recordings)
            .map(|(sid, recording)| Entry { sid: *sid, recording, manifest: b"{\"manifest\":1}", summary: b"{\"summary\":1}" })
            .collect();
        writer.append(&entries).unwrap();
    }
    writer.close().unwrap();
    sids
}

#[test]
fn the_index_costs_under_40_bytes_per_packed_session_and_tells_an_indexer_only_what_is_new() {
    let tmp = tempfile::tempdir().unwrap();
    let sids = pack(tmp.path(), SESSIONS);
    let segments = std::fs::read_dir(tmp.path().join("segments")).unwrap().count();
    assert!(segments > 5, "the sessions span several segments ({segments})");

    let before = LIVE.load(Ordering::SeqCst);
    let store = RecordingStore::new(tmp.path());
    assert!(store.is_packed(&sids[0].to_string()));
    let bytes_per_session = || (LIVE.load(Ordering::SeqCst) - before) as f64 / SESSIONS as f64;
    let found = bytes_per_session();
    // An indexer's first pass takes every session found, its second what is new since:
    // the list kept for it until then is gone.
    let (all, mark) = store.packed_since(0);
    let in_order = all.iter().zip(&sids).all(|(found, packed)| *found == packed.to_string());
    assert!(all.len() == SESSIONS && in_order, "the first look lists every session in the order packed");
    drop(all);
    assert!(store.packed_since(mark).0.is_empty());
    let kept = bytes_per_session();
    println!(
        "segment index, bytes per packed session: {found:.1} when found, {kept:.1} once an indexer has taken them \
         ({SESSIONS} sessions, {PER_BLOCK} to a block, {segments} segments)"
    );
    assert!(kept < 40.0, "{kept:.1} bytes per packed session");

    // Every session is found and read back whole, in the first block of a segment or in a
    // later one (compressed against the first's dictionary).
    for sid in [sids[0], sids[PER_BLOCK * 3 + 7], sids[SESSIONS / 2], sids[SESSIONS - 1]] {
        let packed = store.packed(&sid.to_string()).expect("packed");
        assert_eq!(packed.recording, recording_of(&sid));
        assert_eq!(packed.manifest, b"{\"manifest\":1}");
    }
    assert!(!store.is_packed(&uuid::Uuid::new_v4().to_string()));

    // After that, an indexer is told only what was packed since; one that asks from the
    // start again is told everything again.
    let more = pack(tmp.path(), 3);
    let (new, next) = store.packed_since(mark);
    assert_eq!(new, more.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert!(store.packed_since(next).0.is_empty());
    assert_eq!(store.packed_since(0).0.len(), SESSIONS + 3);
    assert_eq!(store.session_ids().unwrap().len(), SESSIONS + 3);

    // A segment removed (uploaded, local copy deleted) takes its sessions with it.
    let first = store.segments().into_iter().find(|s| s.closed && s.sessions > 0).expect("a closed segment");
    std::fs::remove_file(&first.path).unwrap();
    assert_eq!(store.session_ids().unwrap().len(), SESSIONS + 3 - first.sessions);
}
