//! The audited relay: both directions scanned as they pass, every statement and result
//! recorded before it is forwarded, and the session wound up when either side ends.

use crate::util::sync::lock;
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::codec::{error_response, MessageScanner};
use super::messages::{
    client_captures, client_event, declared_types, described_statement, described_types, server_captures, server_result,
};
use super::pairing::Pairing;
use super::redact::{Redactor, SessionSecrets};
use super::statements::StatementTypes;
use crate::audit::EventBody;
use crate::proxy::chunk_reader::ChunkReader;
use crate::proxy::stream::Stream;
use crate::recording::AuditPort;
use crate::server::ListenerContext;

use super::session::{send, MAX_CAPTURED};

/// Why the relay stopped.
pub(super) enum Stop {
    ClientClosed,
    UpstreamClosed,
    ClientMalformed(String, Vec<u8>),
    UpstreamMalformed(String, Vec<u8>),
    Audit(crate::recording::AuditError),
    Io,
    /// The proxy is shutting down.
    Shutdown,
}

/// Relays both directions, auditing on the way, until either side ends. With `keep` (a
/// pooled database), a client's Terminate is not passed on, and the upstream connection is
/// handed back when the client left it at rest: no transaction, nothing unanswered. The
/// caller ends the recording, once the upstream connection is dealt with.
pub(super) async fn relay_session(
    client: Stream,
    upstream: Stream,
    port: AuditPort,
    keep: bool,
    ctx: &ListenerContext,
    span: &tracing::Span,
    redactor: &Redactor,
) -> (Option<Stream>, AuditPort) {
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let tracking = Tracking { keep_upstream: keep, ..Tracking::default() };
    let redaction = Redaction::new(redactor);
    // The pumps are built inside select!: built outside and moved in, each would take its
    // size twice in this future, which lives as long as the session.
    let stop = tokio::select! {
        stop = pump(&mut client_read, &mut upstream_write, &port, &tracking, &redaction, Direction::FromClient) => stop,
        stop = pump(&mut upstream_read, &mut client_write, &port, &tracking, &redaction, Direction::FromUpstream) => stop,
        _ = ctx.shutdown().cancelled() => Stop::Shutdown,
    };
    let reusable = keep && matches!(stop, Stop::ClientClosed) && tracking.at_rest();
    // Boxed: the wind-up's awaits, inline, would size this future for the session's life.
    Box::pin(wind_up(stop, client_write, &port, span)).await;
    if reusable {
        return (Some(upstream_read.unsplit(upstream_write)), port);
    }
    let _ = upstream_write.shutdown().await;
    (None, port)
}

/// Tells the client why the relay stopped, when that is its business. The caller ends the
/// recording.
pub(super) async fn wind_up(stop: Stop, mut client_write: tokio::io::WriteHalf<Stream>, port: &AuditPort, span: &tracing::Span) {
    match stop {
        Stop::ClientClosed | Stop::UpstreamClosed | Stop::Io => {}
        Stop::Shutdown => {
            send(&mut client_write, &error_response("FATAL", "57P01", "dbtape: terminating connection because the proxy is shutting down"))
                .await
        }
        Stop::ClientMalformed(detail, sample) => {
            tracing::warn!(parent: span, %detail, "malformed message from the client; closing the connection");
            let _ = port.emit(EventBody::MalformedPacket { payload: sample }).await;
            send(&mut client_write, &error_response("FATAL", "08P01", &format!("dbtape: protocol violation: {detail}"))).await;
        }
        Stop::UpstreamMalformed(detail, sample) => {
            tracing::warn!(parent: span, %detail, "malformed message from the upstream; closing the connection");
            let _ = port.emit(EventBody::MalformedPacket { payload: sample }).await;
            send(&mut client_write, &error_response("FATAL", "08P01", "dbtape: the database sent a malformed message; connection closed"))
                .await;
        }
        Stop::Audit(e) => {
            tracing::error!(parent: span, error = %e, "recording failed in strict mode; ending the session");
            send(&mut client_write, &error_response("FATAL", "58030", e.client_message())).await;
        }
    }
}

