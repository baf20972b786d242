//! The audited relay of a logged-in session: one command at a time, as the protocol runs,
//! with every command recorded before it reaches the server and every reply after.

use tokio::io::{AsyncRead, AsyncWrite};

use super::client::{reply_bytes, send, Request};
use super::commands::{self, error_reply, is_hello, is_login_command, summarize_reply, UNAUTHORIZED};
use super::login::{reply_for_unparsed, Established};
use super::render::{render_op_msg, render_op_query, Capture};
use super::wire::{frame, frame_maybe_compressed, op_msg_body, read_message, Message, OpMsg, WireError, OP_MSG};
use crate::audit::{EventBody, Status};
use crate::proxy::stream::Stream;
use crate::recording::{AuditError, AuditPort};
use crate::server::ListenerContext;

/// Commands that read no data and that drivers send on their own (handshake, heartbeat,
/// session bookkeeping) to `admin`: allowed whatever database names the grant lists.
fn needs_no_grant(name: &str) -> bool {
    is_hello(name) || matches!(name, "ping" | "buildInfo" | "buildinfo" | "endSessions" | "connectionStatus" | "whatsmyuri")
}

/// How many bytes of a bad message a malformed-packet event keeps: enough to see what it
/// was, too few to carry a document's worth of data.
const MALFORMED_SAMPLE: usize = 64;

enum Stop {
    Closed,
    Audit(AuditError),
}

/// Read buffers: one read usually takes a whole message, header and body.
const READ_BUFFER: usize = 8 * 1024;

pub async fn run(client: Stream, established: Established, ctx: &ListenerContext) {
    let Established { port, upstream, max_message, names, .. } = established;
    let advertised = advertised_address(&client);
    let mut client = tokio::io::BufReader::with_capacity(READ_BUFFER, client);
    let mut upstream = tokio::io::BufReader::with_capacity(READ_BUFFER, upstream);
    let shutdown = ctx.shutdown().clone();
    // Replies can be a little over the limit a command has (the server's own fields).
    let reply_max = max_message + 16 * 1024;
    let stop = loop {
        let next = tokio::select! {
            m = read_message(&mut client, max_message) => m,
            () = shutdown.cancelled() => break Stop::Closed,
        };
        let msg = match next {
            Ok(m) => m,
            Err(WireError::Closed | WireError::Io(_)) => break Stop::Closed,
            Err(e) => {
                tracing::info!(error = %e, "malformed client message; connection closed");
                if let Err(e) = port.emit(EventBody::MalformedPacket { payload: e.to_string().into_bytes() }).await {
                    break Stop::Audit(e);
                }
                break Stop::Closed;
            }
        };
        match serve(&mut client, &mut upstream, &port, &names, &advertised, msg, reply_max).await {
            Ok(true) => {}
            Ok(false) => break Stop::Closed,
            Err(e) => break Stop::Audit(e),
        }
    };
    if let Stop::Audit(e) = &stop {
        tracing::error!(error = %e, "recording failed; session stopped");
    }
    if let Err(e) = port.end().await {
        tracing::error!(error = %e, "cannot record the session's end");
    }
}

