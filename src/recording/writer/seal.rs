//! Sealing: the trailer frame, the final fsync, the signed manifest and the last sidecar.

use std::sync::Arc;

use sha2::Digest;

use super::state::{Inner, SessionState, Shared, Sink};
use crate::recording::format::{encode_frame, FrameKind, FrameSpec, Trailer};
use crate::recording::store::{RecordingState, SessionSummary};
use crate::signing::{Manifest, ManifestBody};
use crate::util::hex::hex;
use crate::util::sync::lock;

pub(super) fn summary_of(state: &SessionState, inner: &Inner, bytes: u64, recording_state: RecordingState) -> SessionSummary {
    let ctx = &state.ctx;
    SessionSummary {
        sid: ctx.sid.clone(),
        user: ctx.user.user.clone(),
        db_service: ctx.database.service.clone(),
        db_protocol: ctx.database.protocol.as_str().to_string(),
        db_name: ctx.database.name.clone(),
        db_user: ctx.database.user.clone(),
        remote_addr: ctx.connection.remote_addr.clone(),
        start_ms: state.start_ms,
        end_ms: match recording_state {
            RecordingState::Live => None,
            _ => Some(inner.stats.last_ms.unwrap_or(state.start_ms)),
        },
        events: inner.written_events,
        queries: inner.stats.queries,
        failed_queries: inner.stats.failed_queries,
        lost_events: inner.stats.events.saturating_sub(inner.written_events),
        bytes,
        state: recording_state,
        error: inner.failed.as_deref().unwrap_or_default().to_string(),
        refused_logins: inner.stats.refused_logins,
    }
}

/// A sealed session short enough to pack: trailer written (not fsynced), manifest signed
/// (not written). `pack` puts it in the open segment, or else in its own files.
pub(super) struct ToPack {
    sid: String,
    /// Its file, still holding the recording's lock (dropped once the session is packed or
    /// sealed), or its bytes if it never left memory.
    sink: Sink,
    manifest: Manifest,
    summary: SessionSummary,
    /// Whether a live sidecar was written: a session shorter than a second has none to
    /// remove.
    has_sidecar: bool,
}

/// Writes the trailer, fsyncs, signs the manifest and writes the final sidecar; or, for a
/// short session when packing is on, returns it to be packed with the pass's others. The
/// caller fsyncs the folder (once for every session a pass seals) and then says it is sealed.
pub(super) fn seal(shared: &Shared, session: &SessionState, packing: Option<u64>) -> Option<ToPack> {
    let sid = session.ctx.sid.clone();
    let mut io_guard = lock(&session.io);
    let mut inner = lock(&session.inner);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut final_state = if inner.failed.is_some() { RecordingState::Failed } else { RecordingState::Sealed };
    let mut len = 0;
    // The recording stays locked until its last sidecar is written: a process sharing the
    // folder that starts meanwhile then leaves the session alone, rather than rebuilding
    // the sidecar it does not see yet.
    let mut held = None;
    if io_guard.is_some() && super::counts_as_session(&session.ctx) {
        shared.metrics.session_sealed(session.ctx.database.protocol);
    }
    if let Some(mut io) = io_guard.take() {
        let trailer = Trailer {
            event_count: inner.written_events,
            first_time_ms: inner.written_first_ms,
            last_time_ms: inner.written_last_ms,
            chain_head: hex(&inner.written_chain),
            frames: inner.written_seq,
            lost_events: inner.stats.events.saturating_sub(inner.written_events),
            sealed_at_ms: now_ms,
        };
        let mut bytes = Vec::new();
        let written = serde_json::to_vec(&trailer).map_err(|e| e.to_string()).and_then(|payload| {
            let chain = encode_frame(
                &FrameSpec {
                    kind: FrameKind::Trailer,
                    seq: inner.written_seq,
                    compressed: false,
                    compact: false,
                    raw_len: payload.len() as u32,
                    events: 0,
                    first_ei: 0,
                    min_time_ms: trailer.first_time_ms.unwrap_or(now_ms),
                    max_time_ms: trailer.last_time_ms.unwrap_or(now_ms),
                    payload: &payload,
                },
                &inner.written_chain,
                &mut bytes,
            );
            io.sink.write_all(&bytes).map_err(|e| e.to_string())?;
            io.hasher.update(&bytes);
            io.len += bytes.len() as u64;
            // A session to be packed is made durable by its segment's fsync instead.
            if !packable(packing, io.len, final_state) {
                shared.own_file(&sid, &mut io.sink).map_err(|e| format!("cannot create the recording's file: {e}"))?;
                io.sink.sync_all().map_err(|e| e.to_string())?;
            }
            Ok((chain, inner.written_seq + 1))
        });
        len = io.len;
        match written {
            Ok((chain, frames)) => {
                let body = ManifestBody {
                    format: "dbtape-manifest-v1".into(),
                    sid: sid.clone(),
                    file: format!("{sid}.{}", crate::recording::store::RECORDING_EXT),
                    size: io.len,
                    sha256: hex(&io.hasher.clone().finalize()),
                    frames,
                    chain_head: hex(&chain),
                    event_count: inner.written_events,
                    first_time_ms: inner.written_first_ms,
                    last_time_ms: inner.written_last_ms,
                    state: "sealed".into(),
                    valid_length: io.len,
                    key_id: shared.signer.key_id().to_string(),
                    signed_at_ms: now_ms,
                    rebuilt_end: None,
                };
                let signed = shared.signer.sign(body).map_err(|e| e.to_string());
                if let (Ok(manifest), true) = (&signed, packable(packing, io.len, final_state)) {
                    // The file stays locked until it is packed and removed, so that crash
                    // recovery in another process sharing the folder leaves it alone.
                    let summary = summary_of(session, &inner, io.len, final_state);
                    let has_sidecar = io.last_summary.is_some();
                    return Some(ToPack { sid, sink: io.sink, manifest: manifest.clone(), summary, has_sidecar });
                }
                match signed.and_then(|m| shared.store.write_manifest(&m).map_err(|e| e.to_string())) {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::error!(sid = %sid, error = %e, "cannot write the signed manifest");
                        inner.failed.get_or_insert_with(|| Arc::from(format!("cannot sign: {e}")));
                        final_state = RecordingState::Failed;
                    }
                }
            }
            Err(e) => {
                tracing::error!(sid = %sid, error = %e, "cannot seal the recording");
                inner.failed.get_or_insert_with(|| Arc::from(format!("cannot seal: {e}")));
                final_state = RecordingState::Failed;
            }
        }
        held = Some(io.sink);
    }
    let summary = summary_of(session, &inner, len, final_state);
    drop(inner);
    drop(io_guard);
    // Derived data, so not fsynced: start-up rebuilds one a power loss took (see
    // `recover::resummarize_sealed`); a killed process loses nothing the kernel holds.
    if let Err(e) = shared.store.refresh_summary(&summary) {
        tracing::error!(sid = %sid, error = %e, "cannot write the final sidecar");
    }
    if let Some(Sink::File(file)) = held {
        let _ = file.unlock();
    }
    None
}

