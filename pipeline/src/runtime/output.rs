//! Turns a step's raw output into what observers see: secrets masked over each byte stream,
//! lines bounded, the step's total capped, and lines grouped into chunks.

use std::collections::HashMap;

use chrono::Utc;

use super::observer::LogChunk;
use crate::engine::{OutputStream, MAX_LINE_BYTES};

pub const MASK: &str = "****";

/// A chunk is handed on once it holds this many bytes (a cut line may add one line more).
const CHUNK_BYTES: usize = 64 * 1024;

/// Replaces every occurrence of a secret value in one output stream with `****`.
///
/// Masking runs over the byte stream before it is cut into lines, so a value split across
/// frames, across the line cut, or spanning several lines is still masked. The tail that
/// may be the start of a value is held back until the next bytes (or the end) decide it.
pub struct SecretMask {
    /// Longest first, so a value containing another is masked whole.
    values: Vec<Vec<u8>>,
    /// Which bytes start a value, to skip the rest quickly.
    starts: [bool; 256],
    held: Vec<u8>,
}

enum Found {
    Whole(usize),
    /// The bytes left are the start of a value: wait for more.
    Prefix,
    Nothing,
}

impl SecretMask {
    pub fn new(secrets: &HashMap<String, String>) -> SecretMask {
        let mut values: Vec<Vec<u8>> = secrets
            .values()
            .filter(|value| !value.is_empty())
            .map(|value| value.as_bytes().to_vec())
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        let mut starts = [false; 256];
        for value in &values {
            starts[usize::from(value[0])] = true;
        }
        SecretMask {
            values,
            starts,
            held: Vec::new(),
        }
    }

    /// Masks `bytes`, which follow what came before, and appends what is settled to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.values.is_empty() {
            out.extend_from_slice(bytes);
            return;
        }
        let mut input = std::mem::take(&mut self.held);
        input.extend_from_slice(bytes);
        let settled = self.scan(&input, false, out);
        self.held = input[settled..].to_vec();
    }

    /// Masks a whole text at once.
    pub fn mask_text(mut self, text: &str) -> String {
        let mut out = Vec::with_capacity(text.len());
        self.push(text.as_bytes(), &mut out);
        self.finish(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The stream ended: masks and releases what was held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let input = std::mem::take(&mut self.held);
        self.scan(&input, true, out);
    }

    /// Appends `input` masked to `out` and returns how much of it is settled.
    fn scan(&self, input: &[u8], at_end: bool, out: &mut Vec<u8>) -> usize {
        let mut plain_from = 0;
        let mut at = 0;
        while at < input.len() {
            if !self.starts[usize::from(input[at])] {
                at += 1;
                continue;
            }
            match self.find_at(&input[at..], at_end) {
                Found::Whole(len) => {
                    out.extend_from_slice(&input[plain_from..at]);
                    out.extend_from_slice(MASK.as_bytes());
                    at += len;
                    plain_from = at;
                }
                Found::Prefix => {
                    out.extend_from_slice(&input[plain_from..at]);
                    return at;
                }
                Found::Nothing => at += 1,
            }
        }
        out.extend_from_slice(&input[plain_from..]);
        input.len()
    }

    fn find_at(&self, rest: &[u8], at_end: bool) -> Found {
        for value in &self.values {
            if rest.len() >= value.len() {
                if rest.starts_with(value) {
                    return Found::Whole(value.len());
                }
            } else if !at_end && value.starts_with(rest) {
                return Found::Prefix;
            }
        }
        Found::Nothing
    }
}

/// Counts a step's output and decides what is kept once the cap is reached.
pub struct LogCap {
    cap_bytes: u64,
    kept_bytes: u64,
    cut: bool,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum CapDecision {
    Keep,
    /// Keep this notice instead of the line; everything after is dropped.
    Cut(String),
    Drop,
}

impl LogCap {
    pub fn new(cap_bytes: u64) -> LogCap {
        LogCap {
            cap_bytes,
            kept_bytes: 0,
            cut: false,
        }
    }

    /// Decides for a line of `text_len` bytes (its newline counts as one more).
    pub fn admit(&mut self, text_len: usize) -> CapDecision {
        if self.cut {
            return CapDecision::Drop;
        }
        let size = text_len as u64 + 1;
        if self.kept_bytes + size > self.cap_bytes {
            self.cut = true;
            return CapDecision::Cut(format!(
                "[slipway] log cut at {} bytes: the rest of this step's output is not kept",
                self.cap_bytes
            ));
        }
        self.kept_bytes += size;
        CapDecision::Keep
    }

