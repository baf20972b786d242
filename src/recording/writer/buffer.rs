//! A session's pending buffer: events serialised onto it, frames cut from it, and the
//! compression the writer thread applies to them.

use super::state::{Inner, RawFrame, ReadyFrame, SessionState};
use super::MAX_EVENT_BYTES;
use crate::audit::{AuditEvent, EventBody, EventNotes};

thread_local! {
    /// One compression context per thread, shared by every session that cuts frames on it,
    /// rather than one per session.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
}

pub(super) fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match slot.as_mut() {
            Some((_, compressor)) => compressor.compress(data),
            None => Err(std::io::Error::other("no compressor")),
        }
    })
}

/// Stamps `ei` and `uid`, serialises the event onto the pending buffer and counts it.
pub(super) fn push_event(inner: &mut Inner, session: &SessionState, body: &EventBody, notes: Option<&EventNotes>, time_ms: i64) -> u64 {
    let ei = inner.next_ei;
    let before = inner.pending.len();
    let full = inner.pending_full;
    let write = |pending: &mut Vec<u8>, body: &EventBody, notes: Option<&EventNotes>| {
        // A compact line leaves the uid out for readers to derive; a whole one carries the
        // same derived uid.
        let uid = if full { crate::recording::compact::derived_uid(&session.uid_seed, ei) } else { uuid::Uuid::nil() };
        let event = AuditEvent { index: ei, uid, time_ms, context: &session.ctx, body, notes };
        if full {
            event.write_json(pending);
        } else {
            event.write_stored(pending);
        }
    };
    write(&mut inner.pending, body, notes);
    let written = inner.pending.len() - before;
    if written > MAX_EVENT_BYTES {
        // Only reachable if captured text escaped past the cap's worst case; the event is
        // lost rather than the readability of everything after it.
        inner.pending.truncate(before);
        let error = format!("a {} event of {written} bytes exceeds the {MAX_EVENT_BYTES}-byte event limit", body.event_type().as_str());
        tracing::error!(sid = %session.ctx.sid, %error, "event not recorded");
        let at = chrono::Utc::now().timestamp_millis();
        write(
            &mut inner.pending,
            &EventBody::RecordingGap { lost_events: 1, error, lost_from_ms: Some(at), lost_until_ms: Some(at) },
            None,
        );
    }
    inner.pending.push(b'\n');
    inner.next_ei += 1;
    if inner.pending_events == 0 {
        inner.pending_first_ei = ei;
    }
    inner.pending_events += 1;
    inner.pending_min_ms = inner.pending_min_ms.min(time_ms);
    inner.pending_max_ms = inner.pending_max_ms.max(time_ms);
    let stats = &mut inner.stats;
    stats.events += 1;
    stats.first_ms.get_or_insert(time_ms);
    stats.last_ms = Some(time_ms);
    let (queries, failed) = body.query_counts();
    stats.refused_logins += u64::from(matches!(body, EventBody::RefusedStart { .. }));
    stats.queries += queries;
    stats.failed_queries += failed;
    ei
}

/// Takes the pending events as the next frame, ending it with a gap event when earlier
/// events were lost (best_effort). Cheap: compression happens in `compress_frame`.
pub(super) fn take_frame(inner: &mut Inner, session: &SessionState) -> Option<RawFrame> {
    let mut gap_reported = 0;
    if inner.unreported_lost > 0 {
        let gap = EventBody::RecordingGap {
            lost_events: inner.unreported_lost,
            error: inner.gap_error.clone(),
            lost_from_ms: inner.gap_from_ms.take(),
            lost_until_ms: inner.gap_until_ms.take(),
        };
        push_event(inner, session, &gap, None, chrono::Utc::now().timestamp_millis());
        gap_reported = std::mem::take(&mut inner.unreported_lost);
    }
    if inner.pending_events == 0 {
        return None;
    }
    let capacity = inner.pending.len();
    let raw = RawFrame {
        seq: inner.next_seq,
        events: inner.pending_events,
        first_ei: inner.pending_first_ei,
        min_ms: inner.pending_min_ms,
        max_ms: inner.pending_max_ms,
        data: std::mem::replace(&mut inner.pending, Vec::with_capacity(capacity)),
        gap_reported,
        zstd_level: inner.zstd_level,
        compact: !inner.pending_full,
    };
    // Counted per frame, not per event: one atomic update per frame keeps the relay's hot
    // path off a cache line the writer thread and every worker share. A session's current,
    // uncut frame (at most `frame_target_bytes`, and cut at every batch interval) is not
    // counted.
    session.backlog.add(raw.data.len());
    inner.next_seq += 1;
    inner.pending_events = 0;
    inner.pending_min_ms = i64::MAX;
    inner.pending_max_ms = i64::MIN;
    Some(raw)
}

pub(super) fn compress_frame(raw: RawFrame) -> ReadyFrame {
    let (payload, compressed) = match compress(&raw.data, raw.zstd_level) {
        Ok(c) => (c, true),
        Err(e) => {
            tracing::error!(error = %e, "zstd compression failed; storing the frame uncompressed");
            (raw.data.clone(), false)
        }
    };
    ReadyFrame {
        seq: raw.seq,
        compressed,
        compact: raw.compact,
        raw_len: raw.data.len() as u32,
        events: raw.events,
        first_ei: raw.first_ei,
        min_ms: raw.min_ms,
        max_ms: raw.max_ms,
        payload,
        gap_reported: raw.gap_reported,
    }
}

/// best_effort: counts events lost (with when they happened) for the next gap event.
pub(super) fn note_loss(inner: &mut Inner, count: u64, from_ms: i64, until_ms: i64, reason: &str) {
    inner.unreported_lost += count;
    inner.gap_from_ms = Some(inner.gap_from_ms.map_or(from_ms, |t| t.min(from_ms)));
    inner.gap_until_ms = Some(inner.gap_until_ms.map_or(until_ms, |t| t.max(until_ms)));
    if inner.gap_error != reason {
        inner.gap_error = reason.to_string();
    }
}
