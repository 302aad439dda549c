//! The `cache:` section: workspace paths kept between builds of a project under a key made
//! from the branch and hashes of named files (a dependency lock file), restored before the
//! steps and saved after a passing build. The key template is checked here and rendered by
//! pure code; the caller hashes the files and stores the archives.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::locate::Segment;
use super::validate::Problem;
use super::values::checked;
use super::Spec;

/// The build step that restores the cache, before the services and steps.
pub const CACHE_RESTORE_STEP: &str = "cache-restore";
/// The build step that saves the cache, after the last step of a passing build.
pub const CACHE_SAVE_STEP: &str = "cache-save";
/// Paths one cache may hold.
pub const MAX_CACHE_PATHS: usize = 32;
/// The longest key template, as written.
pub const MAX_TEMPLATE_BYTES: usize = 256;
/// The longest rendered key (it names a file and an S3 object).
pub const MAX_KEY_BYTES: usize = 200;
/// Hex digits of a file hash a key holds.
pub const HASH_DIGITS: usize = 16;

/// `cache: {paths: [...], key: "...", fallback_key: "..."}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    pub paths: Vec<CachePath>,
    pub key: KeyTemplate,
    /// Restored from when nothing is saved under `key`; never saved to.
    pub fallback_key: Option<KeyTemplate>,
}

/// The cache as the plan carries it: the templates are rendered when the build runs, from
/// the commit's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePlan {
    pub paths: Vec<String>,
    pub key: KeyTemplate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_key: Option<KeyTemplate>,
}

impl CacheSpec {
    pub fn plan(&self) -> CachePlan {
        CachePlan {
            paths: self.paths.iter().map(|p| p.0.clone()).collect(),
            key: self.key.clone(),
            fallback_key: self.fallback_key.clone(),
        }
    }
}

/// A path the cache keeps: relative to the workspace, normalised (no `.` or empty
/// components, no trailing `/`), never `..`, absolute, a glob or the workspace itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CachePath(String);

impl CachePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks and normalises `text` as written in `.slipway.yml`.
    pub fn parse(text: &str) -> Result<CachePath, String> {
        let refuse = |why: &str| {
            Err(format!(
                "`{text}` is refused: expected a path relative to the workspace, like node_modules or .cargo/registry, but {why}"
            ))
        };
        if text.starts_with('/') {
            return refuse("it is absolute");
        }
        if text.len() > 1024 {
            return refuse("it is longer than 1024 bytes");
        }
        if text.chars().any(|c| c.is_control()) {
            return refuse("it holds a control character");
        }
        if text.contains(['*', '?', '[']) {
            return refuse("globs are not supported: name the directory");
        }
        let parts: Vec<&str> = text
            .split('/')
            .filter(|part| !part.is_empty() && *part != ".")
            .collect();
        if parts.contains(&"..") {
            return refuse("`..` would leave the workspace");
        }
        if parts.is_empty() {
            return refuse("it names the whole workspace");
        }
        Ok(CachePath(parts.join("/")))
    }
}

impl<'de> Deserialize<'de> for CachePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, CachePath::parse)
    }
}

/// A key template: literal text (letters, digits, `.`, `_`, `-`) and expressions in
/// `{{ }}`: `{{ branch }}` (the build's branch, other characters as `%XX`) and
/// `{{ hash "FILE" ... }}` (the first [`HASH_DIGITS`] hex digits of SHA-256 over the named
/// workspace files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    text: String,
    parts: Vec<KeyPart>,
}

/// One piece of a key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Literal(String),
    Branch,
    /// The files, relative to the workspace, in the order written.
    Hash(Vec<String>),
}

/// Why a key could not be rendered for a build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cannot hash `{file}`: {reason}")]
    Hash { file: String, reason: String },
    #[error("the key is longer than {MAX_KEY_BYTES} bytes once rendered")]
    TooLong,
}

impl KeyTemplate {
    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn parts(&self) -> &[KeyPart] {
        &self.parts
    }

    /// The files the template hashes, each once, in the order written.
    pub fn files(&self) -> Vec<&str> {
        let mut files: Vec<&str> = Vec::new();
        for part in &self.parts {
            if let KeyPart::Hash(names) = part {
                for name in names {
                    if !files.contains(&name.as_str()) {
                        files.push(name);
                    }
                }
            }
        }
        files
    }

    /// Checks `text` as written in `.slipway.yml`.
    pub fn parse(text: &str) -> Result<KeyTemplate, String> {
        if text.len() > MAX_TEMPLATE_BYTES {
            return Err(format!(
                "the key template is longer than {MAX_TEMPLATE_BYTES} bytes"
            ));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find("{{") {
                Some(0) => {
                    let Some(end) = rest.find("}}") else {
                        return Err(format!("`{text}`: `{{{{` is never closed by `}}}}`"));
                    };
                    parts.push(expression(rest[2..end].trim(), text)?);
                    rest = &rest[end + 2..];
                }
                found => {
                    let literal = &rest[..found.unwrap_or(rest.len())];
                    if let Some(bad) = literal
                        .chars()
                        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
                    {
                        return Err(format!(
                            "`{text}`: `{bad}` is not allowed in a key: outside `{{{{ }}}}` use letters, digits, `.`, `_` and `-`"
                        ));
                    }
                    parts.push(KeyPart::Literal(literal.to_owned()));
                    rest = &rest[literal.len()..];
                }
            }
        }
        if parts.is_empty() {
            return Err("expected a key, like \"deps-{{ hash \\\"Cargo.lock\\\" }}\"".to_owned());
        }
        Ok(KeyTemplate {
            text: text.to_owned(),
            parts,
        })
    }

