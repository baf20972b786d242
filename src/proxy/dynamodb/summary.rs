//! What a DynamoDB response says, for the result event: its error type and message, or its
//! counts. Read from a copy of the response taken while it streams to the client.

use std::collections::HashMap;

use serde::de::IgnoredAny;

use crate::audit::Status;

/// A response's first bytes (up to the recording's cap) and last few, as it streamed past.
#[derive(Debug, Default)]
pub struct Captured {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    pub total: u64,
    /// The body ended normally (not cut off by the client or the upstream).
    pub complete: bool,
    pub gzip: bool,
}

/// Bytes kept from the end of a response too large to keep whole: DynamoDB writes its
/// counts after the items.
pub const TAIL_BYTES: usize = 4096;

/// The parts of a response the result event needs; items themselves are skipped unread
/// into any tree, so summarising a Query costs no allocation per item.
#[derive(Debug, Default, serde::Deserialize)]
struct Reply {
    #[serde(rename = "__type")]
    kind: Option<String>,
    #[serde(alias = "Message")]
    message: Option<String>,
    #[serde(rename = "Count")]
    count: Option<u64>,
    #[serde(rename = "ScannedCount")]
    scanned_count: Option<u64>,
    #[serde(rename = "ConsumedCapacity")]
    consumed_capacity: Option<serde_json::Value>,
    #[serde(rename = "UnprocessedItems")]
    unprocessed_items: Option<HashMap<String, Vec<IgnoredAny>>>,
    #[serde(rename = "UnprocessedKeys")]
    unprocessed_keys: Option<HashMap<String, KeysAndAttributes>>,
    #[serde(rename = "LastEvaluatedKey")]
    last_evaluated_key: Option<IgnoredAny>,
    #[serde(rename = "Item")]
    item: Option<IgnoredAny>,
    #[serde(rename = "Responses")]
    responses: Option<HashMap<String, Vec<IgnoredAny>>>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct KeysAndAttributes {
    #[serde(rename = "Keys", default)]
    keys: Vec<IgnoredAny>,
}

/// The result of one request: success with the number of items it returned or wrote, or
/// the error.
pub fn summarize(status_code: u16, captured: &Captured, head_cap: usize) -> (Status, u64) {
    let whole = captured.complete && captured.total <= captured.head.len() as u64;
    let body: Option<Reply> = if whole {
        if captured.gzip {
            gunzip(&captured.head, head_cap).and_then(|b| serde_json::from_slice(&b).ok())
        } else {
            serde_json::from_slice(&captured.head).ok()
        }
    } else {
        None
    };
    if !(200..300).contains(&status_code) {
        let (kind, message) = match body {
            Some(b) => {
                let full = b.kind.unwrap_or_else(|| "UnknownError".into());
                (full.rsplit('#').next().unwrap_or(&full).to_string(), b.message.unwrap_or_default())
            }
            // Query-protocol XML, as AWS's front door (and moto) answer some refusals.
            None => {
                let text = String::from_utf8_lossy(&captured.head);
                match (between(&text, "<Code>", "</Code>"), between(&text, "<Message>", "</Message>")) {
                    (Some(code), message) => (code.to_string(), message.unwrap_or_default().to_string()),
                    (None, _) => (format!("HTTP {status_code}"), text.chars().take(512).collect()),
                }
            }
        };
        return (Status::failed(kind, message), 0);
    }
    if !captured.complete {
        return (Status::failed("ResponseIncomplete", format!("the response ended after {} bytes", captured.total)), 0);
    }
    let Some(body) = body else {
        return (Status { success: true, error: String::new(), message: counts_from_text(&captured.head, &captured.tail) }, 0);
    };
    let mut parts = Vec::new();
    for (key, n) in [("Count", body.count), ("ScannedCount", body.scanned_count)] {
        if let Some(n) = n {
            parts.push(format!("{key} {n}"));
        }
    }
    if let Some(units) = consumed_units(body.consumed_capacity.as_ref()) {
        parts.push(format!("ConsumedCapacity {units}"));
    }
    let unprocessed = match (&body.unprocessed_items, &body.unprocessed_keys) {
        (Some(items), _) => Some(items.values().map(Vec::len).sum::<usize>()),
        (None, Some(keys)) => Some(keys.values().map(|k| k.keys.len()).sum::<usize>()),
        (None, None) => None,
    };
    if let Some(n) = unprocessed {
        parts.push(format!("UnprocessedItems {n}"));
    }
    if body.last_evaluated_key.is_some() {
        parts.push("more pages (LastEvaluatedKey)".into());
    }
    let affected = body.count.unwrap_or_else(|| {
        let items =
            body.item.as_ref().map(|_| 1).or_else(|| body.responses.as_ref().map(|t| t.values().map(Vec::len).sum::<usize>() as u64));
        items.unwrap_or(0)
    });
    (Status { success: true, error: String::new(), message: parts.join(", ") }, affected)
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

fn consumed_units(value: Option<&serde_json::Value>) -> Option<f64> {
    let units = |v: &serde_json::Value| v.get("CapacityUnits").and_then(|u| u.as_f64());
    match value? {
        serde_json::Value::Array(list) => Some(list.iter().filter_map(units).sum()),
        other => units(other),
    }
}

/// Counts found by text in a response too large to parse whole.
fn counts_from_text(head: &[u8], tail: &[u8]) -> String {
    let mut parts = vec!["response too large to summarise whole".to_string()];
    for key in ["Count", "ScannedCount"] {
        let needle = format!("\"{key}\":");
        for part in [tail, head] {
            if let Some(at) = memchr::memmem::find(part, needle.as_bytes()) {
                let digits: String = part[at + needle.len()..]
                    .iter()
                    .skip_while(|b| **b == b' ')
                    .take_while(|b| b.is_ascii_digit())
                    .map(|b| *b as char)
                    .collect();
                if !digits.is_empty() {
                    parts.push(format!("{key} {digits}"));
                    break;
                }
            }
        }
    }
    parts.join(", ")
}

fn gunzip(bytes: &[u8], limit: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).take(limit as u64 + 1).read_to_end(&mut out).ok()?;
    (out.len() <= limit).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &str) -> Captured {
        Captured { head: body.as_bytes().to_vec(), tail: Vec::new(), total: body.len() as u64, complete: true, gzip: false }
    }

    #[test]
    fn counts_and_errors() {
        let (status, n) = summarize(
            200,
            &whole(r#"{"Count":2,"Items":[{},{}],"ScannedCount":5,"ConsumedCapacity":{"TableName":"t","CapacityUnits":0.5}}"#),
            1 << 20,
        );
        assert!(status.success);
        assert_eq!(n, 2);
        assert_eq!(status.message, "Count 2, ScannedCount 5, ConsumedCapacity 0.5");
        let (status, _) = summarize(
            400,
            &whole(
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException","message":"The conditional request failed"}"#,
            ),
            1 << 20,
        );
        assert_eq!((status.error.as_str(), status.message.as_str()), ("ConditionalCheckFailedException", "The conditional request failed"));
        let (status, _) = summarize(200, &whole(r#"{"UnprocessedItems":{"t":[{"PutRequest":{}}]}}"#), 1 << 20);
        assert_eq!(status.message, "UnprocessedItems 1");
        let big = Captured {
            head: b"{\"Items\":[".to_vec(),
            tail: b"],\"Count\":900,\"ScannedCount\":901}".to_vec(),
            total: 5 << 20,
            complete: true,
            gzip: false,
        };
        assert_eq!(summarize(200, &big, 1 << 20).0.message, "response too large to summarise whole, Count 900, ScannedCount 901");
    }
}
