//! Canonical JSON: the exact bytes a record's hash is taken over.
//!
//! The encoding is RFC 8785 (JSON Canonicalization Scheme) for every value a record holds:
//! no insignificant white space, object members sorted by the UTF-16 code units of their
//! names, strings with only `"`, `\` and control characters escaped (as `\b \t \n \f \r` or
//! `\u00xx`), and integers in plain decimal. Records hold no other numbers (the decision contract
//! rejects them), so the one place where this encoding could differ from RFC 8785, integers
//! beyond 2^53 that JCS would round to a double, is written exactly here.
//!
//! Every decision's record passes through here, so the encoder avoids work it can prove
//! unneeded: a string is copied in runs between the characters it escapes, and an object whose
//! members already come in canonical order (serde_json keeps them in byte order, which is
//! UTF-16 order unless two names differ first at characters from U+E000 up) is not sorted again.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::Value;

/// The canonical encoding of `value`.
pub fn to_string(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write(value, &mut out);
    out
}

/// Appends the canonical encoding of `value` to `out`.
pub fn write(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // Integers print exactly; any other number prints as serde_json does (never in records).
        // Writing to a String cannot fail.
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_str(s, out),
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
            out.push('{');
            if map.keys().is_sorted_by(|a, b| utf16_cmp(a, b).is_lt()) {
                write_members(map.iter(), out);
            } else {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_by(|a, b| utf16_cmp(a.0, b.0));
                write_members(members.into_iter(), out);
            }
            out.push('}');
        }
    }
}

fn write_members<'a>(members: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut String) {
    for (i, (key, item)) in members.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(key, out);
        out.push(':');
        write(item, out);
    }
}

/// Compares two names by their UTF-16 code units. UTF-8 byte order is code point order, which
/// is UTF-16 order except between U+E000..U+FFFF and the characters beyond U+FFFF (surrogate
/// pairs, 0xD800..): only when the first differing bytes both lead such characters (0xEE and up)
/// does the comparison need UTF-16.
fn utf16_cmp(a: &str, b: &str) -> Ordering {
    let first_difference = a
        .bytes()
        .zip(b.bytes())
        .enumerate()
        .find(|(_, (p, q))| p != q);
    match first_difference {
        None => a.len().cmp(&b.len()),
        // Bytes from 0xEE up are lead bytes, so `i` is a character boundary in both.
        Some((i, (p, q))) if p >= 0xEE && q >= 0xEE => a
            .get(i..)
            .unwrap_or_default()
            .encode_utf16()
            .cmp(b.get(i..).unwrap_or_default().encode_utf16()),
        Some((_, (p, q))) => p.cmp(&q),
    }
}

/// Appends `s` as a canonical JSON string.
pub fn write_str(s: &str, out: &mut String) {
    out.push('"');
    let mut run = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            0..0x20 => "",
            _ => continue,
        };
        // `i` holds an ASCII byte, so both slices end on character boundaries.
        out.push_str(s.get(run..i).unwrap_or_default());
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        run = i + 1;
    }
    out.push_str(s.get(run..).unwrap_or_default());
    out.push('"');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// The encoding as RFC 8785 states it, without the fast paths: every object sorted by
    /// UTF-16 code units, every string escaped character by character.
    fn plain(value: &Value, out: &mut String) {
        match value {
            Value::String(s) => plain_str(s, out),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    plain(item, out);
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
                    plain_str(key, out);
                    out.push(':');
                    plain(item, out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }

    fn plain_str(s: &str, out: &mut String) {
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

    /// Names and strings drawn to reach every branch: escapes, control characters, and the
    /// characters where UTF-8 and UTF-16 orders part (U+E000 up against surrogate pairs).
    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just('a'),
                Just('"'),
                Just('\\'),
                Just('\u{1}'),
                Just('\u{1f}'),
                Just('\n'),
                Just('\u{e000}'),
                Just('\u{ffff}'),
                Just('\u{10000}'),
                Just('\u{1f600}'),
                any::<char>(),
            ],
            0..6,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(text(), inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_fast_encoder_writes_what_the_plain_one_does(value in json_value()) {
            let mut expected = String::new();
            plain(&value, &mut expected);
            prop_assert_eq!(to_string(&value), expected);
        }
    }

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
