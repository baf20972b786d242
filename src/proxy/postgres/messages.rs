//! Turns the messages the proxy audits into events: client queries and extended-protocol
//! steps, and the server's command results and errors.

use base64::Engine as _;

use super::codec::{cstr, malformed, WireError};
use crate::audit::{EventBody, Status};

fn i16_at(data: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]))
}

fn i32_at(data: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes([*data.get(at)?, *data.get(at + 1)?, *data.get(at + 2)?, *data.get(at + 3)?]))
}

/// Client message types whose bodies the proxy reads.
pub fn client_captures(ty: u8) -> bool {
    matches!(ty, b'Q' | b'P' | b'B' | b'E' | b'C' | b'F' | b'S' | b'D')
}

/// Server message types whose bodies the proxy reads.
pub fn server_captures(ty: u8) -> bool {
    matches!(ty, b'C' | b'E' | b'I' | b's' | b'Z' | b't')
}

/// The formats dbtape records beside a Bind's parameters: one per parameter, -1 for NULL;
/// none when every parameter is text and none is NULL, as with psql and pgbench.
fn recorded_formats(formats: &[i16], values: &[Option<&[u8]>]) -> Vec<i16> {
    if formats.iter().all(|&f| f == 0) && values.iter().all(Option::is_some) {
        return Vec::new();
    }
    if !(formats.len() <= 1 || formats.len() == values.len()) {
        return Vec::new();
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            None => crate::statement::parameters::NULL_FORMAT,
            Some(_) => formats.get(if formats.len() == 1 { 0 } else { i }).copied().unwrap_or(0),
        })
        .collect()
}

/// The parameter types a Parse declares (0: the server infers it).
pub fn declared_types(parse_body: &[u8]) -> Vec<u32> {
    let types = || -> Option<Vec<u32>> {
        let (_, rest) = cstr(parse_body)?;
        let (_, rest) = cstr(rest)?;
        let n = usize::try_from(i16_at(rest, 0)?).ok()?;
        (0..n).map(|i| i32_at(rest, 2 + 4 * i).map(|t| t as u32)).collect()
    };
    types().unwrap_or_default()
}

/// The statement a Describe asks about; `None` for a portal's.
pub fn described_statement(describe_body: &[u8]) -> Result<Option<String>, WireError> {
    let bad = || malformed("Describe", "truncated or inconsistent fields");
    let (&kind, rest) = describe_body.split_first().ok_or_else(bad)?;
    let (name, _) = cstr(rest).ok_or_else(bad)?;
    match kind {
        b'S' => Ok(Some(name)),
        // A portal's, or a kind the server will refuse itself.
        _ => Ok(None),
    }
}

/// The types in a ParameterDescription; empty if it is malformed.
pub fn described_types(body: &[u8]) -> Vec<u32> {
    let Some(n) = i16_at(body, 0).and_then(|n| usize::try_from(n).ok()) else { return Vec::new() };
    (0..n).map(|i| i32_at(body, 2 + 4 * i).map(|t| t as u32)).collect::<Option<_>>().unwrap_or_default()
}

/// Renders parameters as Teleport does: text as is, binary as base64.
fn render_params(formats: &[i16], values: &[Option<&[u8]>]) -> Vec<String> {
    let format_of = |i: usize| match formats.len() {
        0 => Some(0),
        1 => formats.first().copied(),
        n if n == values.len() => formats.get(i).copied(),
        _ => None,
    };
    if !(formats.len() <= 1 || formats.len() == values.len()) {
        return Vec::new();
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match (v, format_of(i)) {
            (None, _) => "NULL".to_string(),
            (Some(bytes), Some(0)) => String::from_utf8_lossy(bytes).into_owned(),
            (Some(bytes), Some(1)) => base64::engine::general_purpose::STANDARD.encode(bytes),
            _ => "<unknown>".to_string(),
        })
        .collect()
}

/// Reads `count` i16s at `at`; returns them and the offset after.
fn i16_list(data: &[u8], at: usize) -> Option<(Vec<i16>, usize)> {
    let n = i16_at(data, at)?;
    let n = usize::try_from(n).ok()?;
    let list = (0..n).map(|i| i16_at(data, at + 2 + 2 * i)).collect::<Option<Vec<_>>>()?;
    Some((list, at + 2 + 2 * n))
}

fn values(data: &[u8], at: usize) -> Option<(Vec<Option<&[u8]>>, usize)> {
    let n = usize::try_from(i16_at(data, at)?).ok()?;
    let mut at = at + 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32_at(data, at)?;
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let len = len as usize;
            out.push(Some(data.get(at..at + len)?));
            at += len;
        }
    }
    Some((out, at))
}