    /// The key for a build of `branch`, with `hash` giving the SHA-256 (hex) of the named
    /// files together.
    pub fn render(
        &self,
        branch: &str,
        mut hash: impl FnMut(&[String]) -> Result<String, KeyError>,
    ) -> Result<String, KeyError> {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                KeyPart::Literal(text) => key.push_str(text),
                KeyPart::Branch => key.push_str(&escape(branch)),
                KeyPart::Hash(files) => {
                    let digest = hash(files)?;
                    key.push_str(&digest[..digest.len().min(HASH_DIGITS)]);
                }
            }
            if key.len() > MAX_KEY_BYTES {
                return Err(KeyError::TooLong);
            }
        }
        Ok(key)
    }
}

/// One `{{ ... }}` of `template`.
fn expression(inner: &str, template: &str) -> Result<KeyPart, String> {
    if inner == "branch" {
        return Ok(KeyPart::Branch);
    }
    let Some(arguments) = inner.strip_prefix("hash") else {
        return Err(format!(
            "`{template}`: `{{{{ {inner} }}}}` is unknown: expected `{{{{ branch }}}}` or `{{{{ hash \"FILE\" }}}}`"
        ));
    };
    let mut files = Vec::new();
    let mut rest = arguments.trim_start();
    if rest.len() == arguments.len() && !rest.is_empty() {
        return Err(format!(
            "`{template}`: `{{{{ {inner} }}}}` is unknown: expected `{{{{ branch }}}}` or `{{{{ hash \"FILE\" }}}}`"
        ));
    }
    while !rest.is_empty() {
        let quoted = rest.strip_prefix('"').and_then(|r| r.split_once('"'));
        let Some((file, after)) = quoted else {
            return Err(format!(
                "`{template}`: `hash` takes file names in double quotes, like {{{{ hash \"Cargo.lock\" }}}}"
            ));
        };
        let file = CachePath::parse(file).map_err(|e| format!("`{template}`: {e}"))?;
        files.push(file.0);
        rest = after.trim_start();
    }
    if files.is_empty() {
        return Err(format!(
            "`{template}`: `hash` needs at least one file, like {{{{ hash \"Cargo.lock\" }}}}"
        ));
    }
    Ok(KeyPart::Hash(files))
}

/// A branch as key text: characters outside letters, digits, `.`, `_` and `-` as `%XX`
/// (each byte), so two branches never share a key.
fn escape(branch: &str) -> String {
    let mut text = String::new();
    for byte in branch.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            text.push(byte as char);
        } else {
            text.push_str(&format!("%{byte:02X}"));
        }
    }
    text
}

impl fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for KeyTemplate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for KeyTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, KeyTemplate::parse)
    }
}

/// At least one path, at most [`MAX_CACHE_PATHS`], none inside another; no step may take
/// a cache step's name.
pub fn check(spec: &Spec) -> Result<(), Problem> {
    let Some(cache) = &spec.cache else {
        return Ok(());
    };
    let paths = || vec![Segment::Key("cache"), Segment::Key("paths")];
    if cache.paths.is_empty() || cache.paths.len() > MAX_CACHE_PATHS {
        return Err(Problem {
            path: paths(),
            message: format!("expected 1 to {MAX_CACHE_PATHS} paths"),
        });
    }
    for (index, path) in cache.paths.iter().enumerate() {
        let inside = cache.paths[..index].iter().find(|other| {
            let (a, b) = (other.as_str(), path.as_str());
            a == b || nested(a, b) || nested(b, a)
        });
        if let Some(other) = inside {
            return Err(Problem {
                path: [paths(), vec![Segment::Index(index)]].concat(),
                message: format!(
                    "`{}` overlaps `{}`: list each directory once",
                    path.as_str(),
                    other.as_str()
                ),
            });
        }
    }
    let reserved = [CACHE_RESTORE_STEP, CACHE_SAVE_STEP];
    if let Some(index) = spec
        .steps
        .iter()
        .position(|s| reserved.contains(&s.name.as_str()))
    {
        return Err(Problem {
            path: vec![
                Segment::Key("steps"),
                Segment::Index(index),
                Segment::Key("name"),
            ],
            message: format!(
                "`{}` is the name of a step of `cache:`; rename this step",
                spec.steps[index].name
            ),
        });
    }
    Ok(())
}

