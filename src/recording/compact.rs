//! Compact events (format 3): stored without the session's fixed fields and without a uid,
//! which readers splice back in and derive.

use uuid::Uuid;

/// A recorded event's uid where the recording derives uids instead of storing them (format
/// 3): UUIDv4-shaped, from SHA-256 over the session's random uid seed and the event's `ei`.
/// It is as unique as a random v4 (122 bits of a hash of a pair that never repeats), and it
/// costs the recording nothing: a stored random uid was 16 incompressible bytes per event,
/// half of what a recording held per event.
pub fn derived_uid(seed: &[u8; 16], ei: u64) -> Uuid {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"dbtape-uid\0");
    hasher.update(seed);
    hasher.update(ei.to_le_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Appends `,"uid":"…"` for `uid`.
pub fn write_uid_field(uid: Uuid, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"uid\":\"");
    out.extend_from_slice(uid.hyphenated().encode_lower(&mut Uuid::encode_buffer()).as_bytes());
    out.push(b'"');
}

/// Appends `compact` (one event from `AuditEvent::write_compact`) to `out` with `fixed` (from
/// `fixed_fields_json`) spliced in before its closing brace: the whole event, equal as a JSON
/// object to the `Serialize` output, with only the key order differing.
pub fn splice_fixed_fields(compact: &[u8], fixed: &[u8], out: &mut Vec<u8>) {
    match compact.split_last() {
        Some((b'}', body)) if !fixed.is_empty() => {
            out.extend_from_slice(body);
            out.push(b',');
            out.extend_from_slice(fixed);
            out.push(b'}');
        }
        _ => out.extend_from_slice(compact),
    }
}

#[cfg(feature = "fuzzing")]
// Fuzz entry point: panicking on a broken invariant is how it reports one.
#[allow(clippy::panic)]
/// For fuzz targets: caps each event's text as the audit port does, writes it both whole
/// and compact, and checks that each form is one JSON object that reads back.
#[doc(hidden)]
pub fn fuzz_check_events(events: Vec<crate::audit::EventBody>, max_query_bytes: usize) {
    use crate::audit::{
        fixed_fields_json, AuditEvent, ConnectionMeta, DatabaseMeta, EventNotes, Protocol, ServerMeta, SessionContext, UserMeta,
    };
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
