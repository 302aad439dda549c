//! Bounds a `.slipway.yml` must keep before it is deserialised: its size, how many values
//! and how much text it holds once its aliases are expanded, and how deep it nests.
//!
//! serde_yaml replays an anchor's events at every alias (`*name`), so a small file whose
//! aliases refer to lists of aliases (the "billion laughs" family), or many steps that are all
//! `*step`, expands into gigabytes of structs. A first pass walks the document without
//! building anything, counting what the real deserialisation would build, and stops at the
//! first value over a budget; that value's position is the error's line and column.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde::de::{IgnoredAny, VariantAccess};

/// Largest `.slipway.yml` accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;
/// Most values (scalars, lists and maps) a file may hold, each use of an alias counting as a
/// copy of its anchor. A pipeline of 100 steps with 50 commands each holds about 6,000.
pub const MAX_VALUES: usize = 50_000;
/// Most bytes of scalar text a file may hold, again counting each use of an alias: 16 times
/// the size limit, room for anchors shared by every step.
pub const MAX_EXPANDED_TEXT_BYTES: usize = 16 * MAX_SPEC_BYTES;
/// Deepest nesting of lists and maps; a valid pipeline needs 4.
pub const MAX_DEPTH: usize = 32;

/// Reads a pipeline file, refusing one over [`MAX_SPEC_BYTES`] without reading it whole.
pub fn read_file(path: &Path) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    let limit = u64::try_from(MAX_SPEC_BYTES).unwrap_or(u64::MAX);
    file.take(limit + 1).read_to_string(&mut text)?;
    if text.len() > MAX_SPEC_BYTES {
        let size = std::fs::metadata(path)
            .map(|m| m.len())
            .unwrap_or(limit + 1);
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            too_large(size),
        ));
    }
    Ok(text)
}

/// Why a text of `size` bytes is refused.
pub(super) fn too_large(size: u64) -> String {
    format!(
        "the file is {size} bytes; the limit is {MAX_SPEC_BYTES} bytes ({} KiB)",
        MAX_SPEC_BYTES / 1024
    )
}

