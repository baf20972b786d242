//! Recorded text as a reviewer's page shows it. The people being recorded wrote it, so
//! besides the template engine's HTML escaping, anything that could change how the text
//! reads is made visible: control characters, and the bidirectional overrides and isolates
//! that can make `DROP` look like something else.

/// `text` with every control character (but the line break and tab) and every
/// bidirectional control shown as `⟨U+XXXX⟩`, and CRLF line ends made plain.
pub fn visible(text: &str) -> String {
    let text = text.replace("\r\n", "\n");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c) || c == '\u{feff}' {
            out.push_str(&format!("⟨U+{:04X}⟩", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_overrides_become_visible() {
        assert_eq!(visible("a\u{1b}[31mb\r\nc\u{202e}d\te"), "a⟨U+001B⟩[31mb\nc⟨U+202E⟩d\te");
        assert_eq!(visible("<script>"), "<script>", "HTML is the template engine's to escape");
    }
}
