//! Turning an anatomy into an LGE-like volume: tissue intensities, partial volume across thick
//! slices, blur, bias field, noise and the center's storage encoding.

use ndarray::Array3;
use rand::Rng;

use super::anatomy::{Anatomy, Tissue};
use super::centers::{CenterProfile, Encoding};
use crate::augment::standard_normal;
use crate::data::Layout;

/// Sub-slice samples averaged across a thick slice (partial volume); thin slices (≤ 7.5 mm)
/// take one, which keeps the high-resolution centers fast to synthesise.
fn through_plane_samples(thickness_mm: f32) -> usize {
    if thickness_mm > 7.5 { 3 } else { 1 }
}

/// One subject's acquisition: geometry and the contrast drawn for it.
#[derive(Debug, Clone)]
pub struct Acquisition {
    pub spacing: [f32; 3],
    pub shape: [usize; 3],
    pub blood_level: f32,
    pub myocardium: f32,
    pub scar: f32,
    pub no_reflow: f32,
    pub noise: f32,
    bias: [f32; 3],
}

impl Acquisition {
    pub fn random<R: Rng>(p: &CenterProfile, rng: &mut R) -> Self {
        let range = |r: (f32, f32), rng: &mut R| {
            if r.0 < r.1 {
                rng.random_range(r.0..r.1)
            } else {
                r.0
            }
        };
        let in_plane = range(p.spacing_mm, rng);
        let thickness = range(p.thickness_mm, rng);
        let slices = rng.random_range(p.slices.0..=p.slices.1);
        let nx = rng.random_range(p.matrix.0..=p.matrix.1);
        let ny = rng.random_range(p.matrix.0..=p.matrix.1);
        Self {
            spacing: [in_plane, in_plane, thickness],
            shape: [nx, ny, slices],
            blood_level: range(p.blood_level, rng),
            myocardium: range(p.myocardium, rng),
            scar: range(p.scar, rng),
            no_reflow: range(p.no_reflow, rng),
            noise: range(p.noise, rng),
            bias: [
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
            ],
        }
    }

    pub fn fov_mm(&self) -> [f32; 2] {
        [
            self.shape[0] as f32 * self.spacing[0],
            self.shape[1] as f32 * self.spacing[1],
        ]
    }
}

/// Signal relative to LV blood.
fn relative_signal(t: Tissue, p: &CenterProfile, a: &Acquisition) -> f32 {
    match t {
        Tissue::Air => 0.0,
        Tissue::Lung => p.lung,
        Tissue::Fat => p.fat,
        Tissue::Muscle => p.muscle,
        Tissue::Liver => p.muscle * 1.2,
        Tissue::Vessel | Tissue::LvBlood => 1.0,
        Tissue::RvBlood => 0.95,
        Tissue::Myocardium => a.myocardium,
        Tissue::Scar => a.scar,
        Tissue::NoReflow => a.no_reflow,
    }
}

/// The on-disk label value of a tissue in a layout.
pub fn label_value(t: Tissue, layout: Layout) -> f32 {
    match (layout, t) {
        (Layout::Emidec, Tissue::LvBlood) => 1.0,
        (Layout::Emidec, Tissue::Myocardium) => 2.0,
        (Layout::Emidec, Tissue::Scar) => 3.0,
        (Layout::Emidec, Tissue::NoReflow) => 4.0,
        (Layout::Mscmr, Tissue::LvBlood) => 500.0,
        (Layout::Mscmr, Tissue::Myocardium | Tissue::Scar | Tissue::NoReflow) => 200.0,
        (Layout::Mscmr, Tissue::RvBlood) => 600.0,
        (Layout::Generic, Tissue::LvBlood) => 1.0,
        (Layout::Generic, Tissue::Myocardium | Tissue::Scar | Tissue::NoReflow) => 2.0,
        _ => 0.0,
    }
}

/// Rendered volumes indexed `[x, y, z]`: the stored image and on-disk label values, plus the
/// tissue at each voxel centre (for statistics).
pub struct Rendered {
    pub image: Array3<f32>,
    pub label: Array3<f32>,
    pub tissue: Array3<Tissue>,
}

