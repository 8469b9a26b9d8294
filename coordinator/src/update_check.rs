//! Checking an update as its bytes arrive: the safetensors header (F32 tensors, offsets that
//! fit the announced size) and that every value is finite. Done on the stream, so a 140 MB
//! update is not read back from disk before the round may close, and a bad one is refused at
//! the first bad value. Names and shapes are compared with the round's model afterwards
//! (`check_schema`), under the engine's lock, where the expected schema is known.

use fedseg_proto::safetensors::{MAX_HEADER, SafetensorsHeader, parse_header};

use crate::tensors::{Schema, schema_of};

pub struct StreamCheck {
    /// The size the upload announced: the header's offsets must fit in it.
    size: u64,
    /// File bytes seen so far.
    pos: u64,
    /// The file's first bytes, until the header is complete.
    prefix: Vec<u8>,
    header: Option<SafetensorsHeader>,
    /// Index into the header's tensors (sorted by offset) of the one being read.
    tensor: usize,
    /// The first bytes of a value split between two chunks.
    carry: Vec<u8>,
    problem: Option<String>,
}

fn non_finite(word: &[u8]) -> bool {
    let bits = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
    bits & 0x7F80_0000 == 0x7F80_0000
}

impl StreamCheck {
    pub fn new(size: u64) -> Self {
        Self {
            size,
            pos: 0,
            prefix: Vec::new(),
            header: None,
            tensor: 0,
            carry: Vec::new(),
            problem: None,
        }
    }

    /// What was wrong, as soon as something was.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.problem.is_some() {
            return;
        }
        if self.header.is_none() {
            if self.prefix.len() < 8 {
                chunk = self.take_prefix(chunk, 8);
                if self.prefix.len() < 8 {
                    return;
                }
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&self.prefix[..8]);
            let n = u64::from_le_bytes(n);
            if n > MAX_HEADER || 8 + n > self.size {
                self.problem = Some(format!(
                    "not a safetensors file: header length {n} does not fit in the file ({} bytes)",
                    self.size
                ));
                return;
            }
            let wanted = 8 + n as usize;
            chunk = self.take_prefix(chunk, wanted);
            if self.prefix.len() < wanted {
                return;
            }
            match parse_header(&self.prefix, self.size) {
                Ok(h) if h.tensors.is_empty() => {
                    self.problem = Some("the file holds no tensors".into());
                    return;
                }
                Ok(h) => self.header = Some(h),
                Err(e) => {
                    self.problem = Some(format!("not a safetensors file: {e}"));
                    return;
                }
            }
            self.prefix = Vec::new();
        }
        self.scan(chunk);
    }

    /// Moves bytes of `chunk` into the prefix until it holds `wanted`; returns the rest.
    fn take_prefix<'a>(&mut self, chunk: &'a [u8], wanted: usize) -> &'a [u8] {
        let take = wanted.saturating_sub(self.prefix.len()).min(chunk.len());
        self.prefix.extend_from_slice(&chunk[..take]);
        self.pos += take as u64;
        &chunk[take..]
    }

    /// Checks data bytes starting at file offset `self.pos`.
    fn scan(&mut self, data: &[u8]) {
        let Some(header) = &self.header else { return };
        let start = self.pos - header.data_start;
        self.pos += data.len() as u64;
        let mut off = 0usize;
        while off < data.len() {
            let Some(t) = header.tensors.get(self.tensor) else {
                return;
            };
            let rel = start + off as u64;
            if rel >= t.end {
                self.tensor += 1;
                self.carry.clear();
                continue;
            }
            if rel < t.begin {
                off += ((t.begin - rel) as usize).min(data.len() - off);
                continue;
            }
            let avail = ((t.end - rel) as usize).min(data.len() - off);
            let mut piece = &data[off..off + avail];
            off += avail;
            let mut byte = rel - t.begin;
            if !byte.is_multiple_of(4) {
                let take = (4 - (byte % 4) as usize).min(piece.len());
                self.carry.extend_from_slice(&piece[..take]);
                piece = &piece[take..];
                byte += take as u64;
                if self.carry.len() == 4 {
                    if non_finite(&self.carry) {
                        return self.found(t.name.clone(), &self.carry.clone(), byte / 4 - 1);
                    }
                    self.carry.clear();
                }
            }
            let whole = piece.len() / 4 * 4;
            let words = &piece[..whole];
            if let Some(i) = words.chunks_exact(4).position(non_finite) {
                let word = words[i * 4..i * 4 + 4].to_vec();
                return self.found(t.name.clone(), &word, byte / 4 + i as u64);
            }
            self.carry.extend_from_slice(&piece[whole..]);
        }
    }

    fn found(&mut self, tensor: String, word: &[u8], element: u64) {
        let value = f32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        self.problem = Some(format!(
            "tensor {tensor}: non-finite value {value} at element {element}"
        ));
    }

    /// The header, if the whole file was seen and nothing was wrong.
    pub fn finish(self) -> Result<SafetensorsHeader, String> {
        if let Some(p) = self.problem {
            return Err(p);
        }
        match self.header {
            Some(h) if self.pos == self.size => Ok(h),
            Some(_) => Err(format!(
                "truncated: {} of {} bytes arrived",
                self.pos, self.size
            )),
            None => Err(format!(
                "not a safetensors file: {} bytes, too short for a header",
                self.pos
            )),
        }
    }
}

