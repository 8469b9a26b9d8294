//! Model blobs: safetensors files named by the SHA-256 of their bytes, written atomically
//! (temporary file, fsync, rename), so a crash leaves either the whole file or none.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
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
        })
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.safetensors"))
    }

    pub fn exists(&self, sha256: &str) -> bool {
        self.path(sha256).is_file()
    }

    /// Where transfers and aggregations write before their digest is known.
    pub fn incoming_dir(&self) -> PathBuf {
        self.dir.join("incoming")
    }

    /// Moves a finished temporary file under its digest's name.
    pub fn adopt(&self, tmp: &Path, sha256: &str) -> std::io::Result<PathBuf> {
        let dest = self.path(sha256);
        std::fs::rename(tmp, &dest)?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(dest)
    }
}
