//! Secrets in PostgreSQL statements, masked before anything is recorded.
//!
//! The statement is read with the PostgreSQL server's own lexer (libpg_query through
//! `pg_query`), so a PASSWORD literal is told apart from the same words in a comment, an
//! identifier or another string, and statements that fail to parse are still covered. Masked:
//! - the literal after PASSWORD (CREATE/ALTER ROLE|USER|GROUP, and the `password` option of
//!   CREATE/ALTER USER MAPPING and SERVER), and after any option whose name ends in
//!   `password` (`sslpassword`);
//! - `password=` values and `user:password@` in connection strings inside any literal
//!   (dblink, postgres_fdw, subscriptions, `primary_conninfo`);
//! - whatever the operator's `recording.redact_patterns` match.
//!
//! Each masked secret is remembered for the session, so the server echoing it back in an
//! error message is scrubbed too.

use pg_query::protobuf::Token;

/// What a masked secret becomes, inside its quotes.
pub const MASK: &str = "[REDACTED]";
/// Secrets shorter than this are masked in statements but not searched for in other text,
/// where they would match innocent words.
const MIN_REMEMBERED: usize = 4;
/// Secrets a session remembers for scrubbing echoes; the oldest go first.
const REMEMBERED: usize = 32;

/// Operator patterns, compiled once at start-up.
#[derive(Debug, Default)]
pub struct Redactor {
    patterns: Vec<regex::Regex>,
}

/// Per session: the secrets masked so far, to scrub from what the server sends back.
#[derive(Debug, Default)]
pub struct SessionSecrets {
    seen: std::collections::VecDeque<String>,
}

impl SessionSecrets {
    fn remember(&mut self, secret: &str) {
        if secret.len() < MIN_REMEMBERED || self.seen.iter().any(|s| s == secret) {
            return;
        }
        if self.seen.len() == REMEMBERED {
            self.seen.pop_front();
        }
        self.seen.push_back(secret.to_string());
    }

    pub fn any(&self) -> bool {
        !self.seen.is_empty()
    }

    /// Replaces every remembered secret in `text`; says whether any was there.
    pub fn scrub(&self, text: &mut String) -> bool {
        let mut hit = false;
        for secret in &self.seen {
            if text.contains(secret.as_str()) {
                *text = text.replace(secret.as_str(), MASK);
                hit = true;
            }
        }
        hit
    }

    /// As `scrub`, for a binary value recorded as base64: masked in its bytes, so it still
    /// decodes (a text value reads back with the mask in place of the secret).
    pub fn scrub_base64(&self, value: &mut String) -> bool {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::STANDARD;
        let Ok(mut bytes) = engine.decode(value.as_bytes()) else { return false };
        let mut hit = false;
        for secret in &self.seen {
            let needle = secret.as_bytes();
            if find(&bytes, needle).is_none() {
                continue;
            }
            let mut masked = Vec::with_capacity(bytes.len());
            let mut rest = &bytes[..];
            while let Some(at) = find(rest, needle) {
                masked.extend_from_slice(&rest[..at]);
                masked.extend_from_slice(MASK.as_bytes());
                rest = &rest[at + needle.len()..];
            }
            masked.extend_from_slice(rest);
            bytes = masked;
            hit = true;
        }
        if hit {
            *value = engine.encode(&bytes);
        }
        hit
    }

    /// As `scrub`, for raw bytes (malformed-packet samples).
    pub fn scrub_bytes(&self, bytes: &mut [u8]) -> bool {
        let mut hit = false;
        for secret in &self.seen {
            let needle = secret.as_bytes();
            let mut at = 0;
            while let Some(found) = bytes.get(at..).and_then(|rest| find(rest, needle)) {
                let start = at + found;
                bytes[start..start + needle.len()].fill(b'*');
                at = start + needle.len();
                hit = true;
            }
        }
        hit
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `://`, as in a connection URI; built once, since building a searcher per statement would
/// cost more than the search.
static URI_SCHEME: std::sync::LazyLock<memchr::memmem::Finder<'static>> = std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"://"));

/// Whether `text` holds `word` (lowercase ASCII) in any ASCII case: the cheap test every
/// statement goes through, so that only the rare ones pay for the lexer.
fn contains_ignore_case(text: &[u8], word: &[u8]) -> bool {
    let Some((&first, _)) = word.split_first() else { return true };
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), text)
        .any(|start| text.get(start..start + word.len()).is_some_and(|w| w.eq_ignore_ascii_case(word)))
}

