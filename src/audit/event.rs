//! The typed event model and its flat JSON shape.
//!
//! Teleport serialises its gogoproto events with every metadata block embedded, so all
//! fields are siblings at the top level and empty ones are dropped. We build the same shape
//! from a borrowed view, so serialising an event copies no strings.

mod json_writer;

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use uuid::Uuid;

use super::capture::{EventNotes, Truncation};
use super::codes::{EventCode, EventType, Protocol};
use super::json_body::JsonBody;
use super::meta::{SessionContext, Status};
use super::time::{write_time, TimeMs};

/// One event's own fields; the variant decides `event` and `code`.
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    SessionStart {
        status: Status,
        postgres_pid: Option<u32>,
        /// dbtape's own, for a pooled database only: whether the upstream connection served
        /// an earlier client session (`postgres_pid` names its backend).
        upstream_reused: Option<bool>,
    },
    /// A refused login in a listener's refused-logins log, which holds many: `db.session.start`
    /// TDB00W carrying the would-be session's own user, database and address.
    RefusedStart {
        status: Status,
        user: String,
        db_user: String,
        db_name: String,
        remote_addr: String,
        user_agent: String,
    },
    SessionEnd {
        session_start: DateTime<Utc>,
        session_stop: DateTime<Utc>,
    },
    /// `db_name` overrides the session's database for this one query (MongoDB's `$db`).
    Query {
        query: String,
        parameters: Vec<String>,
        db_name: Option<String>,
    },
    /// Becomes `db.session.query.failed` / `TDB02W`: the proxy refused the query.
    QueryFailed {
        query: String,
        parameters: Vec<String>,
        db_name: Option<String>,
        status: Status,
    },
    /// `query_ei` is dbtape's own addition: the `ei` of the query this result answers, so
    /// pipelined queries stay paired with their results.
    Result {
        status: Status,
        affected_records: u64,
        query_ei: Option<u64>,
    },
    MalformedPacket {
        payload: Vec<u8>,
    },
    PostgresParse {
        statement_name: String,
        query: String,
    },
    /// `parameter_formats` and `parameter_types` are dbtape's additions, what a reader needs
    /// to show binary parameters as values: each parameter's format (0 text, 1 binary, -1
    /// NULL; empty when all are text and none NULL), and its statement's parameter types as
    /// the proxy knew them at the Bind (`None` when it did not).
    PostgresBind {
        statement_name: String,
        portal_name: String,
        parameters: Vec<String>,
        parameter_formats: Vec<i16>,
        parameter_types: Option<std::sync::Arc<[u32]>>,
    },
    PostgresExecute {
        portal_name: String,
    },
    PostgresClose {
        statement_name: String,
        portal_name: String,
    },
    PostgresFunctionCall {
        function_oid: u32,
        function_args: Vec<String>,
    },
    /// `failed` marks a request that never round-tripped (Teleport's status code 0, `TDY01E`).
    DynamoDbRequest {
        status_code: u32,
        path: String,
        raw_query: String,
        method: String,
        target: String,
        body: Option<JsonBody>,
        uri: Option<String>,
        failed: bool,
    },
    /// dbtape's own: in `best_effort` mode, events that could not be written, and when the
    /// first and last of them happened.
    RecordingGap {
        lost_events: u64,
        error: String,
        lost_from_ms: Option<i64>,
        lost_until_ms: Option<i64>,
    },
    /// Teleport's `session.recording.access` (T2012I), written by the review console: a
    /// reviewer looked at recordings. `session_id` names the session looked at (empty for a
    /// list or a search); `action` is what they did and `detail` the filters or range.
    RecordingAccess {
        action: String,
        session_id: String,
        detail: String,
        success: bool,
    },
    /// dbtape's own: the proxy read its configuration again (SIGHUP). `detail` says what
    /// changed, what waits for a restart, or (rejected) every error found.
    ConfigReload {
        success: bool,
        detail: String,
    },
}

impl EventBody {
    /// Whether the event replaces one of the session's fixed fields (MongoDB's per-command
    /// database, DynamoDB's endpoint), so it cannot share the session's pre-serialised ones.
    /// The recorder keeps such events in frames of whole events, and a switch between the
    /// two kinds cuts a frame: engines should set `db_name` only when it differs from the
    /// session's database, or a session that alternates gets many small frames.
    /// As `overrides_session_fields`, but a per-query database equal to the session's own is
    /// no override: MongoDB names `$db` on every command, mostly the session's database.
    pub fn overrides_fields_of(&self, ctx: &SessionContext) -> bool {
        match self {
            // A session without a database of its own (MongoDB's, which each command names)
            // keeps the event's in its compact line (`Wire::db_name`).
            EventBody::Query { db_name, .. } | EventBody::QueryFailed { db_name, .. } => {
                db_name.as_deref().is_some_and(|name| name != ctx.database.name) && !ctx.database.name.is_empty()
            }
            // A DynamoDB session alternates requests (which override) and results: kept in
            // the same kind of frame, they are not cut into a frame each.
            EventBody::Result { .. } => ctx.database.protocol == Protocol::DynamoDb,
            _ => self.overrides_session_fields(),
        }
    }

