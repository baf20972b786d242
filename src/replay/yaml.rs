//! A small YAML emitter for JSON values. Strings are written JSON-quoted, which YAML reads
//! as double-quoted scalars, so no escaping rules of YAML's own are needed.

use serde_json::Value;

pub fn write_document_item(value: &Value, out: &mut String) {
    write_item(value, 0, out);
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some("null".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(serde_json::to_string(s).unwrap_or_default()),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(o) if o.is_empty() => Some("{}".into()),
        _ => None,
    }
}

/// Writes `value` as a list item (`- ...`) at `indent`.
fn write_item(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match scalar(value) {
        Some(s) => out.push_str(&format!("{pad}- {s}\n")),
        None => {
            out.push_str(&format!("{pad}-"));
            write_nested(value, indent + 2, true, out);
        }
    }
}

/// Writes a map or list; `inline_first` puts the first entry on the current line.
fn write_nested(value: &Value, indent: usize, inline_first: bool, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (i, (key, v)) in map.iter().enumerate() {
                let lead = if i == 0 && inline_first { " ".to_string() } else { pad.clone() };
                let key = serde_json::to_string(key).unwrap_or_default();
                match scalar(v) {
                    Some(s) => out.push_str(&format!("{lead}{key}: {s}\n")),
                    None => {
                        out.push_str(&format!("{lead}{key}:\n"));
                        write_nested(v, indent + 2, false, out);
                    }
                }
            }
        }
        Value::Array(items) => {
            if inline_first {
                out.push('\n');
            }
            for item in items {
                write_item(item, indent, out);
            }
        }
        other => out.push_str(&format!(" {}\n", scalar(other).unwrap_or_default())),
    }
}