/// What both directions of a session keep track of: which query each result answers, and
/// each prepared statement's parameter types.
#[derive(Default)]
pub(super) struct Tracking {
    pairing: Mutex<Pairing>,
    statements: Mutex<StatementTypes>,
    /// A pooled session: the client's Terminate stays here, the connection is kept.
    keep_upstream: bool,
    rest: AtRest,
}

/// Whether the upstream connection could serve another client now: every Query, Sync and
/// FunctionCall answered by its ReadyForQuery, no extended-protocol message waiting for a
/// Sync, and the last ReadyForQuery outside a transaction.
pub(super) struct AtRest {
    unanswered: std::sync::atomic::AtomicI64,
    unsynced: std::sync::atomic::AtomicBool,
    status: std::sync::atomic::AtomicU8,
    /// The upstream's bytes so far end inside a message.
    upstream_partial: std::sync::atomic::AtomicBool,
}

impl Default for AtRest {
    fn default() -> Self {
        // The login ended with ReadyForQuery 'I'.
        AtRest { unanswered: Default::default(), unsynced: Default::default(), status: b'I'.into(), upstream_partial: Default::default() }
    }
}

impl AtRest {
    fn client(&self, ty: u8) {
        use std::sync::atomic::Ordering::Relaxed;
        match ty {
            b'Q' | b'F' => {
                self.unanswered.fetch_add(1, Relaxed);
            }
            b'S' => {
                self.unanswered.fetch_add(1, Relaxed);
                self.unsynced.store(false, Relaxed);
            }
            _ => self.unsynced.store(true, Relaxed),
        }
    }

    fn server(&self, ty: u8, body: &[u8]) {
        use std::sync::atomic::Ordering::Relaxed;
        if ty == b'Z' {
            self.unanswered.fetch_sub(1, Relaxed);
            self.status.store(body.first().copied().unwrap_or(0), Relaxed);
        }
    }

    fn upstream_between_messages(&self, between: bool) {
        self.upstream_partial.store(!between, std::sync::atomic::Ordering::Relaxed);
    }

    fn holds(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.unanswered.load(Relaxed) == 0
            && !self.unsynced.load(Relaxed)
            && self.status.load(Relaxed) == b'I'
            && !self.upstream_partial.load(Relaxed)
    }
}

impl Tracking {
    /// The event for a client message, with what the session knows added to it, or what the
    /// message asks of the pairing.
    pub(super) fn client_message(
        &self,
        ty: u8,
        body: &[u8],
        redaction: &Redaction<'_>,
    ) -> Result<Option<RelayStep>, super::codec::WireError> {
        self.rest.client(ty);
        let mut event = match ty {
            b'S' => return Ok(Some(RelayStep::Sync)),
            b'D' => {
                let Some(name) = described_statement(body)? else { return Ok(None) };
                // Queued even for a statement the proxy does not know (Parse number 0, which
                // matches none), so its answer is not taken for the next Describe's.
                let parse = lock(&self.statements).describing(&name).unwrap_or(0);
                return Ok(Some(RelayStep::Describe(name.into(), parse)));
            }
            _ => match client_event(ty, body)? {
                Some(event) => event,
                None => return Ok(None),
            },
        };
        match &mut event {
            EventBody::PostgresParse { statement_name, .. } => lock(&self.statements).parsed(statement_name, declared_types(body)),
            EventBody::PostgresBind { statement_name, parameter_types, .. } => {
                *parameter_types = lock(&self.statements).types_of(statement_name);
            }
            EventBody::PostgresClose { statement_name, portal_name } if portal_name.is_empty() => {
                lock(&self.statements).closed(statement_name);
            }
            _ => {}
        }
        Ok(Some(redaction.step(event)))
    }

