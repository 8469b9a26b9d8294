//! `coordinator.toml`: where the coordinator listens, keeps its state and finds its PKI.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address of the gRPC (mutual TLS) listener, e.g. "0.0.0.0:7443".
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Folder for the sled database and the model blobs. Relative to the config file.
    #[serde(default = "default_state")]
    pub state_dir: PathBuf,
    /// Folder made by `coordinator pki init`. Relative to the config file.
    #[serde(default = "default_pki")]
    pub pki_dir: PathBuf,
    /// A site that has not sent a heartbeat for this long counts as gone for quorum decisions.
    #[serde(default = "default_heartbeat_timeout")]
    pub heartbeat_timeout_s: f64,
    /// Heartbeat period the coordinator asks agents for.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_s: u32,
    /// SHA-256 fingerprints (hex) of revoked client certificates; `pki issue-*` prints them.
    #[serde(default)]
    pub revoked: Vec<String>,
    /// Largest model file accepted from a site.
    #[serde(default = "default_max_model")]
    pub max_model_bytes: u64,
    /// Model uploads and downloads served at once (others queue): bounds memory and keeps
    /// each transfer fast instead of all of them slow.
    #[serde(default = "default_transfers")]
    pub max_concurrent_transfers: usize,
    /// Memory (MiB) for holding the round's updates from arrival to aggregation, which then
    /// reads them from memory instead of disk (see held.rs); updates beyond it are read back
    /// from disk. The default holds four updates of a paper-size (35 M-parameter) model.
    #[serde(default = "default_update_memory")]
    pub update_memory_mb: u64,
    /// Plain-HTTP address of the read-only status page (`/`), Prometheus metrics
    /// (`/metrics`) and the health check (`/healthz`), e.g. "127.0.0.1:9464"; off when unset.
    /// No client certificate is asked there: keep it on localhost or a monitoring network.
    #[serde(
        default,
        alias = "metrics_listen",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_listen: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:7443".into()
}
fn default_state() -> PathBuf {
    "state".into()
}
fn default_pki() -> PathBuf {
    "pki".into()
}
fn default_heartbeat_timeout() -> f64 {
    30.0
}
fn default_heartbeat() -> u32 {
    5
}
fn default_transfers() -> usize {
    4
}
fn default_update_memory() -> u64 {
    600
}
fn default_max_model() -> u64 {
    8 << 30
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        // An empty document takes every default.
        toml::from_str("").unwrap_or_else(|_| unreachable!("defaults parse"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut cfg: CoordinatorConfig = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.state_dir, &mut cfg.pki_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_timeout_s.is_nan() || self.heartbeat_timeout_s <= 0.0 {
            return Err("heartbeat_timeout_s must be positive".into());
        }
        if self.heartbeat_s == 0 || f64::from(self.heartbeat_s) >= self.heartbeat_timeout_s {
            return Err(format!(
                "heartbeat_s ({}) must be positive and below heartbeat_timeout_s ({})",
                self.heartbeat_s, self.heartbeat_timeout_s
            ));
        }
        if self.max_concurrent_transfers == 0 {
            return Err("max_concurrent_transfers must be at least 1".into());
        }
        for f in &self.revoked {
            if f.len() != 64 || !f.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!(
                    "revoked: {f:?} is not a SHA-256 certificate fingerprint (64 hex digits)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's `coordinator.toml` example parses and validates, so it cannot drift.
    #[test]
    fn the_readme_example_is_a_valid_config() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("`coordinator.toml`:\n\n```toml\n")
            .expect("README has the coordinator.toml example");
        let body = &readme[start..];
        let body = &body[body.find("```toml\n").unwrap_or(0) + 8..];
        let text = &body[..body.find("```").expect("closing fence")];
        let cfg: CoordinatorConfig = toml::from_str(text).expect("README example parses");
        cfg.validate().expect("README example validates");
        assert_eq!(cfg.max_concurrent_transfers, 4);
    }

    #[test]
    fn bad_values_are_named() {
        let cfg = CoordinatorConfig {
            revoked: vec!["abc".into()],
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("abc"));
        let cfg = CoordinatorConfig {
            heartbeat_s: 60,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("heartbeat_s"));
    }
}
