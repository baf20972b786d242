//! Thread priority for background work.

/// Background work (the recorder's compression and file I/O unless sessions wait on it, the
/// indexer, uploads' hashing) runs at a lower priority: it fills the gaps the relay leaves
/// instead of preempting a connection thread in the middle of a batch. Nice 10 still gives it about a
/// tenth of a contended CPU, many times what it needs, so it cannot starve. Raising a
/// thread's own nice value needs no privilege.
pub fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on this thread's own id, with no pointers involved.
        let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
        if done != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a background thread's priority");
        }
    }
}
