//! A problem with one subject or file: reported, and the subject skipped, never silently dropped.

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub subject: Option<String>,
    pub path: Option<PathBuf>,
    pub message: String,
}

impl Problem {
    pub fn subject(id: &str, path: &Path, message: impl Into<String>) -> Self {
        Self {
            subject: Some(id.to_string()),
            path: Some(path.to_path_buf()),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = &self.subject {
            write!(f, "subject {s}: ")?;
        }
        if let Some(p) = &self.path {
            write!(f, "{}: ", p.display())?;
        }
        f.write_str(&self.message)
    }
}
