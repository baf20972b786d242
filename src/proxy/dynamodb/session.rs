//! One client connection: each request is authenticated on its own (SigV4 carries the
//! identity on every request), recorded, re-signed and forwarded, and the endpoint's answer
//! streamed back as it arrives. A connection holds one session at a time, for one (user,
//! role); a request from another identity ends it and opens the next.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::auth::{authenticate, identify, RequestRefusal, Who};
use super::capture::Capture;
use super::errors::{error_response, ErrorKind};
use super::summary::summarize;
use super::upstream::{resign, Line, ENDPOINT_STALL, HOP_BY_HOP};
use super::DbState;
use crate::audit::{now_ms, EventBody, JsonBody, Status, Truncation};
use crate::aws::sigv4_verify::payload_sha256;
use crate::proxy::http1::{self, request_framing, response_framing, BodyState, Framing, RequestHead, ResponseHead, Wire};
use crate::proxy::stream::Stream;
use crate::recording::AuditPort;
use crate::server::{ConnectionInfo, ListenerContext, LoginSlot, SessionIdentity};

/// API families forwarded; DAX speaks its own binary protocol and is not HTTP.
const ROUTED_TARGETS: &[&str] = &["DynamoDB_20120810.", "DynamoDBStreams_20120810."];

/// How long a client may go quiet while sending a request's body.
const BODY_STALL: Duration = Duration::from_secs(30);

/// Bytes of an answer gathered before they are written to the client: a typical DynamoDB
/// answer whole, so its head and body leave in one write.
const WRITE_AT: usize = 64 * 1024;

/// Whether a connection goes on after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    KeepOpen,
    Close,
}

pub struct Conn {
    ctx: Arc<ListenerContext>,
    state: Arc<DbState>,
    info: ConnectionInfo,
    /// A request on this connection has been authenticated.
    pub logged_in: bool,
    /// Strict mode could not record: nothing more is forwarded on this connection.
    stopped: bool,
    session: Option<Open>,
    line: Line,
}

struct Open {
    port: Arc<AuditPort>,
    user: String,
    role_arn: String,
    /// The role's credentials as last fetched, reused while fresh.
    credentials: Option<Arc<crate::aws::credentials::Assumed>>,
}

/// Why a request did not reach DynamoDB: the error, its cause for the audit, and what the
/// client is told.
struct Failure {
    kind: ErrorKind,
    cause: String,
    client_message: String,
}

/// The request being answered.
struct Exchange<'h> {
    head: &'h RequestHead,
    /// The client asked to close, or dbtape is shutting down.
    close: bool,
}

impl Conn {
    pub fn new(ctx: Arc<ListenerContext>, state: Arc<DbState>, info: ConnectionInfo) -> Conn {
        Conn { ctx, state, info, logged_in: false, stopped: false, session: None, line: Line::default() }
    }

    /// Ends the open session, if any.
    pub async fn finish(&mut self) {
        if let Some(open) = self.session.take() {
            end_session(open).await;
        }
    }