fn packable(packing: Option<u64>, len: u64, state: RecordingState) -> bool {
    packing.is_some_and(|max| len <= max) && state == RecordingState::Sealed
}

/// Packs the pass's short sealed sessions into the open segment, one fsynced block for all
/// of them, then removes their own files. Says whether any went to its own files instead
/// (their manifests and sidecars then need the folder's fsync).
pub(super) fn pack(shared: &Shared, sessions: Vec<ToPack>) -> bool {
    use crate::recording::segment::format::Entry;
    let store = &shared.store;
    let mut ready = Vec::with_capacity(sessions.len());
    let mut own_files = Vec::new();
    for mut item in sessions {
        let described = || -> std::io::Result<_> {
            let manifest = serde_json::to_vec(&item.manifest)?;
            let summary = serde_json::to_vec(&item.summary)?;
            let sid = uuid::Uuid::try_parse(&item.sid).map_err(std::io::Error::other)?;
            Ok((sid, manifest, summary))
        };
        // Bytes in memory are taken only once nothing else can fail, so a session that
        // cannot be packed still has them for its own file.
        let parts = described().and_then(|(sid, manifest, summary)| {
            let recording = match &mut item.sink {
                Sink::Memory(bytes) => std::mem::take(bytes),
                Sink::File(_) => std::fs::read(store.recording_path(&item.sid))?,
            };
            Ok((sid, recording, manifest, summary))
        });
        match parts {
            Ok(parts) => ready.push((item, parts)),
            Err(e) => {
                tracing::warn!(sid = %item.sid, error = %e, "cannot pack a sealed session; it keeps its own files");
                own_files.push(item);
            }
        }
    }
    let entries: Vec<Entry<'_>> =
        ready.iter().map(|(_, (sid, r, m, s))| Entry { sid: *sid, recording: r, manifest: m, summary: s }).collect();
    let appended = match lock(&shared.packer).as_mut() {
        Some(packer) if !entries.is_empty() => packer.append(&entries),
        _ => Err(std::io::Error::other("packing is off")),
    };
    drop(entries);
    match appended {
        Ok(()) => {
            for (item, _) in &ready {
                // Not fsynced: a removal the disk lost leaves both copies, and start-up
                // recovery removes the session's own files again.
                let recording = (!item.sink.in_memory()).then(|| store.recording_path(&item.sid));
                let sidecar = item.has_sidecar.then(|| store.meta_path(&item.sid));
                for path in recording.into_iter().chain(sidecar) {
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(sid = %item.sid, path = %path.display(), error = %e, "cannot remove a packed session's own file");
                    }
                }
            }
        }
        Err(e) => {
            if !ready.is_empty() {
                tracing::error!(error = %e, sessions = ready.len(), "cannot write the recordings segment; the sessions keep their own files");
            }
            own_files.extend(ready.into_iter().map(|(mut item, (_, recording, _, _))| {
                if let Sink::Memory(bytes) = &mut item.sink {
                    *bytes = recording;
                }
                item
            }));
        }
    }
    let unpacked = !own_files.is_empty();
    for item in own_files {
        in_own_files(shared, item);
    }
    unpacked
}

/// What `seal` would have done for a session that could not be packed.
fn in_own_files(shared: &Shared, mut item: ToPack) {
    let written = shared
        .own_file(&item.sid, &mut item.sink)
        .and_then(|()| item.sink.sync_all())
        .map_err(|e| e.to_string())
        .and_then(|()| shared.store.write_manifest(&item.manifest).map_err(|e| e.to_string()));
    if let Err(e) = written {
        tracing::error!(sid = %item.sid, error = %e, "cannot seal the recording");
        item.summary.state = RecordingState::Failed;
        item.summary.error = format!("cannot seal: {e}");
    }
    if let Err(e) = shared.store.refresh_summary(&item.summary) {
        tracing::error!(sid = %item.sid, error = %e, "cannot write the final sidecar");
    }
}
