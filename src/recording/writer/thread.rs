//! The writer thread: group commit over every session, and rollback of a failed write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest;

use super::buffer::{compress_frame, note_loss, take_frame};
use super::seal::{pack, seal, summary_of};
use super::state::{RawFrame, ReadyFrame, SessionState, Shared};
use super::{FsyncPolicy, RecordingMode};
use crate::recording::format::{encode_frame, FrameKind, FrameSpec};
use crate::recording::store::RecordingState;
use crate::util::sync::lock;

const SUMMARY_REFRESH: Duration = Duration::from_secs(2);
/// A session's first live sidecar waits until it is this old. Most sessions of a connection
/// storm last a few milliseconds, which many writer passes would otherwise catch alive:
/// each would cost a file created, renamed and removed. Readers summarize a younger
/// session from its recording, a frame or two long.
const FIRST_SIDECAR_AFTER: i64 = 1_000;
/// The most a live recording keeps in memory before it gets its own file: a session of a
/// few statements fits, and a flood of sessions cannot hold much more than their frames do.
const IN_MEMORY_MAX: u64 = 8 * 1024;

pub(super) fn writer_loop(shared: &Shared) {
    let config = &shared.config;
    let mut next_tick = Instant::now() + config.batch_interval;
    loop {
        let (shutdown, sessions) = {
            let mut control = lock(&shared.control);
            while !control.urgent && !control.shutdown {
                let now = Instant::now();
                if now >= next_tick {
                    break;
                }
                let (guard, _) = shared.wake.wait_timeout(control, next_tick - now).unwrap_or_else(|poisoned| poisoned.into_inner());
                control = guard;
            }
            control.urgent = false;
            (control.shutdown, control.sessions.clone())
        };
        let now = Instant::now();
        let tick = now >= next_tick;
        if tick {
            next_tick = now + config.batch_interval;
        }
        let flush_all = tick || shutdown || config.fsync == FsyncPolicy::Always || shared.backlog.pressing();
        let fsync = match config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Batch => tick || shutdown,
            FsyncPolicy::Never => false,
        };
        let sealed = write_pass(shared, &sessions, flush_all, fsync);
        if tick {
            if let Some(packer) = lock(&shared.packer).as_mut() {
                if let Err(e) = packer.close_if_old() {
                    tracing::warn!(error = %e, "cannot close the recordings segment; start-up recovery closes it");
                }
            }
        }
        let remaining = {
            let mut control = lock(&shared.control);
            control.sessions.retain(|s| !sealed.iter().any(|done| Arc::ptr_eq(done, s)));
            control.sessions.len()
        };
        if shutdown && remaining == 0 {
            if let Some(packer) = lock(&shared.packer).as_mut() {
                if let Err(e) = packer.close() {
                    tracing::warn!(error = %e, "cannot close the recordings segment; start-up recovery closes it");
                }
            }
            break;
        }
    }
}

