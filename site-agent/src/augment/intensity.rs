//! Bilateral filter, Gaussian noise σ∈[0, 0.03], gamma and inverse gamma [0.7, 1.5], brightness
//! and contrast [−0.5, 0.5]. Images are normalised to [0, 1] and stay there.

use rand::Rng;

use super::standard_normal;
use crate::preprocess::Plane;

pub const NOISE_SIGMA_MAX: f32 = 0.03;
pub const GAMMA_RANGE: (f32, f32) = (0.7, 1.5);
pub const BRIGHTNESS_CONTRAST_LIMIT: f32 = 0.5;

/// Edge-preserving blur: 5×5 window, spatial σ 1.5 px, range σ `sigma_range` (intensity units).
pub fn bilateral(p: &mut Plane<f32>, sigma_range: f32) {
    const R: isize = 2;
    let spatial: Vec<f32> = (-R..=R)
        .flat_map(|dy| {
            (-R..=R).map(move |dx| (-((dx * dx + dy * dy) as f32) / (2.0 * 1.5 * 1.5)).exp())
        })
        .collect();
    let inv_range = -1.0 / (2.0 * sigma_range * sigma_range);
    let src = p.clone();
    for y in 0..p.height as isize {
        for x in 0..p.width as isize {
            let c = src.get(x as usize, y as usize);
            let (mut sum, mut wsum) = (0.0, 0.0);
            let mut k = 0;
            for dy in -R..=R {
                for dx in -R..=R {
                    let v = src.get_or(x + dx, y + dy, c);
                    let d = v - c;
                    let w = spatial[k] * (d * d * inv_range).exp();
                    sum += w * v;
                    wsum += w;
                    k += 1;
                }
            }
            p.set(x as usize, y as usize, sum / wsum);
        }
    }
}

pub fn gaussian_noise<R: Rng>(p: &mut Plane<f32>, sigma: f32, rng: &mut R) {
    for v in p.data.iter_mut() {
        *v += sigma * standard_normal(rng);
    }
}

pub fn gamma(p: &mut Plane<f32>, g: f32) {
    for v in p.data.iter_mut() {
        *v = v.clamp(0.0, 1.0).powf(g);
    }
}

/// Gamma applied to the inverted image: brightens or darkens the dark end instead.
pub fn inverse_gamma(p: &mut Plane<f32>, g: f32) {
    for v in p.data.iter_mut() {
        *v = 1.0 - (1.0 - v.clamp(0.0, 1.0)).powf(g);
    }
}

pub fn brightness(p: &mut Plane<f32>, delta: f32) {
    for v in p.data.iter_mut() {
        *v += delta;
    }
}

/// Scales the distance to the mean by `1 + factor`.
pub fn contrast(p: &mut Plane<f32>, factor: f32) {
    let mean = p.data.iter().sum::<f32>() / p.data.len().max(1) as f32;
    for v in p.data.iter_mut() {
        *v = mean + (*v - mean) * (1.0 + factor);
    }
}

fn clamp_unit(p: &mut Plane<f32>) {
    for v in p.data.iter_mut() {
        *v = v.clamp(0.0, 1.0);
    }
}

pub fn random_intensity<R: Rng>(p: f32, image: &mut Plane<f32>, rng: &mut R) {
    let l = BRIGHTNESS_CONTRAST_LIMIT;
    if rng.random::<f32>() < p {
        bilateral(image, rng.random_range(0.05..=0.15));
    }
    if rng.random::<f32>() < p {
        gaussian_noise(image, rng.random_range(0.0..=NOISE_SIGMA_MAX), rng);
    }
    if rng.random::<f32>() < p {
        gamma(image, rng.random_range(GAMMA_RANGE.0..=GAMMA_RANGE.1));
    }
    if rng.random::<f32>() < p {
        inverse_gamma(image, rng.random_range(GAMMA_RANGE.0..=GAMMA_RANGE.1));
    }
    if rng.random::<f32>() < p {
        brightness(image, rng.random_range(-l..=l));
    }
    if rng.random::<f32>() < p {
        contrast(image, rng.random_range(-l..=l));
    }
    clamp_unit(image);
}
