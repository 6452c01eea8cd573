//! JSON means one thing: a text whose objects repeat a member name is read differently by
//! different readers (serde_json keeps the last, many others the first), so such a text is never
//! evidence, and never a request. [`duplicate_key`] finds the first repeated name.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

/// Objects with more members than this are checked through a hash set, not a scan.
const SCAN: usize = 16;

/// The JSON pointer (RFC 6901) of the first member whose name repeats an earlier one of the same
/// object, at any depth; `None` when there is none, or when `text` is not JSON (its parser says
/// why).
pub fn duplicate_key(text: &str) -> Option<String> {
    if no_repeats(text.as_bytes()) {
        return None;
    }
    named(text)
}

/// Most names of open objects, and most open objects and arrays, that [`no_repeats`] follows;
/// beyond either it leaves the text to the full reading.
const QUICK_NAMES: usize = 64;
const QUICK_DEPTH: usize = 16;

/// A quick check, on every request: `true` only if no object of `text` repeats a member name.
/// It reads the bytes once, without allocating, comparing each object's names as written; an
/// escaped name (which could spell another name differently), a text nested or named beyond
/// its bounds, or a repeat sends the text to the full reading ([`named`]), which decides and
/// names the pointer. Given text that is not JSON it may answer either way; the full reading
/// then finds nothing.
fn no_repeats(text: &[u8]) -> bool {
    // Per open object: where its names start in `names`, and whether a name comes next;
    // arrays are `None`.
    let mut open: [Option<(usize, bool)>; QUICK_DEPTH] = [None; QUICK_DEPTH];
    let mut depth: usize = 0;
    let mut names: [&[u8]; QUICK_NAMES] = [&[]; QUICK_NAMES];
    let mut count = 0;
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => {
                let start = i + 1;
                let mut escaped = false;
                i = start;
                loop {
                    // Strings are most of a body: skip to the next quote or backslash at once.
                    let rest = text.get(i..).unwrap_or_default();
                    match rest.iter().position(|&c| c == b'"' || c == b'\\') {
                        Some(at) if rest.get(at) == Some(&b'"') => {
                            i += at;
                            break;
                        }
                        Some(at) => {
                            escaped = true;
                            i += at + 2;
                        }
                        None => return false,
                    }
                }
                let Some(Some((first, expecting))) =
                    depth.checked_sub(1).and_then(|d| open.get_mut(d))
                else {
                    i += 1;
                    continue;
                };
                if !*expecting {
                    i += 1;
                    continue;
                }
                *expecting = false;
                let (Some(name), Some(mine)) = (text.get(start..i), names.get(*first..count))
                else {
                    return false;
                };
                if escaped || count == QUICK_NAMES || mine.contains(&name) {
                    return false;
                }
                if let Some(slot) = names.get_mut(count) {
                    *slot = name;
                }
                count += 1;
            }
            b'{' | b'[' => {
                let Some(slot) = open.get_mut(depth) else {
                    return false;
                };
                *slot = (b == b'{').then_some((count, true));
                depth += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if let Some(Some((first, _))) = open.get(depth) {
                    count = *first;
                }
            }
            b',' => {
                if let Some(Some((_, expecting))) =
                    depth.checked_sub(1).and_then(|d| open.get_mut(d))
                {
                    *expecting = true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    true
}

/// The full reading: the pointer of the first repeated name, through serde_json's parser.
fn named(text: &str) -> Option<String> {
    let mut found = None;
    let mut path = Vec::new();
    let mut names = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = Walk {
        path: &mut path,
        names: &mut names,
        found: &mut found,
    }
    .deserialize(&mut de);
    found
}

/// A member name, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

enum Step<'de> {
    Index(usize),
    Name(Cow<'de, str>),
}

struct Walk<'p, 'de> {
    path: &'p mut Vec<Step<'de>>,
    /// The names of the objects being read, innermost last: one buffer for all of them, so
    /// that checking a request allocates once, not once per object.
    names: &'p mut Vec<Cow<'de, str>>,
    found: &'p mut Option<String>,
}

impl Walk<'_, '_> {
    fn pointer(&self, last: &str) -> String {
        let mut pointer = String::new();
        for step in self.path.iter() {
            pointer.push('/');
            match step {
                Step::Index(i) => pointer.push_str(&i.to_string()),
                Step::Name(name) => pointer.push_str(&escape(name)),
            }
        }
        pointer.push('/');
        pointer.push_str(&escape(last));
        pointer
    }
}

fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

impl<'de> DeserializeSeed<'de> for Walk<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            self.path.push(Step::Index(i));
            let more = seq.next_element_seed(Walk {
                path: &mut *self.path,
                names: &mut *self.names,
                found: &mut *self.found,
            })?;
            self.path.pop();
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let start = self.names.len();
        let mut many: HashSet<Cow<'de, str>> = HashSet::new();
        let mut count = 0;
        while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
            let seen = if count < SCAN {
                self.names
                    .get(start..)
                    .is_some_and(|mine| mine.contains(&name))
            } else {
                if many.is_empty() {
                    many.extend(self.names.drain(start..));
                }
                many.contains(&name)
            };
            if seen {
                *self.found = Some(self.pointer(&name));
                return Err(A::Error::custom("duplicate member name"));
            }
            self.path.push(Step::Name(name.clone()));
            map.next_value_seed(Walk {
                path: &mut *self.path,
                names: &mut *self.names,
                found: &mut *self.found,
            })?;
            self.path.pop();
            // The members' own objects have been read: their names are gone from the buffer.
            if count < SCAN {
                self.names.push(name);
            } else {
                many.insert(name);
            }
            count += 1;
        }
        self.names.truncate(start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_repeated_name_at_any_depth() {
        assert_eq!(duplicate_key(r#"{"a": 1, "b": 2}"#), None);
        assert_eq!(duplicate_key(r#"{"a": 1, "a": 2}"#).as_deref(), Some("/a"));
        assert_eq!(
            duplicate_key(r#"{"subject": {"type": "user", "id": "bob", "id": "alice"}}"#)
                .as_deref(),
            Some("/subject/id")
        );
        assert_eq!(
            duplicate_key(r#"{"x": [{"k": 1}, {"a/b": 1, "a/b": 2}]}"#).as_deref(),
            Some("/x/1/a~1b")
        );
        // An escaped name is the same name as its plain spelling.
        assert_eq!(
            duplicate_key(r#"{"id": 1, "\u0069d": 2}"#).as_deref(),
            Some("/id")
        );
        // Same names in different objects are fine, and nested objects do not hide a repeat.
        assert_eq!(duplicate_key(r#"{"a": {"id": 1}, "b": {"id": 2}}"#), None);
        assert_eq!(
            duplicate_key(r#"{"a": {"x": 1, "y": [{"x": 2}]}, "b": {"x": 1}, "a": 3}"#).as_deref(),
            Some("/a")
        );
        assert_eq!(
            duplicate_key(r#"{"a": {"x": 1}, "b": {"a": 1, "b": {"a": 2}, "a": 3}}"#).as_deref(),
            Some("/b/a")
        );
        assert_eq!(duplicate_key("not json"), None);
    }

    /// A JSON text with objects whose names come from a small set, so that repeats are common,
    /// sometimes escaped, with white space between tokens.
    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let name = prop_oneof![
            Just("\"a\"".to_owned()),
            Just("\"b\"".to_owned()),
            Just("\"\\u0061\"".to_owned()),
            Just("\"a\\\"\"".to_owned()),
            Just("\"c/d\"".to_owned()),
        ];
        let leaf = prop_oneof![
            Just("1".to_owned()),
            Just("\"a\"".to_owned()),
            Just("\"{,}\\\"[\"".to_owned()),
            Just("null".to_owned()),
        ];
        leaf.prop_recursive(4, 32, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|items| format!("[ {} ]", items.join(" , "))),
                prop::collection::vec((name.clone(), inner), 0..5).prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(n, v)| format!("{n} : {v}"))
                        .collect();
                    format!("{{ {} }}", members.join(", "))
                }),
            ]
        })
    }

    proptest::proptest! {
        /// The quick check never says "no repeats" where the full reading finds one.
        #[test]
        fn the_quick_check_agrees_with_the_full_reading(text in text()) {
            proptest::prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
            if no_repeats(text.as_bytes()) {
                proptest::prop_assert_eq!(named(&text), None);
            }
        }
    }

    #[test]
    fn large_objects_are_checked_too() {
        let mut text = String::from("{");
        for i in 0..100 {
            text.push_str(&format!("\"k{i}\": {i},"));
        }
        text.push_str("\"k7\": 0}");
        assert_eq!(duplicate_key(&text).as_deref(), Some("/k7"));
        text.truncate(text.len() - "\"k7\": 0}".len());
        text.push_str("\"k100\": 0}");
        assert_eq!(duplicate_key(&text), None);
        // Past the scan, with objects inside it.
        let mut text = String::from("{");
        for i in 0..40 {
            text.push_str(&format!("\"k{i}\": {{\"k{i}\": {{\"k0\": 1}}}},"));
        }
        text.push_str("\"k3\": 0}");
        assert_eq!(duplicate_key(&text).as_deref(), Some("/k3"));
        // Deeper than the quick check follows.
        let deep = format!("{}{{\"a\": 1, \"a\": 2}}{}", "[".repeat(20), "]".repeat(20));
        assert_eq!(
            duplicate_key(&deep).as_deref(),
            Some(&*format!("{}/a", "/0".repeat(20)))
        );
        let deep = format!("{}{{\"a\": 1, \"b\": 2}}{}", "[".repeat(20), "]".repeat(20));
        assert_eq!(duplicate_key(&deep), None);
    }
}