    /// Answers one request; every outcome is an HTTP response, in DynamoDB's shape when it
    /// is dbtape's own. The first authenticated request ends the connection's login: `login`
    /// hears of it at once, so a slow first answer cannot run past the login deadline.
    pub async fn exchange(&mut self, client: &mut Wire<Stream>, head: RequestHead, shutting_down: bool, login: &mut LoginSlot) -> Next {
        let exchange = Exchange { head: &head, close: shutting_down || !head.keep_alive() };
        let framing = match request_framing(&head) {
            Ok(framing) => framing,
            Err(e) => {
                tracing::info!(error = %e, "a DynamoDB request's framing is refused");
                return reply(client, ErrorKind::Validation, &format!("dbtape: {e}"), Next::Close).await;
            }
        };
        let max = self.state.max_request_bytes;
        let too_large = || format!("Request body must be at most {max} bytes");
        if let Framing::Length(declared) = framing {
            if declared > max as u64 {
                let reason = format!("request body of {declared} bytes is over the limit of {max}");
                self.refuse(&head, RequestRefusal::new(ErrorKind::RequestTooLarge, "", reason)).await;
                return reply(client, ErrorKind::RequestTooLarge, &too_large(), Next::Close).await;
            }
        }
        let directory = self.ctx.directory();
        let identified = match identify(&directory, &head) {
            Ok(identified) => identified,
            Err(refusal) => {
                // Its body is never read, so the connection cannot carry another request.
                let (kind, message) = (refusal.kind, refusal.client_message());
                self.refuse(&head, refusal).await;
                return reply(client, kind, &message, Next::Close).await;
            }
        };
        // Bodies being read count against one budget for the database, so many connections
        // sending large bodies at once wait their turn instead of exhausting memory.
        let reserve = match framing {
            Framing::Length(n) => n as usize,
            Framing::Empty => 0,
            Framing::Chunked | Framing::UntilClose => max,
        };
        let state = self.state.clone();
        let Ok(_permit) = state.body_budget.acquire_many(kib(reserve)).await else {
            return reply(client, ErrorKind::ServiceUnavailable, "dbtape is shutting down", Next::Close).await;
        };
        let expects_continue = head.fields.get("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        if framing != Framing::Empty && expects_continue && client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
            return Next::Close;
        }
        let body = match client.read_body(framing, max, BODY_STALL).await {
            Ok(body) => body,
            Err(http1::WireError::TooLarge(_)) => {
                let reason = format!("request body over the limit of {max} bytes");
                self.refuse(&head, RequestRefusal::new(ErrorKind::RequestTooLarge, "", reason)).await;
                return reply(client, ErrorKind::RequestTooLarge, &too_large(), Next::Close).await;
            }
            Err(e) => {
                tracing::info!(error = %e, "a DynamoDB request's body could not be read");
                return reply(client, ErrorKind::Validation, &format!("the request body could not be read: {e}"), Next::Close).await;
            }
        };
        let payload_sha256 = payload_sha256(&body);
        let who = match authenticate(&self.ctx, &directory, &head, identified, &payload_sha256, &self.state.signing_keys) {
            Ok(who) => who,
            Err(refusal) => {
                let (kind, message) = (refusal.kind, refusal.client_message());
                self.refuse(&head, refusal).await;
                return reply(client, kind, &message, exchange.next()).await;
            }
        };
        if !self.logged_in {
            self.logged_in = true;
            login.logged_in();
        }
        self.forward(client, &exchange, body, &payload_sha256, who).await
    }

    async fn refuse(&self, head: &RequestHead, refused: RequestRefusal) {
        tracing::info!(user = %refused.refusal.identity.user, reason = %refused.refusal.reason, "DynamoDB request refused");
        Box::pin(self.ctx.refuse(refused.audited(head.fields.get_str("user-agent").unwrap_or_default()), self.info)).await;
    }

    async fn forward(&mut self, client: &mut Wire<Stream>, exchange: &Exchange<'_>, body: Bytes, payload_sha256: &str, who: Who) -> Next {
        let head = exchange.head;
        let audit_failed = crate::recording::AuditError::client_message_text();
        if self.stopped {
            return reply(client, ErrorKind::InternalServerError, audit_failed, exchange.next()).await;
        }
        let current = self.session.as_ref().filter(|o| o.user == who.user && o.role_arn == who.role_arn).map(|o| o.port.clone());
        let opened = match current {
            Some(port) => Ok(port),
            None => Box::pin(self.open_session(&who, head.fields.get_str("user-agent").unwrap_or_default())).await,
        };
        let port = match opened {
            Ok(port) => port,
            Err(message) => {
                self.stopped = true;
                return reply(client, ErrorKind::InternalServerError, &message, exchange.next()).await;
            }
        };
        // Its own handle on the state: the events below borrow the endpoint's name while the
        // request goes out through `self`.
        let state = self.state.clone();
        let endpoint = &state.endpoint;
        let target = head.fields.get_str("x-amz-target").unwrap_or_default();
        let (mut captured_body, cut) = captured_body(head, &body, port.max_query_bytes());
        let mut request_event = |status_code: u16, failed: bool| EventBody::DynamoDbRequest {
            status_code: u32::from(status_code),
            path: head.path().to_string(),
            raw_query: head.query().to_string(),
            method: head.method().to_string(),
            target: target.to_string(),
            body: captured_body.take(),
            uri: Some(endpoint.uri.clone()),
            failed,
        };
        let started = now_ms();
        let (response, framing) = match self.reach(exchange.head, &body, payload_sha256, &who, target).await {
            Ok(reached) => reached,
            Err(failure) => {
                // A request that never reached DynamoDB: a request event (TDY01E) and the
                // failure's result.
                let recorded = async {
                    let query_ei = port.emit_captured_at(request_event(0, true), cut, false, started).await?;
                    let status = Status::failed(failure.kind.name(), failure.cause);
                    port.emit(EventBody::Result { status, affected_records: 0, query_ei }).await
                };
                if Box::pin(recorded).await.is_err() {
                    self.stopped = true;
                    return reply(client, ErrorKind::InternalServerError, audit_failed, exchange.next()).await;
                }
                return reply(client, failure.kind, &failure.client_message, exchange.next()).await;
            }
        };
        let ei = match port.emit_captured_at(request_event(response.status, false), cut, false, started).await {
            Ok(ei) => ei,
            Err(e) => {
                tracing::error!(error = %e, target, "a DynamoDB request could not be recorded; the session is stopped");
                self.stopped = true;
                self.line.discard();
                return reply(client, ErrorKind::InternalServerError, audit_failed, Next::Close).await;
            }
        };
        self.relay(client, exchange, &port, response, framing, ei).await
    }

