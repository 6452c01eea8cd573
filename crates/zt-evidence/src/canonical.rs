//! Canonical JSON: the exact bytes a record's hash is taken over.
//!
//! The encoding is RFC 8785 (JSON Canonicalization Scheme) for every value a record holds:
//! no insignificant white space, object members sorted by the UTF-16 code units of their
//! names, strings with only `"`, `\` and control characters escaped (as `\b \t \n \f \r` or
//! `\u00xx`), and integers in plain decimal. Records hold no other numbers (the decision contract
//! rejects them), so the one place where this encoding could differ from RFC 8785, integers
//! beyond 2^53 that JCS would round to a double, is written exactly here.

use serde_json::Value;

/// The canonical encoding of `value`.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // Integers print exactly; any other number prints as serde_json does (never in records).
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_are_sorted_by_utf16_and_strings_escaped_minimally() {
        let value = json!({"b": [1, -2, true, null], "a": "x\"y\\z\n\u{1}é/", "\u{e000}": 1, "\u{1f600}": 2});
        // U+1F600 is a surrogate pair (0xD83D ...), which sorts before U+E000 in UTF-16.
        assert_eq!(
            to_string(&value),
            "{\"a\":\"x\\\"y\\\\z\\n\\u0001é/\",\"b\":[1,-2,true,null],\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
    }

    #[test]
    fn large_integers_are_exact() {
        assert_eq!(to_string(&json!(i64::MIN)), "-9223372036854775808");
        assert_eq!(
            to_string(&json!(9_007_199_254_740_993_i64)),
            "9007199254740993"
        );
    }

    #[test]
    fn parsing_the_encoding_gives_the_value_back() {
        let value = json!({"k": {"z": [], "a": {}}, "s": "\u{7f}\u{2028}"});
        let text = to_string(&value);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }
}
