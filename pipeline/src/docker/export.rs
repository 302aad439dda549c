//! Unpacks the archive dockerd sends of a build's workspace volume into a host directory, as
//! it arrives: memory holds a few chunks whatever the workspace's size, and an archive past
//! its limit stops the download.

use std::io::{self, Read};
use std::path::Path;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::engine::EngineError;

/// Chunks received ahead of the unpacking; past them the download waits.
const CHUNKS_AHEAD: usize = 4;

/// Unpacks the tar `archive` into `dest` (which must exist), refusing an archive of more than
/// `limit_bytes` (the limit `purpose` sets, e.g. "for packaging"); returns the archive's size. Entries cannot land outside `dest` (no `..`, no
/// writing through a symlink), and only files, directories and links are made: a device or
/// pipe a step left is skipped.
pub async fn unpack_stream<E: std::fmt::Display>(
    archive: impl Stream<Item = Result<Bytes, E>> + Unpin,
    dest: &Path,
    limit_bytes: u64,
    purpose: &str,
    operation: &str,
) -> Result<u64, EngineError> {
    let (sender, receiver) = mpsc::channel(CHUNKS_AHEAD);
    let target = dest.to_path_buf();
    let unpacking = tokio::task::spawn_blocking(move || unpack(receiver, &target));
    let received = forward(archive, sender, limit_bytes, purpose, operation).await;
    // The channel is closed either way, so the unpacking ends; its error matters only when
    // the download itself went well.
    let unpacked = unpacking
        .await
        .map_err(|e| EngineError::failed(operation, e))?;
    let size = received?;
    unpacked
        .map_err(|e| EngineError::failed(operation, format!("unpacking the workspace: {e}")))?;
    Ok(size)
}

/// Sends the archive's chunks on, counting them against the limit.
async fn forward<E: std::fmt::Display>(
    mut archive: impl Stream<Item = Result<Bytes, E>> + Unpin,
    sender: mpsc::Sender<Bytes>,
    limit_bytes: u64,
    purpose: &str,
    operation: &str,
) -> Result<u64, EngineError> {
    let mut size = 0u64;
    while let Some(chunk) = archive.next().await {
        let chunk = chunk.map_err(|e| EngineError::failed(operation, e))?;
        size += chunk.len() as u64;
        if size > limit_bytes {
            return Err(EngineError::failed(
                operation,
                format!("the workspace is larger than the limit of {limit_bytes} bytes {purpose}"),
            ));
        }
        if sender.send(chunk).await.is_err() {
            // The unpacking stopped early; its error says why.
            break;
        }
    }
    Ok(size)
}

fn unpack(receiver: mpsc::Receiver<Bytes>, dest: &Path) -> io::Result<()> {
    let reader = ChannelReader {
        receiver,
        current: Bytes::new(),
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let content = kind.is_file()
            || kind.is_dir()
            || kind.is_symlink()
            || kind.is_hard_link()
            || kind.is_contiguous();
        if content {
            entry.unpack_in(dest)?;
        }
    }
    Ok(())
}

/// A blocking `Read` over the chunks the download forwards; the end of the channel is the
/// end of the archive.
struct ChannelReader {
    receiver: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let taken = buf.len().min(self.current.len());
        buf[..taken].copy_from_slice(&self.current.split_to(taken));
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, contents) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(contents.len() as u64);
            header.set_mode(0o755);
            builder.append_data(&mut header, path, *contents).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn chunks(bytes: Vec<u8>) -> impl Stream<Item = Result<Bytes, io::Error>> + Unpin {
        let pieces: Vec<Result<Bytes, io::Error>> = bytes
            .chunks(1000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(pieces)
    }

    #[tokio::test]
    async fn an_archive_is_unpacked_with_its_modes_and_one_past_the_limit_is_refused() {
        let dest = tempfile::tempdir().unwrap();
        let bytes = archive(&[("./dist/greet", b"binary"), ("./README", b"hi")]);
        let size = bytes.len() as u64;
        let got = unpack_stream(
            chunks(bytes.clone()),
            dest.path(),
            size,
            "for packaging",
            "export",
        )
        .await
        .unwrap();
        assert_eq!(got, size);
        let binary = dest.path().join("dist/greet");
        assert_eq!(std::fs::read(&binary).unwrap(), b"binary");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&binary).unwrap().permissions().mode() & 0o777,
            0o755
        );

        let small = tempfile::tempdir().unwrap();
        let error = unpack_stream(
            chunks(bytes),
            small.path(),
            size - 1,
            "for packaging",
            "export",
        )
        .await
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("limit of {} bytes", size - 1)),
            "{error}"
        );
    }
}