/// One request and its replies. `Ok(false)` ends the session.
async fn serve<C, U>(
    client: &mut C,
    upstream: &mut U,
    port: &AuditPort,
    names: &super::login::NameGrant,
    advertised: &str,
    mut msg: Message,
    reply_max: usize,
) -> Result<bool, AuditError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let request = match Request::parse(&msg) {
        Ok(r) => r,
        Err(e) => {
            let sample = msg.body().get(..MALFORMED_SAMPLE).unwrap_or(msg.body()).to_vec();
            tracing::info!(error = %e, "unparsable client message");
            port.emit(EventBody::MalformedPacket { payload: sample }).await?;
            return Ok(send(client, &reply_for_unparsed(&msg, &error_reply(9, "FailedToParse", &format!("dbtape: {e}")))).await);
        }
    };
    let name = request.name().to_string();
    let db = request.database();
    let (query, cut, redacted) = capture(&request, &name, port.max_query_bytes());
    let db_name = db.as_ref().ok().cloned();
    let denial = match &db {
        Err(reason) => Some((2, "BadValue", reason.clone())),
        Ok(_) if is_login_command(&name) => Some((
            UNAUTHORIZED.0,
            UNAUTHORIZED.1,
            format!("dbtape: {name} is answered at login only; open a new connection to log in again"),
        )),
        Ok(db) if !needs_no_grant(&name) && !names.allows(db) => {
            Some((UNAUTHORIZED.0, UNAUTHORIZED.1, format!("not authorized on {db} to execute command {name}")))
        }
        Ok(_) if matches!(request, Request::Query { .. }) && !is_hello(&name) => {
            Some((352, "UnsupportedOpQueryCommand", format!("OP_QUERY is only for hello; send {name} as OP_MSG")))
        }
        _ => None,
    };
    if let Some((code, code_name, reason)) = denial {
        let status = Status::failed(format!("{code} {code_name}"), reason.clone());
        let body = EventBody::QueryFailed { query, parameters: Vec::new(), db_name, status };
        port.emit_captured_at(body, cut, redacted, crate::audit::now_ms()).await?;
        if request.more_to_come() {
            return Ok(true);
        }
        return Ok(send(client, &reply_bytes(&msg, &request, &error_reply(code, code_name, &reason))).await);
    }
    let emitted =
        port.emit_captured_at(EventBody::Query { query, parameters: Vec::new(), db_name }, cut, redacted, crate::audit::now_ms()).await;
    let query_ei = match emitted {
        Ok(ei) => ei,
        Err(e) => {
            // Strict mode: nothing unrecorded reaches the server.
            stopped_unrecorded(client, &msg, &request, &e).await;
            return Err(e);
        }
    };
    let hello = is_hello(&name);
    let outgoing = match &request {
        // As it came (decompressed): the server never sees the client's compression.
        Request::Msg(m) if !hello && m.flags & super::wire::FLAG_CHECKSUM_PRESENT == 0 => std::mem::take(&mut msg.raw),
        Request::Msg(m) if !hello => {
            frame(msg.header.request_id, msg.header.response_to, OP_MSG, &OpMsg { flags: m.flags, ..m.clone() }.encode())
        }
        _ => {
            let flags = match &request {
                Request::Msg(m) => m.flags & !super::wire::FLAG_CHECKSUM_PRESENT,
                Request::Query { .. } => 0,
            };
            let body = request.upstream_body(&["speculativeAuthenticate", "saslSupportedMechs", "compression"]);
            frame(msg.header.request_id, 0, OP_MSG, &op_msg_body(flags, &body))
        }
    };
    if !send(upstream, &outgoing).await {
        return Ok(false);
    }
    if request.more_to_come() {
        return Ok(true);
    }
    loop {
        let reply = match read_message(upstream, reply_max).await {
            Ok(r) => r,
            Err(WireError::Closed | WireError::Io(_)) => return Ok(false),
            Err(e) => {
                tracing::warn!(error = %e, "malformed upstream message; session closed");
                port.emit(EventBody::MalformedPacket { payload: format!("upstream: {e}").into_bytes() }).await?;
                return Ok(false);
            }
        };
        let parsed = match reply.header.op_code {
            OP_MSG => super::wire::op_msg_body_ref(&reply.header, reply.body()),
            other => Err(WireError::UnknownOpcode(other)),
        };
        let (flags, body) = match parsed {
            Ok(p) => p,
            Err(e) => {
                // The error only: a reply's bytes are result data.
                tracing::warn!(error = %e, "unparsable upstream reply; session closed");
                port.emit(EventBody::MalformedPacket { payload: format!("upstream: {e}").into_bytes() }).await?;
                return Ok(false);
            }
        };
        let summary = summarize_reply(body);
        let status = if summary.ok { Status::ok() } else { Status::failed(summary.error.clone(), summary.message.clone()) };
        if let Err(e) = port.emit(EventBody::Result { status, affected_records: summary.affected, query_ei }).await {
            // Nor does a reply that cannot be recorded reach the client.
            stopped_unrecorded(client, &msg, &request, &e).await;
            return Err(e);
        }
        let more = flags & super::wire::FLAG_MORE_TO_COME != 0;
        let rewritten = if hello || matches!(request, Request::Query { .. }) {
            let doc = commands::rewrite_topology(body, advertised);
            Some(if more {
                // Keep the streaming flag on a rewritten exhaust reply.
                frame(reply.header.request_id, reply.header.response_to, OP_MSG, &op_msg_body(super::wire::FLAG_MORE_TO_COME, &doc))
            } else {
                reply_bytes(&msg, &request, &doc)
            })
        } else {
            None
        };
        let to_client = match (rewritten, msg.compressor) {
            (Some(bytes), _) => bytes,
            (None, None) => reply.raw,
            (None, Some(c)) => frame_maybe_compressed(reply.header.request_id, reply.header.response_to, OP_MSG, reply.body(), Some(c)),
        };
        if !send(client, &to_client).await {
            return Ok(false);
        }
        if !more {
            return Ok(true);
        }
    }
}

/// Strict mode stops a session whose recording fails; the client hears why, in its own
/// wire format, as the answer to the command it is waiting on.
async fn stopped_unrecorded<C: AsyncWrite + Unpin>(client: &mut C, msg: &Message, request: &Request, e: &AuditError) {
    if !request.more_to_come() {
        send(client, &reply_bytes(msg, request, &error_reply(8000, "AuditRecordingFailed", e.client_message()))).await;
    }
}

/// The proxy's address as this client reached it, which hello replies name.
fn advertised_address(client: &Stream) -> String {
    let local = match client {
        Stream::Plain(tcp) => tcp.local_addr().ok(),
        Stream::Server(tls) => tls.get_ref().0.local_addr().ok(),
        Stream::Client(_) => None,
    };
    local.map(|a| a.to_string()).unwrap_or_default()
}

/// The command's `db_query` text with secrets replaced, any cut made while rendering, and
/// whether anything was redacted.
fn capture(request: &Request, name: &str, limit: usize) -> (String, Vec<crate::audit::Truncation>, bool) {
    let redacted = commands::redact(name, request.body());
    let body = redacted.as_deref().unwrap_or(request.body());
    let mut out = Capture::new(limit);
    match request {
        Request::Msg(m) => render_op_msg(m, body, &mut out),
        Request::Query { query, .. } => render_op_query(query, body, &mut out),
    }
    let (text, cut) = out.finish("db_query");
    (text, cut.into_iter().collect(), redacted.is_some())
}
