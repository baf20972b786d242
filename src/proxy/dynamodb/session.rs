//! One client connection: each request is authenticated on its own (SigV4 carries the
//! identity on every request), recorded, re-signed and forwarded. A connection holds one
//! session at a time, for one (user, role); a request from another identity ends it and
//! opens the next.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::auth::{authenticate, identify, RequestRefusal, Who};
use super::errors::{error_response, ErrorKind};
use super::summary::summarize;
use super::tee::Tee;
use super::upstream::{resign, Line};
use super::DbState;
use crate::audit::{now_ms, EventBody, JsonBody, Status, Truncation};
use crate::aws::sigv4_verify::payload_sha256;
use crate::recording::AuditPort;
use crate::server::{ConnectionInfo, ListenerContext, SessionIdentity};

/// dbtape's own answers, or the endpoint's streamed through the tee; an enum rather than a
/// boxed body, which would cost an allocation per response.
pub type ResponseBody = Either<Tee, Full<Bytes>>;

/// API families forwarded; DAX speaks its own binary protocol and is not HTTP.
const ROUTED_TARGETS: &[&str] = &["DynamoDB_20120810.", "DynamoDBStreams_20120810."];

pub struct Conn {
    ctx: Arc<ListenerContext>,
    state: Arc<DbState>,
    info: ConnectionInfo,
    logged_in: tokio::sync::watch::Sender<bool>,
    /// Strict mode could not record: nothing more is forwarded on this connection.
    stopped: Arc<AtomicBool>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    session: Option<Open>,
    line: Line,
    /// The previous response's result event when it had to be written by a task (the
    /// recorder could not take it at once); awaited before the next request so events stay
    /// in order. The response's body has ended by then (hyper reads the next request only
    /// after it), and with it the tee that fills this.
    pending_result: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

struct Open {
    port: Arc<AuditPort>,
    user: String,
    role_arn: String,
    /// The role's credentials as last fetched, reused while fresh.
    credentials: Option<Arc<crate::aws::credentials::Assumed>>,
}

impl Conn {
    pub fn new(ctx: Arc<ListenerContext>, state: Arc<DbState>, info: ConnectionInfo) -> (Arc<Conn>, tokio::sync::watch::Receiver<bool>) {
        let (logged_in, watch) = tokio::sync::watch::channel(false);
        let conn = Conn { ctx, state, info, logged_in, stopped: Arc::new(AtomicBool::new(false)), inner: Mutex::new(Inner::default()) };
        (Arc::new(conn), watch)
    }

    /// Ends the open session, if any, once its last result is written.
    pub async fn finish(&self) {
        let mut inner = self.inner.lock().await;
        wait_for_result(&mut inner).await;
        if let Some(open) = inner.session.take() {
            end_session(open).await;
        }
    }
}

/// Waits for the previous response's result event if a task is writing it.
async fn wait_for_result(inner: &mut Inner) {
    let task = crate::util::sync::lock(&inner.pending_result).take();
    if let Some(task) = task {
        let _ = task.await;
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

fn respond(response: Response<Bytes>) -> Response<ResponseBody> {
    response.map(|b| Either::Right(Full::new(b)))
}

fn error(kind: ErrorKind, message: &str) -> Response<ResponseBody> {
    respond(error_response(kind, message))
}

/// hyper's service: every outcome is an HTTP response.
pub async fn serve(conn: Arc<Conn>, request: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
    Ok(handle(&conn, request).await)
}

async fn handle(conn: &Conn, request: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let max = conn.state.max_request_bytes;
    let declared = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        let mut r = error(ErrorKind::RequestTooLarge, &format!("Request body must be at most {max} bytes"));
        r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        r
    };
    if declared.is_some_and(|n| n > max as u64) {
        refuse(
            conn,
            &parts,
            RequestRefusal::new(
                ErrorKind::RequestTooLarge,
                "",
                format!("request body of {} bytes is over the limit of {max}", declared.unwrap_or(0)),
            ),
        )
        .await;
        return too_large();
    }
    let directory = conn.ctx.directory();
    let identified = match identify(&directory, &parts) {
        Ok(identified) => identified,
        Err(refusal) => {
            let mut response = error(refusal.kind, &refusal.client_message());
            // Its body is never read, so the connection cannot carry another request.
            response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            refuse(conn, &parts, refusal).await;
            return response;
        }
    };
    // Bodies being read count against one budget for the database, so many connections
    // sending large bodies at once wait their turn instead of exhausting memory.
    let reserve = declared.map_or(max, |n| n as usize).min(max);
    let Ok(_permit) = conn.state.body_budget.acquire_many(kib(reserve)).await else {
        return error(ErrorKind::ServiceUnavailable, "dbtape is shutting down");
    };
    let body = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            refuse(
                conn,
                &parts,
                RequestRefusal::new(ErrorKind::RequestTooLarge, "", format!("request body over the limit of {max} bytes")),
            )
            .await;
            return too_large();
        }
        Err(e) => return error(ErrorKind::Validation, &format!("the request body could not be read: {e}")),
    };
    let payload_sha256 = payload_sha256(&body);
    let who = match authenticate(&conn.ctx, &directory, &parts, identified, &payload_sha256, &conn.state.signing_keys) {
        Ok(who) => who,
        Err(refusal) => {
            let response = error(refusal.kind, &refusal.client_message());
            refuse(conn, &parts, refusal).await;
            return response;
        }
    };
    let _ = conn.logged_in.send(true);
    forward(conn, parts, body, &payload_sha256, who).await
}

