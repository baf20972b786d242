//! Indexing in the background of `dbtape serve`: every few seconds, recordings sealed since
//! the last pass are added to the search index. It runs as a low-priority periodic job
//! (`tasks::BackgroundTasks`) and takes the index's writer only for a pass, so it never
//! slows a session and `dbtape search` can bring the index up to date itself in between.

use std::time::Duration;

use super::SearchIndex;
use crate::recording::RecordingStore;
use crate::tasks::Pass;

pub const PASS_EVERY: Duration = Duration::from_secs(5);

/// One pass: indexes what was sealed since the last.
pub fn pass(store: &RecordingStore) -> Pass {
    let index = match SearchIndex::open(store.dir()) {
        Ok(index) => index,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the search index");
            return Pass::Idle;
        }
    };
    match index.catch_up(store) {
        Ok((0, _)) => Pass::Idle,
        Ok((recordings, events)) => {
            tracing::debug!(recordings, events, "indexed");
            Pass::Worked
        }
        Err(e) => {
            tracing::info!(error = %e, "indexing pass failed; retried at the next");
            Pass::Idle
        }
    }
}
