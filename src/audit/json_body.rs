//! Request bodies kept as the JSON text they arrived as.

/// A JSON object recorded as sent (DynamoDB request bodies): validated and stored compact,
/// never built into a tree, since a nested item would be dozens of allocations per request.
#[derive(Debug, Clone)]
pub struct JsonBody(Box<serde_json::value::RawValue>);

impl JsonBody {
    /// The body if it is a JSON object, with the whitespace between tokens removed (a line
    /// break there would end the event's line in the recording).
    pub fn object(bytes: &[u8]) -> Option<JsonBody> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        let raw = serde_json::value::RawValue::from_string(minify(text)).ok()?;
        Some(JsonBody(raw))
    }

    pub fn from_value(value: &serde_json::Value) -> Option<JsonBody> {
        serde_json::value::to_raw_value(value).ok().filter(|_| value.is_object()).map(JsonBody)
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }

    pub fn raw(&self) -> &serde_json::value::RawValue {
        &self.0
    }
}

impl PartialEq for JsonBody {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// JSON text without whitespace outside strings.
fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}