async fn refuse(conn: &Conn, parts: &http::request::Parts, refused: RequestRefusal) {
    tracing::info!(user = %refused.refusal.identity.user, reason = %refused.refusal.reason, "DynamoDB request refused");
    conn.ctx.refuse(refused.audited(header(parts, "user-agent")), conn.info).await;
}

fn header<'a>(parts: &'a http::request::Parts, name: &str) -> &'a str {
    parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

async fn forward(conn: &Conn, parts: http::request::Parts, body: Bytes, payload_sha256: &str, who: Who) -> Response<ResponseBody> {
    let audit_failed = || error(ErrorKind::InternalServerError, crate::recording::AuditError::client_message_text());
    let mut inner = conn.inner.lock().await;
    wait_for_result(&mut inner).await;
    if conn.stopped.load(Ordering::Acquire) {
        return audit_failed();
    }
    let port = match session_for(conn, &mut inner, &who, header(&parts, "user-agent")).await {
        Ok(port) => port,
        Err(message) => {
            conn.stopped.store(true, Ordering::Release);
            return error(ErrorKind::InternalServerError, &message);
        }
    };
    let endpoint = &conn.state.endpoint;
    let target = header(&parts, "x-amz-target").to_string();
    let (captured_body, cut) = captured_body(&parts.headers, &body, port.max_query_bytes());
    // Taken by the one request event this request gets, whichever it is.
    let captured_body = std::sync::Mutex::new(captured_body);
    let request_event = |status_code: u16, failed: bool| EventBody::DynamoDbRequest {
        status_code: u32::from(status_code),
        path: parts.uri.path().to_string(),
        raw_query: parts.uri.query().unwrap_or_default().to_string(),
        method: parts.method.to_string(),
        target: target.clone(),
        body: captured_body.lock().ok().and_then(|mut b| b.take()),
        uri: Some(endpoint.uri.clone()),
        failed,
    };
    let started = now_ms();
    // Requests that never reach DynamoDB: a request event (TDY01E) and the failure's result.
    let failed = |kind: ErrorKind, cause: String, client_message: String| {
        let port = port.clone();
        let request = request_event(0, true);
        let cut = cut.clone();
        let stopped = conn.stopped.clone();
        async move {
            let recorded = async {
                let ei = port.emit_captured_at(request, cut, false, started).await?;
                port.emit(EventBody::Result { status: Status::failed(kind.name(), cause), affected_records: 0, query_ei: ei }).await
            };
            if recorded.await.is_err() {
                stopped.store(true, Ordering::Release);
                return error(ErrorKind::InternalServerError, crate::recording::AuditError::client_message_text());
            }
            error(kind, &client_message)
        }
    };
    if !ROUTED_TARGETS.iter().any(|prefix| target.starts_with(prefix)) {
        let message =
            format!("dbtape forwards DynamoDB and DynamoDB Streams operations only; X-Amz-Target {:?} is not one", truncate(&target, 128));
        return failed(ErrorKind::UnknownOperation, message.clone(), message).await;
    }
    let cached = inner.session.as_ref().and_then(|o| o.credentials.clone()).filter(|a| conn.state.roles.fresh(a));
    let fetched = match cached {
        Some(assumed) => Ok(assumed),
        None => conn.state.roles.role(&who.user, &who.role_arn).await.map(Arc::new),
    };
    let assumed = match fetched {
        Ok(assumed) => {
            if let Some(open) = inner.session.as_mut() {
                open.credentials = Some(assumed.clone());
            }
            assumed
        }
        Err(e) => {
            let client = format!("dbtape could not obtain credentials for role {}; the cause is in the audit log", who.role_arn);
            return failed(ErrorKind::AccessDenied, e.to_string(), client).await;
        }
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let upstream_request = match resign(
        endpoint,
        &parts.method,
        path_and_query,
        &parts.headers,
        body,
        payload_sha256,
        &assumed.credentials,
        &conn.state.signing_keys,
    ) {
        Ok(r) => r,
        Err(e) => return failed(ErrorKind::Validation, e.to_string(), format!("dbtape could not sign the request: {e}")).await,
    };
    let response = match inner.line.send(endpoint, upstream_request).await {
        Ok(r) => r,
        Err(e) => {
            let client = format!("dbtape could not reach DynamoDB at {}", endpoint.uri);
            return failed(ErrorKind::ServiceUnavailable, e.to_string(), client).await;
        }
    };
    let status = response.status().as_u16();
    let ei = match port.emit_captured_at(request_event(status, false), cut, false, started).await {
        Ok(ei) => ei,
        Err(e) => {
            tracing::error!(error = %e, target, "a DynamoDB request could not be recorded; the session is stopped");
            conn.stopped.store(true, Ordering::Release);
            return audit_failed();
        }
    };
    let (mut parts, upstream_body) = response.into_parts();
    // The endpoint's connection management is its own: whether the client's connection
    // stays open is between the client and dbtape.
    for name in super::upstream::HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    let gzip = parts.headers.get(http::header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let cap = port.max_query_bytes();
    let stopped = conn.stopped.clone();
    let pending_result = inner.pending_result.clone();
    // The result is recorded as the body ends, right there when the recorder can take it at
    // once (almost always), else by a task the next request waits for.
    let on_end: super::tee::OnEnd = Box::new(move |captured| {
        let (status, affected_records) = summarize(status, &captured, cap);
        let result = EventBody::Result { status, affected_records, query_ei: ei };
        match port.emit_now_or_return(result, now_ms()) {
            Ok(recorded) => {
                if recorded.is_err() {
                    stopped.store(true, Ordering::Release);
                }
            }
            Err(result) => {
                // The tee can be dropped while a runtime shuts down, where nothing can be
                // spawned any more.
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    tracing::error!("a DynamoDB result could not be recorded: the runtime is shutting down");
                    return;
                };
                let task = runtime.spawn(async move {
                    if port.emit(*result).await.is_err() {
                        stopped.store(true, Ordering::Release);
                    }
                });
                *crate::util::sync::lock(&pending_result) = Some(task);
            }
        }
    });
    let tee = match inner.line.drive(Tee::new(upstream_body, cap, gzip, on_end)).await {
        Ok(tee) => tee,
        Err(e) => {
            // The result event (a cut-off response) was written as the tee was dropped.
            tracing::info!(error = %e, "the DynamoDB endpoint's response broke off");
            return error(ErrorKind::ServiceUnavailable, "dbtape: DynamoDB's response broke off");
        }
    };
    if tee.streams() {
        inner.line.detach();
    }
    Response::from_parts(parts, Either::Left(tee))
}

/// The audit port of the session for `who`, opening it (and ending another identity's) as
/// needed; `None` if its recording cannot be opened or started.
/// The session's audit port, or what the client is told when none can be opened.
async fn session_for(conn: &Conn, inner: &mut Inner, who: &Who, user_agent: &str) -> Result<Arc<AuditPort>, String> {
    if let Some(open) = inner.session.as_ref().filter(|o| o.user == who.user && o.role_arn == who.role_arn) {
        return Ok(open.port.clone());
    }
    if let Some(previous) = inner.session.take() {
        end_session(previous).await;
    }
    let identity = SessionIdentity {
        user: who.user.clone(),
        db_user: who.db_user.clone(),
        db_name: String::new(),
        aws_role_arn: who.role_arn.clone(),
        user_agent: user_agent.to_string(),
    };
    let port = match conn.ctx.open_session(identity, conn.info).await {
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
    inner.session = Some(Open { port: port.clone(), user: who.user.clone(), role_arn: who.role_arn.clone(), credentials: None });
    Ok(port)
}

/// The request body as the event's JSON object, or why it is not stored: over the
/// recording's cap (length and SHA-256 kept), or not JSON.
fn captured_body(headers: &http::HeaderMap, body: &[u8], cap: usize) -> (Option<JsonBody>, Vec<Truncation>) {
    let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
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
