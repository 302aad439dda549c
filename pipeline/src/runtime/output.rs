//! Turns a container's raw lines into what observers see: secrets masked, size capped.

use std::collections::HashMap;

/// Replaces every occurrence of a secret value with `****`.
pub struct Masker {
    /// Longest first, so a secret containing another is masked whole.
    values: Vec<String>,
}

pub const MASK: &str = "****";

impl Masker {
    pub fn new(secrets: &HashMap<String, String>) -> Masker {
        let mut values: Vec<String> = secrets
            .values()
            .filter(|value| !value.is_empty())
            .cloned()
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Masker { values }
    }

    pub fn mask(&self, text: &str) -> String {
        let mut masked = text.to_owned();
        for value in &self.values {
            if masked.contains(value.as_str()) {
                masked = masked.replace(value.as_str(), MASK);
            }
        }
        masked
    }
}

/// Counts a step's output and decides what is forwarded once the cap is reached.
pub struct LogCap {
    cap_bytes: u64,
    forwarded_bytes: u64,
    cut: bool,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum CapDecision {
    Forward,
    /// Forward this notice instead of the line; everything after is dropped.
    Cut(String),
    Drop,
}

impl LogCap {
    pub fn new(cap_bytes: u64) -> LogCap {
        LogCap {
            cap_bytes,
            forwarded_bytes: 0,
            cut: false,
        }
    }

    /// Decides for a line of `text_len` bytes (its newline counts as one more).
    pub fn admit(&mut self, text_len: usize) -> CapDecision {
        if self.cut {
            return CapDecision::Drop;
        }
        let size = text_len as u64 + 1;
        if self.forwarded_bytes + size > self.cap_bytes {
            self.cut = true;
            return CapDecision::Cut(format!(
                "[slipway] log cut at {} bytes: the rest of this step's output is not kept",
                self.cap_bytes
            ));
        }
        self.forwarded_bytes += size;
        CapDecision::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_of_every_secret_is_masked() {
        let secrets = HashMap::from([
            ("TOKEN".to_owned(), "s3cret".to_owned()),
            ("LONG".to_owned(), "s3cret-and-more".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ]);
        let masker = Masker::new(&secrets);
        assert_eq!(
            masker.mask("a s3cret b s3cret c s3cret-and-more"),
            "a **** b **** c ****"
        );
        assert_eq!(masker.mask("nothing here"), "nothing here");
    }

    #[test]
    fn cap_forwards_until_the_limit_then_one_notice_then_nothing() {
        let mut cap = LogCap::new(10);
        assert_eq!(cap.admit(4), CapDecision::Forward);
        assert_eq!(cap.admit(4), CapDecision::Forward);
        match cap.admit(4) {
            CapDecision::Cut(notice) => assert!(notice.contains("log cut at 10 bytes")),
            other => panic!("expected a cut, got {other:?}"),
        }
        assert_eq!(cap.admit(0), CapDecision::Drop);
    }
}
