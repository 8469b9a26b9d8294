//! The site configuration file (`site.toml`) for the data path: where the data is, how it is
//! laid out, how labels map, how it is preprocessed, split and augmented.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DataError;
use super::labels::LabelMap;
use super::layout::Layout;
use super::split::SplitSpec;
use crate::augment::AugmentConfig;
use crate::preprocess::PreprocessConfig;
use crate::train::TrainConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub site: SiteSection,
    pub data: DataSection,
    /// Overrides the layout's default label map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelMap>,
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    #[serde(default)]
    pub split: SplitSpec,
    #[serde(default)]
    pub augment: AugmentConfig,
    #[serde(default)]
    pub train: TrainConfig,
    /// How to reach the coordinator (`site-agent run`); absent for purely local use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<crate::federation::FederationSection>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Relative paths are relative to the folder of the config file.
    pub root: PathBuf,
    pub layout: Layout,
}

impl SiteConfig {
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: SiteConfig = toml::from_str(&text).map_err(|e| DataError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if cfg.data.root.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            cfg.data.root = if cfg.data.root == Path::new(".") {
                base.to_path_buf()
            } else {
                base.join(&cfg.data.root)
            };
        }
        if let Some(f) = cfg.federation.as_mut() {
            f.resolve(path.parent().unwrap_or(Path::new(".")));
        }
        cfg.validate().map_err(|reason| DataError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.label_map().validate()?;
        self.preprocess.validate()?;
        self.split.validate()?;
        self.augment.validate()?;
        self.train.validate(self.preprocess.size)?;
        Ok(())
    }

    pub fn label_map(&self) -> LabelMap {
        self.labels
            .clone()
            .unwrap_or_else(|| LabelMap::for_layout(self.data.layout))
    }

    pub fn to_toml(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }
}
