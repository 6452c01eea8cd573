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
    let mut found = None;
    let mut path = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = Walk {
        path: &mut path,
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
        let mut names: Vec<Cow<'de, str>> = Vec::new();
        let mut many: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
            let seen = if names.len() < SCAN {
                names.contains(&name)
            } else {
                if many.is_empty() {
                    many.extend(names.iter().cloned());
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
                found: &mut *self.found,
            })?;
            self.path.pop();
            if names.len() < SCAN {
                names.push(name);
            } else {
                many.insert(name);
            }
        }
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
        // Same names in different objects are fine.
        assert_eq!(duplicate_key(r#"{"a": {"id": 1}, "b": {"id": 2}}"#), None);
        assert_eq!(duplicate_key("not json"), None);
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
    }
}
