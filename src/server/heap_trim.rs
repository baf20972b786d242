//! Gives the heap's free pages back to the system once connections stop coming and going.
//!
//! glibc returns freed memory only from the top of a heap. A burst of logins leaves the
//! freed handshake state of every connection between the sessions that stay, so after a
//! hundred logins a third of what the process holds was free but still resident. Once the
//! churn pauses, `malloc_trim` releases the whole free pages inside every arena.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long connections must have neither started nor ended before the heap is trimmed.
const QUIET: Duration = Duration::from_secs(1);

/// Counts connections starting and ending.
#[derive(Clone, Default)]
pub struct Churn(Arc<AtomicU64>);

impl Churn {
    pub fn note(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Trims after each quiet spell that follows churn, until the process ends.
pub async fn trim_when_quiet(churn: Churn) {
    let mut ticks = tokio::time::interval(QUIET);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_seen, mut trimmed_at) = (churn.count(), churn.count());
    loop {
        ticks.tick().await;
        let now = churn.count();
        if now == last_seen && now != trimmed_at {
            // Off the async thread: trimming walks every arena's free chunks.
            let _ = tokio::task::spawn_blocking(trim).await;
            trimmed_at = now;
        }
        last_seen = now;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and only reorganises the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
