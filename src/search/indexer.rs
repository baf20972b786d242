//! Indexing in the background of `dbtape serve`: every few seconds, recordings sealed since
//! the last pass are added to the search index. It runs as a low-priority periodic job
//! (`tasks::BackgroundTasks`) and takes the index's writer only for a pass, so it never
//! slows a session and `dbtape search` can bring the index up to date itself in between.

use std::time::Duration;

use super::index::Covered;
use super::SearchIndex;
use crate::recording::RecordingStore;
use crate::tasks::Pass;

pub const PASS_EVERY: Duration = Duration::from_secs(5);

/// The background indexer: the index stays open between passes, and what it covers is
/// remembered rather than read back from the index at every pass.
#[derive(Default)]
pub struct Indexer {
    index: Option<SearchIndex>,
    covered: Covered,
}

impl Indexer {
    /// One pass: indexes what was sealed since the last.
    pub fn pass(&mut self, store: &RecordingStore) -> Pass {
        let index = match self.index.take() {
            Some(index) => index,
            None => match SearchIndex::open(store.dir()) {
                Ok(index) => index,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the search index");
                    return Pass::Idle;
                }
            },
        };
        let pass = match index.catch_up_with(store, &mut self.covered) {
            Ok((0, _)) => Pass::Idle,
            Ok((recordings, events)) => {
                tracing::debug!(recordings, events, "indexed");
                Pass::Worked
            }
            Err(e) => {
                // Opened afresh at the next pass, in case the index was replaced meanwhile.
                tracing::info!(error = %e, "indexing pass failed; retried at the next");
                self.covered = Covered::default();
                return Pass::Idle;
            }
        };
        self.index = Some(index);
        pass
    }
}
