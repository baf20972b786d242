//! Bounds on what one event may carry from the wire.
//!
//! A client chooses how large its queries and parameters are. Stored whole, a 48 MiB Bind
//! value or an 11 MiB query of control bytes (which JSON escapes to six bytes each) would
//! make a frame larger than any reader accepts, and so hide everything the session did
//! after it. Captured text beyond the cap is cut instead; the event keeps the length and
//! SHA-256 of what was sent, so the stored prefix is still checkable evidence.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::event::EventBody;

/// One field stored cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Truncation {
    /// The event field, with the parameter's index for lists: `db_query`, `parameters[2]`.
    pub field: String,
    /// Length in bytes of the full text as captured.
    pub bytes: u64,
    /// SHA-256 (hex) of the full text as captured.
    pub sha256: String,
}

impl Truncation {
    /// A field not stored at all because `whole` was over the cap.
    pub fn omitted(field: &str, whole: &[u8]) -> Self {
        Truncation { field: field.to_string(), bytes: whole.len() as u64, sha256: crate::util::hex::hex(&Sha256::digest(whole)) }
    }
}

/// What the recorder did to an event before storing it; empty for almost every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventNotes {
    pub truncated: Vec<Truncation>,
    /// The protocol engine masked secrets in the captured text before handing it over.
    pub redacted: bool,
}

impl EventNotes {
    pub fn is_empty(&self) -> bool {
        self.truncated.is_empty() && !self.redacted
    }
}

impl EventBody {
    /// Calls `visit` on every text field captured from the wire, in the order they are
    /// written, with the field's name and its index within a list.
    fn visit_captured_text(&mut self, mut visit: impl FnMut(&'static str, Option<usize>, &mut String)) {
        let list = |name: &'static str, items: &mut Vec<String>, visit: &mut dyn FnMut(&'static str, Option<usize>, &mut String)| {
            for (i, item) in items.iter_mut().enumerate() {
                visit(name, Some(i), item);
            }
        };
        match self {
            EventBody::SessionStart { status, .. } | EventBody::Result { status, .. } => {
                visit("error", None, &mut status.error);
                visit("message", None, &mut status.message);
            }
            EventBody::RefusedStart { status, user, db_user, db_name, user_agent, .. } => {
                visit("error", None, &mut status.error);
                visit("message", None, &mut status.message);
                visit("user", None, user);
                visit("db_user", None, db_user);
                visit("db_name", None, db_name);
                visit("user_agent", None, user_agent);
            }
            EventBody::Query { query, parameters, .. } => {
                visit("db_query", None, query);
                list("db_query_parameters", parameters, &mut visit);
            }
            EventBody::QueryFailed { query, parameters, status, .. } => {
                visit("error", None, &mut status.error);
                visit("message", None, &mut status.message);
                visit("db_query", None, query);
                list("db_query_parameters", parameters, &mut visit);
            }
            EventBody::PostgresParse { statement_name, query } => {
                visit("statement_name", None, statement_name);
                visit("query", None, query);
            }
            EventBody::PostgresBind { statement_name, portal_name, parameters, .. } => {
                visit("statement_name", None, statement_name);
                visit("portal_name", None, portal_name);
                list("parameters", parameters, &mut visit);
            }
            EventBody::PostgresExecute { portal_name } => visit("portal_name", None, portal_name),
            EventBody::PostgresClose { statement_name, portal_name } => {
                visit("statement_name", None, statement_name);
                visit("portal_name", None, portal_name);
            }
            EventBody::PostgresFunctionCall { function_args, .. } => list("function_args", function_args, &mut visit),
            EventBody::DynamoDbRequest { path, raw_query, target, .. } => {
                visit("path", None, path);
                visit("raw_query", None, raw_query);
                visit("target", None, target);
            }
            EventBody::RecordingGap { error, .. } => visit("error", None, error),
            EventBody::RecordingAccess { detail, .. } | EventBody::ConfigReload { detail, .. } => visit("message", None, detail),
            EventBody::SessionEnd { .. } | EventBody::MalformedPacket { .. } => {}
        }
    }

