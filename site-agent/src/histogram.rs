//! Paper §2.3 histogram matching. A site's reference is a compact statistic — quantiles of its
//! normalised training intensities — never images, so it may leave the site. A test volume is
//! mapped onto it through its own CDF.

use serde::{Deserialize, Serialize};

use crate::preprocess::Plane;

/// Resolution of the intensity histogram over [0, 1].
const BINS: usize = 4096;
/// Quantile levels kept in a reference (0, 1/(n−1), …, 1).
pub const REFERENCE_LEVELS: usize = 101;

/// Intensity counts over [0, 1] (normalised images).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BINS],
            total: 0,
        }
    }
}

fn bin_of(v: f32) -> usize {
    ((v.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1)
}

impl Histogram {
    pub fn add(&mut self, values: &[f32]) {
        for &v in values {
            self.counts[bin_of(v)] += 1;
        }
        self.total += values.len() as u64;
    }

    pub fn of_slices(slices: &[Plane<f32>]) -> Self {
        let mut h = Self::default();
        for s in slices {
            h.add(&s.data);
        }
        h
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Intensity below which a share `q` of the values lie (linear within a bin).
    pub fn quantile(&self, q: f64) -> f32 {
        if self.total == 0 {
            return 0.0;
        }
        let target = q.clamp(0.0, 1.0) * self.total as f64;
        let mut below = 0.0;
        for (b, &c) in self.counts.iter().enumerate() {
            let c = c as f64;
            if c > 0.0 && below + c >= target {
                let within = ((target - below) / c).clamp(0.0, 1.0);
                return ((b as f64 + within) / BINS as f64) as f32;
            }
            below += c;
        }
        1.0
    }

    pub fn quantiles(&self, levels: usize) -> Vec<f32> {
        (0..levels)
            .map(|i| self.quantile(i as f64 / (levels - 1) as f64))
            .collect()
    }

    /// For each bin, the CDF at the middle of its mass (ties share one rank, as in
    /// scikit-image's `match_histograms`).
    fn mid_cdf(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(BINS);
        let mut below = 0.0;
        let total = self.total.max(1) as f64;
        for &c in &self.counts {
            out.push((below + c as f64 / 2.0) / total);
            below += c as f64;
        }
        out
    }

    /// Normalised counts, for plotting.
    pub fn density(&self, bins: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; bins];
        for (b, &c) in self.counts.iter().enumerate() {
            out[b * bins / BINS] += c as f32;
        }
        let total = self.total.max(1) as f32;
        out.iter_mut().for_each(|v| *v /= total);
        out
    }
}

/// The statistic a site shares for histogram matching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramReference {
    pub site: String,
    /// Number of pixels it summarises.
    pub pixels: u64,
    /// Intensities at evenly spaced quantile levels from 0 to 1.
    pub quantiles: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    #[error("{path}: {reason}")]
    Invalid {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl HistogramReference {
    pub fn from_histogram(site: &str, h: &Histogram) -> Self {
        Self {
            site: site.to_string(),
            pixels: h.total(),
            quantiles: h.quantiles(REFERENCE_LEVELS),
        }
    }

    /// Intensity at quantile level `q`, linear between stored levels.
    pub fn at(&self, q: f64) -> f32 {
        let n = self.quantiles.len();
        let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
        let i = (pos.floor() as usize).min(n - 2);
        let f = (pos - i as f64) as f32;
        self.quantiles[i] * (1.0 - f) + self.quantiles[i + 1] * f
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.quantiles.len() < 2 {
            return Err(format!(
                "{} quantiles; at least 2 needed",
                self.quantiles.len()
            ));
        }
        if self.quantiles.iter().any(|q| !q.is_finite()) {
            return Err("quantiles hold NaN or infinity".into());
        }
        if self.quantiles.windows(2).any(|w| w[1] < w[0]) {
            return Err("quantiles are not non-decreasing".into());
        }
        Ok(())
    }

    pub fn load(path: &std::path::Path) -> Result<Self, HistogramError> {
        let invalid = |reason: String| HistogramError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        let r: Self = serde_json::from_str(&text)
            .map_err(|e| invalid(format!("not a histogram reference: {e}")))?;
        r.validate().map_err(invalid)?;
        Ok(r)
    }

    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

/// Maps a volume's slices (jointly, one CDF for the volume) onto the reference distribution.
pub fn match_to_reference(slices: &mut [Plane<f32>], reference: &HistogramReference) {
    let h = Histogram::of_slices(slices);
    let cdf = h.mid_cdf();
    // One lookup per bin; values inside a bin interpolate between neighbouring bin centres.
    let lut: Vec<f32> = cdf.iter().map(|&q| reference.at(q)).collect();
    for s in slices.iter_mut() {
        for v in s.data.iter_mut() {
            let pos = v.clamp(0.0, 1.0) * BINS as f32 - 0.5;
            let i = (pos.floor().max(0.0) as usize).min(BINS - 2);
            let f = (pos - i as f32).clamp(0.0, 1.0);
            *v = lut[i] * (1.0 - f) + lut[i + 1] * f;
        }
    }
}

/// 1-Wasserstein distance between two distributions given by quantiles at the same evenly
/// spaced levels (the mean absolute difference of their quantile functions).
pub fn wasserstein(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / n as f32
}
