//! A Bind's parameters as a reviewer reads them: binary values decoded by their type and
//! every value written as psql would show the literal (`42`, `'O''Brien'`, `'\x00ff'`).
//!
//! The recorded event keeps Teleport's form (text as sent, binary as base64); beside it the
//! proxy records each parameter's format and its statement's parameter types, and this
//! module reads the values from those on every read. Nothing here runs on a session's path.

pub mod binary;
pub mod types;

use base64::Engine as _;

use binary::{decode, Undecoded};

/// The format dbtape records for a NULL parameter in `parameter_formats` (the wire's 0 and
/// 1 are text and binary): the recorded value `NULL` is then SQL's NULL, not the text.
pub const NULL_FORMAT: i16 = -1;

/// The parameters, readable, when the event recorded their formats or types; `None` for an
/// event without (older recordings, or text parameters of a statement whose types the proxy
/// did not see), which readers show as recorded.
pub fn readable(values: &[String], formats: &[i16], types: &[u32]) -> Option<Vec<String>> {
    if formats.is_empty() && types.is_empty() {
        return None;
    }
    Some(
        values
            .iter()
            .enumerate()
            .map(|(i, value)| readable_value(value, formats.get(i).copied().unwrap_or(0), types.get(i).copied().unwrap_or(0)))
            .collect(),
    )
}

/// A recorded Bind event's parameters, readable, from its JSON (`export`, `search`).
pub fn of_bind_event(event: &serde_json::Value) -> Option<Vec<String>> {
    let strings = |key: &str| -> Vec<String> {
        event
            .get(key)
            .and_then(serde_json::Value::as_array)
            .map_or_else(Vec::new, |list| list.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect())
    };
    let numbers = |key: &str| -> Vec<i64> {
        event
            .get(key)
            .and_then(serde_json::Value::as_array)
            .map_or_else(Vec::new, |list| list.iter().map(|v| v.as_i64().unwrap_or(0)).collect())
    };
    let formats: Vec<i16> = numbers("parameter_formats").into_iter().map(|f| i16::try_from(f).unwrap_or(i16::MAX)).collect();
    let types: Vec<u32> = numbers("parameter_types").into_iter().map(|t| u32::try_from(t).unwrap_or(0)).collect();
    readable(&strings("parameters"), &formats, &types)
}

/// `$1 = 42, $2 = 'x'`: shown values numbered as the statement refers to them.
pub fn numbered(shown: &[String]) -> String {
    let mut out = String::new();
    for (i, value) in shown.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!("${} = {value}", i + 1));
    }
    out
}

/// One parameter: its recorded value, its format and its type (0 when not known).
pub fn readable_value(value: &str, format: i16, oid: u32) -> String {
    match format {
        NULL_FORMAT if value == "NULL" => "NULL".into(),
        0 if types::is_numeric(oid) && looks_numeric(value) => value.to_string(),
        0 => quote_literal(value),
        1 => readable_binary(value, oid),
        // A format the server refuses: the value was recorded as `<unknown>`.
        _ => value.to_string(),
    }
}

fn readable_binary(value: &str, oid: u32) -> String {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(value) else {
        return shown_as_base64(value, oid, Some("not valid base64"));
    };
    if oid == 0 {
        return shown_as_base64(value, oid, None);
    }
    match decode(oid, &bytes) {
        Ok(decoded) if decoded.bare => decoded.text,
        Ok(decoded) => quote_literal(&decoded.text),
        Err(Undecoded::UnknownType) => shown_as_base64(value, oid, None),
        Err(Undecoded::Invalid) => shown_as_base64(value, oid, Some("not valid")),
        Err(Undecoded::TooLong) => shown_as_base64(value, oid, Some("too long to show")),
    }
}