fn is_comment(token: i32) -> bool {
    token == Token::SqlComment as i32 || token == Token::CComment as i32
}

fn is_string(token: i32) -> bool {
    token == Token::Sconst as i32 || token == Token::Usconst as i32
}

impl Redactor {
    /// Whether the statement could hold a secret the rules would mask; false for almost all.
    pub fn may_hold_secrets(&self, sql: &str) -> bool {
        let bytes = sql.as_bytes();
        !self.patterns.is_empty() || contains_ignore_case(bytes, b"password") || URI_SCHEME.find(bytes).is_some()
    }

    pub fn new(patterns: &[String]) -> Result<Redactor, regex::Error> {
        Ok(Redactor { patterns: patterns.iter().map(|p| crate::config::redact_pattern(p)).collect::<Result<_, _>>()? })
    }

    /// The statement with its secrets masked, or `None` when it has none. Secrets found are
    /// remembered in `secrets`.
    pub fn redact_sql(&self, sql: &str, secrets: &mut SessionSecrets) -> Option<String> {
        let bytes = sql.as_bytes();
        let suspicious = contains_ignore_case(bytes, b"password") || URI_SCHEME.find(bytes).is_some();
        let mut out = if suspicious { self.mask_literals(sql, secrets) } else { None };
        // A secret the session already gave may come again outside a PASSWORD clause
        // (`VALID UNTIL 'secret'`, a later SELECT): masked wherever it appears.
        if !secrets.seen.is_empty() {
            let mut text = out.clone().unwrap_or_else(|| sql.to_string());
            if secrets.scrub(&mut text) {
                out = Some(text);
            }
        }
        for pattern in &self.patterns {
            let current = out.as_deref().unwrap_or(sql);
            if pattern.is_match(current) {
                for m in pattern.find_iter(current) {
                    secrets.remember(m.as_str());
                }
                out = Some(pattern.replace_all(current, MASK).into_owned());
            }
        }
        out
    }

    fn mask_literals(&self, sql: &str, secrets: &mut SessionSecrets) -> Option<String> {
        let tokens = match pg_query::scan_tokens(sql) {
            Ok(tokens) => tokens,
            // An unterminated literal or a NUL byte: the lexer cannot say where secrets
            // end, so nothing of the statement is kept.
            Err(_) => return Some(format!("{MASK} (a statement that mentions a password and could not be scanned)")),
        };
        let text_of = |t: &pg_query::protobuf::ScanToken| sql.get(t.start as usize..t.end as usize).unwrap_or_default();
        let significant: Vec<&pg_query::protobuf::ScanToken> = tokens.iter().filter(|t| !is_comment(t.token)).collect();
        // (start, end, replacement) in statement order.
        let mut edits: Vec<(usize, usize, String)> = Vec::new();
        for (i, token) in significant.iter().enumerate() {
            if !is_string(token.token) {
                continue;
            }
            let literal = text_of(token);
            let after_password = i.checked_sub(1).and_then(|p| significant.get(p)).is_some_and(|prev| {
                prev.token == Token::Password as i32
                    || (prev.token == Token::Ident as i32 && text_of(prev).to_ascii_lowercase().ends_with("password"))
            });
            if after_password {
                secrets.remember(literal_body(literal));
                edits.push((token.start as usize, token.end as usize, format!("'{MASK}'")));
            } else if let Some(masked) = mask_conninfo(literal, secrets) {
                edits.push((token.start as usize, token.end as usize, masked));
            }
        }
        if edits.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(sql.len());
        let mut at = 0;
        for (start, end, replacement) in edits {
            out.push_str(sql.get(at..start).unwrap_or_default());
            out.push_str(&replacement);
            at = end;
        }
        out.push_str(sql.get(at..).unwrap_or_default());
        Some(out)
    }
}