/// The 1-based (line, column) of the first character past the size limit.
pub(super) fn position_of_limit(text: &str) -> (usize, usize) {
    let mut cut = MAX_SPEC_BYTES.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let before = &text[..cut];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Finds flow collections (`[...]`, `{...}`) nested deeper than [`MAX_DEPTH`] by a scan of the
/// text, before libyaml sees it: libyaml's time grows with the square of the nesting depth, so
/// a file of `[[[[...` would cost minutes of CPU before the walk below could refuse it. The scan
/// is a guard for the CPU with room to spare (twice the limit); the walk gives the exact
/// verdict. Comments are skipped; brackets in quoted text count too, so nothing can hide real
/// nesting from the scan (a quote's extent is not known before parsing). Block nesting needs
/// indentation, so the size limit already bounds it. Returns the 1-based line and column of
/// the bracket that goes too deep.
pub(super) fn flow_too_deep(text: &str) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    for (index, line) in text.split('\n').enumerate() {
        let mut previous = ' ';
        for (column, c) in line.chars().enumerate() {
            match c {
                '#' if previous.is_whitespace() => break,
                '[' | '{' => {
                    depth += 1;
                    if depth > 2 * MAX_DEPTH {
                        return Some((index + 1, column + 1));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            previous = c;
        }
    }
    None
}

/// Walks the document as serde_yaml will deserialise it, aliases expanded, and fails at the
/// first value past a budget.
pub(super) fn check(text: &str) -> Result<(), serde_yaml::Error> {
    let mut budget = Budget {
        values: 0,
        text_bytes: 0,
        depth: 0,
    };
    Walk(&mut budget).deserialize(serde_yaml::Deserializer::from_str(text))
}

struct Budget {
    values: usize,
    text_bytes: usize,
    depth: usize,
}

impl Budget {
    fn count<E: de::Error>(&mut self, text_bytes: usize) -> Result<(), E> {
        self.values += 1;
        self.text_bytes = self.text_bytes.saturating_add(text_bytes);
        if self.values > MAX_VALUES {
            return Err(E::custom(format!(
                "the file holds more than {MAX_VALUES} values, counting each use of an alias \
                 (`*name`) as a copy of its anchor; aliases cannot fan a small file out into a \
                 huge pipeline"
            )));
        }
        if self.text_bytes > MAX_EXPANDED_TEXT_BYTES {
            return Err(E::custom(format!(
                "the file holds more than {MAX_EXPANDED_TEXT_BYTES} bytes of text, counting \
                 each use of an alias (`*name`) as a copy of its anchor; aliases cannot fan a \
                 small file out into a huge pipeline"
            )));
        }
        Ok(())
    }

    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.count(0)?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(E::custom(format!(
                "lists and maps are nested deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(())
    }
}

struct Walk<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.enter()?;
        while map.next_key_seed(Walk(self.0))?.is_some() {
            map.next_value_seed(Walk(self.0))?;
        }
        self.0.depth -= 1;
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.enter()?;
        while seq.next_element_seed(Walk(self.0))?.is_some() {}
        self.0.depth -= 1;
        Ok(())
    }

    /// A tagged value (`!tag value`): the tag is not a value of its own.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let (IgnoredAny, variant) = data.variant()?;
        variant.newtype_variant_seed(Walk(self.0))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        Walk(self.0).deserialize(deserializer)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        self.0.count(text.len())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.0.count(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.0.count(0)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.0.count(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.0.count(0)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.0.count(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.0.count(0)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.count(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.0.count(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::spec::parse;

    /// One step of 1,000 commands of 100 bytes (about 100 KB), then steps that are all
    /// `*step` up to the size limit: a file serde_yaml alone expands into gigabytes.
    fn alias_fan_out() -> String {
        let mut text =
            String::from("steps:\n- &step\n  name: build\n  image: debian\n  commands:\n");
        for i in 0..1000 {
            text.push_str(&format!("  - \"echo {i:04} {}\"\n", "x".repeat(88)));
        }
        while text.len() + 8 <= super::MAX_SPEC_BYTES {
            text.push_str("- *step\n");
        }
        text
    }

    /// The classic: nine levels of nine aliases, a billion `lol`s from under 1 KB.
    fn billion_laughs() -> String {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for pair in names.windows(2) {
            let (previous, next) = (pair[0], pair[1]);
            let refs = vec![format!("*{previous}"); 9].join(",");
            text.push_str(&format!("{next}: &{next} [{refs}]\n"));
        }
        text.push_str("steps: *i\n");
        text
    }

    fn peak_rss_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    fn rss_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    #[test]
    fn an_alias_fan_out_is_refused_within_a_second_in_bounded_memory() {
        let text = &alias_fan_out();
        assert!(text.len() > 250 * 1024 && text.len() <= super::MAX_SPEC_BYTES);
        // Reset the peak to now (Linux `clear_refs` 5), so the peak read after is this parse's.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let before = rss_bytes();
        let started = Instant::now();
        let error = parse(text).unwrap_err();
        let took = started.elapsed();
        let grew = peak_rss_bytes().saturating_sub(before);
        eprintln!(
            "fan-out of {} bytes refused in {took:?}, peak RSS grew {grew} bytes: {error}",
            text.len()
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert!(grew < 64 * 1024 * 1024, "peak RSS grew by {grew} bytes");
        assert!(error.message.contains("aliases cannot fan"), "{error}");
        // The position is inside the anchored step the aliases copy.
        assert!(error.line > 1 && error.line < 1010, "{error}");
    }

    #[test]
    fn the_billion_laughs_are_refused_with_a_clear_error() {
        let started = Instant::now();
        let error = parse(&billion_laughs()).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(error.message.contains("more than 50000 values"), "{error}");
    }

    #[test]
    fn deep_nesting_is_refused_at_its_position() {
        let depth = 40;
        let text = format!("steps: {}{}\n", "[".repeat(depth), "]".repeat(depth));
        let error = parse(&text).unwrap_err();
        assert!(
            error.message.contains("nested deeper than 32 levels"),
            "{error}"
        );
        // The top-level map is the first level, so the 32nd `[` (column 8 + 31) is one too many.
        assert_eq!((error.line, error.column), (1, 8 + 31), "{error}");
    }

    #[test]
    fn the_deepest_nesting_the_size_limit_allows_is_refused_within_a_second() {
        // libyaml's scanner takes time quadratic in the depth (minutes at 100,000 levels), so
        // the text scan must refuse it first; brackets in comments do not count.
        let depth = 100_000;
        let text = format!(
            "# [[[[\nname: x # [[[[\nsteps: {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(text.len() < super::MAX_SPEC_BYTES);
        let started = Instant::now();
        let error = parse(&text).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(
            error.message.contains("nested deeper than 32 levels"),
            "{error}"
        );
        assert_eq!((error.line, error.column), (3, 8 + 64), "{error}");
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_naming_limit_and_size() {
        let mut text = String::from("steps:\n");
        while text.len() <= super::MAX_SPEC_BYTES {
            text.push_str("# a comment line that only takes room\n");
        }
        let error = parse(&text).unwrap_err();
        assert_eq!(
            error.message,
            format!(
                "the file is {} bytes; the limit is 262144 bytes (256 KiB)",
                text.len()
            )
        );
        assert!(error.line > 6000, "{error}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".slipway.yml");
        // A sparse file: 50 MB of NULs that take no room, on disk or in the test's memory.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(50 * 1024 * 1024)
            .unwrap();
        let error = super::read_file(&path).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the file is 52428800 bytes; the limit is 262144 bytes (256 KiB)"
        );
    }

    #[test]
    fn anchors_shared_within_the_budget_still_parse() {
        let text = "\
steps:
  - name: test
    image: debian
    commands: [cargo test]
    environment: &env
      RUST_LOG: debug
      DATABASE_URL: postgres://db/test
  - name: lint
    image: debian
    commands: [cargo clippy]
    environment: *env
";
        let spec = parse(text).unwrap();
        assert_eq!(spec.steps[1].environment.len(), 2);
    }
}
