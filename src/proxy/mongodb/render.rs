//! `db_query` text as Teleport writes it for MongoDB: `OpMsg(Body=…, Documents=[…], Flags=…)`
//! with documents in the MongoDB Go driver's canonical extended-JSON rendering
//! (`{"key": value,"key2": value2}`, `{"$numberInt":"1"}`), so a SIEM rule written for
//! Teleport's events matches ours. The rendering is also valid JSON, which the player relies on.

use std::fmt::Write as _;

use bson::raw::{RawArray, RawBsonRef, RawDocument};
use sha2::{Digest, Sha256};

use super::wire::{OpMsg, OpQuery, FLAG_CHECKSUM_PRESENT, FLAG_EXHAUST_ALLOWED, FLAG_MORE_TO_COME};
use crate::audit::Truncation;

/// Nesting beyond this is rendered as `"…"`: BSON allows deep nesting, a recursive renderer
/// must not follow it all the way down.
const MAX_DEPTH: usize = 100;

/// Rendered text, kept up to a limit. Past the limit the rest is only hashed and counted, so
/// a 48 MB insert costs at most `limit` bytes of text while the event still carries the
/// length and SHA-256 of the whole rendering.
pub struct Capture {
    text: String,
    limit: usize,
    overflow: Option<(Sha256, u64)>,
}

impl Capture {
    pub fn new(limit: usize) -> Self {
        Capture { text: String::new(), limit, overflow: None }
    }

    fn push(&mut self, s: &str) {
        if let Some((hasher, total)) = &mut self.overflow {
            hasher.update(s.as_bytes());
            *total += s.len() as u64;
            return;
        }
        if self.text.len() + s.len() <= self.limit {
            self.text.push_str(s);
            return;
        }
        let mut hasher = Sha256::new();
        hasher.update(self.text.as_bytes());
        hasher.update(s.as_bytes());
        let total = (self.text.len() + s.len()) as u64;
        let mut keep = self.limit.saturating_sub(self.text.len()).min(s.len());
        while !s.is_char_boundary(keep) {
            keep -= 1;
        }
        self.text.push_str(&s[..keep]);
        self.overflow = Some((hasher, total));
    }

    /// The kept text, and the note for the `truncated` list when it was cut.
    pub fn finish(self, field: &str) -> (String, Option<Truncation>) {
        let note = self.overflow.map(|(hasher, bytes)| Truncation {
            field: field.to_string(),
            bytes,
            sha256: crate::util::hex::hex(&hasher.finalize()),
        });
        (self.text, note)
    }
}

impl std::fmt::Write for Capture {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s);
        Ok(())
    }
}

fn flags(flags: u32, out: &mut Capture) {
    let mut first = true;
    for (bit, name) in
        [(FLAG_CHECKSUM_PRESENT, "ChecksumPresent"), (FLAG_MORE_TO_COME, "MoreToCome"), (FLAG_EXHAUST_ALLOWED, "ExhaustAllowed")]
    {
        if flags & bit != 0 {
            if !first {
                out.push(",");
            }
            out.push(name);
            first = false;
        }
    }
}

/// `{"$TYPE":"N"}`, through itoa rather than `write!`'s formatting machinery: the relay
/// renders every command before it forwards it, so this is on the hot path.
fn number_in(type_key: &str, n: impl itoa::Integer, out: &mut Capture) {
    out.push(type_key);
    out.push(itoa::Buffer::new().format(n));
    out.push("\"}");
}

/// `OpMsg(Body=…, Documents=[…], Flags=…)`, with `body` standing in for the message's own
/// body when the caller redacted it.
pub fn render_op_msg(msg: &OpMsg, body: &RawDocument, out: &mut Capture) {
    out.push("OpMsg(Body=");
    document(body, out, 0);
    out.push(", Documents=[");
    for (i, (_, docs)) in msg.sequences.iter().enumerate() {
        if i > 0 {
            out.push(" ");
        }
        for (j, doc) in docs.iter().enumerate() {
            if j > 0 {
                out.push(", ");
            }
            document(doc, out, 0);
        }
    }
    out.push("], Flags=");
    flags(msg.flags, out);
    out.push(")");
}

