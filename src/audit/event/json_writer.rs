//! The recorder's own JSON writer for `Wire`. The recorder serialises every query and result
//! on the proxy's hot path, where serde's generic machinery (a flattened map, a per-byte
//! escape table, a time string formatted per event) cost more than the rest of the audit
//! work. This writer emits exactly what the derived `Serialize` emits, byte for byte; the
//! derive stays as the reference and the tests compare the two on every kind of event.

use std::cell::Cell;

use super::{Fixed, TimeMs, Wire};

impl Wire<'_> {
    pub(super) fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ei\":");
        push_u64(out, self.ei);
        key(out, "event");
        match self.event {
            Some(e) => plain_str(out, e.as_str()),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(uid) = self.uid {
            key(out, "uid");
            plain_str(out, uid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
        }
        key(out, "code");
        match self.code {
            Some(c) => plain_str(out, c.as_str()),
            None => out.extend_from_slice(b"null"),
        }
        key(out, "time");
        match &self.time {
            Some(t) => time(out, t),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(fixed) = &self.fixed {
            fixed.write_to(out);
        }
        opt_str(out, "db_name", self.db_name);
        opt_str(out, "namespace", self.namespace);
        opt_str(out, "server_id", self.server_id);
        opt_str(out, "server_hostname", self.server_hostname);
        opt_str(out, "server_addr", self.server_addr);
        opt_str(out, "server_version", self.server_version);
        opt_str(out, "addr.local", self.addr_local);
        opt_str(out, "addr.remote", self.addr_remote);
        if let Some(success) = self.success {
            key(out, "success");
            out.extend_from_slice(if success { b"true" } else { b"false" });
        }
        opt_str(out, "error", self.error);
        opt_str(out, "message", self.message);
        opt_str(out, "db_query", self.db_query);
        opt_list(out, "db_query_parameters", self.db_query_parameters);
        opt_u64(out, "affected_records", self.affected_records);
        opt_u64(out, "query_ei", self.query_ei);
        if let Some(t) = &self.session_start {
            key(out, "session_start");
            time(out, t);
        }
        if let Some(t) = &self.session_stop {
            key(out, "session_stop");
            time(out, t);
        }
        opt_str(out, "statement_name", self.statement_name);
        opt_str(out, "portal_name", self.portal_name);
        opt_str(out, "query", self.query);
        opt_list(out, "parameters", self.parameters);
        opt_numbers(out, "parameter_formats", self.parameter_formats.map(|f| f.iter().map(|&n| i64::from(n))));
        opt_numbers(out, "parameter_types", self.parameter_types.map(|t| t.iter().map(|&n| i64::from(n))));
        opt_u64(out, "function_oid", self.function_oid.map(u64::from));
        opt_list(out, "function_args", self.function_args);
        if let Some(payload) = &self.payload {
            key(out, "payload");
            plain_str(out, &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, payload.0));
        }
        opt_u64(out, "status_code", self.status_code.map(u64::from));
        opt_str(out, "path", self.path);
        opt_str(out, "raw_query", self.raw_query);
        opt_str(out, "method", self.method);
        opt_str(out, "target", self.target);
        if let Some(body) = self.body {
            key(out, "body");
            // Validated and compacted when captured.
            out.extend_from_slice(body.get().as_bytes());
        }
        opt_u64(out, "lost_events", self.lost_events);
        for (name, t) in [("lost_from", &self.lost_from), ("lost_until", &self.lost_until)] {
            if let Some(t) = t {
                key(out, name);
                time(out, t);
            }
        }
        opt_str(out, "user_agent", self.user_agent);
        opt_str(out, "action", self.action);
        opt_str(out, "session_id", self.session_id);
        opt_u64(out, "postgres_pid", self.postgres_pid.map(u64::from));
        if let Some(reused) = self.upstream_reused {
            key(out, "upstream_reused");
            out.extend_from_slice(if reused { b"true" } else { b"false" });
        }
        if let Some(truncated) = self.truncated {
            key(out, "truncated");
            // Rare (oversized events only): serde_json's own writer.
            let _ = serde_json::to_writer(&mut *out, truncated);
        }
        if self.redacted == Some(true) {
            key(out, "redacted");
            out.extend_from_slice(b"true");
        }
        out.push(b'}');
    }
}

