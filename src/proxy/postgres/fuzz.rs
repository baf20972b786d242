//! Entry points for the fuzz targets (`fuzz/`) and the corpus smoke test: the PostgreSQL
//! decoders and the session's handling of what they decode, fed arbitrary bytes.

use super::codec::{read_startup, MessageScanner};
use super::messages::{client_captures, client_event, server_captures, server_result};
use super::pairing::Pairing;
use super::redact::{Redactor, SessionSecrets};

/// The first byte picks the direction (bit 0) and the chunk size the stream arrives in (the
/// rest), so message boundaries fall anywhere. Every event is redacted, capped and written
/// as JSON, which must parse back.
pub fn messages(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else { return };
    let from_client = mode & 1 == 0;
    let chunk = usize::from(mode >> 1).max(1);
    let redactor = Redactor::default();
    let mut secrets = SessionSecrets::default();
    let mut pairing = Pairing::default();
    let mut scanner = MessageScanner::new(1 << 20, if from_client { client_captures } else { server_captures });
    let mut events = Vec::new();
    for piece in stream.chunks(chunk) {
        let fed = scanner.feed(piece, |ty, body| {
            let event = if from_client {
                if ty == b'S' {
                    pairing.sync();
                }
                client_event(ty, body)?
            } else {
                server_result(ty, body, pairing.on_server_message(ty))
            };
            if let Some(mut event) = event {
                redactor.redact_event(&mut event, &mut secrets);
                match &event {
                    crate::audit::EventBody::Query { .. } => pairing.simple_query(events.len() as u64),
                    crate::audit::EventBody::PostgresExecute { .. } => pairing.execute(events.len() as u64),
                    _ => {}
                }
                events.push(event);
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