    /// Sends the request, re-signed, to DynamoDB and reads the head of its answer.
    async fn reach(
        &mut self,
        head: &RequestHead,
        body: &Bytes,
        payload_sha256: &str,
        who: &Who,
        target: &str,
    ) -> Result<(ResponseHead, Framing), Failure> {
        let assumed = self.prepare(who, target).await?;
        let state = self.state.clone();
        let endpoint = &state.endpoint;
        let request = resign(endpoint, head, body.len(), payload_sha256, &assumed.credentials, &state.signing_keys).map_err(|e| {
            Failure { kind: ErrorKind::Validation, cause: e.to_string(), client_message: format!("dbtape could not sign the request: {e}") }
        })?;
        let response = self.line.send(endpoint, request, body).await.map_err(|e| Failure {
            kind: ErrorKind::ServiceUnavailable,
            cause: e.to_string(),
            client_message: format!("dbtape could not reach DynamoDB at {}", endpoint.uri),
        })?;
        match response_framing(&response, head.method() == "HEAD") {
            Ok(framing) => Ok((response, framing)),
            Err(e) => {
                self.line.discard();
                Err(Failure {
                    kind: ErrorKind::ServiceUnavailable,
                    cause: format!("the endpoint's answer: {e}"),
                    client_message: "dbtape: DynamoDB's answer could not be read".into(),
                })
            }
        }
    }

    /// The role's credentials for a request that may go to DynamoDB, or why it may not: the
    /// error, its cause for the audit, and what the client is told.
    async fn prepare(&mut self, who: &Who, target: &str) -> Result<Arc<crate::aws::credentials::Assumed>, Failure> {
        if !ROUTED_TARGETS.iter().any(|prefix| target.starts_with(prefix)) {
            let message = format!(
                "dbtape forwards DynamoDB and DynamoDB Streams operations only; X-Amz-Target {:?} is not one",
                truncate(target, 128)
            );
            return Err(Failure { kind: ErrorKind::UnknownOperation, cause: message.clone(), client_message: message });
        }
        let cached = self.session.as_ref().and_then(|o| o.credentials.clone()).filter(|a| self.state.roles.fresh(a));
        let assumed = match cached {
            Some(assumed) => assumed,
            // Boxed here and below: rare, and inline they would size every request's future,
            // which is moved into place on each request.
            None => match Box::pin(self.state.roles.role(&who.user, &who.role_arn)).await {
                Ok(assumed) => Arc::new(assumed),
                Err(e) => {
                    let client_message =
                        format!("dbtape could not obtain credentials for role {}; the cause is in the audit log", who.role_arn);
                    return Err(Failure { kind: ErrorKind::AccessDenied, cause: e.to_string(), client_message });
                }
            },
        };
        if let Some(open) = self.session.as_mut() {
            open.credentials = Some(assumed.clone());
        }
        Ok(assumed)
    }