pub fn render<R: Rng>(
    anatomy: &Anatomy,
    p: &CenterProfile,
    a: &Acquisition,
    rng: &mut R,
) -> Rendered {
    let [nx, ny, nz] = a.shape;
    let [sx, sy, sz] = a.spacing;
    let mut image = Array3::<f32>::zeros((nx, ny, nz));
    let mut label = Array3::<f32>::zeros((nx, ny, nz));
    let mut tissue = Array3::from_elem((nx, ny, nz), Tissue::Air);
    let mut plane = vec![0.0f32; nx * ny];
    let samples = through_plane_samples(sz);
    for k in 0..nz {
        let zc = (k as f32 + 0.5) * sz;
        for j in 0..ny {
            let y = (j as f32 + 0.5 - ny as f32 / 2.0) * sy;
            for i in 0..nx {
                let x = (i as f32 + 0.5 - nx as f32 / 2.0) * sx;
                let centre = anatomy.tissue(x, y, zc);
                let mut sum = relative_signal(centre, p, a);
                for s in 0..samples {
                    if s == samples / 2 {
                        continue;
                    }
                    let dz = (s as f32 + 0.5) / samples as f32 - 0.5;
                    sum += relative_signal(anatomy.tissue(x, y, zc + dz * sz), p, a);
                }
                plane[j * nx + i] = sum / samples as f32;
                label[[i, j, k]] = label_value(centre, p.layout);
                tissue[[i, j, k]] = centre;
            }
        }
        blur(&mut plane, nx, ny, p.blur_px);
        for j in 0..ny {
            let yn = 2.0 * j as f32 / ny as f32 - 1.0;
            for i in 0..nx {
                let xn = 2.0 * i as f32 / nx as f32 - 1.0;
                let field = 1.0
                    + 0.5 * p.bias * (a.bias[0] * xn + a.bias[1] * yn + a.bias[2] * xn * yn) / 1.5;
                let s = plane[j * nx + i] * field;
                let n1 = a.noise * standard_normal(rng);
                let value = match p.encoding {
                    Encoding::PhaseSensitive12Bit { zero } => {
                        (zero + (s + n1) * a.blood_level).clamp(0.0, 4095.0)
                    }
                    _ => {
                        // Magnitude images: Rician noise.
                        let n2 = a.noise * standard_normal(rng);
                        ((s + n1).powi(2) + n2 * n2).sqrt() * a.blood_level
                    }
                };
                let masked = matches!(p.encoding, Encoding::MagnitudeInt16 { mask_air: true })
                    && tissue[[i, j, k]] == Tissue::Air;
                image[[i, j, k]] = if masked { 0.0 } else { value };
            }
        }
    }
    Rendered {
        image,
        label,
        tissue,
    }
}

/// Separable Gaussian blur in place, edges clamped. Rows go through a padded buffer and the
/// vertical pass adds whole weighted rows, so both loops are branch-free and vectorise.
fn blur(plane: &mut [f32], nx: usize, ny: usize, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    let r = (sigma * 3.0).ceil() as usize;
    let mut kernel: Vec<f32> = (0..=2 * r)
        .map(|t| {
            let d = t as f32 - r as f32;
            (-(d * d) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let norm: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|w| *w /= norm);

    let mut padded = vec![0.0f32; nx + 2 * r];
    let mut tmp = vec![0.0f32; plane.len()];
    for j in 0..ny {
        let row = &plane[j * nx..(j + 1) * nx];
        padded[..r].fill(row[0]);
        padded[r..r + nx].copy_from_slice(row);
        padded[r + nx..].fill(row[nx - 1]);
        let out = &mut tmp[j * nx..(j + 1) * nx];
        for (t, w) in kernel.iter().enumerate() {
            for (o, p) in out.iter_mut().zip(&padded[t..t + nx]) {
                *o += w * p;
            }
        }
    }
    plane.fill(0.0);
    for j in 0..ny {
        let out = &mut plane[j * nx..(j + 1) * nx];
        for (t, w) in kernel.iter().enumerate() {
            let jj = (j + t).saturating_sub(r).min(ny - 1);
            for (o, p) in out.iter_mut().zip(&tmp[jj * nx..(jj + 1) * nx]) {
                *o += w * p;
            }
        }
    }
}
