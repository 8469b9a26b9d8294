//! safetensors files of named f32 tensors, readable by PyTorch (`safetensors.torch.load_file`).
//! Written atomically (temporary file, fsync, rename); read with every size and offset checked,
//! so a truncated or foreign file is an error naming the file, never a panic.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::params::NamedTensor;

/// Header size we accept; real headers of our models are a few tens of KB.
const MAX_HEADER: u64 = 64 << 20;

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

pub fn read_safetensors(path: &Path) -> Result<SafetensorsFile, SafetensorsError> {
    let bytes = std::fs::read(path).map_err(|source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| SafetensorsError::Format {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 8 {
        return Err(bad(format!(
            "{} bytes, too short for a header",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes(
        bytes[..8]
            .try_into()
            .map_err(|_| bad("short header".into()))?,
    );
    if n > MAX_HEADER || 8 + n > bytes.len() as u64 {
        return Err(bad(format!(
            "header length {n} does not fit in the file ({} bytes): truncated or not safetensors",
            bytes.len()
        )));
    }
    let header_end = 8 + n as usize;
    let header: Value = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let Value::Object(entries) = header else {
        return Err(bad("header is not a JSON object".into()));
    };
    let data = &bytes[header_end..];
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
            return Err(bad(format!(
                "tensor {name}: dtype {dtype:?}, only F32 is supported"
            )));
        }
        let shape =
            usize_list(&entry, "shape").ok_or_else(|| bad(format!("tensor {name}: no shape")))?;
        let offsets = usize_list(&entry, "data_offsets").unwrap_or_default();
        let [begin, end] = offsets[..] else {
            return Err(bad(format!("tensor {name}: data_offsets missing")));
        };
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if begin > end || end > data.len() || count.map(|c| c * 4) != Some(end - begin) {
            return Err(bad(format!(
                "tensor {name}: offsets {begin}..{end} do not match shape {shape:?} within {} data bytes (truncated?)",
                data.len()
            )));
        }
        let values = data[begin..end]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.push(NamedTensor {
            name,
            shape,
            data: values,
        });
    }
    Ok(SafetensorsFile { tensors, metadata })
}