    /// Streams the endpoint's answer to the client, then records its result.
    async fn relay(
        &mut self,
        client: &mut Wire<Stream>,
        exchange: &Exchange<'_>,
        port: &AuditPort,
        response: ResponseHead,
        framing: Framing,
        ei: Option<u64>,
    ) -> Next {
        let mut next = exchange.next();
        let mut out = Vec::with_capacity(1024);
        http1::status_line(&mut out, response.status);
        // Answers that never have a body keep the endpoint's length header.
        let bodiless = http1::body::never_has_body(response.status, exchange.head.method() == "HEAD");
        for (name, value) in response.fields.iter() {
            // The endpoint's connection management is its own: whether the client's
            // connection stays open is between the client and dbtape.
            if HOP_BY_HOP.contains(&name) || (name == "content-length" && !bodiless) {
                continue;
            }
            http1::header(&mut out, name, value);
        }
        let chunked = matches!(framing, Framing::Chunked | Framing::UntilClose);
        match framing {
            Framing::Empty if !bodiless => http1::header(&mut out, "content-length", b"0"),
            Framing::Length(n) => http1::header(&mut out, "content-length", n.to_string().as_bytes()),
            _ if chunked && exchange.head.minor_version == 0 => next = Next::Close,
            _ if chunked => http1::header(&mut out, "transfer-encoding", b"chunked"),
            _ => {}
        }
        let chunked = chunked && exchange.head.minor_version == 1;
        if next == Next::Close {
            http1::header(&mut out, "connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        let gzip = response.fields.get("content-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"gzip"));
        let cap = port.max_query_bytes();
        let mut capture = Capture::new(cap, gzip);
        let mut state = BodyState::new(framing);
        let mut complete = false;
        let mut client_gone = false;
        if let Some(upstream) = self.line.wire() {
            loop {
                match upstream.next_chunk(&mut state, ENDPOINT_STALL).await {
                    Ok(Some(data)) => {
                        capture.keep(&data);
                        if chunked {
                            http1::body::write_chunk(&mut out, &data);
                        } else {
                            out.extend_from_slice(&data);
                        }
                        // Written before waiting on the endpoint again, or when enough has gathered.
                        if out.len() >= WRITE_AT || (upstream.buf.is_empty() && !state.is_done()) {
                            if client.write_all(&out).await.is_err() {
                                client_gone = true;
                                break;
                            }
                            out.clear();
                        }
                    }
                    Ok(None) => {
                        complete = true;
                        break;
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "the DynamoDB endpoint's answer broke off");
                        break;
                    }
                }
            }
        }
        if complete && chunked {
            out.extend_from_slice(http1::body::LAST_CHUNK);
        }
        if !client_gone && !out.is_empty() && client.write_all(&out).await.is_err() {
            client_gone = true;
        }
        if !complete || framing == Framing::UntilClose || !response.keep_alive() {
            self.line.discard();
        }
        let (status, affected_records) = summarize(response.status, &capture.finish(complete), cap);
        let result = EventBody::Result { status, affected_records, query_ei: ei };
        if port.emit(result).await.is_err() {
            self.stopped = true;
        }
        if !complete || client_gone {
            // A cut-off answer can only be told by closing the connection.
            return Next::Close;
        }
        next
    }

    /// Opens the session for `who`, ending another identity's; else what the client is told
    /// when none can be opened.
    async fn open_session(&mut self, who: &Who, user_agent: &str) -> Result<Arc<AuditPort>, String> {
        if let Some(previous) = self.session.take() {
            end_session(previous).await;
        }
        let identity = SessionIdentity {
            user: who.user.clone(),
            db_user: who.db_user.clone(),
            db_name: String::new(),
            aws_role_arn: who.role_arn.clone(),
            user_agent: user_agent.to_string(),
        };
        let port = match self.ctx.open_session(identity, self.info).await {
            Ok(port) => port,
            Err(e) => {
                tracing::error!(error = %e, "cannot open a recording for a DynamoDB session");
                return Err(format!("dbtape: {}, so the request is refused", e.client_reason()));
            }
        };
        let port = match port.begin(None).await {
            Ok(port) => port,
            Err(e) => {
                tracing::error!(error = %e, "cannot record the start of a DynamoDB session");
                return Err(e.client_message().to_string());
            }
        };
        let port = Arc::new(port);
        self.session = Some(Open { port: port.clone(), user: who.user.clone(), role_arn: who.role_arn.clone(), credentials: None });
        Ok(port)
    }
}

impl Exchange<'_> {
    fn next(&self) -> Next {
        if self.close {
            Next::Close
        } else {
            Next::KeepOpen
        }
    }
}

async fn end_session(open: Open) {
    match Arc::try_unwrap(open.port) {
        Ok(port) => {
            if let Err(e) = port.end().await {
                tracing::error!(error = %e, "recording the end of a DynamoDB session failed");
            }
        }
        Err(_) => tracing::error!("a DynamoDB session was still in use at its end; its recording is sealed when the last use ends"),
    }
}

/// Writes dbtape's own answer; `Close` also if the client is gone.
async fn reply(client: &mut Wire<Stream>, kind: ErrorKind, message: &str, next: Next) -> Next {
    let bytes = http1::response_bytes(&error_response(kind, message), next == Next::Close);
    match client.write_all(&bytes).await {
        Ok(()) => next,
        Err(_) => Next::Close,
    }
}
/// The request body as the event's JSON object, or why it is not stored: over the
/// recording's cap (length and SHA-256 kept), or not JSON.
fn captured_body(head: &RequestHead, body: &[u8], cap: usize) -> (Option<JsonBody>, Vec<Truncation>) {
    let content_type = head.fields.get_str("content-type").unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let json =
        ["application/x-amz-json-1.0", "application/x-amz-json-1.1", "application/json"].iter().any(|t| essence.eq_ignore_ascii_case(t));
    if !json || body.is_empty() {
        return (None, Vec::new());
    }
    if body.len() > cap {
        return (None, vec![Truncation::omitted("body", body)]);
    }
    (JsonBody::object(body), Vec::new())
}

/// A byte count in the body budget's units (KiB, rounded up).
pub fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

pub fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