/// Whether `inner` is under the directory `outer`.
fn nested(outer: &str, inner: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;

    const STEP: &str =
        "steps:\n  - {name: test, image: slipway/debian:bookworm, commands: [\"true\"]}\n";

    fn hashes(files: &[String]) -> Result<String, KeyError> {
        Ok(format!("{:0>64}", files.join("+").len()))
    }

    #[test]
    fn a_key_renders_the_branch_escaped_and_the_hash_cut() {
        let template = KeyTemplate::parse("deps-{{ branch }}-{{hash \"Cargo.lock\"}}").unwrap();
        assert_eq!(template.files(), ["Cargo.lock"]);
        let key = template.render("feature/x y", hashes).unwrap();
        assert_eq!(key, "deps-feature%2Fx%20y-0000000000000000");
        // A branch that looks like another once escaped does not share its key.
        assert_ne!(
            template.render("feature_x", hashes).unwrap(),
            template.render("feature/x", hashes).unwrap()
        );
        let several = KeyTemplate::parse("{{ hash \"a/x.lock\"  \"./b.lock\" }}").unwrap();
        assert_eq!(
            several.parts(),
            [KeyPart::Hash(vec!["a/x.lock".into(), "b.lock".into()])]
        );
        assert_eq!(several.to_string(), "{{ hash \"a/x.lock\"  \"./b.lock\" }}");
    }

    #[test]
    fn a_key_fails_to_render_when_a_file_cannot_be_hashed_or_it_grows_too_long() {
        let template = KeyTemplate::parse("{{ hash \"Cargo.lock\" }}").unwrap();
        let missing = |files: &[String]| {
            Err(KeyError::Hash {
                file: files[0].clone(),
                reason: "it is not in the workspace".into(),
            })
        };
        let error = template.render("main", missing).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot hash `Cargo.lock`: it is not in the workspace"
        );
        let branch = KeyTemplate::parse("{{ branch }}").unwrap();
        assert_eq!(
            branch.render(&"/".repeat(100), hashes),
            Err(KeyError::TooLong)
        );
    }

    #[test]
    fn bad_key_templates_are_refused_saying_why() {
        for (text, expected) in [
            ("", "expected a key"),
            ("deps/{{ branch }}", "`/` is not allowed"),
            ("{{ commit }}", "`{{ commit }}` is unknown"),
            ("{{ branchy }}", "`{{ branchy }}` is unknown"),
            ("{{ hashx \"a\" }}", "unknown"),
            ("{{ branch ", "never closed"),
            ("{{ hash }}", "at least one file"),
            ("{{ hash Cargo.lock }}", "double quotes"),
            ("{{ hash \"../secret\" }}", "`..` would leave the workspace"),
            ("{{ hash \"/etc/passwd\" }}", "it is absolute"),
        ] {
            let error = KeyTemplate::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert!(KeyTemplate::parse(&"a".repeat(MAX_TEMPLATE_BYTES + 1)).is_err());
    }

    #[test]
    fn cache_paths_are_normalised_and_never_leave_the_workspace() {
        assert_eq!(
            CachePath::parse("./node_modules/").unwrap().as_str(),
            "node_modules"
        );
        assert_eq!(
            CachePath::parse(".cargo//registry").unwrap().as_str(),
            ".cargo/registry"
        );
        for (text, expected) in [
            ("/root/.cache", "it is absolute"),
            ("deps/../../x", "`..` would leave"),
            ("..", "`..` would leave"),
            (".", "the whole workspace"),
            ("", "the whole workspace"),
            ("target/*", "globs are not supported"),
            ("a\nb", "control character"),
        ] {
            let error = CachePath::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_cache_section_is_checked_at_its_line() {
        let text = format!(
            "{STEP}cache:\n  paths: [deps]\n  key: \"deps-{{{{ hash \\\"deps.lock\\\" }}}}\"\n  fallback_key: deps-\n"
        );
        let spec = parse(&text).unwrap();
        let plan = spec.cache.unwrap().plan();
        assert_eq!(plan.paths, ["deps"]);
        assert_eq!(plan.fallback_key.unwrap().as_str(), "deps-");

        let text = format!("{STEP}cache:\n  paths: [deps, ../up]\n  key: k\n");
        let error = parse(&text).unwrap_err();
        assert_eq!((error.line, error.column), (4, 17), "{error}");
        assert!(error.message.starts_with("cache.paths[1]:"), "{error}");

        let text = format!("{STEP}cache:\n  paths:\n    - deps\n    - deps/sub\n  key: k\n");
        let error = parse(&text).unwrap_err();
        assert_eq!(error.line, 6, "{error}");
        assert!(error.message.contains("overlaps `deps`"), "{error}");

        let text = format!("{STEP}cache:\n  paths: [deps]\n  key: \"a b\"\n");
        let error = parse(&text).unwrap_err();
        assert_eq!(error.line, 5, "{error}");
        assert!(error.message.contains("cache.key"), "{error}");

        let text = format!(
            "{}cache: {{paths: [deps], key: k}}\n",
            STEP.replace("name: test", "name: cache-save")
        );
        let error = parse(&text).unwrap_err();
        assert!(error.message.contains("rename this step"), "{error}");
    }
}