    pub fn overrides_session_fields(&self) -> bool {
        match self {
            EventBody::Query { db_name, .. } | EventBody::QueryFailed { db_name, .. } => db_name.is_some(),
            EventBody::DynamoDbRequest { .. } | EventBody::RefusedStart { .. } => true,
            _ => false,
        }
    }

    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::SessionStart { .. } | EventBody::RefusedStart { .. } => EventType::SessionStart,
            EventBody::SessionEnd { .. } => EventType::SessionEnd,
            EventBody::Query { .. } => EventType::SessionQuery,
            EventBody::QueryFailed { .. } => EventType::SessionQueryFailed,
            EventBody::Result { .. } => EventType::SessionResult,
            EventBody::MalformedPacket { .. } => EventType::MalformedPacket,
            EventBody::PostgresParse { .. } => EventType::PostgresParse,
            EventBody::PostgresBind { .. } => EventType::PostgresBind,
            EventBody::PostgresExecute { .. } => EventType::PostgresExecute,
            EventBody::PostgresClose { .. } => EventType::PostgresClose,
            EventBody::PostgresFunctionCall { .. } => EventType::PostgresFunctionCall,
            EventBody::DynamoDbRequest { .. } => EventType::DynamoDbRequest,
            EventBody::RecordingGap { .. } => EventType::RecordingGap,
            EventBody::RecordingAccess { .. } => EventType::RecordingAccess,
            EventBody::ConfigReload { .. } => EventType::ConfigReload,
        }
    }

    pub fn code(&self) -> EventCode {
        match self {
            EventBody::SessionStart { status, .. } if status.success => EventCode::SessionStartOk,
            EventBody::SessionStart { .. } | EventBody::RefusedStart { .. } => EventCode::SessionStartDenied,
            EventBody::SessionEnd { .. } => EventCode::SessionEnd,
            EventBody::Query { .. } => EventCode::Query,
            EventBody::QueryFailed { .. } => EventCode::QueryFailed,
            EventBody::Result { .. } => EventCode::Result,
            EventBody::MalformedPacket { .. } => EventCode::MalformedPacket,
            EventBody::PostgresParse { .. } => EventCode::PostgresParse,
            EventBody::PostgresBind { .. } => EventCode::PostgresBind,
            EventBody::PostgresExecute { .. } => EventCode::PostgresExecute,
            EventBody::PostgresClose { .. } => EventCode::PostgresClose,
            EventBody::PostgresFunctionCall { .. } => EventCode::PostgresFunctionCall,
            EventBody::DynamoDbRequest { failed, status_code, .. } => {
                if *failed || *status_code == 0 {
                    EventCode::DynamoDbRequestError
                } else {
                    EventCode::DynamoDbRequestOk
                }
            }
            EventBody::RecordingGap { .. } => EventCode::RecordingGap,
            EventBody::RecordingAccess { .. } => EventCode::RecordingAccess,
            EventBody::ConfigReload { success: true, .. } => EventCode::ConfigReloaded,
            EventBody::ConfigReload { success: false, .. } => EventCode::ConfigRejected,
        }
    }

    /// How `ls` counts this event: (queries, failed queries). A query refused by the proxy
    /// counts in both; an error result fails the query already counted.
    pub fn query_counts(&self) -> (u64, u64) {
        match self {
            EventBody::Query { .. } | EventBody::PostgresExecute { .. } => (1, 0),
            EventBody::QueryFailed { .. } => (1, 1),
            EventBody::Result { status, .. } if !status.success => (0, 1),
            EventBody::DynamoDbRequest { .. } => (1, u64::from(self.code() == EventCode::DynamoDbRequestError)),
            _ => (0, 0),
        }
    }
}

/// A complete event: the body plus what the recorder stamps on it.
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    pub index: u64,
    pub uid: Uuid,
    pub time_ms: i64,
    pub context: &'a SessionContext,
    pub body: &'a EventBody,
    /// What the recorder did to the body before storing it (cut oversized text).
    pub notes: Option<&'a EventNotes>,
}

struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

fn some(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn some_list(list: &[String]) -> Option<&[String]> {
    (!list.is_empty()).then_some(list)
}

/// A session's fixed fields. `ei`, `event`, `time`, `sid`, `db_protocol` and `db_uri` are
/// always present in events; the rest are dropped when empty.
#[derive(Serialize, Clone, Copy)]
struct Fixed<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aws_role_arn: Option<&'a str>,
    sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_service: Option<&'a str>,
    db_protocol: Protocol,
    db_uri: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_labels: Option<&'a BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_aws_region: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_type: Option<&'a str>,
}

