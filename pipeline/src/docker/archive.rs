//! Packs a host directory into a tar archive, the form Docker's archive upload takes, as a
//! stream of chunks made while the upload reads them: memory stays bounded whatever the
//! directory holds.

use std::io::{self, Write};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::sync::mpsc;

/// The size of each piece of the archive handed to the upload.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Pieces made ahead of the upload; past them the packing waits for the upload to read.
const CHUNKS_AHEAD: usize = 4;

/// A tar of the contents of `dir` (paths relative to it, symlinks kept as links), made on a
/// blocking thread. An error while packing ends the stream with that error; dropping the
/// stream stops the packing.
pub fn tar_stream(dir: PathBuf) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (sender, receiver) = mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || pack(&dir, sender));
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    })
}

/// Writes the archive into `sender`; an error is also sent, so the reader sees it.
fn pack(dir: &std::path::Path, sender: mpsc::Sender<io::Result<Bytes>>) -> io::Result<()> {
    let writer = ChunkWriter {
        buffer: BytesMut::with_capacity(CHUNK_BYTES),
        sender: sender.clone(),
    };
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    let packed = builder
        .append_dir_all(".", dir)
        .and_then(|()| builder.into_inner())
        .and_then(|mut writer| writer.send_buffer());
    if let Err(error) = &packed {
        let _ = sender.blocking_send(Err(io::Error::new(error.kind(), error.to_string())));
    }
    packed
}

/// Cuts what the tar builder writes into chunks and sends each, waiting while the channel is
/// full.
struct ChunkWriter {
    buffer: BytesMut,
    sender: mpsc::Sender<io::Result<Bytes>>,
}

impl ChunkWriter {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped reading"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let taken = data.len().min(room);
        self.buffer.extend_from_slice(&data[..taken]);
        if self.buffer.len() == CHUNK_BYTES {
            self.send_buffer()?;
            self.buffer.reserve(CHUNK_BYTES);
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::TryStreamExt;

    use super::*;

    #[tokio::test]
    async fn archive_holds_the_directory_contents_with_relative_paths_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/hello.py"), "print('hi')\n").unwrap();
        std::fs::write(dir.path().join("big"), vec![7u8; 3 * CHUNK_BYTES + 5]).unwrap();
        std::os::unix::fs::symlink("app/hello.py", dir.path().join("link")).unwrap();
        let chunks: Vec<Bytes> = tar_stream(dir.path().to_path_buf())
            .try_collect()
            .await
            .unwrap();
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
        let bytes: Vec<u8> = chunks.concat();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut entries = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            entries.push((path, entry.header().entry_type(), entry.size()));
        }
        let paths: Vec<&str> = entries.iter().map(|(p, _, _)| p.as_str()).collect();
        assert!(paths.contains(&"app/hello.py"), "{paths:?}");
        assert!(paths.iter().all(|p| !p.starts_with('/')), "{paths:?}");
        assert!(entries
            .iter()
            .any(|(p, _, size)| p == "big" && *size == 3 * CHUNK_BYTES as u64 + 5));
        assert!(entries
            .iter()
            .any(|(p, kind, _)| p == "link" && kind.is_symlink()));
    }

    #[tokio::test]
    async fn packing_waits_for_the_reader_and_stops_when_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![1u8; 64 * CHUNK_BYTES]).unwrap();
        let (sender, mut receiver) = mpsc::channel(1);
        let source = dir.path().to_path_buf();
        let packing = tokio::task::spawn_blocking(move || pack(&source, sender));
        assert!(receiver.recv().await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !packing.is_finished(),
            "with nobody reading, packing waits instead of buffering the file"
        );
        drop(receiver);
        let ended = tokio::time::timeout(Duration::from_secs(5), packing)
            .await
            .expect("packing stops once the reader is gone")
            .unwrap();
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