impl Fixed<'_> {
    fn write_to(&self, out: &mut Vec<u8>) {
        opt_str(out, "cluster_name", self.cluster_name);
        opt_str(out, "user", self.user);
        opt_str(out, "aws_role_arn", self.aws_role_arn);
        key(out, "sid");
        string(out, self.sid);
        opt_str(out, "db_service", self.db_service);
        key(out, "db_protocol");
        plain_str(out, self.db_protocol.as_str());
        key(out, "db_uri");
        string(out, self.db_uri);
        opt_str(out, "db_name", self.db_name);
        opt_str(out, "db_user", self.db_user);
        if let Some(labels) = self.db_labels {
            key(out, "db_labels");
            out.push(b'{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, k);
                out.push(b':');
                string(out, v);
            }
            out.push(b'}');
        }
        opt_str(out, "db_aws_region", self.db_aws_region);
        opt_str(out, "db_type", self.db_type);
    }
}

/// `,"name":` — every key follows `ei`, so every key starts with a comma. Key names are
/// literals above and need no escaping.
fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn opt_str(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        key(out, name);
        string(out, v);
    }
}

fn opt_u64(out: &mut Vec<u8>, name: &str, value: Option<u64>) {
    if let Some(v) = value {
        key(out, name);
        push_u64(out, v);
    }
}

fn opt_list(out: &mut Vec<u8>, name: &str, value: Option<&[String]>) {
    if let Some(list) = value {
        key(out, name);
        out.push(b'[');
        for (i, item) in list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, item);
        }
        out.push(b']');
    }
}

fn opt_numbers(out: &mut Vec<u8>, name: &str, value: Option<impl Iterator<Item = i64>>) {
    if let Some(numbers) = value {
        key(out, name);
        out.push(b'[');
        for (i, n) in numbers.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        }
        out.push(b']');
    }
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A string known to need no escaping (codes, uuids, base64).
fn plain_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A JSON string. Most text needs no escaping, which a branch-free scan over 16-byte blocks
/// finds quickly; anything else goes through serde_json, so escapes match it exactly.
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        plain_str(out, s);
    }
}

fn needs_escape(bytes: &[u8]) -> bool {
    let special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        if block.iter().fold(false, |any, &b| any | special(b)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&b| special(b))
}

thread_local! {
    /// The last timestamp formatted on this thread: events arrive many to a millisecond.
    static LAST_TIME: Cell<(i64, [u8; 24])> = const { Cell::new((i64::MIN, [0; 24])) };
}

