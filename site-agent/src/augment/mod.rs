//! Paper §2.2 data augmentation: each operation applied with its own probability (0.2 in the
//! paper), in groups switched by config. Spatial operations move image and label together
//! (nearest neighbour for labels); intensity operations touch only the image. Seeded by the
//! caller's RNG, so an epoch's augmentation is reproducible.

pub mod intensity;
pub mod spatial;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::preprocess::Plane;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AugmentMode {
    #[serde(rename = "none")]
    None,
    #[serde(rename = "spatial")]
    Spatial,
    #[serde(rename = "spatial+intensity")]
    SpatialIntensity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    pub mode: AugmentMode,
    /// Probability of each operation.
    #[serde(default = "default_probability")]
    pub probability: f32,
}

fn default_probability() -> f32 {
    0.2
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            mode: AugmentMode::SpatialIntensity,
            probability: 0.2,
        }
    }
}

impl AugmentConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(format!(
                "augment.probability = {}: must lie in [0, 1]",
                self.probability
            ));
        }
        Ok(())
    }
}

/// Augments one training slice in place. `spacing_mm` is the slice's pixel size, which the
/// rescaling operation draws around.
pub fn augment<R: Rng>(
    cfg: &AugmentConfig,
    spacing_mm: f32,
    image: &mut Plane<f32>,
    label: &mut Plane<u8>,
    rng: &mut R,
) {
    if cfg.mode == AugmentMode::None {
        return;
    }
    spatial::random_spatial(cfg.probability, spacing_mm, image, label, rng);
    if cfg.mode == AugmentMode::SpatialIntensity {
        intensity::random_intensity(cfg.probability, image, rng);
    }
}

/// A standard normal sample (Box–Muller), so we need no distributions crate.
pub fn standard_normal<R: Rng>(rng: &mut R) -> f32 {
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}
