//! Gives the heap's free pages back to the system once connections stop coming and going.
//!
//! glibc returns freed memory only from the top of a heap. A burst of logins leaves the
//! freed handshake state of every connection between the sessions that stay: after a
//! hundred logins, glibc counted half of its heap as free. Once the churn pauses,
//! `malloc_trim` releases the whole free pages inside every arena, which took an idle
//! session from 31 to 27–28 KiB (BENCHMARKS.md).

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

    pub fn count(&self) -> u64 {
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

/// Keeps glibc's mmap and trim thresholds at their starting values (128 KiB).
///
/// By default glibc raises the mmap threshold to the size of the largest block freed that
/// it had mapped, up to 32 MiB, and the trim threshold to twice that. One pass of the search
/// indexer frees blocks of megabytes, after which every block up to that size came from the
/// heap arenas and stayed resident once freed. With an indexer pass during 100 logins, each
/// idle session cost 37–40 KiB with the thresholds moving and 27–29 KiB with them fixed;
/// with none, the process is 1 MB smaller before any connection (BENCHMARKS.md). Blocks of
/// 128 KiB and more are mapped and unmapped as they come and go; none is on the relay's path.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_thresholds_fixed() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt takes no pointers; it only sets the allocator's parameters, and setting
    // either threshold is what turns glibc's adjustment of both off.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_thresholds_fixed() {}

/// Releases the free pages inside every heap arena.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn trim() {
    // SAFETY: malloc_trim takes no pointers and only reorganises the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn trim() {}