impl<'a> Fixed<'a> {
    fn of(ctx: &'a SessionContext) -> Self {
        let db = &ctx.database;
        Fixed {
            cluster_name: some(&ctx.cluster_name),
            user: some(&ctx.user.user),
            aws_role_arn: some(&ctx.user.aws_role_arn),
            sid: &ctx.sid,
            db_service: some(&db.service),
            db_protocol: db.protocol,
            db_uri: &db.uri,
            db_name: some(&db.name),
            db_user: some(&db.user),
            db_labels: (!db.labels.is_empty()).then_some(&db.labels),
            db_aws_region: some(&db.aws_region),
            db_type: some(&db.db_type),
        }
    }
}

/// The flat JSON view. Field order is fixed so recordings compress well and stay diffable.
#[derive(Serialize, Default)]
struct Wire<'a> {
    ei: u64,
    event: Option<EventType>,
    /// `None` only as a format-3 recording stores an event: its uid is derived on reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<Uuid>,
    code: Option<EventCode>,
    time: Option<TimeMs>,
    /// The session's fields; `None` in compact form, where the recording holds them once.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    fixed: Option<Fixed<'a>>,
    /// Compact form only: the event's own database (MongoDB's `$db`) where the session has
    /// none among its fixed fields, so the event needs no frame of whole events.
    #[serde(skip_serializing_if = "Option::is_none")]
    db_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_addr: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_version: Option<&'a str>,
    #[serde(rename = "addr.local", skip_serializing_if = "Option::is_none")]
    addr_local: Option<&'a str>,
    #[serde(rename = "addr.remote", skip_serializing_if = "Option::is_none")]
    addr_remote: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_query_parameters: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    affected_records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_ei: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_start: Option<TimeMs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_stop: Option<TimeMs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    statement_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    portal_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter_formats: Option<&'a [i16]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter_types: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_oid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_args: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Base64<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_events: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_from: Option<TimeMs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_until: Option<TimeMs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_reused: Option<bool>,
    /// dbtape's own: fields stored cut, with the full text's length and SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    truncated: Option<&'a [Truncation]>,
    /// dbtape's own: secrets in the captured text were masked before recording.
    #[serde(skip_serializing_if = "Option::is_none")]
    redacted: Option<bool>,
}

impl<'a> Wire<'a> {
    /// What every `db.session.start` carries: the proxy, the connection and the outcome.
    fn start(&mut self, ctx: &'a SessionContext, status: &'a Status, remote_addr: &'a str, user_agent: &'a str) {
        self.namespace = Some("default");
        self.server_id = Some(&ctx.server.server_id);
        self.server_hostname = some(&ctx.server.hostname);
        self.server_addr = some(&ctx.server.addr);
        self.server_version = some(&ctx.server.version);
        self.addr_local = some(&ctx.connection.local_addr);
        self.addr_remote = some(remote_addr);
        self.user_agent = some(user_agent);
        self.status(status);
    }

    fn status(&mut self, status: &'a Status) {
        self.success = Some(status.success);
        self.error = some(&status.error);
        self.message = some(&status.message);
    }
}

impl Serialize for AuditEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.wire().serialize(s)
    }
}

/// The session's fixed fields, serialised once per session and spliced into each event
/// (`"cluster_name":…,"db_type":…`, without braces).
pub fn fixed_fields_json(ctx: &SessionContext) -> Vec<u8> {
    let mut out = serde_json::to_vec(&Fixed::of(ctx)).unwrap_or_default();
    // Strip the braces: the fragment is spliced into each event's object.
    if out.len() >= 2 {
        out.remove(0);
        out.pop();
    }
    out
}

