//! Drone's conventions a step may bring: `settings` (passed as `PLUGIN_<NAME>`) and values
//! written as `{from_secret: NAME}` in `settings` and `environment`.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::values::{checked, ScalarText, VariableName};

/// A step's environment value: literal text, or the project's secret of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Text(ScalarText),
    FromSecret(VariableName),
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number, boolean or {from_secret: NAME}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(ScalarText(v.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EnvValue, A::Error> {
                from_secret(map, None).map(EnvValue::FromSecret)
            }
        }
        deserializer.deserialize_any(EnvVisitor)
    }
}

/// The key of a setting: letters, digits, `_`, `-` and `.`, starting with a letter or `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SettingName(String);

impl SettingName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The variable a plugin reads, as Drone and Woodpecker name it: `PLUGIN_` and the key
    /// upper-cased, with `-` and `.` as `_` (`webhook-url` is `PLUGIN_WEBHOOK_URL`).
    pub fn variable(&self) -> String {
        format!(
            "PLUGIN_{}",
            self.0.to_ascii_uppercase().replace(['-', '.'], "_")
        )
    }
}

impl<'de> Deserialize<'de> for SettingName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            let mut bytes = text.bytes();
            let first_ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
            if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                Ok(SettingName(text.to_owned()))
            } else {
                Err(format!(
                    "`{text}` is not a valid setting name: expected letters, digits, `_`, `-` or `.`, starting with a letter or `_`"
                ))
            }
        })
    }
}

/// A setting's value, already in the form the plugin reads: strings as they are, numbers
/// and booleans as text, lists of scalars joined with commas, anything else as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingValue {
    Text(String),
    FromSecret(VariableName),
}

impl<'de> Deserialize<'de> for SettingValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SettingVisitor;
        impl<'de> Visitor<'de> for SettingVisitor {
            type Value = SettingValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value, a list, a map or {from_secret: NAME}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SettingValue, E> {
                Ok(SettingValue::Text(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SettingValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SettingValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SettingValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<SettingValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_unit<E: de::Error>(self) -> Result<SettingValue, E> {
                self.visit_str("")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SettingValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<serde_json::Value>()? {
                    items.push(item);
                }
                Ok(SettingValue::Text(join_list(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SettingValue, A::Error> {
                let Some(first) = map.next_key::<String>()? else {
                    return Ok(SettingValue::Text("{}".to_owned()));
                };
                if first == "from_secret" {
                    return from_secret(map, Some(first)).map(SettingValue::FromSecret);
                }
                let mut object = serde_json::Map::new();
                object.insert(first, map.next_value()?);
                while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                    object.insert(key, value);
                }
                Ok(SettingValue::Text(
                    serde_json::Value::Object(object).to_string(),
                ))
            }
        }
        deserializer.deserialize_any(SettingVisitor)
    }
}

/// Drone's encoding of a list: scalars joined with commas, a list holding lists or maps as JSON.
fn join_list(items: Vec<serde_json::Value>) -> String {
    let scalar = |item: &serde_json::Value| !(item.is_array() || item.is_object());
    if !items.iter().all(scalar) {
        return serde_json::Value::Array(items).to_string();
    }
    let texts: Vec<String> = items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(text) => text,
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        })
        .collect();
    texts.join(",")
}

/// Reads the rest of a `{from_secret: NAME}` map, whose first key may already be read.
fn from_secret<'de, A: MapAccess<'de>>(
    mut map: A,
    first: Option<String>,
) -> Result<VariableName, A::Error> {
    let key = match first {
        Some(key) => key,
        None => map
            .next_key::<String>()?
            .ok_or_else(|| de::Error::custom("expected {from_secret: NAME}, found an empty map"))?,
    };
    if key != "from_secret" {
        return Err(de::Error::custom(format!(
            "unknown key `{key}`: a map here must be {{from_secret: NAME}}"
        )));
    }
    let name: VariableName = map.next_value()?;
    if let Some(extra) = map.next_key::<String>()? {
        return Err(de::Error::custom(format!(
            "unexpected key `{extra}`: {{from_secret: NAME}} takes nothing else"
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn settings(yaml: &str) -> BTreeMap<String, String> {
        let parsed: BTreeMap<SettingName, SettingValue> = serde_yaml::from_str(yaml).unwrap();
        parsed
            .into_iter()
            .map(|(name, value)| {
                let text = match value {
                    SettingValue::Text(text) => text,
                    SettingValue::FromSecret(secret) => format!("secret {}", secret.as_str()),
                };
                (name.variable(), text)
            })
            .collect()
    }

    #[test]
    fn settings_are_encoded_as_drone_encodes_them() {
        let yaml = r#"
channel: dev
webhook-url: {from_secret: SLACK_WEBHOOK}
retries: 3
debug: true
tags: [a, 1, "b c"]
template.vars: {env: prod, n: 2}
matrix: [[1, 2], {a: b}]
"#;
        let expected = BTreeMap::from(
            [
                ("PLUGIN_CHANNEL", "dev"),
                ("PLUGIN_WEBHOOK_URL", "secret SLACK_WEBHOOK"),
                ("PLUGIN_RETRIES", "3"),
                ("PLUGIN_DEBUG", "true"),
                ("PLUGIN_TAGS", "a,1,b c"),
                ("PLUGIN_TEMPLATE_VARS", r#"{"env":"prod","n":2}"#),
                ("PLUGIN_MATRIX", r#"[[1,2],{"a":"b"}]"#),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        assert_eq!(settings(yaml), expected);
    }

    #[test]
    fn a_map_in_environment_must_be_exactly_from_secret() {
        let parse = |yaml| serde_yaml::from_str::<BTreeMap<VariableName, EnvValue>>(yaml);
        let ok = parse("TOKEN: {from_secret: DEPLOY_TOKEN}\nN: 1\n").unwrap();
        assert_eq!(ok.len(), 2);
        for (bad, expected) in [
            ("T: {secret: X}\n", "unknown key `secret`"),
            ("T: {from_secret: X, other: 1}\n", "unexpected key `other`"),
            ("T: {from_secret: 1BAD}\n", "not a valid variable name"),
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains(expected), "{bad}: {error}");
        }
    }
}
