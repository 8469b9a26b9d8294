//! Paper §2.6.1: volumes to 2D short-axis slices, resampled in-plane to one spacing, cropped or
//! padded around the centre to one size, min-max normalised after cropping.

pub mod plane;

use ndarray::Array3;
use serde::{Deserialize, Serialize};

pub use plane::Plane;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    /// In-plane spacing (mm) every slice is resampled to.
    pub spacing_mm: f32,
    /// Side of the square slice after crop/pad (pixels).
    pub size: usize,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            spacing_mm: 1.25,
            size: 128,
        }
    }
}

impl PreprocessConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.spacing_mm.is_finite() && self.spacing_mm > 0.05 && self.spacing_mm < 20.0) {
            return Err(format!(
                "preprocess.spacing_mm = {}: expected a spacing in (0.05, 20) mm",
                self.spacing_mm
            ));
        }
        if !(8..=2048).contains(&self.size) {
            return Err(format!(
                "preprocess.size = {}: expected 8..=2048 pixels",
                self.size
            ));
        }
        Ok(())
    }
}

/// Slice `z` of a volume indexed `[x, y, z]`, as a plane of width nx and height ny.
pub fn slice_of<T: Copy>(volume: &Array3<T>, z: usize) -> Plane<T> {
    let (nx, ny, _) = volume.dim();
    let mut data = Vec::with_capacity(nx * ny);
    for y in 0..ny {
        for x in 0..nx {
            data.push(volume[[x, y, z]]);
        }
    }
    Plane {
        width: nx,
        height: ny,
        data,
    }
}

/// Resamples a plane to `dst_spacing` and crops/pads it around its centre to `size`×`size`, in one
/// pass. `sample(plane, x, y)` reads the source at fractional pixel coordinates.
pub fn resample_centered<T: Copy>(
    src: &Plane<T>,
    src_spacing: [f32; 2],
    dst_spacing: f32,
    size: usize,
    sample: impl Fn(&Plane<T>, f32, f32) -> T,
) -> Plane<T> {
    let sx = dst_spacing / src_spacing[0];
    let sy = dst_spacing / src_spacing[1];
    let cx_src = src.width as f32 / 2.0;
    let cy_src = src.height as f32 / 2.0;
    let half = size as f32 / 2.0;
    let mut data = Vec::with_capacity(size * size);
    for v in 0..size {
        let y = (v as f32 + 0.5 - half) * sy + cy_src - 0.5;
        for u in 0..size {
            let x = (u as f32 + 0.5 - half) * sx + cx_src - 0.5;
            data.push(sample(src, x, y));
        }
    }
    Plane {
        width: size,
        height: size,
        data,
    }
}

/// Images: linear interpolation, padded with the volume's minimum so that padding does not
/// change the min-max range; then normalised to [0, 1] over the cropped volume.
pub fn prepare_image(
    volume: &Array3<f32>,
    spacing: [f32; 3],
    cfg: &PreprocessConfig,
) -> Vec<Plane<f32>> {
    let fill = volume.iter().copied().fold(f32::INFINITY, f32::min);
    let fill = if fill.is_finite() { fill } else { 0.0 };
    let mut slices: Vec<Plane<f32>> = (0..volume.dim().2)
        .map(|z| {
            let s = slice_of(volume, z);
            resample_centered(
                &s,
                [spacing[0], spacing[1]],
                cfg.spacing_mm,
                cfg.size,
                |p, x, y| p.sample_linear(x, y, fill),
            )
        })
        .collect();
    normalise_min_max(&mut slices);
    slices
}

/// Labels: nearest neighbour, padded with background.
pub fn prepare_label(
    volume: &Array3<u8>,
    spacing: [f32; 3],
    cfg: &PreprocessConfig,
) -> Vec<Plane<u8>> {
    (0..volume.dim().2)
        .map(|z| {
            let s = slice_of(volume, z);
            resample_centered(
                &s,
                [spacing[0], spacing[1]],
                cfg.spacing_mm,
                cfg.size,
                |p, x, y| p.sample_nearest(x, y, 0),
            )
        })
        .collect()
}

/// Min-max over all slices of one volume, so slices keep their relative brightness.
pub fn normalise_min_max(slices: &mut [Plane<f32>]) {
    let (lo, hi) = slices
        .iter()
        .map(Plane::min_max)
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), (c, d)| {
            (a.min(c), b.max(d))
        });
    let range = hi - lo;
    for s in slices.iter_mut() {
        for v in s.data.iter_mut() {
            *v = if range > 0.0 { (*v - lo) / range } else { 0.0 };
        }
    }
}

/// The inverse of [`prepare_label`]: maps class maps of prepared slices back onto the original
/// volume's grid (nearest neighbour), so predictions overlay the input image.
pub fn restore_label(
    slices: &[Plane<u8>],
    shape: [usize; 3],
    spacing: [f32; 3],
    cfg: &PreprocessConfig,
) -> Array3<u8> {
    let [nx, ny, nz] = shape;
    let half = cfg.size as f32 / 2.0;
    let fx = spacing[0] / cfg.spacing_mm;
    let fy = spacing[1] / cfg.spacing_mm;
    Array3::from_shape_fn((nx, ny, nz), |(x, y, z)| {
        let Some(s) = slices.get(z) else { return 0 };
        let u = (x as f32 + 0.5 - nx as f32 / 2.0) * fx + half - 0.5;
        let v = (y as f32 + 0.5 - ny as f32 / 2.0) * fy + half - 0.5;
        s.sample_nearest(u, v, 0)
    })
}