impl Redactor {
    /// Masks the secrets in an event the PostgreSQL path is about to record: statements
    /// (simple queries and Parse) by the rules above, everything else by the secrets the
    /// session's statements held. Says whether anything was masked.
    pub fn redact_event(&self, event: &mut crate::audit::EventBody, secrets: &mut SessionSecrets) -> bool {
        use crate::audit::EventBody;
        match event {
            EventBody::Query { query, .. } | EventBody::PostgresParse { query, .. } => match self.redact_sql(query, secrets) {
                Some(masked) => {
                    *query = masked;
                    true
                }
                None => false,
            },
            _ if secrets.seen.is_empty() => false,
            EventBody::Result { status, .. } => secrets.scrub(&mut status.error) | secrets.scrub(&mut status.message),
            // A binary value is scrubbed in its bytes, which a reader decodes: a secret sent
            // as a binary text parameter is masked as the same text sent as text would be.
            EventBody::PostgresBind { parameters: values, parameter_formats, .. } => {
                values.iter_mut().enumerate().fold(false, |hit, (i, v)| {
                    let scrubbed = if parameter_formats.get(i) == Some(&1) { secrets.scrub_base64(v) } else { secrets.scrub(v) };
                    scrubbed | hit
                })
            }
            EventBody::PostgresFunctionCall { function_args: values, .. } => values.iter_mut().fold(false, |hit, v| secrets.scrub(v) | hit),
            _ => false,
        }
    }
}

/// A literal's text between its quotes (`'x'`, `E'x'`, `U&'x'`), as written.
fn literal_body(literal: &str) -> &str {
    let start = literal.find('\'').map_or(0, |i| i + 1);
    let end = literal.rfind('\'').filter(|&e| e >= start).unwrap_or(literal.len());
    literal.get(start..end).unwrap_or_default()
}

