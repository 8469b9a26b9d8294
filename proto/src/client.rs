//! Dialing the coordinator with mutual TLS: the site agent and the admin CLI both connect
//! with a certificate issued by the federation CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::{MAX_FRAME_BYTES, WINDOW_BYTES};

/// Where a party of the federation finds the coordinator and its own PEM files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FederationEndpoint {
    /// `https://host:port` of the coordinator.
    pub coordinator: String,
    /// The name the coordinator's certificate carries; defaults to the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The federation CA certificate (PEM).
    pub ca: PathBuf,
    /// This party's certificate (PEM).
    pub cert: PathBuf,
    /// This party's private key (PEM).
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("coordinator address {0:?}: {1}")]
    Address(String, String),
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
}

impl FederationEndpoint {
    /// Relative PEM paths are taken relative to `base` (the folder of the config file).
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    fn host(&self) -> Option<String> {
        let rest = self.coordinator.split("://").nth(1)?;
        let authority = rest.split('/').next()?;
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next()?,
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        Some(host.to_string())
    }

    /// Opens a TLS channel (lazily connected: the first call dials). Reading the PEM files
    /// happens here, so a missing or unreadable file is reported by name at once.
    pub async fn channel(&self) -> Result<Channel, ConnectError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| ConnectError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let (ca, cert, key) = (read(&self.ca)?, read(&self.cert)?, read(&self.key)?);
        let domain = self
            .server_name
            .clone()
            .or_else(|| self.host())
            .unwrap_or_else(|| "localhost".into());
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(domain);
        let bad = |e: tonic::transport::Error| {
            ConnectError::Address(self.coordinator.clone(), error_chain(&e))
        };
        let endpoint = Channel::from_shared(self.coordinator.clone())
            .map_err(|e| ConnectError::Address(self.coordinator.clone(), e.to_string()))?
            .tls_config(tls)
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(WINDOW_BYTES)
            .initial_connection_window_size(WINDOW_BYTES)
            .max_frame_size(MAX_FRAME_BYTES);
        endpoint
            .connect()
            .await
            .map_err(|e| ConnectError::Connect(self.coordinator.clone(), error_chain(&e)))
    }
}

/// An error with its sources, e.g. "transport error: invalid peer certificate: Expired".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