    /// Bytes of captured text the event carries; cheap enough for every event.
    pub fn captured_bytes(&self) -> usize {
        let list = |items: &[String]| items.iter().map(String::len).sum::<usize>();
        match self {
            EventBody::SessionStart { status, .. } | EventBody::Result { status, .. } => status.error.len() + status.message.len(),
            EventBody::RefusedStart { status, user, db_user, db_name, user_agent, .. } => {
                status.error.len() + status.message.len() + user.len() + db_user.len() + db_name.len() + user_agent.len()
            }
            EventBody::Query { query, parameters, .. } => query.len() + list(parameters),
            EventBody::QueryFailed { query, parameters, status, .. } => {
                query.len() + list(parameters) + status.error.len() + status.message.len()
            }
            EventBody::PostgresParse { statement_name, query } => statement_name.len() + query.len(),
            EventBody::PostgresBind { statement_name, portal_name, parameters, .. } => {
                statement_name.len() + portal_name.len() + list(parameters)
            }
            EventBody::PostgresExecute { portal_name } => portal_name.len(),
            EventBody::PostgresClose { statement_name, portal_name } => statement_name.len() + portal_name.len(),
            EventBody::PostgresFunctionCall { function_args, .. } => list(function_args),
            EventBody::DynamoDbRequest { path, raw_query, target, .. } => path.len() + raw_query.len() + target.len(),
            EventBody::RecordingGap { error, .. } => error.len(),
            EventBody::RecordingAccess { detail, .. } | EventBody::ConfigReload { detail, .. } => detail.len(),
            EventBody::SessionEnd { .. } | EventBody::MalformedPacket { .. } => 0,
        }
    }

    /// Cuts the event's captured text to `max_bytes` in all, field by field in order, and
    /// says what was cut. Events within the cap are left alone.
    pub fn cap_captured_text(&mut self, max_bytes: usize) -> Vec<Truncation> {
        if self.captured_bytes() <= max_bytes {
            return Vec::new();
        }
        let mut budget = max_bytes;
        let mut cuts = Vec::new();
        self.visit_captured_text(|name, index, text| {
            if text.len() <= budget {
                budget -= text.len();
                return;
            }
            let digest = Sha256::digest(text.as_bytes());
            let bytes = text.len() as u64;
            let keep = floor_char_boundary(text, budget);
            text.truncate(keep);
            budget -= keep;
            let field = match index {
                Some(i) => format!("{name}[{i}]"),
                None => name.to_string(),
            };
            cuts.push(Truncation { field, bytes, sha256: crate::util::hex::hex(&digest) });
        });
        cuts
    }
}

/// The largest index at most `at` that starts a character.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_fields_in_order_within_one_budget_and_hashes_the_full_text() {
        let mut body = EventBody::PostgresBind {
            statement_name: "s".into(),
            portal_name: String::new(),
            parameters: vec!["ab".into(), "é".repeat(10), "tail".into()],
            parameter_formats: vec![],
            parameter_types: None,
        };
        let full = "é".repeat(10);
        let cuts = body.cap_captured_text(8);
        let EventBody::PostgresBind { parameters, .. } = &body else { panic!() };
        // 1 byte of budget for the name, 2 for "ab", 5 left: "éé" (4 bytes, on a character
        // boundary), then the last byte.
        assert_eq!(parameters, &["ab".to_string(), "éé".to_string(), "t".to_string()]);
        assert_eq!(cuts.len(), 2);
        assert_eq!(cuts[0].field, "parameters[1]");
        assert_eq!(cuts[0].bytes, 20);
        assert_eq!(cuts[0].sha256, crate::util::hex::hex(&Sha256::digest(full.as_bytes())));
        assert_eq!(cuts[1].field, "parameters[2]");
        assert!(body.captured_bytes() <= 8);
    }

    #[test]
    fn small_events_are_untouched() {
        let mut body = EventBody::Query { query: "select 1".into(), parameters: vec![], db_name: None };
        assert!(body.cap_captured_text(8).is_empty());
        assert!(matches!(body, EventBody::Query { ref query, .. } if query == "select 1"));
    }
}
