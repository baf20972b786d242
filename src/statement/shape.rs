//! A PostgreSQL statement's shape: its text with each plain number and plain string literal
//! replaced by a placeholder of its token kind, for the classification cache. Statements sent with their values inline
//! (psql, `pgbench -M simple`, ORMs that interpolate) differ only in their constants, and
//! parsing each one cost the lake writer a fifth of its time.
//!
//! The cache must never hand one statement another's class or tables, and the people being
//! recorded choose the text. So the scanner gives a shape only where replacing literals
//! provably leaves the parse tree's kinds and tables as they are, and none otherwise:
//! - only for statements that begin with SELECT, INSERT, UPDATE, DELETE or WITH, whose class
//!   comes from their statement type alone (COPY's looks at its words, literals included);
//! - only with no comment, no dollar sign (dollar quotes, parameters), no backslash (escape
//!   strings, `standard_conforming_strings = off`) and no `;` before the end, so where a
//!   string starts and ends, and so how many statements there are, is never in doubt;
//! - only with no `?` of its own, so every `?` in a shape is a placeholder, and no NUL;
//! - each placeholder names the token the lexer makes of the literal: `?i` an integer that
//!   fits 32 bits (ICONST), `?f` any other number (FCONST), `?s` a string (SCONST). The
//!   grammar accepts each kind in different places (`varchar(10)` parses, `varchar(1.5)` and
//!   `varchar('x')` do not), so statements of one shape take the same path through it;
//! - a string only where its quote follows no letter, digit or quote (`E'…'`, `U&'…'`, `B'…'`
//!   and `X'…'` are not plain strings), a number only as `digits[.digits]` with no letter,
//!   digit, `_` or `.` on either side (`1e5`, `0x1F`, `1_000` and `t1` are not replaced).
//!
//! The fingerprint ignores constants by design (type modifiers and limits included), and
//! table names are never literals here. A statement that does not parse is not cached by
//! its shape all the same (`Enricher`).

/// Statements longer than this are not shaped: their parse is rarely repeated.
const MAX_STATEMENT: usize = 4 * 1024;

