//! The free-space guard: below `recording.min_free_bytes` on the recordings' filesystem, a
//! strict proxy refuses new sessions rather than start ones it may not be able to record.

use std::path::Path;

/// Bytes an unprivileged process may still write on `dir`'s filesystem.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `stats` is written by the call
    // before it is read, and only when the call succeeds.
    let done = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    #[allow(clippy::unnecessary_cast)] // u32 on some targets
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

/// Why a new session may not start, or None when there is room (or the guard is off).
pub fn shortage(dir: &Path, min_free_bytes: u64) -> Option<String> {
    if min_free_bytes == 0 {
        return None;
    }
    match free_bytes(dir) {
        Ok(free) if free < min_free_bytes => Some(format!(
            "only {} MiB free for recordings in {}, under recording.min_free_bytes ({} MiB)",
            free >> 20,
            dir.display(),
            min_free_bytes >> 20
        )),
        Ok(_) => None,
        Err(e) => Some(format!("cannot tell how much space is free in {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_compares_free_space_with_the_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert_eq!(shortage(dir.path(), 0), None, "0 turns the guard off");
        assert_eq!(shortage(dir.path(), 1), None);
        let short = shortage(dir.path(), u64::MAX).unwrap();
        assert!(short.contains("recording.min_free_bytes"), "{short}");
        assert!(shortage(&dir.path().join("missing"), 1).unwrap().contains("cannot tell"));
    }
}
