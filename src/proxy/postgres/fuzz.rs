//! Entry points for the fuzz targets (`fuzz/`) and the corpus smoke test: the PostgreSQL
//! decoders and the session's handling of what they decode, fed arbitrary bytes.

use super::codec::{read_startup, MessageScanner};
use super::messages::{client_captures, server_captures};
use super::redact::{Redactor, SessionSecrets};
use super::relay::{Recorded, Redaction, RelayStep, Tracking};

/// The first byte picks the direction (bit 0) and the chunk size the stream arrives in (the
/// rest), so message boundaries fall anywhere. Messages go through the relay's own
/// tracking (pairing, statement types, redaction); every event is capped and written as
/// JSON, which must parse back. Each readable parameter of a Bind is rendered too.
pub fn messages(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else { return };
    let from_client = mode & 1 == 0;
    let chunk = usize::from(mode >> 1).max(1);
    let redactor = Redactor::default();
    let redaction = Redaction::new(&redactor);
    let tracking = Tracking::default();
    let mut scanner = MessageScanner::new(1 << 20, if from_client { client_captures } else { server_captures });
    let mut events = Vec::new();
    for piece in stream.chunks(chunk) {
        let fed = scanner.feed(piece, |ty, body| {
            let step = if from_client {
                tracking.client_message(ty, body, &redaction)?
            } else {
                tracking.server_message(ty, body).map(|event| RelayStep::Event(event, false))
            };
            match step {
                Some(RelayStep::Sync) => tracking.recorded(Recorded::Sync, None),
                Some(RelayStep::Describe(name, parse)) => tracking.recorded(Recorded::Describe(name, parse), None),
                Some(RelayStep::Event(event, _)) => {
                    tracking.recorded(Recorded::of(&event), Some(events.len() as u64));
                    if let crate::audit::EventBody::PostgresBind { parameters, parameter_formats, parameter_types, .. } = &event {
                        let types = parameter_types.as_deref().unwrap_or_default();
                        let _ = crate::statement::parameters::readable(parameters, parameter_formats, types);
                    }
                    events.push(event);
                }
                None => {}
            }
            Ok(())
        });
        if fed.is_err() {
            break;
        }
    }
    crate::recording::compact::fuzz_check_events(events, 256);
    // The same bytes as a startup-phase packet.
    thread_local! {
        static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread().build().ok();
    }
    RUNTIME.with(|runtime| {
        if let Some(runtime) = runtime {
            let mut reader = stream;
            let _ = runtime.block_on(read_startup(&mut reader));
        }
    });
}

/// Arbitrary text through the statement redactor: it must never fail, and what it returns
/// must not hold a literal it said it masked.
pub fn redaction(data: &[u8]) {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let mut secrets = SessionSecrets::default();
    let _ = Redactor::default().redact_sql(sql, &mut secrets);
}
