//! Models as the coordinator sees them: safetensors files of named f32 tensors, read and
//! written tensor by tensor in bounded chunks, so memory stays flat whatever the model size or
//! site count. (Updates are checked as they arrive: update_check.rs.)

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use fedseg_proto::safetensors::SafetensorsHeader;
use serde_json::{Map, Value, json};

/// Elements per read when streaming (4 MiB of f32).
pub const STREAM_ELEMENTS: usize = 1 << 20;

/// The tensor names and shapes a model must have.
pub type Schema = BTreeMap<String, Vec<usize>>;

pub fn schema_of(header: &SafetensorsHeader) -> Schema {
    header
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect()
}

/// A finished file: where it is, its digest and size.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
}

/// Writes a safetensors file front to back: the header first (shapes are known), then the
/// values as they are computed. Hashing and writing run on a thread of their own, so the
/// caller computes the next values meanwhile.
pub struct StreamWriter {
    path: PathBuf,
    full: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    worker: Option<std::thread::JoinHandle<std::io::Result<(File, String, u64)>>>,
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        // The worker holds the file: let it stop first.
        let _ = self.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl StreamWriter {
    pub fn create(
        path: &Path,
        schema: &[(String, Vec<usize>)],
        metadata: &BTreeMap<String, String>,
    ) -> std::io::Result<Self> {
        let mut header = Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), json!(metadata));
        }
        let mut offset = 0usize;
        for (name, shape) in schema {
            let bytes = shape.iter().product::<usize>() * 4;
            header.insert(
                name.clone(),
                json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
        }
        let mut header_bytes =
            serde_json::to_vec(&Value::Object(header)).map_err(std::io::Error::other)?;
        while header_bytes.len() % 8 != 0 {
            header_bytes.push(b' ');
        }
        let file = File::create(path)?;
        // Two buffers in flight: one being written while the next is filled.
        let (full, incoming) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let (recycle, empty) = std::sync::mpsc::channel::<Vec<u8>>();
        let worker = std::thread::spawn(move || {
            let mut file = file;
            let mut hasher = blake3::Hasher::new();
            let mut size = 0u64;
            for buf in incoming {
                hasher.update(&buf);
                file.write_all(&buf)?;
                fedseg_proto::transfer::start_writeback(&file, size, buf.len());
                size += buf.len() as u64;
                // The caller may have finished already; then the buffer is simply dropped.
                let _ = recycle.send(buf);
            }
            file.flush()?;
            Ok((file, hasher.finalize().to_hex().to_string(), size))
        });
        let mut w = Self {
            path: path.to_path_buf(),
            full: Some(full),
            empty,
            worker: Some(worker),
        };
        let mut head = (header_bytes.len() as u64).to_le_bytes().to_vec();
        head.extend_from_slice(&header_bytes);
        w.send(head)?;
        Ok(w)
    }

    fn send(&mut self, buf: Vec<u8>) -> std::io::Result<()> {
        let sent = self.full.as_ref().map(|tx| tx.send(buf).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The worker stopped: its error says why.
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(std::io::Error::other("writer thread stopped")),
        }
    }

    fn join(&mut self) -> std::io::Result<(File, String, u64)> {
        self.full = None;
        match self.worker.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("writer thread panicked")),
            None => Err(std::io::Error::other("writer already finished")),
        }
    }

    pub fn write_f32s(&mut self, values: &[f32]) -> std::io::Result<()> {
        let mut buf = self.empty.try_recv().unwrap_or_default();
        buf.clear();
        buf.resize(values.len() * 4, 0);
        for (b, v) in buf.chunks_exact_mut(4).zip(values) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        self.send(buf)
    }

    /// Flushes and fsyncs. A writer dropped without `finish` (an aggregation that failed)
    /// deletes its file.
    pub fn finish(mut self) -> std::io::Result<WrittenFile> {
        let (file, digest, size) = self.join()?;
        file.sync_all()?;
        Ok(WrittenFile {
            path: std::mem::take(&mut self.path),
            digest,
            size,
        })
    }
}