pub fn render_op_query(query: &OpQuery, body: &RawDocument, out: &mut Capture) {
    out.push("OpQuery(FullCollectionName=");
    out.push(&query.full_collection_name);
    out.push(", Query=");
    document(body, out, 0);
    out.push(", ReturnFieldsSelector=");
    match &query.return_fields {
        Some(doc) => document(doc, out, 0),
        None => out.push(""),
    }
    let _ = write!(out, ", NumberToSkip={}, NumberToReturn={}, Flags={})", query.number_to_skip, query.number_to_return, query.flags);
}

/// One document; an element that does not parse ends it with `"<malformed BSON>"`.
pub fn document(doc: &RawDocument, out: &mut Capture, depth: usize) {
    if depth > MAX_DEPTH {
        out.push("\"…\"");
        return;
    }
    out.push("{");
    for (i, element) in doc.iter().enumerate() {
        if i > 0 {
            out.push(",");
        }
        match element {
            Ok((key, value)) => {
                string(key, out);
                out.push(": ");
                self::value(value, out, depth + 1);
            }
            Err(_) => {
                out.push("\"<malformed BSON>\": null");
                break;
            }
        }
    }
    out.push("}");
}

fn array(items: &RawArray, out: &mut Capture, depth: usize) {
    if depth > MAX_DEPTH {
        out.push("\"…\"");
        return;
    }
    out.push("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(",");
        }
        match item {
            Ok(v) => value(v, out, depth + 1),
            Err(_) => {
                out.push("\"<malformed BSON>\"");
                break;
            }
        }
    }
    out.push("]");
}

/// A JSON string literal; control characters (and DEL) become `\u` escapes. Every character
/// escaped is one ASCII byte, which never occurs inside a multi-byte UTF-8 character, so a
/// scan of bytes finds exactly the characters a scan of chars would, at char boundaries.
pub fn string(s: &str, out: &mut Capture) {
    out.push("\"");
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let escape = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f | 0x7f => None,
            _ => continue,
        };
        out.push(&s[start..i]);
        match escape {
            Some(e) => out.push(e),
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push(&s[start..]);
    out.push("\"");
}

fn double(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        let text = format!("{f}");
        if text.contains(['.', 'e', 'E']) {
            text
        } else {
            format!("{text}.0")
        }
    }
}

