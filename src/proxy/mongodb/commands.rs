//! What a command means to the proxy: its name and database, whether it is part of a login,
//! what must be hidden before it is recorded, and what its reply says.

use bson::raw::{RawBsonRef, RawDocument};
use bson::{rawdoc, RawDocumentBuf};

/// Commands that belong to a login, which the proxy answers itself: they never reach the
/// server, whose login is the proxy's own.
pub fn is_login_command(name: &str) -> bool {
    matches!(name, "saslStart" | "saslContinue" | "authenticate" | "getnonce" | "logout" | "copydbgetnonce" | "copydbsaslstart" | "copydb")
}

pub fn is_hello(name: &str) -> bool {
    matches!(name, "hello" | "isMaster" | "ismaster")
}

/// The single, non-empty string `$db` of a command body.
pub fn database(body: &RawDocument) -> Result<&str, String> {
    let mut found = None;
    for element in body.iter() {
        let (key, value) = element.map_err(|e| format!("malformed BSON: {e}"))?;
        if key == "$db" {
            if found.is_some() {
                return Err("the command has more than one $db".into());
            }
            match value {
                RawBsonRef::String(db) if !db.is_empty() => found = Some(db),
                _ => return Err("$db must be a non-empty string".into()),
            }
        }
    }
    found.ok_or_else(|| "the command has no $db".into())
}

/// Fields that carry secrets, per command: replaced before anything is recorded.
fn secret_fields(command: &str) -> &'static [&'static str] {
    match command {
        "createUser" | "updateUser" => &["pwd"],
        "saslStart" | "saslContinue" => &["payload"],
        "authenticate" => &["key", "nonce"],
        "hello" | "isMaster" | "ismaster" => &["speculativeAuthenticate"],
        _ => &[],
    }
}

pub const REDACTED: &str = "[REDACTED]";

/// The body with secret fields replaced, or `None` when there is nothing to hide.
pub fn redact(command: &str, body: &RawDocument) -> Option<RawDocumentBuf> {
    let fields = secret_fields(command);
    if fields.is_empty() || !body.iter().flatten().any(|(k, _)| fields.contains(&k)) {
        return None;
    }
    let mut out = RawDocumentBuf::new();
    for (key, value) in body.iter().flatten() {
        if fields.contains(&key) {
            out.append(key, REDACTED);
        } else {
            out.append_ref(key, value);
        }
    }
    Some(out)
}

/// A copy of `body` without the named fields.
pub fn without(body: &RawDocument, drop: &[&str]) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for (key, value) in body.iter().flatten() {
        if !drop.contains(&key) {
            out.append_ref(key, value);
        }
    }
    out
}

pub fn number(value: Option<RawBsonRef<'_>>) -> Option<f64> {
    match value? {
        RawBsonRef::Int32(i) => Some(f64::from(i)),
        RawBsonRef::Int64(i) => Some(i as f64),
        RawBsonRef::Double(f) => Some(f),
        RawBsonRef::Boolean(b) => Some(if b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn get<'a>(doc: &'a RawDocument, key: &str) -> Option<RawBsonRef<'a>> {
    doc.get(key).ok().flatten()
}

fn text<'a>(doc: &'a RawDocument, key: &str) -> Option<&'a str> {
    match get(doc, key)? {
        RawBsonRef::String(s) => Some(s),
        _ => None,
    }
}

/// What a reply says, for `db.session.result`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplySummary {
    pub ok: bool,
    /// `n`, or `nModified` when the server counted changed documents, plus upserts; for a
    /// cursor, the documents in this batch.
    pub affected: u64,
    /// `"<code> <codeName>"` of the error, empty when ok.
    pub error: String,
    pub message: String,
}

pub fn summarize_reply(doc: &RawDocument) -> ReplySummary {
    let ok = number(get(doc, "ok")).is_some_and(|v| v == 1.0);
    let count = |key| number(get(doc, key)).map(|v| v.max(0.0) as u64);
    let upserted = match get(doc, "upserted") {
        Some(RawBsonRef::Array(a)) => a.into_iter().count() as u64,
        _ => 0,
    };
    let batch = match get(doc, "cursor") {
        Some(RawBsonRef::Document(cursor)) => match get(cursor, "firstBatch").or_else(|| get(cursor, "nextBatch")) {
            Some(RawBsonRef::Array(a)) => Some(a.into_iter().count() as u64),
            _ => None,
        },
        _ => None,
    };
    let affected = batch.or_else(|| count("nModified").map(|m| m + upserted)).or_else(|| count("n")).unwrap_or(0);
    let mut summary = ReplySummary { ok, affected, ..Default::default() };
    let first_write_error = match get(doc, "writeErrors") {
        Some(RawBsonRef::Array(errors)) => errors.into_iter().flatten().find_map(|e| e.as_document()),
        _ => None,
    };
    let source = if ok { first_write_error } else { Some(doc) };
    if let Some(err) = source {
        let code = number(get(err, "code")).map(|c| c as i64);
        let name = text(err, "codeName").unwrap_or_default();
        summary.ok = false;
        summary.error = match code {
            Some(code) if name.is_empty() => code.to_string(),
            Some(code) => format!("{code} {name}"),
            None => name.to_string(),
        };
        summary.message = text(err, "errmsg").unwrap_or_default().to_string();
    }
    summary
}

