//! What the index holds of an event, shared by the indexer and the read-back that checks
//! every hit again.

use serde_json::Value;

pub fn event_time_ms(event: &Value) -> Option<i64> {
    let time = event.get("time")?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(time).ok().map(|t| t.timestamp_millis())
}

/// Whether an event records something that went wrong: a refused login, a failed query, a
/// result with an error, a request AWS or dbtape failed.
pub fn is_failure(event: &Value) -> bool {
    let code = event.get("code").and_then(Value::as_str).unwrap_or_default();
    code.ends_with('W')
        || code.ends_with('E')
        || event.get("success") == Some(&Value::Bool(false))
        || event.get("error").and_then(Value::as_str).is_some_and(|e| !e.is_empty())
}

/// The text free-text search looks in: the statement, the request, and any error.
pub fn searchable_text(event: &Value) -> String {
    let mut text = String::new();
    // A result's `message` is the server's command tag ("UPDATE 1"): the statement it
    // answers already holds those words, so only errors are searched there.
    let keys: &[&str] = if event.get("event").and_then(Value::as_str) == Some("db.session.result") {
        &["error"]
    } else {
        // `query`: an extended-protocol Parse's statement.
        &["db_query", "query", "target", "error", "message"]
    };
    for key in keys {
        if let Some(part) = event.get(key).and_then(Value::as_str) {
            text.push_str(part);
            text.push('\n');
        }
    }
    if let Some(body) = event.get("body").filter(|b| !b.is_null()) {
        text.push_str(&body.to_string());
    }
    // A Bind's values as a reviewer reads them, so a search finds what a driver sent in
    // binary as readily as what it sent as text.
    if event.get("event").and_then(Value::as_str) == Some("db.session.postgres.statements.bind") {
        let shown = crate::statement::parameters::of_bind_event(event).unwrap_or_else(|| {
            event.get("parameters").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
        });
        for value in shown {
            text.push_str(&value);
            text.push('\n');
        }
    }
    text
}

/// Numbers of this many digits or more (ids, amounts, timestamps) are not indexed: nearly
/// every one is a term of its own, and together they made most of the index. A search for
/// one still finds it, on read-back.
const LONG_NUMBER_DIGITS: usize = 4;

/// Words of SQL's syntax that nearly every statement holds and nobody searches for alone.
/// Statement verbs (select, insert, drop, grant…) stay indexed.
const NOISE_WORDS: &[&str] =
    &["from", "where", "and", "or", "set", "into", "values", "as", "on", "is", "not", "null", "by", "the", "limit"];

pub(super) fn is_indexed_word(word: &str) -> bool {
    (word.len() < LONG_NUMBER_DIGITS || !word.bytes().all(|b| b.is_ascii_digit())) && !NOISE_WORDS.contains(&word)
}

/// The words of an event's searchable text that the index holds, space-separated.
pub fn indexed_text(event: &Value) -> String {
    words(&searchable_text(event)).into_iter().filter(|w| is_indexed_word(w)).collect::<Vec<_>>().join(" ")
}

/// Lower-cased words, split as the index's default tokenizer splits them.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binds_values_are_searchable_as_read() {
        let event = serde_json::json!({"event": "db.session.postgres.statements.bind", "parameters": ["emVicmFmaXNoJ3M=", "NULL"],
            "parameter_formats": [1, -1], "parameter_types": [25, 25]});
        assert_eq!(words(&searchable_text(&event)), ["zebrafish", "s", "null"]);
        assert_eq!(indexed_text(&event), "zebrafish s");
    }
}
