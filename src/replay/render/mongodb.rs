//! MongoDB sessions, rendered as a person would have typed them in mongosh
//! (`lib> db.books.insertOne({ title: "Dune" })`), each followed by a short summary of its
//! reply. The command is read back from the recorded Teleport-shaped `db_query`, whose
//! documents are JSON; driver chatter (hello, endSessions) is left out.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{go_quote, render_gap, screen_time, terminal_safe, write_prompted, Renderer};
use crate::audit::RecordedEvent;

/// What a command's reply summary says, by the command's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Insert,
    Update,
    Delete,
    Documents,
    Other,
    /// Not shown, and neither is its reply.
    Hidden,
}

#[derive(Default)]
pub struct MongoRenderer {
    pending: HashMap<u64, Kind>,
}

/// Body, document sequences and flags of an `OpMsg(...)` text; `None` when it is not one
/// (a legacy OP_QUERY, or text cut by the capture limit).
pub fn parse_op_msg(text: &str) -> Option<(Map<String, Value>, Vec<Value>)> {
    let rest = text.strip_prefix("OpMsg(Body=")?;
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
    let Some(Ok(Value::Object(body))) = stream.next() else { return None };
    let mut rest = rest[stream.byte_offset()..].strip_prefix(", Documents=[")?;
    let mut docs = Vec::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.starts_with(']') {
            break;
        }
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        docs.push(stream.next()?.ok()?);
        rest = &rest[stream.byte_offset()..];
    }
    Some((body, docs))
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A value in mongosh's syntax: `ObjectId("…")`, `ISODate("…")`, numbers bare.
pub fn shell(value: &Value) -> String {
    match value {
        Value::Object(map) if map.len() == 1 || map.contains_key("$code") => {
            let (key, inner) = map.iter().next().map(|(k, v)| (k.as_str(), v)).unwrap_or(("", &Value::Null));
            let text = inner.as_str().unwrap_or_default();
            match key {
                "$numberInt" | "$numberDouble" => text.to_string(),
                "$numberLong" => format!("Long({})", quoted(text)),
                "$numberDecimal" => format!("Decimal128({})", quoted(text)),
                "$oid" => format!("ObjectId({})", quoted(text)),
                "$date" => {
                    let ms = inner.get("$numberLong").and_then(Value::as_str).and_then(|m| m.parse::<i64>().ok()).unwrap_or(0);
                    let date = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
                        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                        .unwrap_or_default();
                    format!("ISODate({})", quoted(&date))
                }
                "$binary" => {
                    let b64 = inner.get("base64").and_then(Value::as_str).unwrap_or_default();
                    let sub = inner.get("subType").and_then(Value::as_str).unwrap_or("00");
                    format!("Binary.createFromBase64({}, {})", quoted(b64), u8::from_str_radix(sub, 16).unwrap_or(0))
                }
                "$timestamp" => {
                    format!("Timestamp({{ t: {}, i: {} }})", inner.get("t").unwrap_or(&Value::Null), inner.get("i").unwrap_or(&Value::Null))
                }
                "$regularExpression" => format!(
                    "/{}/{}",
                    inner.get("pattern").and_then(Value::as_str).unwrap_or_default(),
                    inner.get("options").and_then(Value::as_str).unwrap_or_default()
                ),
                "$minKey" => "MinKey()".into(),
                "$maxKey" => "MaxKey()".into(),
                "$undefined" => "undefined".into(),
                "$symbol" => quoted(text),
                "$code" => format!("Code({})", quoted(map.get("$code").and_then(Value::as_str).unwrap_or_default())),
                _ => object(map),
            }
        }
        Value::Object(map) => object(map),
        Value::Array(items) if items.is_empty() => "[]".into(),
        Value::Array(items) => format!("[ {} ]", items.iter().map(shell).collect::<Vec<_>>().join(", ")),
        Value::String(s) => quoted(s),
        other => other.to_string(),
    }
}