    pub fn is_cut(&self) -> bool {
        self.cut
    }
}

/// One stream's state: its mask and the line not yet ended.
struct StreamState {
    mask: SecretMask,
    partial: Vec<u8>,
}

/// A step's output on its way to the observer: raw frames in, chunks of whole masked lines
/// out, at most the cap (plus one notice) in total.
pub struct StepOutput {
    streams: [StreamState; 2],
    cap: LogCap,
    filling: Option<LogChunk>,
    ready: Vec<LogChunk>,
    /// Reused buffer for masked bytes.
    masked: Vec<u8>,
}

impl StepOutput {
    pub fn new(secrets: &HashMap<String, String>, cap_bytes: u64) -> StepOutput {
        let stream = || StreamState {
            mask: SecretMask::new(secrets),
            partial: Vec::new(),
        };
        StepOutput {
            streams: [stream(), stream()],
            cap: LogCap::new(cap_bytes),
            filling: None,
            ready: Vec::new(),
            masked: Vec::new(),
        }
    }

    /// Adds a frame of `stream`.
    pub fn push(&mut self, stream: OutputStream, bytes: &[u8]) {
        if self.cap.is_cut() {
            return;
        }
        let mut masked = std::mem::take(&mut self.masked);
        masked.clear();
        self.streams[index(stream)].mask.push(bytes, &mut masked);
        self.add_masked(stream, &masked);
        self.masked = masked;
    }

    /// Whether the cap was reached: nothing more will be kept.
    pub fn is_cut(&self) -> bool {
        self.cap.is_cut()
    }

    /// Whether a chunk is being filled (and should be handed on before long).
    pub fn has_partial_chunk(&self) -> bool {
        self.filling.is_some()
    }

    /// The chunks that are full.
    pub fn take_ready(&mut self) -> Vec<LogChunk> {
        std::mem::take(&mut self.ready)
    }

    /// Every chunk, the one being filled too (for output that goes quiet).
    pub fn take_all(&mut self) -> Vec<LogChunk> {
        self.ready.extend(self.filling.take());
        self.take_ready()
    }

    /// Adds a line of Slipway's own, e.g. why the output stopped (it is not capped).
    pub fn notice(&mut self, stream: OutputStream, text: &str) {
        self.add_line(stream, text.as_bytes());
    }

    /// The output ended: held bytes and unterminated lines become lines; returns every chunk.
    pub fn finish(&mut self) -> Vec<LogChunk> {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let mut masked = Vec::new();
            self.streams[index(stream)].mask.finish(&mut masked);
            self.add_masked(stream, &masked);
            let last = std::mem::take(&mut self.streams[index(stream)].partial);
            if !last.is_empty() {
                self.admit(stream, &last);
            }
        }
        self.take_all()
    }

