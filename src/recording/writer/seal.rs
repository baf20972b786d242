//! Sealing: the trailer frame, the final fsync, the signed manifest and the last sidecar.

use std::io::Write;
use std::sync::Arc;

use sha2::Digest;

use super::state::{Inner, SessionState, Shared};
use crate::recording::format::{encode_frame, FrameKind, FrameSpec, Trailer};
use crate::recording::store::{RecordingState, SessionSummary};
use crate::signing::ManifestBody;
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

/// Writes the trailer, fsyncs, signs the manifest and writes the final sidecar. The caller
/// fsyncs the folder (once for every session a pass seals) and then says it is sealed.
pub(super) fn seal(shared: &Shared, session: &SessionState) {
    let sid = session.ctx.sid.clone();
    let mut io_guard = lock(&session.io);
    let mut inner = lock(&session.inner);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut final_state = if inner.failed.is_some() { RecordingState::Failed } else { RecordingState::Sealed };
    let mut len = 0;
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
            io.file.write_all(&bytes).map_err(|e| e.to_string())?;
            io.hasher.update(&bytes);
            io.len += bytes.len() as u64;
            io.file.sync_all().map_err(|e| e.to_string())?;
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
                match shared
                    .signer
                    .sign(body)
                    .map_err(|e| e.to_string())
                    .and_then(|m| shared.store.write_manifest(&m).map_err(|e| e.to_string()))
                {
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
        let _ = io.file.unlock();
    }
    let summary = summary_of(session, &inner, len, final_state);
    drop(inner);
    drop(io_guard);
    // Derived data, so not fsynced: start-up rebuilds one a power loss took (see
    // `recover::resummarize_sealed`); a killed process loses nothing the kernel holds.
    if let Err(e) = shared.store.refresh_summary(&summary) {
        tracing::error!(sid = %sid, error = %e, "cannot write the final sidecar");
    }
}