/// Masks `password=value` (keyword/value connection strings) and `user:password@` (URIs)
/// inside one string literal.
fn mask_conninfo(literal: &str, secrets: &mut SessionSecrets) -> Option<String> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let lower = literal.to_ascii_lowercase();
    let mut search = 0;
    while let Some(found) = lower.get(search..).and_then(|rest| rest.find("password")) {
        let key_end = search + found + "password".len();
        search = key_end;
        let Some(after_eq) = literal[key_end..].trim_start().strip_prefix('=') else { continue };
        let value_text = after_eq.trim_start();
        let value_start = literal.len() - value_text.len();
        let value_len = match value_text.strip_prefix("\'\'") {
            // A value in the conninfo's own single quotes, doubled inside the SQL literal.
            Some(quoted) => quoted.find("\'\'").map_or(value_text.len(), |e| e + 4),
            None => value_text.find(|c: char| c.is_whitespace() || c == '\'').unwrap_or(value_text.len()),
        };
        if value_len > 0 {
            ranges.push((value_start, value_start + value_len));
        }
    }
    // scheme://user:secret@host
    let mut search = 0;
    while let Some(found) = literal.get(search..).and_then(|rest| rest.find("://")) {
        let authority_start = search + found + 3;
        search = authority_start;
        let authority = &literal[authority_start..];
        let end = authority.find(['/', '?', '\'', ' ']).unwrap_or(authority.len());
        let Some(at) = authority[..end].rfind('@') else { continue };
        let Some(colon) = authority[..at].find(':') else { continue };
        if colon + 1 < at {
            ranges.push((authority_start + colon + 1, authority_start + at));
        }
    }
    if ranges.is_empty() {
        return None;
    }
    ranges.sort_unstable();
    let mut out = String::with_capacity(literal.len());
    let mut at = 0;
    for (start, end) in ranges {
        if start < at {
            continue;
        }
        secrets.remember(literal[start..end].trim_matches('\''));
        out.push_str(&literal[at..start]);
        out.push_str(MASK);
        at = end;
    }
    out.push_str(&literal[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(sql: &str) -> (Option<String>, SessionSecrets) {
        let mut secrets = SessionSecrets::default();
        (Redactor::default().redact_sql(sql, &mut secrets), secrets)
    }

    #[test]
    fn role_and_mapping_passwords_are_masked_wherever_the_keyword_is() {
        for (sql, secret) in [
            ("CREATE ROLE bob LOGIN PASSWORD 'hunter22'", "hunter22"),
            ("alter user bob with encrypted password E'hun\\'ter' valid until 'infinity'", "hun\\'ter"),
            ("ALTER ROLE bob PASSWORD /* sneaky */ 'SCRAM-SHA-256$4096:abc'", "SCRAM-SHA-256$4096:abc"),
            ("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'b', password 'fdw-secret')", "fdw-secret"),
            ("ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET sslpassword 'ssl-secret')", "ssl-secret"),
        ] {
            let (out, secrets) = redact(sql);
            let out = out.unwrap_or_else(|| panic!("not redacted: {sql}"));
            assert!(!out.contains(secret), "{out}");
            assert!(out.contains("'[REDACTED]'"), "{out}");
            assert!(secrets.seen.iter().any(|s| s == secret), "{sql}");
        }
    }

    #[test]
    fn connection_strings_are_masked_inside_literals() {
        let (out, _) = redact("SELECT dblink_connect('c', 'host=db port=5432 password=pw-secret user=x')");
        assert_eq!(out.unwrap(), "SELECT dblink_connect('c', 'host=db port=5432 password=[REDACTED] user=x')");
        let (out, _) = redact("SELECT dblink('postgresql://bob:uri-secret@db/app', 'select 1')");
        assert_eq!(out.unwrap(), "SELECT dblink('postgresql://bob:[REDACTED]@db/app', 'select 1')");
    }

    #[test]
    fn innocent_mentions_are_left_alone() {
        for sql in [
            "SELECT password_hint FROM users",
            "SELECT 'password' AS word",
            "UPDATE settings SET note = 'reset your password tomorrow'",
            "-- password 'x'\nSELECT 1",
            "SELECT 1",
        ] {
            assert_eq!(redact(sql).0, None, "{sql}");
        }
    }

    #[test]
    fn unscannable_statements_mentioning_passwords_are_masked_whole() {
        let (out, _) = redact("ALTER ROLE bob PASSWORD 'unterminated");
        assert!(!out.unwrap().contains("unterminated"));
    }

    #[test]
    fn echoes_are_scrubbed_and_operator_patterns_apply() {
        let redactor = Redactor::new(&["card=[0-9]{16}".to_string()]).unwrap();
        let mut secrets = SessionSecrets::default();
        let out = redactor.redact_sql("SELECT * FROM t WHERE x = 'card=4111111111111111'", &mut secrets).unwrap();
        assert!(!out.contains("4111"), "{out}");
        redactor.redact_sql("ALTER ROLE r PASSWORD 'echo-me-not'", &mut secrets);
        let mut error = "ERROR: invalid input \"echo-me-not\"".to_string();
        assert!(secrets.scrub(&mut error));
        assert!(!error.contains("echo-me-not"));
        let mut sample = b"Q\0\0\0\x20ALTER ROLE r PASSWORD 'echo-me-not'".to_vec();
        assert!(secrets.scrub_bytes(&mut sample));
        assert!(!String::from_utf8_lossy(&sample).contains("echo-me-not"));
    }

    #[test]
    fn a_binary_parameter_is_masked_as_a_text_one_is() {
        use base64::Engine as _;
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let redactor = Redactor::default();
        let mut secrets = SessionSecrets::default();
        redactor.redact_sql("ALTER ROLE r PASSWORD 'echo-me-not'", &mut secrets);
        let mut bind = crate::audit::EventBody::PostgresBind {
            statement_name: String::new(),
            portal_name: String::new(),
            parameters: vec!["say echo-me-not".into(), b64(b"\x01echo-me-not!"), b64(b"fine")],
            parameter_formats: vec![0, 1, 1],
            parameter_types: Some(std::sync::Arc::from([25u32, 25, 25])),
        };
        assert!(redactor.redact_event(&mut bind, &mut secrets));
        let crate::audit::EventBody::PostgresBind { parameters, parameter_formats, parameter_types, .. } = &bind else { panic!() };
        let shown = crate::statement::parameters::readable(parameters, parameter_formats, parameter_types.as_deref().unwrap()).unwrap();
        assert_eq!(shown, ["'say [REDACTED]'", "E'\\x01[REDACTED]!'", "'fine'"]);
    }
}
