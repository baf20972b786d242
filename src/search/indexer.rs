//! Indexing in the background of `dbtape serve`: every few seconds, recordings sealed since
//! the last pass are added to the search index. It runs on its own thread at a lower
//! priority and takes the index's writer only for a pass, so it never slows a session and
//! `dbtape search` can bring the index up to date itself in between.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::SearchIndex;
use crate::recording::RecordingStore;

const PASS_EVERY: Duration = Duration::from_secs(5);

pub struct Indexer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Indexer {
    pub fn spawn(recordings: PathBuf) -> std::io::Result<Indexer> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("dbtape-indexer".into()).spawn(move || {
            crate::recording::writer::lower_this_threads_priority();
            let store = RecordingStore::new(&recordings);
            let mut next = Instant::now();
            while !flag.load(Ordering::Acquire) {
                if Instant::now() >= next {
                    pass(&store);
                    next = Instant::now() + PASS_EVERY;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Sessions sealed at shutdown are indexed too.
            pass(&store);
        })?;
        Ok(Indexer { stop, thread: Some(thread) })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn pass(store: &RecordingStore) {
    let index = match SearchIndex::open(store.dir()) {
        Ok(index) => index,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the search index");
            return;
        }
    };
    match index.catch_up(store) {
        Ok((0, _)) => {}
        Ok((recordings, events)) => {
            tracing::debug!(recordings, events, "indexed");
            // A pass that indexed something leaves megabytes of freed writer state behind
            // in this thread's heap arena; give it back rather than hold it between passes.
            drop(index);
            crate::server::heap_trim::trim();
        }
        Err(e) => tracing::info!(error = %e, "indexing pass failed; retried at the next"),
    }
}
