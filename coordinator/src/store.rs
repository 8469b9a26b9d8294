//! The sled database: jobs, model versions, sites, counters and the audit log, as JSON
//! values. Each write is flushed before the call returns, so an acknowledged state change
//! survives a SIGKILL.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::records::{JobRecord, ModelVersion, SiteRecord, now_s};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sled(#[from] sled::Error),
    #[error("state database record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    jobs: sled::Tree,
    models: sled::Tree,
    sites: sled::Tree,
    audit: sled::Tree,
    meta: sled::Tree,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::open(dir)?;
        Ok(Self {
            jobs: db.open_tree("jobs")?,
            models: db.open_tree("models")?,
            sites: db.open_tree("sites")?,
            audit: db.open_tree("audit")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    fn put<T: Serialize>(&self, tree: &sled::Tree, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        tree.insert(key.as_bytes(), bytes)?;
        tree.flush()?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        tree.get(key.as_bytes())?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    fn all<T: DeserializeOwned>(&self, tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// A new job id: 000001, 000002, ... in submission order.
    pub fn next_job_id(&self) -> Result<String, StoreError> {
        let next = self.meta.update_and_fetch("next_job", |old| {
            let n = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        let n = next
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(1, u64::from_be_bytes);
        self.meta.flush()?;
        Ok(format!("{n:06}"))
    }

    pub fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.put(&self.jobs, &job.id, job)
    }
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.get(&self.jobs, id)
    }
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.all(&self.jobs)
    }

    pub fn put_model(&self, m: &ModelVersion) -> Result<(), StoreError> {
        self.put(&self.models, &m.id, m)
    }
    pub fn model(&self, id: &str) -> Result<Option<ModelVersion>, StoreError> {
        self.get(&self.models, id)
    }
    pub fn models(&self) -> Result<Vec<ModelVersion>, StoreError> {
        self.all(&self.models)
    }

    pub fn put_site(&self, s: &SiteRecord) -> Result<(), StoreError> {
        self.put(&self.sites, &s.name, s)
    }
    pub fn site(&self, name: &str) -> Result<Option<SiteRecord>, StoreError> {
        self.get(&self.sites, name)
    }
    pub fn sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        self.all(&self.sites)
    }

    /// Appends to the audit log (admin actions, site joins).
    pub fn audit(&self, who: &str, action: &str, detail: &str) -> Result<(), StoreError> {
        let id = self.db.generate_id()?;
        let entry =
            serde_json::json!({"at": now_s(), "who": who, "action": action, "detail": detail});
        tracing::info!(target: "audit", who, action, detail);
        self.put(&self.audit, &format!("{id:016}"), &entry)
    }

    pub fn audit_log(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        self.all(&self.audit)
    }
}