/// An error reply shaped as mongod sends it.
pub fn error_reply(code: i32, code_name: &str, message: &str) -> RawDocumentBuf {
    rawdoc! { "ok": 0.0, "errmsg": message, "code": code, "codeName": code_name }
}

pub const UNAUTHORIZED: (i32, &str) = (13, "Unauthorized");
pub const AUTHENTICATION_FAILED: (i32, &str) = (18, "AuthenticationFailed");

/// The fields of a hello reply that point drivers at replica-set members: rewritten to the
/// proxy's own address so that a driver discovering the set stays on the proxy.
pub fn rewrite_topology(reply: &RawDocument, proxy_addr: &str) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for (key, value) in reply.iter().flatten() {
        match key {
            "hosts" => {
                let mut hosts = bson::RawArrayBuf::new();
                hosts.push(proxy_addr);
                out.append(key, hosts);
            }
            "me" | "primary" => out.append(key, proxy_addr),
            // Other members would be reached directly, around the proxy.
            "passives" | "arbiters" | "speculativeAuthenticate" | "saslSupportedMechs" | "compression" => {}
            _ => out.append_ref(key, value),
        }
    }
    out
}

/// The compressors a client offers (`compression` in its hello) that the proxy speaks, in
/// the client's order.
pub fn offered_compressors(hello: &RawDocument) -> Vec<super::wire::Compressor> {
    match get(hello, "compression") {
        Some(RawBsonRef::Array(list)) => {
            list.into_iter().flatten().filter_map(|v| v.as_str()).filter_map(super::wire::Compressor::from_name).collect()
        }
        _ => Vec::new(),
    }
}

pub fn max_message_bytes(hello_reply: &RawDocument) -> Option<usize> {
    number(get(hello_reply, "maxMessageSizeBytes")).filter(|v| *v >= 1024.0 && *v <= 256.0 * 1024.0 * 1024.0).map(|v| v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_must_be_one_nonempty_string() {
        assert_eq!(database(&rawdoc! { "find": "b", "$db": "lib" }), Ok("lib"));
        assert!(database(&rawdoc! { "find": "b" }).is_err());
        assert!(database(&rawdoc! { "find": "b", "$db": "" }).is_err());
        assert!(database(&rawdoc! { "find": "b", "$db": "a", "$db": "b" }).is_err());
        assert!(database(&rawdoc! { "find": "b", "$db": 1 }).is_err());
    }

    #[test]
    fn passwords_are_replaced() {
        let body = rawdoc! { "createUser": "bob", "pwd": "hunter2", "roles": [], "$db": "admin" };
        let red = redact("createUser", &body).unwrap();
        assert_eq!(red.get_str("pwd").unwrap(), REDACTED);
        assert_eq!(red.get_str("createUser").unwrap(), "bob");
        assert!(redact("find", &rawdoc! { "find": "x", "pwd": "y" }).is_none());
    }

    #[test]
    fn replies_summarize() {
        let s = summarize_reply(&rawdoc! { "n": 1, "nModified": 1, "upserted": [{ "index": 0 }], "ok": 1.0 });
        assert_eq!((s.ok, s.affected), (true, 2));
        let s = summarize_reply(&rawdoc! { "cursor": { "firstBatch": [{}, {}, {}], "id": 0_i64 }, "ok": 1 });
        assert_eq!((s.ok, s.affected), (true, 3));
        let s = summarize_reply(&rawdoc! { "ok": 0.0, "errmsg": "no such command: 'nope'", "code": 59, "codeName": "CommandNotFound" });
        assert_eq!((s.ok, s.error.as_str()), (false, "59 CommandNotFound"));
        let s = summarize_reply(
            &rawdoc! { "n": 0, "writeErrors": [{ "index": 0, "code": 11000, "errmsg": "E11000 duplicate key" }], "ok": 1.0 },
        );
        assert_eq!((s.ok, s.error.as_str(), s.message.as_str()), (false, "11000", "E11000 duplicate key"));
    }

    #[test]
    fn topology_points_at_the_proxy() {
        let reply = rawdoc! { "isWritablePrimary": true, "setName": "rs", "hosts": ["10.0.0.1:27017", "10.0.0.2:27017"], "me": "10.0.0.1:27017", "primary": "10.0.0.1:27017", "ok": 1.0 };
        let out = rewrite_topology(&reply, "127.0.0.1:9000");
        assert_eq!(out.get_str("me").unwrap(), "127.0.0.1:9000");
        assert_eq!(out.get_array("hosts").unwrap().into_iter().count(), 1);
        assert_eq!(out.get_str("setName").unwrap(), "rs");
    }
}
