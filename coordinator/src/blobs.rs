//! Model blobs: safetensors files named by the BLAKE3 digest of their bytes, written atomically
//! (temporary file, fsync, rename), so a crash leaves either the whole file or none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    /// Digests adopted by uploads not yet accepted or refused, with how many: such a blob
    /// may be about to be referenced, so it is never deleted as unused.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// An upload's claim on the blob it adopted, released when dropped.
pub struct InFlight {
    digest: String,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.digest);
            }
        }
    }
}

impl BlobStore {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("incoming"))?;
        // Leftovers of transfers a crash interrupted are never referenced: drop them.
        for entry in std::fs::read_dir(dir.join("incoming"))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            in_flight: Arc::default(),
        })
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.safetensors"))
    }

    pub fn exists(&self, digest: &str) -> bool {
        self.path(digest).is_file()
    }

    /// Where transfers and aggregations write before their digest is known.
    pub fn incoming_dir(&self) -> PathBuf {
        self.dir.join("incoming")
    }

    /// Frees the page cache a blob holds (see `release_page_cache`); for blobs the round
    /// just finished reading. Best effort: a missing file is no error here.
    pub fn release_cache(path: &Path) {
        if let Ok(f) = std::fs::File::open(path) {
            fedseg_proto::transfer::release_page_cache(&f);
        }
    }

    /// `adopt` for an upload that is accepted or refused afterwards: while the returned claim
    /// lives, `in_flight` says the blob may still become referenced.
    pub fn adopt_shared(&self, tmp: &Path, digest: &str) -> std::io::Result<InFlight> {
        let claim = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            *map.entry(digest.to_string()).or_default() += 1;
            InFlight {
                digest: digest.to_string(),
                in_flight: Arc::clone(&self.in_flight),
            }
        };
        self.adopt(tmp, digest)?;
        Ok(claim)
    }

    pub fn in_flight(&self, digest: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(digest)
    }

    /// Moves a finished temporary file under its digest's name.
    pub fn adopt(&self, tmp: &Path, digest: &str) -> std::io::Result<PathBuf> {
        let dest = self.path(digest);
        std::fs::rename(tmp, &dest)?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(dest)
    }
}