fn value(v: RawBsonRef<'_>, out: &mut Capture, depth: usize) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    match v {
        RawBsonRef::Double(f) => {
            let _ = write!(out, "{{\"$numberDouble\":\"{}\"}}", double(f));
        }
        RawBsonRef::String(s) => string(s, out),
        RawBsonRef::Document(d) => document(d, out, depth),
        RawBsonRef::Array(a) => array(a, out, depth),
        RawBsonRef::Binary(b) => {
            out.push("{\"$binary\":{\"base64\":\"");
            // Session ids and hashes are 16-20 bytes: encoded on the stack, not in a String.
            let mut small = [0u8; 64];
            match b64.encode_slice(b.bytes, &mut small) {
                Ok(n) => out.push(std::str::from_utf8(&small[..n]).unwrap_or_default()),
                Err(_) => out.push(&b64.encode(b.bytes)),
            }
            out.push("\",\"subType\":\"");
            out.push(std::str::from_utf8(&crate::util::hex::hex_byte(u8::from(b.subtype))).unwrap_or_default());
            out.push("\"}}");
        }
        RawBsonRef::Undefined => out.push("{\"$undefined\":true}"),
        RawBsonRef::ObjectId(id) => {
            let _ = write!(out, "{{\"$oid\":\"{}\"}}", id.to_hex());
        }
        RawBsonRef::Boolean(b) => out.push(if b { "true" } else { "false" }),
        RawBsonRef::DateTime(d) => {
            number_in("{\"$date\":{\"$numberLong\":\"", d.timestamp_millis(), out);
            out.push("}");
        }
        RawBsonRef::Null => out.push("null"),
        RawBsonRef::RegularExpression(r) => {
            out.push("{\"$regularExpression\":{\"pattern\":");
            string(r.pattern, out);
            out.push(",\"options\":");
            string(r.options, out);
            out.push("}}");
        }
        RawBsonRef::DbPointer(_) => out.push("{\"$dbPointer\":{}}"),
        RawBsonRef::JavaScriptCode(code) => {
            out.push("{\"$code\":");
            string(code, out);
            out.push("}");
        }
        RawBsonRef::Symbol(s) => {
            out.push("{\"$symbol\":");
            string(s, out);
            out.push("}");
        }
        RawBsonRef::JavaScriptCodeWithScope(c) => {
            out.push("{\"$code\":");
            string(c.code, out);
            out.push(",\"$scope\":");
            document(c.scope, out, depth);
            out.push("}");
        }
        RawBsonRef::Int32(i) => number_in("{\"$numberInt\":\"", i, out),
        RawBsonRef::Timestamp(t) => {
            let _ = write!(out, "{{\"$timestamp\":{{\"t\":{},\"i\":{}}}}}", t.time, t.increment);
        }
        RawBsonRef::Int64(i) => number_in("{\"$numberLong\":\"", i, out),
        RawBsonRef::Decimal128(d) => {
            let _ = write!(out, "{{\"$numberDecimal\":\"{d}\"}}");
        }
        RawBsonRef::MinKey => out.push("{\"$minKey\":1}"),
        RawBsonRef::MaxKey => out.push("{\"$maxKey\":1}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn text(doc: &RawDocument) -> String {
        let mut c = Capture::new(1 << 20);
        document(doc, &mut c, 0);
        c.finish("db_query").0
    }

    #[test]
    fn renders_like_teleport_and_is_json() {
        let doc = rawdoc! { "insert": "books", "ordered": true, "n": 1, "big": 5_i64, "f": 1.5, "w": 2.0, "s": "a\"\u{1b}[2K" };
        let t = text(&doc);
        assert_eq!(
            t,
            r#"{"insert": "books","ordered": true,"n": {"$numberInt":"1"},"big": {"$numberLong":"5"},"f": {"$numberDouble":"1.5"},"w": {"$numberDouble":"2.0"},"s": "a\"\u001b[2K"}"#
        );
        serde_json::from_str::<serde_json::Value>(&t).unwrap();
    }

    #[test]
    fn binaries_dates_and_escapes_render_as_extended_json() {
        let id = bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![0xa2; 16] };
        let big = bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![7; 100] };
        let doc = rawdoc! {
            "id": id, "big": big.clone(), "at": bson::DateTime::from_millis(-5), "n": i32::MIN, "l": i64::MAX,
            "s": "é\u{7f}\u{1}\\\t\"ü",
        };
        let t = text(&doc);
        use base64::Engine as _;
        let big64 = base64::engine::general_purpose::STANDARD.encode(&big.bytes);
        assert_eq!(
            t,
            format!(
                r#"{{"id": {{"$binary":{{"base64":"oqKioqKioqKioqKioqKiog==","subType":"04"}}}},"big": {{"$binary":{{"base64":"{big64}","subType":"00"}}}},"at": {{"$date":{{"$numberLong":"-5"}}}},"n": {{"$numberInt":"-2147483648"}},"l": {{"$numberLong":"9223372036854775807"}},"s": "é\u007f\u0001\\\t\"ü"}}"#
            )
        );
        serde_json::from_str::<serde_json::Value>(&t).unwrap();
    }

    #[test]
    fn op_msg_text_has_sequences_and_flags() {
        let msg = OpMsg {
            flags: FLAG_MORE_TO_COME,
            body: rawdoc! { "insert": "b", "$db": "x" },
            sequences: vec![("documents".into(), vec![rawdoc! {"a": 1}, rawdoc! {"a": 2}])],
        };
        let mut c = Capture::new(1 << 20);
        render_op_msg(&msg, &msg.body, &mut c);
        assert_eq!(
            c.finish("db_query").0,
            r#"OpMsg(Body={"insert": "b","$db": "x"}, Documents=[{"a": {"$numberInt":"1"}}, {"a": {"$numberInt":"2"}}], Flags=MoreToCome)"#
        );
    }

    #[test]
    fn a_capture_past_its_limit_keeps_a_prefix_and_hashes_everything() {
        let mut c = Capture::new(10);
        c.push("0123456789abc");
        c.push("def");
        let (text, note) = c.finish("db_query");
        assert_eq!(text, "0123456789");
        let note = note.unwrap();
        assert_eq!(note.bytes, 16);
        assert_eq!(note.sha256, crate::util::hex::hex(&Sha256::digest(b"0123456789abcdef")));
    }
}
