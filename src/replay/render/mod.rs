//! Screen renderers for `dbtape play`. Each protocol plugs one in; the generic renderer
//! shows any event readably. Output uses CRLF line ends, as a terminal in raw mode needs.

mod generic;
mod postgres;

pub use generic::GenericRenderer;
pub use postgres::PostgresRenderer;

use crate::audit::RecordedEvent;

pub trait Renderer {
    /// Appends the event's screen text to `out` (nothing for events the renderer skips).
    fn render(&mut self, event: &RecordedEvent, raw: &[u8], out: &mut String);
}

/// Picks the renderer for a session's protocol.
pub fn renderer_for(protocol: &str) -> Box<dyn Renderer> {
    match protocol {
        "postgres" => Box::new(PostgresRenderer::default()),
        _ => Box::new(GenericRenderer),
    }
}

/// `Mon Jan _2 15:04 UTC`, as `tsh play` prints session start and end.
pub fn screen_time(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.with_timezone(&chrono::Utc).format("%a %b %e %H:%M UTC").to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}

/// A double-quoted string with Go's `%q` escaping.
pub fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => {
                if (c as u32) <= 0xffff {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `prompt` then the text, one trimmed line per line, later lines indented under
/// the first (`tsh play`'s layout).
pub fn write_prompted(prompt: &str, text: &str, out: &mut String) {
    out.push_str("\r\n");
    out.push_str(prompt);
    let indent = " ".repeat(prompt.chars().count());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push_str(&indent);
        }
        out.push_str(line.trim());
        out.push_str("\r\n");
    }
}

pub fn rows_affected(n: u64) -> String {
    if n == 1 {
        "(1 row affected)".to_string()
    } else {
        format!("({n} rows affected)")
    }
}

/// Shared by every renderer: the gap notice for events a best_effort recording lost.
pub fn render_gap(event: &RecordedEvent, out: &mut String) -> bool {
    if event.event != "dbtape.recording.gap" {
        return false;
    }
    out.push_str(&format!("\r\n[dbtape: {} event(s) could not be recorded here: {}]\r\n", event.lost_events.unwrap_or(0), event.error));
    true
}