fn time(out: &mut Vec<u8>, t: &TimeMs) {
    let (ms, text) = LAST_TIME.get();
    let text = if ms == t.0 {
        text
    } else {
        let mut text = [0u8; 24];
        super::write_time(t.0, &mut text);
        LAST_TIME.set((t.0, text));
        text
    };
    out.push(b'"');
    out.extend_from_slice(&text);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::needs_escape;
    use crate::audit::{ConnectionMeta, DatabaseMeta, Protocol, ServerMeta, UserMeta};
    use crate::recording::compact::splice_fixed_fields;

    /// Text that exercises every escaping rule, in the middle of a long block and at the tail.
    const AWKWARD: &str = "SELECT 'a \"quoted\" \\ back' AS x, e'\\t' -- tab\there\nnew line \u{1} \u{1f} \u{7f} é 漢 😀 and a long enough tail to fill blocks";

    fn context(awkward: bool) -> SessionContext {
        let text = |plain: &str| if awkward { format!("{plain} {AWKWARD}") } else { plain.to_string() };
        let mut labels = BTreeMap::new();
        if awkward {
            labels.insert("env".to_string(), "prod".to_string());
            labels.insert("team \"x\"".to_string(), AWKWARD.to_string());
        }
        SessionContext {
            sid: "8f0c5a9e-1a37-4c57-9b52-4a8a0f6c1d2e".into(),
            cluster_name: text("dbtape"),
            user: UserMeta { user: text("alice"), aws_role_arn: if awkward { "arn:aws:iam::1:role/r".into() } else { String::new() } },
            database: DatabaseMeta {
                service: text("orders"),
                protocol: Protocol::Postgres,
                uri: text("postgres://db:5432/orders"),
                name: if awkward { text("orders") } else { String::new() },
                user: text("app"),
                labels,
                aws_region: if awkward { "eu-west-1".into() } else { String::new() },
                db_type: text("rds"),
            },
            server: ServerMeta {
                server_id: text("host-1"),
                hostname: text("host-1"),
                addr: "10.0.0.1:5432".into(),
                version: "0.1.0".into(),
            },
            connection: ConnectionMeta {
                local_addr: "10.0.0.1:5432".into(),
                remote_addr: "10.0.0.9:40000".into(),
                user_agent: text("psql"),
            },
        }
    }

    fn bodies() -> Vec<EventBody> {
        let s = |t: &str| format!("{t} {AWKWARD}");
        let t0 = DateTime::<Utc>::from_timestamp_millis(1_790_000_000_123).unwrap_or_default();
        vec![
            EventBody::SessionStart { status: Status::ok(), postgres_pid: Some(4242), upstream_reused: None },
            EventBody::SessionStart { status: Status::ok(), postgres_pid: Some(7), upstream_reused: Some(true) },
            EventBody::SessionStart { status: Status::ok(), postgres_pid: Some(8), upstream_reused: Some(false) },
            EventBody::SessionStart { status: Status::failed(s("denied"), "access denied"), postgres_pid: None, upstream_reused: None },
            EventBody::SessionEnd { session_start: t0, session_stop: t0 + chrono::Duration::milliseconds(5_001) },
            EventBody::Query { query: s("SELECT 1"), parameters: vec![], db_name: None },
            EventBody::Query { query: s("find"), parameters: vec![s("p1"), String::new()], db_name: Some(s("other")) },
            EventBody::Query { query: s("find"), parameters: vec![], db_name: Some(s("orders")) },
            EventBody::QueryFailed {
                query: s("DROP"),
                parameters: vec![s("x")],
                db_name: None,
                status: Status::failed(s("no"), "refused"),
            },
            EventBody::Result { status: Status::ok(), affected_records: 0, query_ei: None },
            EventBody::Result { status: Status::ok(), affected_records: u64::MAX, query_ei: Some(7) },
            EventBody::Result { status: Status::failed(s("ERROR: boom (SQLSTATE 42P01)"), ""), affected_records: 0, query_ei: Some(0) },
            EventBody::MalformedPacket { payload: vec![0, 1, 2, 255, b'"'] },
            EventBody::MalformedPacket { payload: vec![] },
            EventBody::PostgresParse { statement_name: String::new(), query: s("SELECT $1") },
            EventBody::PostgresBind {
                statement_name: s("st"),
                portal_name: String::new(),
                parameters: vec![s("a"), "b".into(), "NULL".into()],
                parameter_formats: vec![0, 1, -1],
                parameter_types: Some(std::sync::Arc::from([23u32, 4_294_967_295, 0])),
            },
            EventBody::PostgresBind {
                statement_name: String::new(),
                portal_name: String::new(),
                parameters: vec![],
                parameter_formats: vec![],
                parameter_types: None,
            },
            EventBody::PostgresExecute { portal_name: s("p") },
            EventBody::PostgresClose { statement_name: s("st"), portal_name: String::new() },
            EventBody::PostgresFunctionCall { function_oid: u32::MAX, function_args: vec![s("1")] },
            EventBody::DynamoDbRequest {
                status_code: 200,
                path: "/".into(),
                raw_query: s("a=b"),
                method: "POST".into(),
                target: "DynamoDB_20120810.GetItem".into(),
                body: crate::audit::JsonBody::object(
                    br#" { "TableName" : "t\u0001 \" x" ,
  "Key": {"id": {"S": "1"}}}"#,
                ),
                uri: Some("https://dynamodb.eu-west-1.amazonaws.com".into()),
                failed: false,
            },
            EventBody::DynamoDbRequest {
                status_code: 0,
                path: String::new(),
                raw_query: String::new(),
                method: String::new(),
                target: String::new(),
                body: crate::audit::JsonBody::object(b"[1, 2]"),
                uri: None,
                failed: true,
            },
            EventBody::RecordingGap {
                lost_events: 12,
                error: s("disk full"),
                lost_from_ms: Some(1_790_000_000_123),
                lost_until_ms: Some(1_790_000_000_999),
            },
            EventBody::RecordingAccess {
                action: "session.view".into(),
                session_id: "5f2c1f58-3b43-4c2e-8d3f-0d6f1b7a9e21".into(),
                detail: s("from ei 12"),
                success: true,
            },
            EventBody::ConfigReload { success: false, detail: s("dbtape.toml: users[0]: bad") },
        ]
    }

    #[test]
    fn writes_exactly_what_serde_writes() {
        for awkward in [false, true] {
            let ctx = context(awkward);
            let fixed = fixed_fields_json(&ctx);
            for (i, body) in bodies().iter().enumerate() {
                // Odd events carry notes, as oversized ones do.
                let notes = (i % 2 == 1).then(|| crate::audit::EventNotes {
                    truncated: vec![crate::audit::Truncation { field: "query".into(), bytes: 1 << 40, sha256: "ab\"\u{1}".into() }],
                    redacted: i % 4 == 1,
                });
                for time_ms in [0, 1_790_000_000_123, 1_790_000_000_123, -1] {
                    let event = AuditEvent {
                        index: i as u64 * 1_000_003,
                        uid: uuid::Uuid::new_v4(),
                        time_ms,
                        context: &ctx,
                        body,
                        notes: notes.as_ref(),
                    };
                    let reference = serde_json::to_vec(&event).unwrap_or_default();
                    let mut full = Vec::new();
                    event.write_json(&mut full);
                    assert_eq!(String::from_utf8_lossy(&full), String::from_utf8_lossy(&reference), "event {i}, awkward={awkward}");
                    // The compact form made whole again differs only in key order.
                    let mut spliced = Vec::new();
                    if body.overrides_fields_of(&ctx) {
                        event.write_json(&mut spliced);
                    } else {
                        let mut compact = Vec::new();
                        event.write_compact(&mut compact);
                        splice_fixed_fields(&compact, &fixed, &mut spliced);
                    }
                    let a: serde_json::Value = serde_json::from_slice(&spliced).unwrap_or_default();
                    let b: serde_json::Value = serde_json::from_slice(&reference).unwrap_or_default();
                    assert!(a.is_object());
                    assert_eq!(a, b, "event {i}, awkward={awkward}");
                    // As a format-3 recording stores it, without the uid, and made whole by
                    // a reader that derives the uid from the session's seed.
                    if !body.overrides_fields_of(&ctx) {
                        let seed = [i as u8; 16];
                        let header: crate::recording::format::SessionHeader = serde_json::from_value(serde_json::json!({
                            "format": 3, "sid": "s", "created": "", "user": "", "db_service": "", "db_protocol": "", "db_uri": "",
                            "db_name": "", "db_user": "", "remote_addr": "",
                            "fixed": String::from_utf8_lossy(&fixed), "uid_seed": crate::util::hex::hex(&seed),
                        }))
                        .unwrap_or_else(|e| panic!("{e}"));
                        let mut stored = Vec::new();
                        event.write_stored(&mut stored);
                        assert!(!String::from_utf8_lossy(&stored).contains("\"uid\""));
                        let mut whole = Vec::new();
                        header.expand_line(&stored, true, &mut whole);
                        let derived = crate::recording::compact::derived_uid(&seed, event.index);
                        let with_derived = AuditEvent { uid: derived, ..event };
                        let expected: serde_json::Value = serde_json::to_value(with_derived).unwrap_or_default();
                        let got: serde_json::Value = serde_json::from_slice(&whole).unwrap_or_default();
                        assert_eq!(got, expected, "event {i}, awkward={awkward}");
                        assert_eq!(derived.get_version_num(), 4);
                    }
                }
            }
        }
    }

    #[test]
    fn escape_scan_finds_specials_anywhere() {
        for len in 0..40 {
            let clean = "x".repeat(len);
            assert!(!needs_escape(clean.as_bytes()));
            for at in 0..len {
                for special in [b'"', b'\\', b'\n', 0u8, 0x1f] {
                    let mut bytes = clean.clone().into_bytes();
                    bytes[at] = special;
                    assert!(needs_escape(&bytes), "len {len}, at {at}, byte {special}");
                }
            }
        }
        assert!(!needs_escape("é漢😀\u{7f}".as_bytes()));
    }
}
