//! DynamoDB sessions as readable operations: `ddb> PutItem books {"Item":…}` followed by
//! `200 OK` with the counts, or by the error AWS (or dbtape) answered.

use std::collections::HashMap;

use serde_json::Value;

use super::{render_gap, terminal_safe, write_prompted, GenericRenderer, Renderer};
use crate::audit::RecordedEvent;

#[derive(Default)]
pub struct DynamoRenderer {
    /// Status codes of requests whose result has not been shown yet, by their `ei`.
    pending: HashMap<u64, u32>,
}

/// `PutItem books {…}`: the operation, the table(s), and the rest of the request.
pub fn operation_line(target: &str, body: Option<&Value>) -> String {
    let operation = target.rsplit_once('.').map_or(target, |(_, op)| op);
    let mut line = operation.to_string();
    let Some(Value::Object(map)) = body else { return line };
    let mut rest = map.clone();
    if let Some(Value::String(table)) = rest.remove("TableName") {
        line.push(' ');
        line.push_str(&table);
    } else if let Some(Value::Object(tables)) = map.get("RequestItems") {
        let names: Vec<&str> = tables.keys().map(String::as_str).collect();
        line.push(' ');
        line.push_str(&names.join(","));
    }
    if !rest.is_empty() {
        line.push(' ');
        line.push_str(&Value::Object(rest).to_string());
    }
    line
}

impl Renderer for DynamoRenderer {
    fn render(&mut self, event: &RecordedEvent, raw: &[u8], out: &mut String) {
        if render_gap(event, out) {
            return;
        }
        let prompt = format!("{}> ", event.db_service);
        match event.event.as_str() {
            "db.session.dynamodb.request" => {
                let mut line = operation_line(&event.target, event.body.as_ref());
                if event.body.is_none() && memchr::memmem::find(raw, br#""field":"body""#).is_some() {
                    line.push_str(" (body not stored: over the recording's size cap)");
                }
                write_prompted(&prompt, &line, out);
                self.pending.insert(event.ei, event.status_code.unwrap_or(0));
            }
            "db.session.result" => {
                let status = event.query_ei.and_then(|ei| self.pending.remove(&ei)).unwrap_or(0);
                let text = match (event.success, status) {
                    (Some(true), code) => {
                        let mut text = format!("{code} OK");
                        if !event.message.is_empty() {
                            text.push_str(" · ");
                            text.push_str(&event.message);
                        } else if event.affected_records > 0 {
                            let n = event.affected_records;
                            text.push_str(&format!(" · {n} item{}", if n == 1 { "" } else { "s" }));
                        }
                        text
                    }
                    (_, 0) => format!("not sent (dbtape): {}: {}", event.error, event.message),
                    (_, code) => format!("{code} {}: {}", event.error, event.message),
                };
                out.push_str(&terminal_safe(&text));
                out.push_str("\r\n");
            }
            _ => GenericRenderer.render(event, raw, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_read_like_the_api() {
        let body = serde_json::json!({"TableName": "books", "Item": {"id": {"S": "1"}}});
        assert_eq!(operation_line("DynamoDB_20120810.PutItem", Some(&body)), r#"PutItem books {"Item":{"id":{"S":"1"}}}"#);
        let batch = serde_json::json!({"RequestItems": {"books": []}});
        assert_eq!(
            operation_line("DynamoDB_20120810.BatchWriteItem", Some(&batch)),
            r#"BatchWriteItem books {"RequestItems":{"books":[]}}"#
        );
        assert_eq!(operation_line("DynamoDBStreams_20120810.ListStreams", None), "ListStreams");
    }
}
