//! `site-agent run`: the site's side of a federation. The agent dials out to the coordinator
//! (mutual TLS, its own certificate), pulls tasks, runs them on local data with the same
//! training and evaluation code as the local commands, and sends back only weights, Dice
//! scores and intensity quantiles.

mod agent;
mod metrics;
mod work;

use std::path::{Path, PathBuf};

use fedseg_proto::client::FederationEndpoint;
use serde::{Deserialize, Serialize};

pub use agent::{AgentError, run};

/// The `[federation]` section of `site.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FederationSection {
    /// `https://host:port` of the coordinator.
    pub coordinator: String,
    /// Name in the coordinator's certificate, if not the host of `coordinator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Federation CA, this site's certificate and key (PEM; from `coordinator pki issue-site`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Downloaded models, unsent results, training checkpoints, FedBN-local parameters.
    #[serde(default = "default_work_dir")]
    pub work_dir: PathBuf,
    /// Plain-HTTP address for this agent's Prometheus metrics (`/metrics`) and health check
    /// (`/healthz`), e.g. "127.0.0.1:9465"; off when unset. Serves no data, only counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
}

fn default_work_dir() -> PathBuf {
    "fedseg-work".into()
}

impl FederationSection {
    /// Relative paths are relative to the folder of the config file.
    pub fn resolve(&mut self, base: &Path) {
        for p in [
            &mut self.ca,
            &mut self.cert,
            &mut self.key,
            &mut self.work_dir,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn endpoint(&self) -> FederationEndpoint {
        FederationEndpoint {
            coordinator: self.coordinator.clone(),
            server_name: self.server_name.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}