/// `[base64 point] AAAA`, `[base64 int4, not valid] AAA=`, `[base64] AAAA` (type unknown).
fn shown_as_base64(value: &str, oid: u32, note: Option<&str>) -> String {
    let mut out = String::from("[base64");
    if oid != 0 {
        out.push(' ');
        out.push_str(&types::type_name(oid));
    }
    if let Some(note) = note {
        out.push_str(", ");
        out.push_str(note);
    }
    out.push_str("] ");
    // The recorded value may be anything a hostile client made it (cut, or not base64 at
    // all), so it is quoted when it is not plain base64.
    if value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
        out.push_str(value);
    } else {
        out.push_str(&quote_literal(value));
    }
    out
}

/// An integer or decimal as a number literal: what psql would accept bare.
fn looks_numeric(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match digits.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (digits, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !whole.is_empty()
        && all_digits(whole)
        && all_digits(fraction)
        && (!mantissa.ends_with('.'))
        && exponent.is_none_or(|e| !e.is_empty() && all_digits(e))
}

/// A string literal as psql reads it: `'…'` with quotes doubled, or, when the text holds a
/// control or a bidirectional override, `E'…'` with those escaped, so that no value can
/// break the line it is shown on or reorder what a reviewer sees.
pub fn quote_literal(text: &str) -> String {
    let needs_escapes = text.chars().any(is_escaped);
    let mut out = String::with_capacity(text.len() + 3);
    if needs_escapes {
        out.push('E');
    }
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' if needs_escapes => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x80 && is_escaped(c) => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_escaped(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn is_escaped(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn the_issues_example_reads_as_values() {
        // asyncpg's `insert into acc_apg values ($1, $2, $3, now())`: int4 0, ten zero bytes
        // of bytea, jsonb {"k": 0}.
        let values = vec!["AAAAAA==".to_string(), "AAAAAAAAAAAAAA==".into(), "AXsiayI6IDB9".into()];
        let shown = readable(&values, &[1, 1, 1], &[types::INT4, types::BYTEA, types::JSONB]).unwrap();
        assert_eq!(shown, ["0", "'\\x00000000000000000000'", "'{\"k\": 0}'"]);
    }

    #[test]
    fn text_null_and_unknown() {
        let values = vec!["42".to_string(), "O'Brien".into(), "NULL".into(), "NULL".into(), "4 2".into()];
        let shown = readable(&values, &[0, 0, -1, 0, 0], &[types::INT4, types::TEXT, types::TEXT, types::TEXT, types::INT4]).unwrap();
        assert_eq!(shown, ["42", "'O''Brien'", "NULL", "'NULL'", "'4 2'"]);
        assert_eq!(readable(&values, &[], &[]), None, "nothing recorded to decode with");
    }

    #[test]
    fn what_does_not_decode_stays_base64_with_a_note() {
        assert_eq!(readable_value(&b64(&[0; 16]), 1, 600), "[base64 point] AAAAAAAAAAAAAAAAAAAAAA==");
        assert_eq!(readable_value("AAA=", 1, types::INT4), "[base64 int4, not valid] AAA=");
        assert_eq!(readable_value("AAAA", 1, 0), "[base64] AAAA");
        assert_eq!(readable_value("x'y", 1, types::INT4), "[base64 int4, not valid base64] 'x''y'");
        assert_eq!(readable_value("<unknown>", 7, types::INT4), "<unknown>");
    }

    #[test]
    fn literals_cannot_break_the_line() {
        assert_eq!(quote_literal("a\nb\u{1b}[2K\\"), "E'a\\nb\\x1b[2K\\\\'");
        assert_eq!(quote_literal("abc\u{202e}"), "E'abc\\u202e'");
        assert_eq!(quote_literal("c:\\x"), "'c:\\x'");
        assert!(looks_numeric("-1.5e+10") && looks_numeric("7") && !looks_numeric("1.") && !looks_numeric("NaN"));
        assert!(!looks_numeric("") && !looks_numeric("1e") && !looks_numeric("1;drop"));
    }
}