impl AuditEvent<'_> {
    /// Appends the event's whole JSON to `out`: what the `Serialize` impl gives, byte for byte.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.wire().write_to(out);
    }

    /// Appends the event's JSON without the session's fixed fields, for recordings that store
    /// those once (`FLAG_COMPACT` frames); `splice_fixed_fields` makes it whole again. Only for
    /// events that override none of them.
    pub fn write_compact(&self, out: &mut Vec<u8>) {
        self.compact_wire().write_to(out);
    }

    fn compact_wire(&self) -> Wire<'_> {
        let mut w = self.wire();
        // Only a session without a database of its own stores events compact with one.
        w.db_name = w.fixed.and_then(|f| f.db_name).filter(|_| self.context.database.name.is_empty());
        w.fixed = None;
        w
    }

    /// As `write_compact`, without the uid either: how a format-3 recording stores an event,
    /// its uid derived on reading (`derived_uid`).
    pub fn write_stored(&self, out: &mut Vec<u8>) {
        let mut w = self.compact_wire();
        w.uid = None;
        w.write_to(out);
    }

    fn wire(&self) -> Wire<'_> {
        let ctx = self.context;
        let mut fixed = Fixed::of(ctx);
        let mut w = Wire {
            ei: self.index,
            event: Some(self.body.event_type()),
            uid: Some(self.uid),
            code: Some(self.body.code()),
            time: Some(TimeMs(self.time_ms)),
            ..Wire::default()
        };
        match self.body {
            EventBody::SessionStart { status, postgres_pid, upstream_reused } => {
                w.start(ctx, status, &ctx.connection.remote_addr, &ctx.connection.user_agent);
                w.postgres_pid = *postgres_pid;
                w.upstream_reused = *upstream_reused;
            }
            EventBody::RefusedStart { status, user, db_user, db_name, remote_addr, user_agent } => {
                w.start(ctx, status, remote_addr, user_agent);
                fixed.user = some(user);
                fixed.db_user = some(db_user);
                fixed.db_name = some(db_name);
            }
            EventBody::SessionEnd { session_start, session_stop } => {
                w.addr_local = some(&ctx.connection.local_addr);
                w.addr_remote = some(&ctx.connection.remote_addr);
                w.session_start = Some(TimeMs(session_start.timestamp_millis()));
                w.session_stop = Some(TimeMs(session_stop.timestamp_millis()));
            }
            EventBody::Query { query, parameters, db_name } => {
                w.db_query = Some(query);
                w.db_query_parameters = some_list(parameters);
                w.success = Some(true);
                if let Some(name) = db_name {
                    fixed.db_name = some(name);
                }
            }
            EventBody::QueryFailed { query, parameters, db_name, status } => {
                w.db_query = Some(query);
                w.db_query_parameters = some_list(parameters);
                w.status(status);
                if let Some(name) = db_name {
                    fixed.db_name = some(name);
                }
            }
            EventBody::Result { status, affected_records, query_ei } => {
                w.status(status);
                w.affected_records = (*affected_records != 0).then_some(*affected_records);
                w.query_ei = *query_ei;
            }
            EventBody::MalformedPacket { payload } => {
                w.payload = (!payload.is_empty()).then_some(Base64(payload));
            }
            EventBody::PostgresParse { statement_name, query } => {
                w.statement_name = Some(statement_name);
                w.query = Some(query);
            }
            EventBody::PostgresBind { statement_name, portal_name, parameters, parameter_formats, parameter_types } => {
                w.statement_name = Some(statement_name);
                w.portal_name = Some(portal_name);
                w.parameters = Some(parameters);
                w.parameter_formats = (!parameter_formats.is_empty()).then_some(parameter_formats.as_slice());
                w.parameter_types = parameter_types.as_deref();
            }
            EventBody::PostgresExecute { portal_name } => w.portal_name = Some(portal_name),
            EventBody::PostgresClose { statement_name, portal_name } => {
                w.statement_name = Some(statement_name);
                w.portal_name = Some(portal_name);
            }
            EventBody::PostgresFunctionCall { function_oid, function_args } => {
                w.function_oid = Some(*function_oid);
                w.function_args = some_list(function_args);
            }
            EventBody::DynamoDbRequest { status_code, path, raw_query, method, target, body, uri, .. } => {
                fixed.db_labels = None;
                fixed.db_aws_region = None;
                fixed.db_type = None;
                if let Some(uri) = uri {
                    fixed.db_uri = uri;
                }
                w.status_code = Some(*status_code);
                w.path = some(path);
                w.raw_query = some(raw_query);
                w.method = some(method);
                w.target = some(target);
                w.body = body.as_ref().map(JsonBody::raw);
            }
            EventBody::RecordingGap { lost_events, error, lost_from_ms, lost_until_ms } => {
                w.lost_events = Some(*lost_events);
                w.lost_from = lost_from_ms.map(TimeMs);
                w.lost_until = lost_until_ms.map(TimeMs);
                w.success = Some(false);
                w.error = some(error);
            }
            EventBody::RecordingAccess { action, session_id, detail, success } => {
                w.addr_remote = some(&ctx.connection.remote_addr);
                w.success = Some(*success);
                w.action = some(action);
                w.session_id = some(session_id);
                w.message = some(detail);
            }
            EventBody::ConfigReload { success, detail } => {
                w.success = Some(*success);
                w.message = some(detail);
            }
        }
        w.fixed = Some(fixed);
        if let Some(notes) = self.notes {
            w.truncated = (!notes.truncated.is_empty()).then_some(&notes.truncated[..]);
            w.redacted = notes.redacted.then_some(true);
        }
        w
    }
}
