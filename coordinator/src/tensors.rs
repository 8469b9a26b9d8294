//! Models as the coordinator sees them: safetensors files of named f32 tensors. Updates are
//! checked here before they may touch an aggregate, and files are read and written tensor by
//! tensor in bounded chunks, so memory stays flat whatever the model size or site count.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fedseg_proto::safetensors::{SafetensorsHeader, TensorEntry, read_header};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

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

fn io_err(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// Reads `count` f32 values of `entry` starting at element `start`.
pub fn read_f32s(
    file: &File,
    header: &SafetensorsHeader,
    entry: &TensorEntry,
    start: usize,
    out: &mut Vec<f32>,
    bytes: &mut Vec<u8>,
    count: usize,
) -> std::io::Result<()> {
    bytes.resize(count * 4, 0);
    file.read_exact_at(bytes, header.data_start + entry.begin + (start as u64) * 4)?;
    out.clear();
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    Ok(())
}

/// Checks a received model file: a safetensors header of F32 tensors, exactly the names and
/// shapes of `expected` (when given), and only finite values. The error names the tensor.
pub fn validate_update(
    path: &Path,
    expected: Option<&Schema>,
) -> Result<SafetensorsHeader, String> {
    let header = read_header(path).map_err(|e| e.to_string())?;
    if header.tensors.is_empty() {
        return Err("the file holds no tensors".into());
    }
    if let Some(expected) = expected {
        let got = schema_of(&header);
        let mut problems = Vec::new();
        for (name, shape) in expected {
            match got.get(name) {
                None => problems.push(format!("missing tensor {name}")),
                Some(s) if s != shape => {
                    problems.push(format!("tensor {name}: shape {s:?}, expected {shape:?}"))
                }
                Some(_) => {}
            }
        }
        for name in got.keys().filter(|n| !expected.contains_key(*n)) {
            problems.push(format!("unexpected tensor {name}"));
        }
        if !problems.is_empty() {
            problems.truncate(8);
            return Err(problems.join("; "));
        }
    }
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let (mut values, mut bytes) = (Vec::new(), Vec::new());
    for entry in &header.tensors {
        let mut start = 0;
        while start < entry.len() {
            let n = STREAM_ELEMENTS.min(entry.len() - start);
            read_f32s(&file, &header, entry, start, &mut values, &mut bytes, n)
                .map_err(|e| io_err(path, e))?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "tensor {}: non-finite value {} at element {}",
                    entry.name,
                    values[i],
                    start + i
                ));
            }
            start += n;
        }
    }
    Ok(header)
}

/// A finished file: where it is, its digest and size.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// Writes a safetensors file front to back: the header first (shapes are known), then the
/// values as they are computed, hashing as it goes.
pub struct StreamWriter {
    path: PathBuf,
    out: BufWriter<File>,
    hasher: Sha256,
    size: u64,
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
        let mut w = Self {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, File::create(path)?),
            hasher: Sha256::new(),
            size: 0,
        };
        w.write_bytes(&(header_bytes.len() as u64).to_le_bytes())?;
        w.write_bytes(&header_bytes)?;
        Ok(w)
    }

    fn write_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hasher.update(b);
        self.size += b.len() as u64;
        self.out.write_all(b)
    }

    pub fn write_f32s(&mut self, values: &[f32]) -> std::io::Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_bytes(&bytes)
    }

    /// Flushes and fsyncs.
    pub fn finish(self) -> std::io::Result<WrittenFile> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(WrittenFile {
            path: self.path,
            sha256: hex::encode(self.hasher.finalize()),
            size: self.size,
        })
    }
}
