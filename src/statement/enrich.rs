//! Adds what dbtape knows about a statement to its event as the event is read: the pgaudit
//! class, the tables or collections it touched and, for PostgreSQL, the fingerprint of its
//! shape. These fields are derived from the signed statement each time an event is
//! exported, never stored. So a session's path pays nothing for them (libpg_query costs
//! about 6 µs a statement, 12–29% of a select-only pgbench transaction's proxy CPU), and they cannot
//! disagree with what was recorded: a reader recomputes them from the statement itself.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::classify::{classify_dynamodb, classify_mongodb, classify_postgres, Classified};
use crate::recording::events::peek_event_type;

/// Statements remembered with their derived fields: drivers repeat the same prepared text,
/// and a SIEM export of a busy day should not parse it a million times.
const CACHE_ENTRIES: usize = 16 * 1024;
/// Longer statements are classified every time rather than held in the cache.
const CACHE_MAX_STATEMENT: usize = 4 * 1024;

#[derive(Default)]
pub struct Enricher {
    /// `export --raw`: every line goes out exactly as recorded.
    raw: bool,
    /// Per protocol, looked up by the statement itself: a hit allocates nothing.
    postgres: HashMap<Box<str>, Arc<[u8]>>,
    /// PostgreSQL statements by their shape (`shape::postgres_shape`), in a map of their own
    /// so that no statement's text can stand for another's shape.
    postgres_shapes: HashMap<Box<str>, Arc<[u8]>>,
    mongodb: HashMap<Box<str>, Arc<[u8]>>,
}

#[derive(Deserialize)]
struct Statement<'a> {
    #[serde(borrow)]
    db_protocol: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    db_query: Option<std::borrow::Cow<'a, str>>,
    /// Extended-protocol Parse carries its statement here.
    #[serde(borrow)]
    query: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    target: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    body: Option<&'a serde_json::value::RawValue>,
}

impl Enricher {
    pub fn new() -> Self {
        Enricher::default()
    }

    /// One that writes every line as recorded (`raw`), or with the derived fields.
    pub fn for_export(raw: bool) -> Self {
        Enricher { raw, ..Enricher::default() }
    }

    /// Writes one event line and its newline, with the derived fields before the closing
    /// brace where the event holds a statement.
    pub fn write_line(&mut self, line: &[u8], out: &mut impl Write) -> std::io::Result<()> {
        let suffix = if self.raw { None } else { self.suffix(line) };
        match suffix {
            Some(suffix) if line.last() == Some(&b'}') => {
                out.write_all(&line[..line.len() - 1])?;
                out.write_all(&suffix)?;
                out.write_all(b"}\n")
            }
            _ => {
                out.write_all(line)?;
                out.write_all(b"\n")
            }
        }
    }

    /// The line as `write_line` would write it, without the newline.
    pub fn enriched(&mut self, line: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(line.len() + 96);
        // Writing into a Vec cannot fail.
        let _ = self.write_line(line, &mut out);
        out.pop();
        out
    }

    /// Writes every line of a frame's payload (already JSON Lines).
    pub fn write_frame(&mut self, data: &[u8], out: &mut impl Write) -> std::io::Result<()> {
        if self.raw {
            return out.write_all(data);
        }
        for line in crate::recording::reader::event_lines(data) {
            self.write_line(line, out)?;
        }
        Ok(())
    }

    fn suffix(&mut self, line: &[u8]) -> Option<Arc<[u8]>> {
        let kind = peek_event_type(line)?;
        match kind.as_ref() {
            "db.session.query" | "db.session.query.failed" | "db.session.postgres.statements.parse" => {}
            "db.session.postgres.statements.bind" => {
                let event: Value = serde_json::from_slice(line).ok()?;
                let shown = super::parameters::of_bind_event(&event)?;
                let mut out = b",\"parameter_values\":".to_vec();
                out.extend_from_slice(serde_json::json!(shown).to_string().as_bytes());
                return Some(out.into());
            }
            "db.session.dynamodb.request" => {
                // Only the body becomes a tree: the rest of the line is not looked at.
                let request: Request = serde_json::from_slice(line).ok()?;
                let body = match request.body {
                    Some(raw) => serde_json::from_str(raw.get()).ok()?,
                    None => Value::Null,
                };
                let classified = classify_dynamodb(request.target.as_deref()?, &body);
                return Some(render(&classified).into());
            }
            _ => return None,
        }
        let statement: Statement = serde_json::from_slice(line).ok()?;
        let text = statement.db_query.or(statement.query)?;
        let (cache, classify): (_, fn(&str) -> Classified) = match statement.db_protocol.as_deref() {
            Some("postgres") => (&mut self.postgres, classify_postgres),
            Some("mongodb") => (&mut self.mongodb, classify_mongodb),
            _ => return None,
        };
        if let Some(hit) = cache.get(text.as_ref()) {
            return Some(hit.clone());
        }
        let shape = if statement.db_protocol.as_deref() == Some("postgres") { super::shape::postgres_shape(&text) } else { None };
        let (cache, key, by_shape) = match shape {
            Some(shape) => match self.postgres_shapes.get(shape.as_str()) {
                Some(hit) => return Some(hit.clone()),
                None => (&mut self.postgres_shapes, shape.into_boxed_str(), true),
            },
            None => (cache, Box::from(text.as_ref()), false),
        };
        let classified = classify(&text);
        let suffix: Arc<[u8]> = render(&classified).into();
        // A statement the parser refused is classified by its first word: never a shape's.
        if key.len() <= CACHE_MAX_STATEMENT && !(by_shape && classified.unparsed) {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, suffix.clone());
        }
        Some(suffix)
    }
}