    /// The result event for a server message, if it is one; a ParameterDescription gives
    /// the described statement its types.
    pub(super) fn server_message(&self, ty: u8, body: &[u8]) -> Option<EventBody> {
        self.rest.server(ty, body);
        if ty == b't' {
            let described = lock(&self.pairing).described();
            if let Some((name, parse)) = described {
                lock(&self.statements).described(&name, parse, described_types(body));
            }
            return None;
        }
        let query_ei = lock(&self.pairing).on_server_message(ty);
        server_result(ty, body, query_ei)
    }

    /// Whether the upstream connection is at rest (see `AtRest`).
    pub(super) fn at_rest(&self) -> bool {
        self.rest.holds()
    }

    /// What a client step asks of the pairing once its event (if any) is recorded as `ei`:
    /// in order with the others, as the server will answer them.
    pub(super) fn recorded(&self, step: Recorded, ei: Option<u64>) {
        let mut pairing = lock(&self.pairing);
        match (step, ei) {
            (Recorded::Sync, _) => pairing.sync(),
            (Recorded::Describe(name, parse), _) => pairing.describe(name, parse),
            (Recorded::SimpleQuery, Some(ei)) => pairing.simple_query(ei),
            (Recorded::Execute, Some(ei)) => pairing.execute(ei),
            _ => {}
        }
    }
}

/// A client step the pairing follows.
pub(super) enum Recorded {
    Sync,
    Describe(Box<str>, u64),
    SimpleQuery,
    Execute,
    Other,
}

impl Recorded {
    pub(super) fn of(event: &EventBody) -> Self {
        match event {
            EventBody::Query { .. } => Recorded::SimpleQuery,
            EventBody::PostgresExecute { .. } => Recorded::Execute,
            _ => Recorded::Other,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    FromClient,
    FromUpstream,
}

/// Bytes kept of a malformed chunk for the audit event.
pub(super) const MALFORMED_SAMPLE: usize = 1024;

/// What a scanned client message asks of the audit.
// Steps live in one reused Vec per direction; boxing the event would allocate per event.
#[allow(clippy::large_enum_variant)]
pub(super) enum RelayStep {
    /// The event, and whether secrets were masked in it.
    Event(EventBody, bool),
    Sync,
    /// A Describe of the statement named, as of its Parse numbered.
    Describe(Box<str>, u64),
}

/// The session's redaction: the rules, and the secrets its statements held so far.
pub(super) struct Redaction<'a> {
    redactor: &'a Redactor,
    secrets: Mutex<SessionSecrets>,
    /// Whether `secrets` holds any, readable without the lock.
    seen_any: std::sync::atomic::AtomicBool,
}

impl<'a> Redaction<'a> {
    pub(super) fn new(redactor: &'a Redactor) -> Self {
        Redaction { redactor, secrets: Mutex::new(SessionSecrets::default()), seen_any: Default::default() }
    }