/// The statement's shape, or None where it cannot be shaped safely.
pub fn postgres_shape(sql: &str) -> Option<String> {
    // A backslash may end a string early (`standard_conforming_strings = off`), and a NUL
    // never reaches the server (its messages end strings with one) but cuts the parser's C
    // string short: a text with either, inside a literal or out, is not shaped.
    if sql.len() > MAX_STATEMENT || !begins_with_plain_dml(sql) || sql.bytes().any(|b| b == b'\\' || b == 0) {
        return None;
    }
    let bytes = sql.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut replaced = false;
    while i < bytes.len() {
        let b = bytes[i];
        let before = if i == 0 { b' ' } else { bytes[i - 1] };
        match b {
            b'$' | b'?' => return None,
            b'-' if bytes.get(i + 1) == Some(&b'-') => return None,
            b'/' if bytes.get(i + 1) == Some(&b'*') => return None,
            b';' if !bytes[i + 1..].iter().all(|c| c.is_ascii_whitespace() || *c == b';') => return None,
            b'"' => {
                let end = quoted_end(bytes, i, b'"')?;
                out.extend_from_slice(&bytes[i..end]);
                i = end;
                continue;
            }
            b'\'' => {
                if is_word(before) || before == b'\'' || before == b'&' {
                    return None;
                }
                let end = quoted_end(bytes, i, b'\'')?;
                if bytes.get(end).is_some_and(|c| is_word(*c) || *c == b'\'') {
                    return None;
                }
                out.extend_from_slice(b"?s");
                replaced = true;
                i = end;
                continue;
            }
            b'0'..=b'9' if !is_word(before) && before != b'.' => {
                let mut end = i;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
                    end += 1;
                    while end < bytes.len() && bytes[end].is_ascii_digit() {
                        end += 1;
                    }
                }
                if bytes.get(end).is_some_and(|c| is_word(*c) || *c == b'.') {
                    return None;
                }
                let fits_32_bits = std::str::from_utf8(&bytes[i..end]).ok().and_then(|n| n.parse::<i32>().ok()).is_some();
                out.extend_from_slice(if fits_32_bits { b"?i" } else { b"?f" });
                replaced = true;
                i = end;
                continue;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    // A statement without literals is its own key already.
    if !replaced {
        return None;
    }
    String::from_utf8(out).ok()
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Where the quoted run starting at `start` ends (one past its closing quote), with doubled
/// quotes inside it; None if it never closes.
fn quoted_end(bytes: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let at = i + bytes.get(i..)?.iter().position(|c| *c == quote)?;
        if bytes.get(at + 1) == Some(&quote) {
            i = at + 2;
        } else {
            return Some(at + 1);
        }
    }
}

fn begins_with_plain_dml(sql: &str) -> bool {
    let word = sql.trim_start().split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or_default();
    ["SELECT", "INSERT", "UPDATE", "DELETE", "WITH"].iter().any(|w| word.eq_ignore_ascii_case(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::classify::classify_postgres;

    #[test]
    fn constants_are_replaced_and_nothing_doubtful_is_shaped() {
        let shaped = [
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 42", "SELECT abalance FROM pgbench_accounts WHERE aid = ?i"),
            ("UPDATE t SET a = a + 1.5 WHERE b = 'it''s' AND c IN (1,2)", "UPDATE t SET a = a + ?f WHERE b = ?s AND c IN (?i,?i)"),
            ("select \"col'1\" from t1 where x=3;", "select \"col'1\" from t1 where x=?i;"),
            ("INSERT INTO h (a) VALUES (-7, 2147483648, 02147483647)", "INSERT INTO h (a) VALUES (-?i, ?f, ?i)"),
        ];
        for (sql, shape) in shaped {
            assert_eq!(postgres_shape(sql).as_deref(), Some(shape), "{sql}");
        }
        // The grammar takes an integer where it refuses a decimal or a string: never one shape.
        let kinds = ["SELECT 'a'::varchar(10)", "SELECT 'a'::varchar(1.5)", "SELECT 'a'::varchar('x')"].map(postgres_shape);
        assert!(kinds[0] != kinds[1] && kinds[1] != kinds[2] && kinds[0] != kinds[2], "{kinds:?}");
        let unshaped = [
            "SELECT 1; DROP TABLE t",
            "COPY t FROM '/tmp/to'",
            "DROP TABLE t1",
            "SELECT E'a\\'b'",
            "SELECT e'x'",
            "SELECT X'1F'",
            "SELECT U&'d\\0061t'",
            "SELECT 1e5",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 1.2.3",
            "SELECT $1",
            "SELECT $$a$$",
            "SELECT 1 -- c",
            "SELECT /* c */ 1",
            "SELECT 'open",
            "SELECT \"open",
            "SELECT 'a''b'c'",
            "SELECT * FROM t",
            "SELECT 1AS x",
            "SELECT ?s, 1 FROM t",
            "SELECT interval '1`\0 day' FROM a WHERE v > 0.25",
            "SELECT 'a\\' FROM t WHERE x = 1",
        ];
        for sql in unshaped {
            assert_eq!(postgres_shape(sql), None, "{sql}");
        }
    }

    /// Statements of one shape classify alike: the property the cache rests on.
    #[test]
    fn statements_of_one_shape_have_the_same_class_tables_and_fingerprint() {
        let pairs = [
            ("SELECT * FROM a WHERE x = 1", "SELECT * FROM a WHERE x = 2147483647"),
            ("SELECT * FROM a WHERE x = 1.5", "SELECT * FROM a WHERE x = 999999999999999999999999"),
            ("SELECT 'a'::varchar(10) FROM t LIMIT 5", "SELECT 'b'::varchar(20) FROM t LIMIT 0"),
            ("SELECT 'DROP TABLE b'", "SELECT 'x'"),
            (
                "WITH d AS (DELETE FROM q WHERE id = 5 RETURNING *) SELECT * FROM d",
                "WITH d AS (DELETE FROM q WHERE id = 6 RETURNING *) SELECT * FROM d",
            ),
            ("UPDATE t SET s = 'a; DROP TABLE t' WHERE id = 1", "UPDATE t SET s = '' WHERE id = 2"),
            ("SELECT pg_read_file('/etc/passwd')", "SELECT pg_read_file('x')"),
        ];
        for (a, b) in pairs {
            assert_eq!(postgres_shape(a), postgres_shape(b), "{a} / {b}");
            assert!(postgres_shape(a).is_some(), "{a}");
            let (ca, cb) = (classify_postgres(a), classify_postgres(b));
            assert_eq!((ca.classes, ca.tables, ca.fingerprint), (cb.classes, cb.tables, cb.fingerprint), "{a} / {b}");
        }
    }
}