/// `,"db_statement_class":"READ",…`: the fields to splice in before an event's closing brace.
fn render(classified: &Classified) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    let Some(class) = classified.class() else { return out };
    out.extend_from_slice(b",\"db_statement_class\":\"");
    out.extend_from_slice(class.as_str().as_bytes());
    out.push(b'"');
    if classified.classes.len() > 1 {
        let names: Vec<&str> = classified.classes.iter().map(|c| c.as_str()).collect();
        out.extend_from_slice(b",\"db_statement_classes\":");
        out.extend_from_slice(serde_json::json!(names).to_string().as_bytes());
    }
    if !classified.tables.is_empty() {
        out.extend_from_slice(b",\"db_tables\":");
        out.extend_from_slice(serde_json::json!(classified.tables).to_string().as_bytes());
    }
    if !classified.fingerprint.is_empty() {
        out.extend_from_slice(b",\"db_query_fingerprint\":\"");
        out.extend_from_slice(classified.fingerprint.as_bytes());
        out.push(b'"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrich(line: &str) -> Value {
        let out = Enricher::new().enriched(line.as_bytes());
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn statements_gain_their_class_tables_and_fingerprint() {
        let event = enrich(
            r#"{"ei":3,"event":"db.session.query","db_protocol":"postgres","db_query":"SELECT 1 FROM accounts; DROP TABLE Payments"}"#,
        );
        assert_eq!(event["db_statement_class"], "DDL");
        assert_eq!(event["db_statement_classes"], serde_json::json!(["DDL", "READ"]));
        assert_eq!(event["db_tables"], serde_json::json!(["accounts", "payments"]));
        assert_eq!(event["db_query_fingerprint"].as_str().unwrap().len(), 16);
        assert_eq!(event["ei"], 3, "the recorded fields stay as they were");

        let parse = enrich(
            r#"{"ei":4,"event":"db.session.postgres.statements.parse","db_protocol":"postgres","statement_name":"","query":"UPDATE orders SET x = $1"}"#,
        );
        assert_eq!((parse["db_statement_class"].as_str(), parse["db_tables"][0].as_str()), (Some("WRITE"), Some("orders")));

        let mongo = enrich(
            r#"{"ei":5,"event":"db.session.query","db_protocol":"mongodb","db_query":"OpMsg(Body={\"find\": \"books\"}, Documents=[], Flags=)"}"#,
        );
        assert_eq!((mongo["db_statement_class"].as_str(), mongo["db_tables"][0].as_str()), (Some("READ"), Some("books")));
        assert!(mongo.get("db_query_fingerprint").is_none());

        let dynamo = enrich(
            r#"{"ei":6,"event":"db.session.dynamodb.request","db_protocol":"dynamodb","target":"DynamoDB_20120810.DeleteTable","body":{"TableName":"t"}}"#,
        );
        assert_eq!(dynamo["db_statement_class"], "DDL");

        let result = r#"{"ei":7,"event":"db.session.result","db_protocol":"postgres","success":true}"#;
        assert_eq!(Enricher::new().enriched(result.as_bytes()), result.as_bytes(), "other events go out untouched");
    }

    #[test]
    fn a_cached_statement_gives_the_same_fields() {
        let mut enricher = Enricher::new();
        let line = br#"{"ei":1,"event":"db.session.query","db_protocol":"postgres","db_query":"SELECT * FROM t WHERE id = $1"}"#;
        let first = enricher.enriched(line);
        assert_eq!(enricher.postgres.len(), 1);
        assert_eq!(enricher.enriched(line), first);
    }
}
