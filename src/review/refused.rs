//! Refused logins, read from the refused-logins logs (the only recordings whose sidecar
//! counts any).

use super::ReviewError;
use crate::audit::RecordedEvent;
use crate::recording::RecordingStore;
use crate::replay::export::{matching_sessions, ExportFilter};

/// Every refused login `filter` (and `user`, when given) matches, newest first, at most
/// `limit`: each as read and as its recorded line. Warnings about unreadable recordings go to
/// `warnings`.
pub fn refused_logins(
    store: &RecordingStore,
    filter: &ExportFilter,
    user: Option<&str>,
    limit: usize,
    warnings: &mut Vec<String>,
) -> Result<Vec<(RecordedEvent, Vec<u8>)>, ReviewError> {
    let logs = matching_sessions(store, filter, warnings)?.into_iter().filter(|s| s.refused_logins > 0);
    let mut refused = Vec::new();
    for log in logs {
        let failed = |e: &dyn std::fmt::Display| ReviewError::Recording { sid: log.sid.clone(), cause: e.to_string() };
        let mut stream = crate::recording::events::EventStream::open(store, &log.sid, false).map_err(|e| failed(&e))?;
        stream
            .for_each_event(|line| {
                let Ok(event) = serde_json::from_slice::<RecordedEvent>(line) else { return Ok(true) };
                let time = event.time_ms().unwrap_or_default();
                // One time range for sessions and for the refusals in them, both ends
                // included, as `export` and `search` take it.
                let wanted = event.event == "db.session.start"
                    && event.success == Some(false)
                    && filter.time_in_range(time)
                    && user.is_none_or(|u| u == event.user);
                if wanted {
                    refused.push((event, line.to_vec()));
                }
                Ok(true)
            })
            .map_err(|e| failed(&e))?;
    }
    refused.sort_by(|a, b| b.0.time.cmp(&a.0.time));
    refused.truncate(limit);
    Ok(refused)
}