pub fn client_event(ty: u8, body: &[u8]) -> Result<Option<EventBody>, WireError> {
    let bad = |what: &'static str| malformed(what, "truncated or inconsistent fields");
    Ok(Some(match ty {
        b'Q' => {
            let (query, _) = cstr(body).ok_or_else(|| bad("Query"))?;
            EventBody::Query { query, parameters: vec![], db_name: None }
        }
        b'P' => {
            let (statement_name, rest) = cstr(body).ok_or_else(|| bad("Parse"))?;
            let (query, _) = cstr(rest).ok_or_else(|| bad("Parse"))?;
            EventBody::PostgresParse { statement_name, query }
        }
        b'B' => {
            let (portal_name, rest) = cstr(body).ok_or_else(|| bad("Bind"))?;
            let (statement_name, rest) = cstr(rest).ok_or_else(|| bad("Bind"))?;
            let (formats, at) = i16_list(rest, 0).ok_or_else(|| bad("Bind"))?;
            let (vals, _) = values(rest, at).ok_or_else(|| bad("Bind"))?;
            EventBody::PostgresBind {
                statement_name,
                portal_name,
                parameters: render_params(&formats, &vals),
                parameter_formats: recorded_formats(&formats, &vals),
                parameter_types: None,
            }
        }
        b'E' => {
            let (portal_name, _) = cstr(body).ok_or_else(|| bad("Execute"))?;
            EventBody::PostgresExecute { portal_name }
        }
        b'C' => {
            let kind = *body.first().ok_or_else(|| bad("Close"))?;
            let (name, _) = cstr(body.get(1..).unwrap_or_default()).ok_or_else(|| bad("Close"))?;
            match kind {
                b'S' => EventBody::PostgresClose { statement_name: name, portal_name: String::new() },
                b'P' => EventBody::PostgresClose { statement_name: String::new(), portal_name: name },
                _ => return Err(bad("Close")),
            }
        }
        b'F' => {
            let oid = i32_at(body, 0).ok_or_else(|| bad("FunctionCall"))?;
            let (formats, at) = i16_list(body, 4).ok_or_else(|| bad("FunctionCall"))?;
            let (vals, _) = values(body, at).ok_or_else(|| bad("FunctionCall"))?;
            EventBody::PostgresFunctionCall { function_oid: oid as u32, function_args: render_params(&formats, &vals) }
        }
        _ => return Ok(None),
    }))
}

/// Rows affected, from a CommandComplete tag (`INSERT 0 5`, `SELECT 3`, `COPY 10`, ...).
pub fn affected_rows(tag: &str) -> u64 {
    tag.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// `ERROR: message (SQLSTATE code)`, as the pg driver formats it.
pub fn error_text(body: &[u8]) -> String {
    let mut severity = String::new();
    let mut localized = String::new();
    let mut code = String::new();
    let mut text = String::new();
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, after)) = cstr(after) else { break };
        match field {
            b'V' => severity = value,
            b'S' => localized = value,
            b'C' => code = value,
            b'M' => text = value,
            _ => {}
        }
        rest = after;
    }
    let severity = if severity.is_empty() { localized } else { severity };
    format!("{severity}: {text} (SQLSTATE {code})")
}

/// The result event for a server message, if it is one, answering query `query_ei`.
pub fn server_result(ty: u8, body: &[u8], query_ei: Option<u64>) -> Option<EventBody> {
    match ty {
        b'C' => {
            let (tag, _) = cstr(body)?;
            let affected_records = affected_rows(&tag);
            Some(EventBody::Result { status: Status { success: true, error: String::new(), message: tag }, affected_records, query_ei })
        }
        b'I' => Some(EventBody::Result { status: Status::ok(), affected_records: 0, query_ei }),
        b'E' => Some(EventBody::Result { status: Status::failed(error_text(body), ""), affected_records: 0, query_ei }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_errors() {
        assert_eq!(affected_rows("INSERT 0 5"), 5);
        assert_eq!(affected_rows("SELECT 3"), 3);
        assert_eq!(affected_rows("BEGIN"), 0);
        let body = b"SERROR\0VERROR\0C42703\0Mcolumn \"x\" does not exist\0\0";
        assert_eq!(error_text(body), "ERROR: column \"x\" does not exist (SQLSTATE 42703)");
    }

    #[test]
    fn bind_renders_text_binary_and_null() {
        let mut body = b"\0s1\0".to_vec();
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&3i16.to_be_bytes());
        for v in [Some(&b"42"[..]), Some(&[0u8, 1, 2][..]), None] {
            match v {
                Some(bytes) => {
                    body.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                    body.extend_from_slice(bytes);
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        // Three values but two formats: Teleport logs no parameters.
        let Ok(Some(EventBody::PostgresBind { parameters, .. })) = client_event(b'B', &body) else { panic!() };
        assert!(parameters.is_empty());
    }
}
