//! Flips, rotation (±30°), rescaling over [0.75, 1.88] mm and random crop (a shift of the
//! field of view). Rotation, rescaling and crop are composed into one affine warp so the image
//! is interpolated once.

use rand::Rng;

use crate::preprocess::Plane;

pub const MAX_ROTATION_DEG: f32 = 30.0;
pub const SPACING_RANGE_MM: (f32, f32) = (0.75, 1.88);
/// Largest shift of a random crop, as a fraction of the slice size.
pub const MAX_CROP_SHIFT: f32 = 0.125;

pub fn flip_horizontal<T: Copy>(p: &mut Plane<T>) {
    for row in p.data.chunks_mut(p.width) {
        row.reverse();
    }
}

pub fn flip_vertical<T: Copy>(p: &mut Plane<T>) {
    let (w, h) = (p.width, p.height);
    for y in 0..h / 2 {
        for x in 0..w {
            p.data.swap(y * w + x, (h - 1 - y) * w + x);
        }
    }
}

/// Where an output pixel samples the input: `src = centre + m · (dst − centre) − shift`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warp {
    /// Row-major 2×2 matrix (output → input).
    pub m: [f32; 4],
    pub shift: [f32; 2],
}

impl Warp {
    pub const IDENTITY: Warp = Warp {
        m: [1.0, 0.0, 0.0, 1.0],
        shift: [0.0, 0.0],
    };

    /// Rotation by `angle_deg` and zoom: content appears `zoom` times larger.
    pub fn new(angle_deg: f32, zoom: f32, shift: [f32; 2]) -> Self {
        let (s, c) = angle_deg.to_radians().sin_cos();
        let k = 1.0 / zoom;
        Warp {
            m: [c * k, -s * k, s * k, c * k],
            shift,
        }
    }

    fn source(&self, x: f32, y: f32, cx: f32, cy: f32) -> (f32, f32) {
        let (dx, dy) = (x - cx, y - cy);
        (
            cx + self.m[0] * dx + self.m[1] * dy - self.shift[0],
            cy + self.m[2] * dx + self.m[3] * dy - self.shift[1],
        )
    }
}

/// Applies one warp to image (bilinear, filled with 0 = the normalised minimum) and label
/// (nearest, filled with background).
pub fn warp(image: &mut Plane<f32>, label: &mut Plane<u8>, w: Warp) {
    let cx = (image.width as f32 - 1.0) / 2.0;
    let cy = (image.height as f32 - 1.0) / 2.0;
    let mut out_i = Plane::filled(image.width, image.height, 0.0f32);
    let mut out_l = Plane::filled(label.width, label.height, 0u8);
    for y in 0..image.height {
        for x in 0..image.width {
            let (sx, sy) = w.source(x as f32, y as f32, cx, cy);
            out_i.set(x, y, image.sample_linear(sx, sy, 0.0));
            out_l.set(x, y, label.sample_nearest(sx, sy, 0));
        }
    }
    *image = out_i;
    *label = out_l;
}

pub fn random_spatial<R: Rng>(
    p: f32,
    spacing_mm: f32,
    image: &mut Plane<f32>,
    label: &mut Plane<u8>,
    rng: &mut R,
) {
    if rng.random::<f32>() < p {
        flip_horizontal(image);
        flip_horizontal(label);
    }
    if rng.random::<f32>() < p {
        flip_vertical(image);
        flip_vertical(label);
    }
    let mut angle = 0.0;
    let mut zoom = 1.0;
    let mut shift = [0.0, 0.0];
    if rng.random::<f32>() < p {
        angle = rng.random_range(-MAX_ROTATION_DEG..=MAX_ROTATION_DEG);
    }
    if rng.random::<f32>() < p {
        // Show the slice as if acquired at another pixel size within the paper's range.
        let new_spacing = rng.random_range(SPACING_RANGE_MM.0..=SPACING_RANGE_MM.1);
        zoom = spacing_mm / new_spacing;
    }
    if rng.random::<f32>() < p {
        let max = MAX_CROP_SHIFT * image.width as f32;
        shift = [
            rng.random_range(-max..=max).round(),
            rng.random_range(-max..=max).round(),
        ];
    }
    let w = Warp::new(angle, zoom, shift);
    if w != Warp::IDENTITY {
        warp(image, label, w);
    }
}
