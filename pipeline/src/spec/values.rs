//! Validated scalar values of `.slipway.yml`: each type refuses bad input while it is parsed,
//! so serde_yaml reports the exact line and column of the offending value.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Deserializes a scalar as text and checks it inside the visitor, so that serde_yaml marks
/// an error with the position of the scalar itself.
pub(super) fn checked<'de, D, T>(
    deserializer: D,
    check: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct Checked<T>(fn(&str) -> Result<T, String>);
    impl<T> Visitor<'_> for Checked<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(Checked(check))
}

/// A container or step name: a DNS label (lowercase letters, digits and `-`, at most 63).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            let text = text.to_owned();
            if is_dns_label(&text) {
                Ok(Name(text))
            } else {
                Err(format!(
                    "`{text}` is not a valid name: expected a DNS label (1 to 63 lowercase letters, digits or `-`, not starting or ending with `-`)"
                ))
            }
        })
    }
}

/// True when `text` can be a host name on the build network.
fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && !text.starts_with('-')
        && !text.ends_with('-')
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The name of an environment variable or secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct VariableName(String);

impl VariableName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for VariableName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            let text = text.to_owned();
            let mut bytes = text.bytes();
            let first_ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
            if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                Ok(VariableName(text))
            } else {
                Err(format!(
                    "`{text}` is not a valid variable name: expected letters, digits and `_`, not starting with a digit"
                ))
            }
        })
    }
}

/// An environment value: YAML strings, numbers and booleans are all taken as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// A positive duration written as `<number><unit>` pairs, units `s`, `m`, `h` (`90s`, `1h30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecDuration(pub Duration);

impl SpecDuration {
    pub fn parse(text: &str) -> Option<SpecDuration> {
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => return None,
            };
            let amount: u64 = digits.parse().ok()?;
            total = total.checked_add(amount.checked_mul(unit)?)?;
            digits.clear();
        }
        (digits.is_empty() && total > 0).then_some(SpecDuration(Duration::from_secs(total)))
    }
}

impl<'de> Deserialize<'de> for SpecDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            let text = text.to_owned();
            SpecDuration::parse(&text).ok_or_else(|| {
                format!(
                    "`{text}` is not a duration: expected a positive number with a unit, like 30s, 10m or 1h"
                )
            })
        })
    }
}

/// A Debian package name (policy 5.6.1): lowercase letters, digits, `+`, `-`, `.`; at least two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PackageName(String);

impl PackageName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for PackageName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            let text = text.to_owned();
            let starts_alnum = text
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            let chars_ok = text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
            if text.len() >= 2 && starts_alnum && chars_ok {
                Ok(PackageName(text))
            } else {
                Err(format!(
                    "`{text}` is not a valid Debian package name: expected at least two lowercase letters, digits, `+`, `-` or `.`, starting with a letter or digit"
                ))
            }
        })
    }
}

/// A Unix file mode written as a quoted octal string (`"0755"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl Default for FileMode {
    fn default() -> Self {
        FileMode(0o644)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        impl Visitor<'_> for ModeVisitor {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an octal file mode in quotes, like \"0755\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileMode, E> {
                match u32::from_str_radix(v, 8) {
                    Ok(mode) if !v.is_empty() && mode <= 0o7777 => Ok(FileMode(mode)),
                    _ => Err(E::custom(format!(
                        "`{v}` is not a file mode: expected octal digits up to 7777, like \"0755\""
                    ))),
                }
            }
        }
        deserializer.deserialize_str(ModeVisitor)
    }
}

/// A path inside the workspace: relative, never leaving it through `..`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct WorkspacePath(String);

impl WorkspacePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for WorkspacePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            let text = text.to_owned();
            let problem = if text.is_empty() {
                Some("it is empty")
            } else if text.starts_with('/') {
                Some("it is absolute")
            } else if text.split('/').any(|part| part == "..") {
                Some("`..` would leave the workspace")
            } else {
                None
            };
            match problem {
                None => Ok(WorkspacePath(text)),
                Some(why) => Err(format!(
                    "`{text}` is refused: expected a relative path inside the workspace, but {why}"
                )),
            }
        })
    }
}

/// An absolute path on the installed system, without `..`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct InstallPath(String);

impl InstallPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for InstallPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            let text = text.to_owned();
            let problem = if !text.starts_with('/') {
                Some("it is not absolute")
            } else if text.split('/').any(|part| part == "..") {
                Some("it contains `..`")
            } else if text.ends_with('/') {
                Some("it names a directory, not a file")
            } else {
                None
            };
            match problem {
                None => Ok(InstallPath(text)),
                Some(why) => Err(format!(
                    "`{text}` is refused: expected an absolute file path like /usr/lib/app/main.py, but {why}"
                )),
            }
        })
    }
}

/// Where a package entry installs: an absolute file path, or a directory ending in `/` (the
/// place of a directory's or a glob's files, or of a file under its own name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct InstallDest(String);

impl InstallDest {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory every file lands in or under: the path without its trailing `/`.
    pub fn directory(&self) -> &str {
        self.0.trim_end_matches('/')
    }
}

impl<'de> Deserialize<'de> for InstallDest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            let text = text.to_owned();
            let problem = if !text.starts_with('/') {
                Some("it is not absolute")
            } else if text.split('/').any(|part| part == ".." || part == ".") {
                Some("it contains `..` or `.`")
            } else if text.contains("//") {
                Some("it has an empty part")
            } else {
                None
            };
            match problem {
                None => Ok(InstallDest(text)),
                Some(why) => Err(format!(
                    "`{text}` is refused: expected an absolute path like /usr/lib/app/main.py, or a directory like /usr/lib/app/, but {why}"
                )),
            }
        })
    }
}

/// A Unix user or group name, or a numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AccountName(String);

impl AccountName {
    pub fn root() -> AccountName {
        AccountName("root".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AccountName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            let text = text.to_owned();
            let mut bytes = text.bytes();
            let first_ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
            let numeric_id =
                text.parse::<u32>().is_ok() && text.bytes().all(|b| b.is_ascii_digit());
            if numeric_id
                || first_ok
                    && text.len() <= 32
                    && bytes.all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
            {
                Ok(AccountName(text))
            } else {
                Err(format!(
                    "`{text}` is not a valid user or group: expected a name of lowercase letters, digits, `_` or `-`, or a numeric id"
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_add_up_their_parts_and_refuse_anything_else() {
        let seconds = |text| SpecDuration::parse(text).map(|d| d.0.as_secs());
        assert_eq!(seconds("30s"), Some(30));
        assert_eq!(seconds("10m"), Some(600));
        assert_eq!(seconds("1h30m"), Some(5400));
        for bad in ["", "10", "0s", "1d", "m", "1.5h", "10 m", "-1s"] {
            assert_eq!(seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dns_labels_are_lowercase_and_bounded() {
        assert!(is_dns_label("notify-failure"));
        assert!(is_dns_label("pg15"));
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }
}
