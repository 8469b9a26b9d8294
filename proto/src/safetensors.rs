//! safetensors files of named f32 tensors, readable by PyTorch (`safetensors.torch.load_file`).
//! Written atomically (temporary file, fsync, rename); read with every size and offset checked,
//! so a truncated or foreign file is an error naming the file, never a panic.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// Header size we accept; real headers of our models are a few tens of KB.
pub const MAX_HEADER: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// One named f32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Tensors plus the free-form string metadata stored with them.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsFile {
    pub tensors: Vec<NamedTensor>,
    pub metadata: BTreeMap<String, String>,
}

pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<(), SafetensorsError> {
    let io = |source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0usize;
    for t in tensors {
        let bytes = t.data.len() * 4;
        header.insert(
            t.name.clone(),
            json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header_bytes =
        serde_json::to_vec(&Value::Object(header)).map_err(|e| io(std::io::Error::other(e)))?;
    // Pad the header so the data starts 8-byte aligned, as the reference implementation does.
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("weights");
    let tmp = path.with_file_name(format!(".tmp-{}-{file_name}", std::process::id()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    f.write_all(&(header_bytes.len() as u64).to_le_bytes())
        .map_err(io)?;
    f.write_all(&header_bytes).map_err(io)?;
    for t in tensors {
        for v in &t.data {
            f.write_all(&v.to_le_bytes()).map_err(io)?;
        }
    }
    let file = f.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A JSON array of non-negative integers under `key`.
fn usize_list(entry: &Value, key: &str) -> Option<Vec<usize>> {
    entry.get(key).and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_u64)
            .map(|d| d as usize)
            .collect()
    })
}

/// Where one tensor's little-endian f32 bytes lie, relative to the start of the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub begin: u64,
    pub end: u64,
}

impl TensorEntry {
    pub fn len(&self) -> usize {
        ((self.end - self.begin) / 4) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.begin == self.end
    }
}

/// A safetensors header: tensor entries in data order, metadata, and where the data starts.
/// Enough to stream a file tensor by tensor without holding it in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsHeader {
    pub tensors: Vec<TensorEntry>,
    pub metadata: BTreeMap<String, String>,
    /// Byte offset of the data section in the file.
    pub data_start: u64,
}

impl SafetensorsHeader {
    /// Element count of all tensors.
    pub fn element_count(&self) -> u64 {
        self.tensors.iter().map(|t| t.len() as u64).sum()
    }
}

/// Parses a header from the file's first bytes; `file_len` bounds every tensor's offsets.
/// `prefix` must hold at least the 8-byte length and the JSON header.
pub fn parse_header(prefix: &[u8], file_len: u64) -> Result<SafetensorsHeader, String> {
    if prefix.len() < 8 {
        return Err(format!("{} bytes, too short for a header", prefix.len()));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&prefix[..8]);
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(format!(
            "header length {n} does not fit in the file ({file_len} bytes): truncated or not safetensors"
        ));
    }
    let header_end = 8 + n as usize;
    if prefix.len() < header_end {
        return Err("header incomplete".into());
    }
    let header: Value = serde_json::from_slice(&prefix[8..header_end])
        .map_err(|e| format!("header is not JSON: {e}"))?;
    let Value::Object(entries) = header else {
        return Err("header is not a JSON object".into());
    };
    let data_len = file_len - header_end as u64;
    let mut tensors = Vec::new();
    let mut metadata = BTreeMap::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            if let Value::Object(m) = entry {
                for (k, v) in m {
                    if let Value::String(s) = v {
                        metadata.insert(k, s);
                    }
                }
            }
            continue;
        }
        let dtype = entry.get("dtype").and_then(Value::as_str).unwrap_or("");
        if dtype != "F32" {
            return Err(format!(
                "tensor {name}: dtype {dtype:?}, only F32 is supported"
            ));
        }
        let shape =
            usize_list(&entry, "shape").ok_or_else(|| format!("tensor {name}: no shape"))?;
        let offsets = usize_list(&entry, "data_offsets").unwrap_or_default();
        let [begin, end] = offsets[..] else {
            return Err(format!("tensor {name}: data_offsets missing"));
        };
        let (begin, end) = (begin as u64, end as u64);
        let count = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        if begin > end
            || end > data_len
            || count.and_then(|c| c.checked_mul(4)) != Some(end - begin)
        {
            return Err(format!(
                "tensor {name}: offsets {begin}..{end} do not match shape {shape:?} within {data_len} data bytes (truncated?)"
            ));
        }
        tensors.push(TensorEntry {
            name,
            shape,
            begin,
            end,
        });
    }
    tensors.sort_by_key(|t| t.begin);
    for pair in tensors.windows(2) {
        if pair[0].end > pair[1].begin {
            return Err(format!(
                "tensors {} and {} overlap",
                pair[0].name, pair[1].name
            ));
        }
    }
    Ok(SafetensorsHeader {
        tensors,
        metadata,
        data_start: header_end as u64,
    })
}

/// Reads only the header of a file (a few KB), for streaming its tensors.
pub fn read_header(path: &Path) -> Result<SafetensorsHeader, SafetensorsError> {
    let f = std::fs::File::open(path).map_err(|source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_header_of(&f, path)
}

/// `read_header` of a file already open (`path` names it in errors). Reads at fixed offsets,
/// so a handle shared with other readers is not disturbed.
pub fn read_header_of(
    f: &std::fs::File,
    path: &Path,
) -> Result<SafetensorsHeader, SafetensorsError> {
    use std::os::unix::fs::FileExt;
    let io = |source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: String| SafetensorsError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let file_len = f.metadata().map_err(io)?.len();
    let mut len_bytes = [0u8; 8];
    f.read_exact_at(&mut len_bytes, 0)
        .map_err(|_| bad(format!("{file_len} bytes, too short for a header")))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(bad(format!(
            "header length {n} does not fit in the file ({file_len} bytes): truncated or not safetensors"
        )));
    }
    let mut prefix = vec![0u8; 8 + n as usize];
    prefix[..8].copy_from_slice(&len_bytes);
    f.read_exact_at(&mut prefix[8..], 8).map_err(io)?;
    parse_header(&prefix, file_len).map_err(bad)
}

pub fn read_safetensors(path: &Path) -> Result<SafetensorsFile, SafetensorsError> {
    let bytes = std::fs::read(path).map_err(|source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let header =
        parse_header(&bytes, bytes.len() as u64).map_err(|reason| SafetensorsError::Format {
            path: path.to_path_buf(),
            reason,
        })?;
    let data = &bytes[header.data_start as usize..];
    let tensors = header
        .tensors
        .into_iter()
        .map(|t| NamedTensor {
            data: data[t.begin as usize..t.end as usize]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            name: t.name,
            shape: t.shape,
        })
        .collect();
    Ok(SafetensorsFile {
        tensors,
        metadata: header.metadata,
    })
}