    /// Cuts masked bytes into lines (at a newline, or at `MAX_LINE_BYTES`).
    fn add_masked(&mut self, stream: OutputStream, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.cap.is_cut() {
            let partial = &mut self.streams[index(stream)].partial;
            let room = MAX_LINE_BYTES - partial.len();
            let scan = &bytes[..bytes.len().min(room)];
            match scan.iter().position(|&byte| byte == b'\n') {
                Some(end) if partial.is_empty() => {
                    let line = &bytes[..end];
                    bytes = &bytes[end + 1..];
                    self.admit(stream, line);
                }
                Some(end) => {
                    partial.extend_from_slice(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                    let line = std::mem::take(partial);
                    self.admit(stream, &line);
                }
                None if scan.len() == room => {
                    partial.extend_from_slice(scan);
                    bytes = &bytes[room..];
                    let line = std::mem::take(partial);
                    self.admit(stream, &line);
                }
                None => {
                    partial.extend_from_slice(scan);
                    bytes = &[];
                }
            }
        }
    }

    fn admit(&mut self, stream: OutputStream, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match self.cap.admit(line.len()) {
            CapDecision::Keep => self.add_line(stream, line),
            CapDecision::Cut(notice) => self.add_line(stream, notice.as_bytes()),
            CapDecision::Drop => {}
        }
    }

    fn add_line(&mut self, stream: OutputStream, line: &[u8]) {
        if self
            .filling
            .as_ref()
            .is_some_and(|chunk| chunk.stream != stream)
        {
            self.ready.extend(self.filling.take());
        }
        let chunk = self.filling.get_or_insert_with(|| LogChunk {
            at: Utc::now(),
            stream,
            bytes: Vec::with_capacity(CHUNK_BYTES.min(line.len() * 2 + 1)),
        });
        chunk.bytes.extend_from_slice(line);
        chunk.bytes.push(b'\n');
        if chunk.bytes.len() >= CHUNK_BYTES {
            self.ready.extend(self.filling.take());
        }
    }
}

fn index(stream: OutputStream) -> usize {
    match stream {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(values: &[&str]) -> HashMap<String, String> {
        values
            .iter()
            .enumerate()
            .map(|(n, value)| (format!("S{n}"), (*value).to_owned()))
            .collect()
    }

    /// Feeds `pieces` through a mask and returns everything it released.
    fn masked(values: &[&str], pieces: &[&str]) -> String {
        let mut mask = SecretMask::new(&secrets(values));
        let mut out = Vec::new();
        for piece in pieces {
            mask.push(piece.as_bytes(), &mut out);
        }
        mask.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn lines(chunks: &[LogChunk]) -> Vec<String> {
        chunks
            .iter()
            .flat_map(|chunk| chunk.lines())
            .map(|line| String::from_utf8_lossy(line).into_owned())
            .collect()
    }

    #[test]
    fn every_occurrence_of_every_secret_is_masked_longest_first() {
        assert_eq!(
            masked(
                &["s3cret", "s3cret-and-more", ""],
                &["a s3cret b s3cret c s3cret-and-more"]
            ),
            "a **** b **** c ****"
        );
        assert_eq!(masked(&["s3cret"], &["nothing here"]), "nothing here");
    }

    #[test]
    fn a_secret_split_across_frames_is_masked() {
        assert_eq!(
            masked(&["hunter2"], &["pass: hun", "t", "er2 done"]),
            "pass: **** done"
        );
        // A longer value still possible holds back a shorter one that already matched.
        assert_eq!(
            masked(&["s3cret", "s3cret-and-more"], &["x s3cret-a", "nd-more y"]),
            "x **** y"
        );
        assert_eq!(
            masked(&["s3cret", "s3cret-and-more"], &["x s3cret-a", "bc"]),
            "x ****-abc"
        );
    }

    #[test]
    fn only_what_may_start_a_secret_is_held_back() {
        let mut mask = SecretMask::new(&secrets(&["hunter2"]));
        let mut out = Vec::new();
        mask.push(b"line one\nand hun", &mut out);
        assert_eq!(out, b"line one\nand ");
        mask.push(b"gry\n", &mut out);
        assert_eq!(out, b"line one\nand hungry\n");
        mask.push(b"tail hunt", &mut out);
        mask.finish(&mut out);
        assert_eq!(out, b"line one\nand hungry\ntail hunt");
    }

    #[test]
    fn a_multi_line_secret_is_masked_whole() {
        assert_eq!(
            masked(
                &["line-one\nline-two"],
                &["key:\nline-one\n", "line-two\nend\n"]
            ),
            "key:\n****\nend\n"
        );
    }

    #[test]
    fn a_secret_across_the_line_cut_is_masked() {
        let mut output = StepOutput::new(&secrets(&["s3cr3t-value"]), 1 << 20);
        let filler = "x".repeat(MAX_LINE_BYTES - 6);
        output.push(OutputStream::Stdout, filler.as_bytes());
        output.push(OutputStream::Stdout, b"s3cr3t-value\n");
        let seen = lines(&output.finish());
        assert!(seen.iter().all(|line| !line.contains("s3cr")), "{seen:?}");
        assert_eq!(seen.concat(), format!("{filler}****"));
    }

    #[test]
    fn lines_are_grouped_into_chunks_of_one_stream() {
        let mut output = StepOutput::new(&HashMap::new(), 1 << 30);
        output.push(OutputStream::Stdout, &b"y\n".repeat(CHUNK_BYTES));
        let ready = output.take_ready();
        assert_eq!(ready.len(), 2, "128 KiB of lines make two full chunks");
        assert!(ready.iter().all(|chunk| chunk.bytes.len() == CHUNK_BYTES));
        assert_eq!(ready[0].line_count(), CHUNK_BYTES / 2);

        output.push(OutputStream::Stdout, b"out\nparti");
        output.push(OutputStream::Stderr, b"err\n");
        output.push(OutputStream::Stdout, b"al\n");
        assert!(output.has_partial_chunk());
        let chunks = output.finish();
        let shape: Vec<(OutputStream, &[u8])> = chunks
            .iter()
            .map(|chunk| (chunk.stream, chunk.bytes.as_slice()))
            .collect();
        assert_eq!(
            shape,
            [
                (OutputStream::Stdout, &b"out\n"[..]),
                (OutputStream::Stderr, b"err\n"),
                (OutputStream::Stdout, b"partial\n"),
            ]
        );
    }

    #[test]
    fn an_endless_line_is_cut_into_bounded_pieces_and_any_byte_is_kept() {
        let mut output = StepOutput::new(&HashMap::new(), 1 << 30);
        output.push(OutputStream::Stdout, &vec![b'y'; MAX_LINE_BYTES * 2 + 5]);
        output.push(OutputStream::Stdout, b"\r\na\0b\xff\xfe\r\n");
        let chunks = output.finish();
        let all: Vec<&[u8]> = chunks.iter().flat_map(|chunk| chunk.lines()).collect();
        let sizes: Vec<usize> = all.iter().map(|line| line.len()).collect();
        assert_eq!(sizes, [MAX_LINE_BYTES, MAX_LINE_BYTES, 5, 5]);
        assert_eq!(all[3], b"a\0b\xff\xfe");
    }

    #[test]
    fn the_cap_keeps_whole_lines_then_one_notice_then_nothing() {
        let mut output = StepOutput::new(&HashMap::new(), 10);
        output.push(OutputStream::Stdout, b"abc\ndef\nghi\njkl\n");
        assert!(output.is_cut());
        output.push(OutputStream::Stdout, b"more\n");
        let seen = lines(&output.finish());
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[..2], ["abc", "def"]);
        assert!(seen[2].contains("log cut at 10 bytes"), "{seen:?}");
    }
}
