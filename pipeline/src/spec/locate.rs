//! Finds the line and column of a value in YAML text by its path, for semantic errors.
//!
//! serde_yaml keeps no spans, but it marks every error with the position of the value being
//! deserialized. So the locator walks the document along the path and fails on purpose at
//! the target value; the failure carries the position.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into the document: a mapping key or a sequence index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Key(&'static str),
    Index(usize),
}

/// Renders a path the way serde_yaml does: `steps[1].when.branch`.
pub fn display_path(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Key(name) if text.is_empty() => text.push_str(name),
            Segment::Key(name) => {
                text.push('.');
                text.push_str(name);
            }
            Segment::Index(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
}

/// The 1-based (line, column) of the value at `path`, if the path exists.
pub fn locate(text: &str, path: &[Segment]) -> Option<(usize, usize)> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    match (Seek { path }).deserialize(deserializer) {
        Err(error) if error.to_string().contains(FOUND) => error
            .location()
            .map(|location| (location.line(), location.column())),
        _ => None,
    }
}

const FOUND: &str = "slipway-locator-found";

struct Seek<'p> {
    path: &'p [Segment],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Segment::Key(wanted), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        while let Some(name) = map.next_key::<String>()? {
            if name == *wanted {
                return map.next_value_seed(Seek { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Segment::Index(wanted), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        for _ in 0..*wanted {
            seq.next_element::<IgnoredAny>()?;
        }
        seq.next_element_seed(Seek { path: rest })?;
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
}
