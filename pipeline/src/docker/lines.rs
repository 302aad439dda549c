//! Splits Docker's output frames, which do not respect line ends, into lines per stream, for
//! the few last lines `recent_output` shows (step output goes to the runtime unsplit).

use crate::engine::{OutputLine, OutputStream, MAX_LINE_BYTES};

/// Buffers partial lines of stdout and stderr separately.
#[derive(Default)]
pub struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl LineSplitter {
    /// Adds a frame and returns the lines it completes.
    pub fn push(&mut self, stream: OutputStream, bytes: &[u8]) -> Vec<OutputLine> {
        let buffer = self.buffer(stream);
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                lines.push(take_line(stream, buffer));
            } else {
                buffer.push(byte);
                if buffer.len() >= MAX_LINE_BYTES {
                    lines.push(take_line(stream, buffer));
                }
            }
        }
        lines
    }

    /// The unterminated last lines, once the output has ended.
    pub fn finish(&mut self) -> Vec<OutputLine> {
        [OutputStream::Stdout, OutputStream::Stderr]
            .into_iter()
            .filter_map(|stream| {
                let buffer = self.buffer(stream);
                (!buffer.is_empty()).then(|| take_line(stream, buffer))
            })
            .collect()
    }

    fn buffer(&mut self, stream: OutputStream) -> &mut Vec<u8> {
        match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        }
    }
}

fn take_line(stream: OutputStream, buffer: &mut Vec<u8>) -> OutputLine {
    let mut bytes = std::mem::take(buffer);
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    OutputLine {
        stream,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[OutputLine]) -> Vec<&str> {
        lines.iter().map(|line| line.text.as_str()).collect()
    }

    #[test]
    fn lines_split_across_frames_are_joined_per_stream() {
        let mut splitter = LineSplitter::default();
        assert!(splitter.push(OutputStream::Stdout, b"hel").is_empty());
        let err = splitter.push(OutputStream::Stderr, b"oops\n");
        assert_eq!(texts(&err), ["oops"]);
        assert_eq!(err[0].stream, OutputStream::Stderr);
        let out = splitter.push(OutputStream::Stdout, b"lo\r\nworld\nta");
        assert_eq!(texts(&out), ["hello", "world"]);
        assert_eq!(texts(&splitter.finish()), ["ta"]);
        assert!(splitter.finish().is_empty());
    }

    #[test]
    fn an_endless_line_is_cut_into_bounded_pieces() {
        let mut splitter = LineSplitter::default();
        let lines = splitter.push(OutputStream::Stdout, &vec![b'y'; MAX_LINE_BYTES * 2 + 5]);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|line| line.text.len() == MAX_LINE_BYTES));
        assert_eq!(splitter.finish()[0].text.len(), 5);
    }
}
