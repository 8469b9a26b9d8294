//! The `[train]` section of a site config: model size, epochs, batch, learning rate, seed and
//! device.

use serde::{Deserialize, Serialize};

use crate::model::UNetConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `tiny`, `cpu` or `paper`; `unet` overrides it.
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unet: Option<UNetConfig>,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub device: DeviceKind,
}

fn default_model() -> String {
    "cpu".into()
}
fn default_epochs() -> usize {
    50
}
fn default_batch() -> usize {
    8
}
fn default_lr() -> f64 {
    1e-3
}
fn default_seed() -> u64 {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: default_model(),
            unet: None,
            epochs: default_epochs(),
            batch_size: default_batch(),
            learning_rate: default_lr(),
            seed: default_seed(),
            device: DeviceKind::Cpu,
        }
    }
}

impl TrainConfig {
    pub fn unet(&self) -> Result<UNetConfig, String> {
        match &self.unet {
            Some(u) => Ok(u.clone()),
            None => UNetConfig::by_name(&self.model).ok_or_else(|| {
                format!(
                    "train.model = {:?}: expected tiny, cpu or paper (or a [train.unet] table)",
                    self.model
                )
            }),
        }
    }

    /// Everything that can be checked before a single step runs.
    pub fn validate(&self, input_size: usize) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("train.batch_size = 0: need at least 1".into());
        }
        if self.epochs == 0 {
            return Err("train.epochs = 0: need at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(format!(
                "train.learning_rate = {}: must be positive",
                self.learning_rate
            ));
        }
        self.unet()?
            .validate(input_size)
            .map_err(|e| format!("train model: {e}"))
    }
}
