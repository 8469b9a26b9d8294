//! Moving model files in chunks: reading a file as a stream of chunks and writing received
//! chunks to a temporary file while hashing them, so neither side holds a whole model.

use std::path::{Path, PathBuf};

use std::io::Read;

use tokio::io::AsyncReadExt;

use crate::CHUNK_BYTES;
use crate::direct_io::DirectWriter;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub fn digest_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The BLAKE3 digest (hex) of a file, streamed.
pub async fn digest_file(path: &Path) -> Result<(String, u64), TransferError> {
    let io = |source| TransferError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = tokio::fs::File::open(path).await.map_err(io)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize().to_hex().to_string(), total))
}

/// Reads a file in chunks of at most `CHUNK_BYTES`, sending each into `tx` until the receiver
/// hangs up. Used by both ends for downloads, uploads and exports.
pub async fn send_file<T, F>(
    path: &Path,
    tx: tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
    wrap: F,
) -> Result<u64, TransferError>
where
    F: Fn(Vec<u8>) -> T,
{
    let io = |source| TransferError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(io)?
        .into_std()
        .await;
    let mut sent = 0u64;
    loop {
        // Whole chunks read straight into the buffer that is sent (tokio's File would read
        // in 2 MiB pieces through a buffer of its own): fewer, larger messages, one copy.
        let (file, buf) = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(CHUNK_BYTES);
            (&mut f).take(CHUNK_BYTES as u64).read_to_end(&mut buf)?;
            Ok((f, buf))
        })
        .await
        .map_err(|e| TransferError::Invalid(format!("reader task: {e}")))?
        .map_err(io)?;
        f = file;
        if buf.is_empty() {
            return Ok(sent);
        }
        sent += buf.len() as u64;
        if tx.send(Ok(wrap(buf))).await.is_err() {
            return Err(TransferError::Invalid("receiver closed".into()));
        }
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` to disk now, without waiting, so
/// a later fsync finds little left to do: a model's bytes reach the disk while the rest is
/// still arriving instead of all at once when the transfer ends.
pub fn start_writeback(file: &std::fs::File, offset: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor belongs to `file`, open for the whole call; the call only
        // schedules I/O and touches no memory of ours. A failure just means no head start.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Tells the kernel this file's cached pages will not be read again soon, so they are freed
/// now instead of pushing out other data. A coordinator writes every update once and reads it
/// once; dropping those pages after aggregation gives the next round's writes recently used
/// memory (on a VM, writing into long-idle memory measured 5x slower). Clean pages only: call
/// after the data is on disk. A failure just leaves the pages cached.
pub fn release_page_cache(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor belongs to `file`, open for the whole call; the call touches
        // no memory of ours.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// A file being received: chunks go to a temporary file beside the destination, hashed as
/// they arrive (on the blocking pool, so the network side keeps going); `finish` checks size
/// and digest, fsyncs and renames. Dropped unfinished, the temporary file is removed, so a
/// broken transfer leaves nothing behind.
pub struct IncomingFile {
    tmp: PathBuf,
    /// Taken while a chunk is being written; None afterwards only if that write failed.
    open: Option<(DirectWriter, blake3::Hasher)>,
    /// After `verify`: the file, awaiting `persist`.
    verified: Option<std::fs::File>,
    received: u64,
    limit: u64,
    finished: bool,
}

impl IncomingFile {
    /// `direct`: write past the page cache (see `direct_io`), for a receiver that keeps the
    /// bytes in memory until it reads them.
    pub async fn create(dir: &Path, limit: u64, direct: bool) -> Result<Self, TransferError> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".incoming-{}-{n}", std::process::id()));
        // Readable too: `verify` hands out a second handle for reading the bytes.
        let path = tmp.clone();
        let file = tokio::task::spawn_blocking(move || DirectWriter::create(&path, direct))
            .await
            .map_err(|e| TransferError::Invalid(format!("writer task: {e}")))?
            .map_err(|source| TransferError::Io {
                path: tmp.clone(),
                source,
            })?;
        Ok(Self {
            tmp,
            open: Some((file, blake3::Hasher::new())),
            verified: None,
            received: 0,
            limit,
            finished: false,
        })
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub async fn write(&mut self, chunk: prost::bytes::Bytes) -> Result<(), TransferError> {
        if chunk.len() > crate::CHUNK_BYTES * 2 {
            return Err(TransferError::Invalid(format!(
                "chunk of {} bytes exceeds the {} byte limit",
                chunk.len(),
                crate::CHUNK_BYTES * 2
            )));
        }
        self.received += chunk.len() as u64;
        if self.received > self.limit {
            return Err(TransferError::Invalid(format!(
                "stream exceeds its announced size of {} bytes",
                self.limit
            )));
        }
        let (mut file, mut hasher) = self
            .open
            .take()
            .ok_or_else(|| TransferError::Invalid("an earlier write failed".into()))?;
        let written = tokio::task::spawn_blocking(move || {
            hasher.update(&chunk);
            file.write_all(&chunk)?;
            Ok::<_, std::io::Error>((file, hasher))
        })
        .await
        .map_err(|e| TransferError::Invalid(format!("writer task: {e}")))?;
        self.open = Some(written.map_err(|source| TransferError::Io {
            path: self.tmp.clone(),
            source,
        })?);
        Ok(())
    }

    /// Checks the byte count and digest, then moves the file to `dest` atomically.
    /// Returns the hex digest.
    pub async fn finish(
        mut self,
        expected_size: u64,
        expected_digest: Option<&str>,
        dest: &Path,
    ) -> Result<String, TransferError> {
        let verified = self.verify(expected_size, expected_digest)?;
        self.persist(dest).await?;
        Ok(verified.digest)
    }

    /// Checks the byte count and digest of what arrived, which stays in the temporary file
    /// (written, not yet durable). Returns the digest and a handle for reading the bytes,
    /// valid whatever `persist` does with the file's name.
    pub fn verify(
        &mut self,
        expected_size: u64,
        expected_digest: Option<&str>,
    ) -> Result<Verified, TransferError> {
        if self.received != expected_size {
            return Err(TransferError::Invalid(format!(
                "truncated stream: {} of {expected_size} bytes arrived",
                self.received
            )));
        }
        let (writer, hasher) = self.open.take().ok_or_else(|| {
            TransferError::Invalid("an earlier write failed or verify ran twice".into())
        })?;
        let digest = hasher.finalize().to_hex().to_string();
        if let Some(expected) = expected_digest
            && !expected.eq_ignore_ascii_case(&digest)
        {
            return Err(TransferError::Invalid(format!(
                "digest mismatch: sender says {expected}, received bytes hash to {digest}"
            )));
        }
        let io = |source| TransferError::Io {
            path: self.tmp.clone(),
            source,
        };
        // A direct writer writes its last partial block here; a small write.
        let file = writer.finish().map_err(io)?;
        let reader = file.try_clone().map_err(io)?;
        self.verified = Some(file);
        Ok(Verified {
            digest,
            reader,
            path: self.tmp.clone(),
        })
    }

    /// After `verify`: fsyncs the file and moves it to `dest` atomically.
    pub async fn persist(mut self, dest: &Path) -> Result<(), TransferError> {
        let io = |path: &Path, source| TransferError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = self
            .verified
            .take()
            .ok_or_else(|| TransferError::Invalid("persist before verify".into()))?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| TransferError::Invalid(format!("writer task: {e}")))?
            .map_err(|e| io(&self.tmp, e))?;
        tokio::fs::rename(&self.tmp, dest)
            .await
            .map_err(|e| io(dest, e))?;
        self.finished = true;
        Ok(())
    }
}

/// A received file whose size and digest checked out (see `IncomingFile::verify`).
pub struct Verified {
    pub digest: String,
    /// A second handle on the file, for reading it before it is durable.
    pub reader: std::fs::File,
    /// Where the file was when verified (for messages; `persist` moves it).
    pub path: PathBuf,
}

impl Drop for IncomingFile {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
