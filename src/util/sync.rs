//! Locks that survive a panicking holder.

use std::sync::{Mutex, MutexGuard};

/// Locks `m` even if a thread panicked while holding it. Every state dbtape keeps behind a
/// mutex stays consistent between statements, and one failed session must not take the
/// proxy's shared state (login counts, the recorder, uploads) down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