/// Exactly the names and shapes of `expected`; the error lists up to eight differences.
pub fn check_schema(header: &SafetensorsHeader, expected: &Schema) -> Result<(), String> {
    let got = schema_of(header);
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
    if problems.is_empty() {
        return Ok(());
    }
    problems.truncate(8);
    Err(problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedseg_proto::safetensors::{NamedTensor, write_safetensors};
    use std::collections::BTreeMap;

    fn bytes(tensors: &[(&str, Vec<f32>)]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("m.safetensors");
        let named: Vec<NamedTensor> = tensors
            .iter()
            .map(|(n, d)| NamedTensor {
                name: n.to_string(),
                shape: vec![d.len()],
                data: d.clone(),
            })
            .collect();
        write_safetensors(&p, &named, &BTreeMap::new()).expect("write");
        std::fs::read(&p).expect("read")
    }

    /// Feeds `file` in pieces of `step` bytes.
    fn check(file: &[u8], step: usize) -> Result<SafetensorsHeader, String> {
        let mut c = StreamCheck::new(file.len() as u64);
        for piece in file.chunks(step) {
            c.feed(piece);
        }
        c.finish()
    }

    #[test]
    fn a_good_file_passes_whatever_the_chunking() {
        let file = bytes(&[("a", vec![1.0, -2.0, 3.5]), ("b", vec![0.0; 7])]);
        for step in [1, 3, 4, 5, 8, 13, file.len()] {
            let h = check(&file, step).unwrap_or_else(|e| panic!("step {step}: {e}"));
            assert_eq!(h.tensors.len(), 2);
        }
    }

    #[test]
    fn a_bad_value_is_named_by_tensor_and_element_whatever_the_chunking() {
        let file = bytes(&[
            ("a", vec![1.0, 2.0]),
            ("b", vec![0.0, 0.0, 0.0, f32::INFINITY, 1.0]),
        ]);
        for step in [1, 2, 3, 4, 5, 7, 16, file.len()] {
            let e = check(&file, step).expect_err("inf");
            assert_eq!(
                e, "tensor b: non-finite value inf at element 3",
                "step {step}"
            );
        }
        let nan = bytes(&[("w", vec![f32::NAN])]);
        let e = check(&nan, 3).expect_err("NaN");
        assert!(
            e.contains("tensor w: non-finite value NaN at element 0"),
            "{e}"
        );
    }

    #[test]
    fn truncated_garbage_and_empty_files_are_refused() {
        let file = bytes(&[("a", vec![1.0; 16])]);
        let e = check(&file[..file.len() - 4], 5).expect_err("short");
        assert!(e.contains("do not match") || e.contains("truncated"), "{e}");
        let mut short = StreamCheck::new(file.len() as u64);
        short.feed(&file[..file.len() - 4]);
        assert!(short.finish().expect_err("cut").contains("truncated"));
        let e = check(&[0xFFu8; 64], 10).expect_err("garbage");
        assert!(e.contains("not a safetensors file: header length"), "{e}");
        let e = check(&bytes(&[]), 3).expect_err("no tensors");
        assert!(e.contains("no tensors"), "{e}");
    }

    #[test]
    fn schema_differences_are_listed() {
        let file = bytes(&[("a", vec![1.0; 4]), ("c", vec![1.0; 2])]);
        let h = check(&file, 64).expect("good");
        let expected: Schema = [("a".to_string(), vec![3]), ("b".to_string(), vec![2])]
            .into_iter()
            .collect();
        let e = check_schema(&h, &expected).expect_err("differs");
        assert!(e.contains("tensor a: shape [4], expected [3]"), "{e}");
        assert!(
            e.contains("missing tensor b") && e.contains("unexpected tensor c"),
            "{e}"
        );
        assert!(check_schema(&h, &schema_of(&h)).is_ok());
    }
}
