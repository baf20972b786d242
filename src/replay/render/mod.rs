//! Screen renderers for `dbtape play`. Each protocol plugs one in; the generic renderer
//! shows any event readably. Output uses CRLF line ends, as a terminal in raw mode needs.

pub mod dynamodb;
mod generic;
pub mod mongodb;
mod postgres;

pub use generic::GenericRenderer;
pub use postgres::PostgresRenderer;

use crate::audit::RecordedEvent;

pub trait Renderer {
    /// Appends the event's screen text to `out` (nothing for events the renderer skips).
    fn render(&mut self, event: &RecordedEvent, raw: &[u8], out: &mut String);
}

/// Picks the renderer for a session's protocol.
pub fn renderer_for(protocol: &str) -> Box<dyn Renderer + Send> {
    match protocol {
        "postgres" => Box::new(PostgresRenderer::default()),
        "mongodb" => Box::new(mongodb::MongoRenderer::default()),
        "dynamodb" => Box::new(dynamodb::DynamoRenderer::default()),
        _ => Box::new(GenericRenderer),
    }
}

/// `Mon Jan _2 15:04 UTC`, as `tsh play` prints session start and end.
pub fn screen_time(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.with_timezone(&chrono::Utc).format("%a %b %e %H:%M UTC").to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}

/// Characters that change how a terminal shows what follows: C0 and C1 controls (ESC, CSI,
/// OSC, `\r`...), DEL, and the Unicode bidirectional overrides that reorder a line ("Trojan
/// Source"). Recorded text comes from clients and servers, so none of it may reach a
/// reviewer's terminal raw: a recorded `ESC[2K\r` could erase a statement from the screen.
fn is_terminal_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(c: char, out: &mut String) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
    }
}

/// `text` with every terminal control escaped visibly (`\x1b`, `\r`, `\n`, `\u{202e}`): for
/// one recorded field shown on a line of its own making.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_terminal_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_terminal_control(c) {
            push_escaped(c, &mut out);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A rendered screen made safe to write to a terminal: the renderers' own line ends
/// (`\r\n`, `\n`) and tabs stay, every other control is escaped. The last line of defence
/// behind the renderers' per-field escaping.
pub fn screen_safe(screen: &str) -> std::borrow::Cow<'_, str> {
    let mut chars = screen.chars().peekable();
    let unsafe_at = |c: char, next: Option<&char>| is_terminal_control(c) && !matches!((c, next), ('\n' | '\t', _) | ('\r', Some('\n')));
    let mut probe = screen.chars().peekable();
    let mut clean = true;
    while let Some(c) = probe.next() {
        if unsafe_at(c, probe.peek()) {
            clean = false;
            break;
        }
    }
    if clean {
        return std::borrow::Cow::Borrowed(screen);
    }
    let mut out = String::with_capacity(screen.len() + 8);
    while let Some(c) = chars.next() {
        if unsafe_at(c, chars.peek()) {
            push_escaped(c, &mut out);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
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
    let prompt = terminal_safe(prompt);
    out.push_str("\r\n");
    out.push_str(&prompt);
    let indent = " ".repeat(prompt.chars().count());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push_str(&indent);
        }
        out.push_str(&terminal_safe(line.trim_matches(|c: char| c == ' ' || c == '\t')));
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
    out.push_str(&format!(
        "\r\n[dbtape: {} event(s) could not be recorded here: {}]\r\n",
        event.lost_events.unwrap_or(0),
        terminal_safe(&event.error)
    ));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_line_ends_kept() {
        assert_eq!(terminal_safe("a\u{1b}[2K\rb\u{9b}c\u{202e}d\te"), "a\\x1b[2K\\rb\\u{009b}c\\u{202e}d\\te");
        assert_eq!(screen_safe("q\u{1b}]0;title\u{7}\r\nx\ry\n"), "q\\x1b]0;title\\x07\r\nx\\ry\n");
        assert!(matches!(screen_safe("plain\r\n"), std::borrow::Cow::Borrowed(_)));
    }
}
