//! The four centers of the paper's Table 1, each with its geometry (resolution, slice thickness,
//! slice count, matrix), on-disk layout and its own intensity character.
//!
//! Intensities are relative to LV blood = 1, calibrated on real public LGE volumes (see the
//! foundation issue): EMIDEC phase-sensitive 12-bit with zero signal near 2048, MS-CMRSeg
//! magnitude int16 with a zeroed background and heavy within-tissue variation.

use serde::{Deserialize, Serialize};

use crate::data::Layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// Late gadolinium enhancement: nulled (grey) myocardium, bright scar.
    Lge,
    /// Bright-blood cine (the paper's M&Ms pretraining): grey myocardium, no scar.
    Cine,
}

/// How signal is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoding {
    /// Signed (phase-sensitive) signal stored as 12-bit unsigned integers around `zero`.
    PhaseSensitive12Bit { zero: f32 },
    /// Magnitude signal in int16; air outside the body masked to exactly 0.
    MagnitudeInt16 { mask_air: bool },
    /// Magnitude signal in uint16.
    MagnitudeUint16,
    /// Magnitude signal in float32, arbitrary units.
    MagnitudeFloat32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CenterProfile {
    pub name: &'static str,
    pub layout: Layout,
    pub spacing_mm: (f32, f32),
    pub thickness_mm: (f32, f32),
    pub slices: (usize, usize),
    /// Matrix side range (pixels), x and y drawn independently.
    pub matrix: (usize, usize),
    pub encoding: Encoding,
    /// Signal of LV blood in stored units (range, per subject).
    pub blood_level: (f32, f32),
    /// Healthy myocardium relative to blood (range, per subject: inversion-time error).
    pub myocardium: (f32, f32),
    pub scar: (f32, f32),
    pub no_reflow: (f32, f32),
    /// Fat, muscle/liver and lung relative to blood.
    pub fat: f32,
    pub muscle: f32,
    pub lung: f32,
    /// Noise SD relative to blood (Rician for magnitude, Gaussian for phase-sensitive).
    pub noise: (f32, f32),
    /// Peak-to-peak amplitude of the multiplicative bias field.
    pub bias: f32,
    /// In-plane blur (Gaussian σ in pixels).
    pub blur_px: f32,
    /// Share of subjects with an infarct scar.
    pub scar_share: f32,
}

pub const CENTER_NAMES: [&str; 4] = ["emidec", "mscmr", "vh", "stpau"];

pub fn profile(name: &str, modality: Modality) -> Option<CenterProfile> {
    let mut p = match name {
        // University Hospital of Dijon, Siemens 1.5/3T, PSIR stored as 12-bit.
        "emidec" => CenterProfile {
            name: "emidec",
            layout: Layout::Emidec,
            spacing_mm: (1.37, 1.88),
            thickness_mm: (8.0, 13.0),
            slices: (4, 10),
            matrix: (224, 256),
            encoding: Encoding::PhaseSensitive12Bit { zero: 2048.0 },
            blood_level: (900.0, 1400.0),
            myocardium: (0.2, 0.6),
            scar: (0.85, 0.95),
            no_reflow: (0.55, 0.65),
            fat: 0.75,
            muscle: 0.3,
            lung: 0.03,
            noise: (0.035, 0.05),
            bias: 0.06,
            blur_px: 0.6,
            scar_share: 0.67,
        },
        // Shanghai Renji, Philips 1.5T, magnitude int16, zeroed background, noisy.
        "mscmr" => CenterProfile {
            name: "mscmr",
            layout: Layout::Mscmr,
            spacing_mm: (0.75, 0.75),
            thickness_mm: (5.0, 5.0),
            slices: (10, 18),
            matrix: (400, 512),
            encoding: Encoding::MagnitudeInt16 { mask_air: true },
            blood_level: (250.0, 700.0),
            myocardium: (0.2, 0.55),
            scar: (0.75, 0.9),
            no_reflow: (0.45, 0.55),
            fat: 0.25,
            muscle: 0.15,
            lung: 0.1,
            noise: (0.2, 0.3),
            bias: 0.35,
            blur_px: 1.2,
            scar_share: 0.6,
        },
        // Vall d'Hebron, GE 1.5T, magnitude uint16, well-nulled myocardium, strong bias field.
        "vh" => CenterProfile {
            name: "vh",
            layout: Layout::Generic,
            spacing_mm: (1.48, 1.68),
            thickness_mm: (10.0, 10.0),
            slices: (8, 15),
            matrix: (256, 256),
            encoding: Encoding::MagnitudeUint16,
            blood_level: (1500.0, 2500.0),
            myocardium: (0.08, 0.3),
            scar: (0.95, 1.15),
            no_reflow: (0.3, 0.4),
            fat: 0.9,
            muscle: 0.45,
            lung: 0.06,
            noise: (0.08, 0.12),
            bias: 0.5,
            blur_px: 0.8,
            scar_share: 0.9,
        },
        // Sant Pau, Philips Achieva 1.5T, high resolution, float32, imaging 7–10 min after
        // contrast: myocardium only partly nulled.
        "stpau" => CenterProfile {
            name: "stpau",
            layout: Layout::Generic,
            spacing_mm: (1.18, 1.18),
            thickness_mm: (5.0, 5.0),
            slices: (18, 24),
            matrix: (288, 320),
            encoding: Encoding::MagnitudeFloat32,
            blood_level: (80.0, 120.0),
            myocardium: (0.35, 0.7),
            scar: (0.9, 1.05),
            no_reflow: (0.4, 0.5),
            fat: 0.5,
            muscle: 0.55,
            lung: 0.12,
            noise: (0.1, 0.15),
            bias: 0.3,
            blur_px: 1.5,
            scar_share: 0.7,
        },
        _ => return None,
    };
    if modality == Modality::Cine {
        // Bright blood, grey myocardium, no enhancement.
        p.myocardium = (0.25, 0.35);
        p.scar_share = 0.0;
        p.fat = 0.8;
        p.muscle = 0.3;
    }
    Some(p)
}