/// One group commit over all sessions. Returns the sessions it sealed.
pub(super) fn write_pass(shared: &Shared, sessions: &[Arc<SessionState>], flush_all: bool, fsync: bool) -> Vec<Arc<SessionState>> {
    let started = Instant::now();
    let mut wrote_any = false;
    let mut written: Vec<(Arc<SessionState>, Option<u64>)> = Vec::new();
    let mut closing = Vec::new();
    let packing =
        shared.config.segments.as_ref().map(|s| s.max_session_bytes.min(crate::recording::segment::format::MAX_PACKED_SESSION_BYTES));
    // Short sessions this pass packs: the segment's fsync makes them durable, so their own
    // files (about to go) are not fsynced first. `seal` fsyncs any that turn out unpackable.
    let mut packs_now = Vec::new();
    for session in sessions {
        let (cut, is_closing) = {
            let mut inner = lock(&session.inner);
            let mut cut = std::mem::take(&mut inner.cut);
            if flush_all || inner.closing {
                cut.extend(take_frame(&mut inner, session));
            }
            (cut, inner.closing)
        };
        // Compress outside the session's lock, so its connection never waits on it; frames
        // cut meanwhile get later sequence numbers and go out in the next pass.
        let frames: Vec<ReadyFrame> = cut.into_iter().map(compress_frame).collect();
        let raw_bytes: usize = frames.iter().map(|f| f.raw_len as usize).sum();
        let last_ei = write_frames(shared, session, frames);
        if raw_bytes > 0 {
            session.backlog.remove(raw_bytes);
            wrote_any = true;
        }
        if is_closing {
            closing.push(session.clone());
            if packing.is_some_and(|max| flush_all && is_short(session, max)) {
                packs_now.push((session.clone(), last_ei));
                continue;
            }
        }
        if let Err(e) = leave_memory(shared, session, flush_all, packing.unwrap_or_default().min(IN_MEMORY_MAX)) {
            fail_session(shared, session, format!("cannot create the recording's file: {e}"));
        }
        written.push((session.clone(), last_ei));
    }
    if fsync {
        if shared.new_names.swap(false, std::sync::atomic::Ordering::AcqRel) {
            shared.sync_dir();
        }
        for (session, _) in &written {
            let synced = match lock(&session.io).as_mut().filter(|io| io.dirty) {
                Some(io) => io.sink.sync_data().map(|()| io.dirty = false),
                None => Ok(()),
            };
            if let Err(e) = synced {
                fail_session(shared, session, format!("fsync failed: {e}"));
            }
        }
    }
    if wrote_any {
        shared.metrics.write_latency(started.elapsed());
    }
    for (session, last_ei) in &written {
        if let Some(ei) = last_ei {
            if fsync || shared.config.fsync != FsyncPolicy::Always {
                session.durable.send_modify(|d| d.through = Some(d.through.map_or(*ei, |t| t.max(*ei))));
            }
        }
        refresh_summary(shared, session);
    }
    if let Some(max) = packing.filter(|_| !flush_all) {
        // Short sessions are packed at the batch tick, many to a block: a block of one
        // session compresses to a fifth more, and costs an fsync of its own. Their clients
        // are gone already; only the proxy's wait to seal them is longer.
        closing.retain(|session| !is_short(session, max));
    }
    let to_pack: Vec<_> = closing.iter().filter_map(|session| seal(shared, session, packing)).collect();
    let packed_all = to_pack.len() == closing.len();
    let unpacked = !to_pack.is_empty() && pack(shared, to_pack);
    if !closing.is_empty() {
        // One folder fsync makes every manifest and sidecar renamed above durable.
        if unpacked || !packed_all {
            shared.new_names.store(false, std::sync::atomic::Ordering::Release);
            shared.sync_dir();
        }
        for (session, last_ei) in &packs_now {
            if let Some(ei) = last_ei {
                session.durable.send_modify(|d| d.through = Some(d.through.map_or(*ei, |t| t.max(*ei))));
            }
        }
        for session in &closing {
            session.durable.send_modify(|d| d.sealed = true);
        }
    }
    closing
}