    fn step(&self, mut event: EventBody) -> RelayStep {
        // The common case takes no lock: a statement with nothing that looks like a secret,
        // or any other event while the session has given no secret yet.
        let quiet = !self.seen_any.load(std::sync::atomic::Ordering::Relaxed)
            && match &event {
                EventBody::Query { query, .. } | EventBody::PostgresParse { query, .. } => !self.redactor.may_hold_secrets(query),
                _ => true,
            };
        if quiet {
            return RelayStep::Event(event, false);
        }
        let mut secrets = lock(&self.secrets);
        let redacted = self.redactor.redact_event(&mut event, &mut secrets);
        self.seen_any.store(secrets.any(), std::sync::atomic::Ordering::Relaxed);
        RelayStep::Event(event, redacted)
    }
}

/// What a malformed client chunk leaves in the recording: at most `MALFORMED_SAMPLE` bytes,
/// cut before any mention of a password and with the session's known secrets masked.
pub(super) fn client_sample(chunk: &[u8], redaction: &Redaction<'_>) -> Vec<u8> {
    let mut sample = chunk[..chunk.len().min(MALFORMED_SAMPLE)].to_vec();
    if let Some(at) = sample.windows(8).position(|w| w.eq_ignore_ascii_case(b"password")) {
        sample.truncate(at);
    }
    lock(&redaction.secrets).scrub_bytes(&mut sample);
    sample
}

/// Copies one direction chunk by chunk. Each chunk is scanned and its events recorded
/// before it is forwarded, so in strict mode nothing unrecorded passes.
pub(super) async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R,
    to: &mut W,
    port: &AuditPort,
    tracking: &Tracking,
    redaction: &Redaction<'_>,
    direction: Direction,
) -> Stop {
    let capture = match direction {
        Direction::FromClient => client_captures,
        Direction::FromUpstream => server_captures,
    };
    let mut scanner = MessageScanner::new(MAX_CAPTURED, capture);
    let mut reader = ChunkReader::new();
    // Room for one: a chunk usually carries one statement or one result, and the Vec is
    // kept for the session's life (a first push would otherwise reserve four, 184 B each).
    let mut steps: Vec<RelayStep> = Vec::with_capacity(1);
    loop {
        let chunk = match reader.read(from).await {
            Ok([]) | Err(_) => {
                return match direction {
                    Direction::FromClient if scanner.at_boundary() => Stop::ClientClosed,
                    // Part of a message went upstream: that connection can serve nobody else.
                    Direction::FromClient => Stop::Io,
                    Direction::FromUpstream => Stop::UpstreamClosed,
                };
            }
            Ok(chunk) => chunk,
        };
        let terminate = direction == Direction::FromClient && chunk.first() == Some(&b'X') && scanner.at_boundary();
        let scanned = scanner.feed(chunk, |ty, body| {
            match direction {
                Direction::FromClient => steps.extend(tracking.client_message(ty, body, redaction)?),
                Direction::FromUpstream => steps.extend(tracking.server_message(ty, body).map(|event| redaction.step(event))),
            }
            Ok(())
        });
        // Everything in one chunk arrived at once; one clock read stamps it all.
        let now_ms = if steps.is_empty() { 0 } else { crate::audit::now_ms() };
        for step in steps.drain(..) {
            let (event, redacted) = match step {
                RelayStep::Sync => {
                    tracking.recorded(Recorded::Sync, None);
                    continue;
                }
                RelayStep::Describe(name, parse) => {
                    tracking.recorded(Recorded::Describe(name, parse), None);
                    continue;
                }
                RelayStep::Event(event, redacted) => (event, redacted),
            };
            let kind = Recorded::of(&event);
            let emitted = match port.emit_redacted_now_or_return(event, redacted, now_ms) {
                Ok(emitted) => emitted,
                // Only when the disk is behind or every event waits for fsync; boxed, so
                // the wait does not size this future for the session's life.
                Err(event) => Box::pin(port.emit_redacted_at(*event, redacted, now_ms)).await,
            };
            match emitted {
                Ok(ei) => tracking.recorded(kind, ei),
                Err(e) => return Stop::Audit(e),
            }
        }
        if let Err(e) = scanned {
            return match direction {
                Direction::FromClient => Stop::ClientMalformed(e.to_string(), client_sample(chunk, redaction)),
                // Only the first message's header: what follows may be result rows, which
                // the recording never holds.
                Direction::FromUpstream => Stop::UpstreamMalformed(e.to_string(), chunk[..chunk.len().min(5)].to_vec()),
            };
        }
        if tracking.keep_upstream && direction == Direction::FromUpstream {
            tracking.rest.upstream_between_messages(scanner.at_boundary());
        }
        if terminate && tracking.keep_upstream {
            // The session is over; the connection is not, and the pool decides its fate.
            return Stop::ClientClosed;
        }
        if to.write_all(chunk).await.is_err() || to.flush().await.is_err() {
            return Stop::Io;
        }
        if terminate {
            return Stop::ClientClosed;
        }
    }
}
