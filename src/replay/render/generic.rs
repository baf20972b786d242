//! Shows any event readably: sessions, queries and results in a prompt layout, and every
//! other event as its type and fields.

use super::{go_quote, render_gap, rows_affected, screen_time, terminal_safe, write_prompted, Renderer};
use crate::audit::RecordedEvent;

/// Fields every event carries; left out of the generic field listing.
const COMMON_FIELDS: &[&str] = &[
    "ei",
    "event",
    "uid",
    "code",
    "time",
    "cluster_name",
    "user",
    "sid",
    "db_service",
    "db_protocol",
    "db_uri",
    "db_name",
    "db_user",
    "db_labels",
    "db_aws_region",
    "db_type",
    "namespace",
    "server_id",
    "server_hostname",
    "server_addr",
    "server_version",
];

#[derive(Default)]
pub struct GenericRenderer;

impl Renderer for GenericRenderer {
    fn render(&mut self, event: &RecordedEvent, raw: &[u8], out: &mut String) {
        if render_gap(event, out) {
            return;
        }
        let prompt = format!("{}> ", if event.db_name.is_empty() { &event.db_service } else { &event.db_name });
        match event.event.as_str() {
            "db.session.start" if event.success == Some(false) => {
                out.push_str(&format!(
                    "Session to database {} refused at {}: {}\r\n",
                    go_quote(&event.db_service),
                    screen_time(&event.time),
                    terminal_safe(&event.error)
                ));
            }
            "db.session.start" => {
                out.push_str(&format!(
                    "Session started to database {} ({}) at {} by {} as {}\r\n",
                    go_quote(&event.db_service),
                    event.db_protocol,
                    screen_time(&event.time),
                    go_quote(&event.user),
                    go_quote(&event.db_user)
                ));
            }
            "db.session.end" => out.push_str(&format!("\r\nSession ended at {}\r\n", screen_time(&event.time))),
            "db.session.query" => write_prompted(&prompt, event.db_query.as_deref().unwrap_or_default(), out),
            "db.session.query.failed" => {
                write_prompted(&prompt, event.db_query.as_deref().unwrap_or_default(), out);
                out.push_str(&format!("DENIED: {}\r\n", terminal_safe(if event.error.is_empty() { &event.message } else { &event.error })));
            }
            "db.session.result" => {
                if event.success == Some(false) {
                    out.push_str(&format!("{}\r\n", terminal_safe(&event.error)));
                } else {
                    out.push_str(&format!("SUCCESS\r\n{}\r\n", rows_affected(event.affected_records)));
                }
            }
            "db.session.dynamodb.request" => {
                let mut line = format!("{} {}", event.method, event.target);
                if !event.raw_query.is_empty() {
                    line.push_str(&format!(" ?{}", event.raw_query));
                }
                write_prompted(&prompt, &line, out);
                if let Some(body) = &event.body {
                    out.push_str(&serde_json::to_string(body).unwrap_or_default());
                    out.push_str("\r\n");
                }
                match event.status_code {
                    Some(0) | None => out.push_str(&format!("FAILED: {}\r\n", terminal_safe(&event.error))),
                    Some(code) => out.push_str(&format!("HTTP {code}\r\n")),
                }
            }
            other => {
                out.push_str(&format!("\r\n[{} {}]", terminal_safe(other), terminal_safe(&event.code)));
                if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(raw) {
                    for (key, value) in map.iter().filter(|(k, _)| !COMMON_FIELDS.contains(&k.as_str())) {
                        out.push_str(&format!(" {key}={value}"));
                    }
                }
                out.push_str("\r\n");
            }
        }
    }
}