/// A recording still in memory gets its own file at a flush, so that the fsync after it
/// covers the session like any other, or once it outgrows `max`.
fn leave_memory(shared: &Shared, session: &SessionState, flush_all: bool, max: u64) -> std::io::Result<()> {
    let mut guard = lock(&session.io);
    let Some(io) = guard.as_mut().filter(|io| io.sink.in_memory() && (flush_all || io.len > max)) else { return Ok(()) };
    if lock(&session.inner).dead {
        return Ok(());
    }
    shared.own_file(&session.ctx.sid, &mut io.sink)?;
    // Its name is made durable by this pass's fsync, with its first frames.
    shared.new_names.store(true, std::sync::atomic::Ordering::Release);
    session.in_memory.store(false, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// Whether the session's recording is still open and no bigger than `max`: packable.
fn is_short(session: &SessionState, max: u64) -> bool {
    lock(&session.io).as_ref().is_some_and(|io| io.len <= max)
}

/// Writes frames in order; on failure rolls the file and chain back to the last good frame.
pub(super) fn write_frames(shared: &Shared, session: &Arc<SessionState>, frames: Vec<ReadyFrame>) -> Option<u64> {
    if frames.is_empty() {
        return None;
    }
    let mut io_guard = lock(&session.io);
    let io = io_guard.as_mut()?;
    let mut last_ei = None;
    let mut done: usize = 0;
    let mut failure = None;
    let mut chain = lock(&session.inner).written_chain;
    let mut links = Vec::with_capacity(frames.len());
    let mut bytes = Vec::new();
    for frame in &frames {
        bytes.clear();
        let link = encode_frame(
            &FrameSpec {
                kind: FrameKind::Events,
                seq: frame.seq,
                compressed: frame.compressed,
                compact: frame.compact,
                raw_len: frame.raw_len,
                events: frame.events,
                first_ei: frame.first_ei,
                min_time_ms: frame.min_ms,
                max_time_ms: frame.max_ms,
                payload: &frame.payload,
            },
            &chain,
            &mut bytes,
        );
        if let Err(e) = io.sink.write_all(&bytes) {
            failure = Some(e.to_string());
            break;
        }
        io.len += bytes.len() as u64;
        shared.metrics.written(u64::from(frame.events), bytes.len() as u64);
        io.hasher.update(&bytes);
        io.dirty = true;
        io.summary_dirty = true;
        last_ei = Some(frame.last_ei());
        chain = link;
        links.push(link);
        done += 1;
    }
    {
        let mut inner = lock(&session.inner);
        for (frame, link) in frames.iter().zip(links) {
            inner.written_seq = frame.seq + 1;
            inner.written_chain = link;
            inner.written_events += u64::from(frame.events);
            inner.written_first_ms.get_or_insert(frame.min_ms);
            inner.written_last_ms = Some(frame.max_ms);
        }
    }
    let Some(reason) = failure else { return last_ei };
    // Cut off any torn bytes so later frames still follow a whole one.
    let rollback = io.sink.truncate(io.len);
    drop(io_guard);
    let reason = format!("write failed: {reason}");
    let mut inner = lock(&session.inner);
    // Frames cut after the failed one link to it: drop them too and relink from the file's end.
    let drained: Vec<RawFrame> = inner.cut.drain(..).collect();
    session.backlog.remove(drained.iter().map(|f| f.data.len()).sum());
    let lost: u64 = frames.iter().skip(done).map(|f| u64::from(f.events) + f.gap_reported).sum::<u64>()
        + drained.iter().map(|f| u64::from(f.events) + f.gap_reported).sum::<u64>();
    let lost_from = frames.iter().skip(done).map(|f| f.min_ms).chain(drained.iter().map(|f| f.min_ms)).min().unwrap_or_default();
    let lost_until = frames.iter().skip(done).map(|f| f.max_ms).chain(drained.iter().map(|f| f.max_ms)).max().unwrap_or_default();
    inner.next_seq = inner.written_seq;
    tracing::error!(sid = %session.ctx.sid, error = %reason, lost_events = lost, "recording write failed");
    if shared.config.mode == RecordingMode::Strict || rollback.is_err() {
        drop(inner);
        fail_session(shared, session, reason);
        return last_ei;
    }
    // best_effort: the next frame written starts by reporting the loss.
    note_loss(&mut inner, lost, lost_from, lost_until, &reason);
    last_ei
}

pub(super) fn fail_session(shared: &Shared, session: &SessionState, reason: String) {
    shared.metrics.write_failed();
    let reason: Arc<str> = Arc::from(reason);
    {
        let mut inner = lock(&session.inner);
        if shared.config.mode == RecordingMode::Strict && inner.failed.is_none() {
            inner.failed = Some(reason.clone());
        }
        inner.dead = true;
    }
    session.durable.send_modify(|d| d.failed = Some(reason.clone()));
}

pub(super) fn refresh_summary(shared: &Shared, session: &SessionState) {
    let closing = lock(&session.inner).closing;
    let mut io_guard = lock(&session.io);
    // A recording still in memory has no file for a sidecar to describe yet.
    let Some(io) = io_guard.as_mut().filter(|io| !io.sink.in_memory()) else { return };
    let due = match io.last_summary {
        // A session already closing is sealed (or packed) soon, sidecar and all.
        None => !closing && crate::audit::now_ms() - session.start_ms >= FIRST_SIDECAR_AFTER,
        Some(last) => io.summary_dirty && last.elapsed() >= SUMMARY_REFRESH,
    };
    if !due {
        return;
    }
    io.summary_dirty = false;
    io.last_summary = Some(Instant::now());
    let len = io.len;
    drop(io_guard);
    let summary = summary_of(session, &lock(&session.inner), len, RecordingState::Live);
    if let Err(e) = shared.store.refresh_summary(&summary) {
        tracing::warn!(sid = %session.ctx.sid, error = %e, "cannot refresh the recording's sidecar");
    }
}