fn object(map: &Map<String, Value>) -> String {
    if map.is_empty() {
        return "{}".into();
    }
    let fields: Vec<String> =
        map.iter().map(|(k, v)| format!("{}: {}", if is_identifier(k) { k.clone() } else { quoted(k) }, shell(v))).collect();
    format!("{{ {} }}", fields.join(", "))
}

/// Fields drivers add to every command, which a person does not type.
const DRIVER_FIELDS: &[&str] = &[
    "$db",
    "lsid",
    "txnNumber",
    "$clusterTime",
    "$readPreference",
    "autocommit",
    "startTransaction",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "writeConcern",
    "readConcern",
    "ordered",
    "cursor",
    "comment",
    "maxTimeMS",
];

fn field<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key)
}

fn int(value: Option<&Value>) -> Option<i64> {
    let v = value?;
    v.as_i64().or_else(|| {
        v.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).and_then(|s| s.parse::<f64>().ok()).map(|f| f as i64)
    })
}

/// The mongosh line for a command, and what its reply will count.
fn command_line(body: &Map<String, Value>, docs: &[Value]) -> (String, Kind) {
    let Some((name, target)) = body.iter().next() else { return (String::new(), Kind::Hidden) };
    let coll = target.as_str().map(|c| if is_identifier(c) { format!("db.{c}") } else { format!("db.getCollection({})", quoted(c)) });
    let list = |key: &str| -> Vec<Value> {
        let mut items = field(body, key).and_then(Value::as_array).cloned().unwrap_or_default();
        items.extend(docs.iter().cloned());
        items
    };
    let arg = |key: &str| field(body, key).map(shell).unwrap_or_else(|| "{}".into());
    let chained = |mut line: String, key: &str, method: &str| {
        if let Some(v) = field(body, key) {
            line.push_str(&format!(".{method}({})", shell(v)));
        }
        line
    };
    match (name.as_str(), coll) {
        ("hello" | "isMaster" | "ismaster" | "endSessions" | "saslStart" | "saslContinue", _) => (String::new(), Kind::Hidden),
        ("getMore", _) => ("it".into(), Kind::Documents),
        ("insert", Some(c)) => {
            let items = list("documents");
            match items.as_slice() {
                [one] => (format!("{c}.insertOne({})", shell(one)), Kind::Insert),
                many => (format!("{c}.insertMany({})", shell(&Value::Array(many.to_vec()))), Kind::Insert),
            }
        }
        ("find", Some(c)) => {
            let mut line = format!("{c}.find({}", arg("filter"));
            if let Some(p) = field(body, "projection") {
                line.push_str(&format!(", {}", shell(p)));
            }
            line.push(')');
            line = chained(line, "sort", "sort");
            line = chained(line, "skip", "skip");
            line = chained(line, "limit", "limit");
            (line, Kind::Documents)
        }
        ("update", Some(c)) => {
            let lines: Vec<String> = list("updates")
                .iter()
                .map(|u| {
                    let q = u.get("q").map(shell).unwrap_or_else(|| "{}".into());
                    let change = u.get("u").cloned().unwrap_or(Value::Null);
                    let operators = change.as_object().is_some_and(|o| o.keys().all(|k| k.starts_with('$'))) || change.is_array();
                    let multi = u.get("multi").and_then(Value::as_bool).unwrap_or(false);
                    let method = match (operators, multi) {
                        (false, _) => "replaceOne",
                        (true, true) => "updateMany",
                        (true, false) => "updateOne",
                    };
                    let upsert = if u.get("upsert").and_then(Value::as_bool).unwrap_or(false) { ", { upsert: true }" } else { "" };
                    format!("{c}.{method}({q}, {}{upsert})", shell(&change))
                })
                .collect();
            (lines.join("\n"), Kind::Update)
        }
        ("delete", Some(c)) => {
            let lines: Vec<String> = list("deletes")
                .iter()
                .map(|d| {
                    let method = if int(d.get("limit")) == Some(1) { "deleteOne" } else { "deleteMany" };
                    format!("{c}.{method}({})", d.get("q").map(shell).unwrap_or_else(|| "{}".into()))
                })
                .collect();
            (lines.join("\n"), Kind::Delete)
        }
        ("aggregate", Some(c)) => (format!("{c}.aggregate({})", arg("pipeline")), Kind::Documents),
        ("aggregate", None) => (format!("db.aggregate({})", arg("pipeline")), Kind::Documents),
        ("count", Some(c)) => (format!("{c}.countDocuments({})", arg("query")), Kind::Other),
        ("distinct", Some(c)) => (format!("{c}.distinct({}, {})", arg("key"), arg("query")), Kind::Other),
        ("findAndModify" | "findandmodify", Some(c)) => {
            let q = arg("query");
            let line = if field(body, "remove").and_then(Value::as_bool).unwrap_or(false) {
                format!("{c}.findOneAndDelete({q})")
            } else {
                format!("{c}.findOneAndUpdate({q}, {})", arg("update"))
            };
            (line, Kind::Other)
        }
        ("createIndexes", Some(c)) => {
            let lines: Vec<String> = list("indexes")
                .iter()
                .map(|ix| format!("{c}.createIndex({})", ix.get("key").map(shell).unwrap_or_else(|| "{}".into())))
                .collect();
            (lines.join("\n"), Kind::Other)
        }
        ("drop", Some(c)) => (format!("{c}.drop()"), Kind::Other),
        ("listIndexes", Some(c)) => (format!("{c}.getIndexes()"), Kind::Documents),
        ("create", Some(c)) => (format!("db.createCollection({})", quoted(c.trim_start_matches("db."))), Kind::Other),
        ("dropDatabase", _) => ("db.dropDatabase()".into(), Kind::Other),
        ("listCollections", _) => ("show collections".into(), Kind::Documents),
        ("listDatabases", _) => ("show dbs".into(), Kind::Other),
        _ => {
            let cleaned: Map<String, Value> =
                body.iter().filter(|(k, _)| !DRIVER_FIELDS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
            (format!("db.runCommand({})", object(&cleaned)), Kind::Other)
        }
    }
}

/// The line for a recorded `db_query`, falling back to the recorded text itself.
pub fn shell_line(db_query: &str) -> (String, Kind) {
    match parse_op_msg(db_query) {
        Some((body, docs)) => command_line(&body, &docs),
        None if db_query.starts_with("OpQuery(") && db_query.contains("smaster") => (String::new(), Kind::Hidden),
        None => (db_query.to_string(), Kind::Other),
    }
}

fn error_line(event: &RecordedEvent) -> String {
    // dbtape writes "<code> <codeName>" (or just the code); anything else is shown whole.
    let (code, name) = event.error.split_once(' ').unwrap_or((event.error.as_str(), ""));
    let numeric = !code.is_empty() && code.chars().all(|c| c.is_ascii_digit());
    let (name, message) = match (numeric, name.is_empty()) {
        (true, false) => (name.to_string(), event.message.clone()),
        (true, true) => ("Error".to_string(), event.message.clone()),
        (false, _) if event.message.is_empty() => ("Error".to_string(), event.error.clone()),
        (false, _) => ("Error".to_string(), format!("{}: {}", event.error, event.message)),
    };
    format!("MongoServerError[{}]: {}\r\n", terminal_safe(&name), terminal_safe(&message))
}

fn summary(kind: Kind, n: u64) -> String {
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    match kind {
        Kind::Insert => format!("{{ acknowledged: true, insertedCount: {n} }}\r\n"),
        Kind::Update => format!("{{ acknowledged: true, modifiedCount: {n} }}\r\n"),
        Kind::Delete => format!("{{ acknowledged: true, deletedCount: {n} }}\r\n"),
        Kind::Documents => format!("({n} document{} returned)\r\n", plural(n)),
        Kind::Other => "{ ok: 1 }\r\n".into(),
        Kind::Hidden => String::new(),
    }
}

impl Renderer for MongoRenderer {
    fn render(&mut self, event: &RecordedEvent, _raw: &[u8], out: &mut String) {
        if render_gap(event, out) {
            return;
        }
        let prompt = format!("{}> ", event.db_name);
        match event.event.as_str() {
            "db.session.start" if event.success == Some(false) => {
                out.push_str(&format!("Session to database {} refused: {}\r\n", go_quote(&event.db_service), terminal_safe(&event.error)));
            }
            "db.session.start" => out.push_str(&format!(
                "Session started to database {} at {} by {} as {}\r\n",
                go_quote(&event.db_service),
                screen_time(&event.time),
                go_quote(&event.user),
                go_quote(&event.db_user)
            )),
            "db.session.end" => out.push_str(&format!("\r\nSession ended at {}\r\n", screen_time(&event.time))),
            "db.session.query" => {
                let (line, kind) = shell_line(event.db_query.as_deref().unwrap_or_default());
                self.pending.insert(event.ei, kind);
                if kind != Kind::Hidden {
                    write_prompted(&prompt, &line, out);
                }
            }
            "db.session.query.failed" => {
                let (line, _) = shell_line(event.db_query.as_deref().unwrap_or_default());
                write_prompted(&prompt, if line.is_empty() { event.db_query.as_deref().unwrap_or_default() } else { &line }, out);
                out.push_str(&error_line(event));
            }
            "db.session.result" => {
                let kind = event.query_ei.and_then(|ei| self.pending.get(&ei).copied()).unwrap_or(Kind::Other);
                if kind == Kind::Hidden {
                    return;
                }
                if event.success == Some(false) {
                    out.push_str(&error_line(event));
                } else {
                    out.push_str(&summary(kind, event.affected_records));
                }
                // Exhaust replies share their query: keep it until the session moves on.
                if let Some(ei) = event.query_ei {
                    self.pending.retain(|k, _| *k >= ei);
                }
            }
            "db.session.malformed_packet" => out.push_str("\r\n[malformed message]\r\n"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_as_mongosh() {
        let q = r#"OpMsg(Body={"insert": "books","ordered": true,"lsid": {"id": {"$binary":{"base64":"AA==","subType":"04"}}},"$db": "lib"}, Documents=[{"_id": {"$oid":"6b087cd12464de6194ee1515"},"title": "Dune","n": {"$numberInt":"3"}}], Flags=)"#;
        assert_eq!(shell_line(q).0, r#"db.books.insertOne({ _id: ObjectId("6b087cd12464de6194ee1515"), title: "Dune", n: 3 })"#);
        let q = r#"OpMsg(Body={"find": "books","filter": {"year": {"$gt": {"$numberInt":"1960"}}},"sort": {"title": {"$numberInt":"1"}},"limit": {"$numberInt":"3"},"$db": "lib"}, Documents=[], Flags=)"#;
        assert_eq!(shell_line(q).0, r#"db.books.find({ year: { $gt: 1960 } }).sort({ title: 1 }).limit(3)"#);
        let q = r#"OpMsg(Body={"delete": "books","$db": "lib"}, Documents=[{"q": {"title": "x"},"limit": {"$numberInt":"0"}}], Flags=)"#;
        assert_eq!(shell_line(q).0, r#"db.books.deleteMany({ title: "x" })"#);
        let q = r#"OpMsg(Body={"update": "books","$db": "lib"}, Documents=[{"q": {},"u": {"$set": {"a": true}},"multi": true}], Flags=)"#;
        assert_eq!(shell_line(q).0, r#"db.books.updateMany({}, { $set: { a: true } })"#);
        let q = r#"OpMsg(Body={"hello": {"$numberInt":"1"},"$db": "admin"}, Documents=[], Flags=)"#;
        assert_eq!(shell_line(q).1, Kind::Hidden);
        let q = r#"OpMsg(Body={"ping": {"$numberInt":"1"},"$db": "admin"}, Documents=[], Flags=)"#;
        assert_eq!(shell_line(q).0, "db.runCommand({ ping: 1 })");
    }

    #[test]
    fn cut_text_falls_back_to_itself() {
        let q = r#"OpMsg(Body={"insert": "books","$db": "li"#;
        assert_eq!(shell_line(q).0, q);
    }
}
