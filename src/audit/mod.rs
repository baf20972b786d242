//! Audit events: the typed catalogue, its JSON wire shape, and the per-session port that
//! protocols hand events to.

mod capture;
mod codes;
mod event;
mod port;
mod record;

pub use capture::{EventNotes, Truncation};
pub use codes::{EventCode, EventType, Protocol};
pub use event::{
    derived_uid, fixed_fields_json, format_time, splice_fixed_fields, write_uid_field, AuditEvent, ConnectionMeta, DatabaseMeta, EventBody,
    JsonBody, ServerMeta, SessionContext, Status, UserMeta,
};
pub use port::{now_ms, AuditError, AuditPort};

// Fuzz entry point: panicking on a broken invariant is how it reports one.
#[allow(clippy::panic)]
/// For fuzz targets: caps each event's text as the audit port does, writes it both whole
/// and compact, and checks that each form is one JSON object that reads back.
#[doc(hidden)]
pub fn fuzz_check_events(events: Vec<EventBody>, max_query_bytes: usize) {
    let ctx = SessionContext {
        sid: "00000000-0000-4000-8000-000000000000".into(),
        cluster_name: "fuzz".into(),
        user: UserMeta { user: "fuzz".into(), aws_role_arn: String::new() },
        database: DatabaseMeta {
            service: "pg".into(),
            protocol: Protocol::Postgres,
            uri: "db:5432".into(),
            name: "app".into(),
            user: "app".into(),
            labels: Default::default(),
            aws_region: String::new(),
            db_type: "self-hosted".into(),
        },
        server: ServerMeta::default(),
        connection: ConnectionMeta::default(),
    };
    let fixed = fixed_fields_json(&ctx);
    for (i, mut body) in events.into_iter().enumerate() {
        let truncated = body.cap_captured_text(max_query_bytes);
        assert!(body.captured_bytes() <= max_query_bytes, "capping left {} bytes", body.captured_bytes());
        let notes = EventNotes { truncated, redacted: i % 2 == 0 };
        let event = AuditEvent { index: i as u64, uid: uuid::Uuid::nil(), time_ms: 0, context: &ctx, body: &body, notes: Some(&notes) };
        let mut whole = Vec::new();
        event.write_json(&mut whole);
        let parsed: serde_json::Value =
            serde_json::from_slice(&whole).unwrap_or_else(|e| panic!("invalid event JSON ({e}): {}", String::from_utf8_lossy(&whole)));
        assert!(parsed.is_object());
        let mut compact = Vec::new();
        event.write_compact(&mut compact);
        let mut spliced = Vec::new();
        splice_fixed_fields(&compact, &fixed, &mut spliced);
        let again: serde_json::Value = serde_json::from_slice(&spliced).unwrap_or_else(|e| panic!("invalid spliced JSON ({e})"));
        assert_eq!(parsed, again);
    }
}
pub use record::RecordedEvent;
