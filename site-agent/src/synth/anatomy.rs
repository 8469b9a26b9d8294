//! A subject's anatomy in millimetres: left ventricle (base to apex, wall thickness, shape,
//! position, rotation, infarct scar), right ventricle, great vessels and surroundings (chest
//! wall, subcutaneous fat, lungs, liver). Coordinates: x right, y down, from the image centre;
//! z along the long axis from the first slice.

use std::f32::consts::PI;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tissue {
    Air,
    Lung,
    Fat,
    Muscle,
    Liver,
    /// Blood outside the ventricles (aorta, atria): bright, labelled background.
    Vessel,
    RvBlood,
    LvBlood,
    Myocardium,
    Scar,
    NoReflow,
}

#[derive(Debug, Clone, Copy)]
struct Ellipse {
    cx: f32,
    cy: f32,
    ax: f32,
    ay: f32,
    /// Sine and cosine of the rotation, computed once: `norm` runs millions of times.
    sin: f32,
    cos: f32,
}

impl Ellipse {
    fn new(cx: f32, cy: f32, ax: f32, ay: f32, rot: f32) -> Self {
        Self::rotated(cx, cy, ax, ay, rot.sin_cos())
    }

    /// With the rotation given as sine and cosine.
    fn rotated(cx: f32, cy: f32, ax: f32, ay: f32, (sin, cos): (f32, f32)) -> Self {
        Self {
            cx,
            cy,
            ax,
            ay,
            sin,
            cos,
        }
    }

    /// < 1 inside, 1 on the border.
    fn norm(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = self.cos * dx + self.sin * dy;
        let v = -self.sin * dx + self.cos * dy;
        ((u / self.ax).powi(2) + (v / self.ay).powi(2)).sqrt()
    }
    fn contains(&self, x: f32, y: f32) -> bool {
        self.norm(x, y) < 1.0
    }
}

#[derive(Debug, Clone)]
pub struct Scar {
    /// Centre of the sector (radians, in the LV frame) and its half width.
    pub angle: f32,
    pub half_width: f32,
    /// Share of the wall, from the endocardium, that is scar (0..1].
    pub transmurality: f32,
    /// Long-axis extent (mm from the LV base).
    pub from_mm: f32,
    pub to_mm: f32,
    /// Share of the wall from the endocardium that is dark no-reflow core, if any.
    pub no_reflow: Option<f32>,
}

#[derive(Debug, Clone)]
pub struct Anatomy {
    heart: [f32; 2],
    /// Drift of the LV centre per mm along the long axis (the long axis is not exactly
    /// perpendicular to the slices).
    tilt: [f32; 2],
    lv_sin_cos: (f32, f32),
    ecc: f32,
    pub r_endo_mm: f32,
    pub wall_mm: f32,
    /// z of the LV base and the LV length to the epicardial apex.
    pub base_z: f32,
    pub length_mm: f32,
    rv_sin_cos: (f32, f32),
    rv_width: f32,
    body: Ellipse,
    fat_mm: f32,
    lungs: [Ellipse; 2],
    liver: Ellipse,
    liver_from_z: f32,
    aorta: Ellipse,
    pub scar: Option<Scar>,
}

impl Anatomy {
    /// Draws a subject whose LV spans most of `extent_z` mm of slices.
    pub fn random<R: Rng>(rng: &mut R, extent_z: f32, fov: [f32; 2], scar_share: f32) -> Self {
        let r_endo = rng.random_range(16.0..26.0);
        let wall = rng.random_range(6.0..12.0);
        let lv_rot = rng.random_range(0.0..PI);
        let heart = [rng.random_range(-15.0..15.0), rng.random_range(-15.0..15.0)];
        // Slices start at or just above the base and end near or beyond the apex.
        let base_z = rng.random_range(-0.05..0.12) * extent_z;
        let length = (extent_z - base_z) * rng.random_range(0.85..1.05);
        let rv_angle = rng.random_range(PI * 0.75..PI * 1.25);
        // The body fills most of the field of view, as in a cardiac scan.
        let body_ax = (fov[0] * rng.random_range(0.42..0.5)).max(120.0);
        let body_ay = (fov[1] * rng.random_range(0.32..0.4)).max(90.0);
        let body = Ellipse::new(
            -heart[0] * 0.5,
            rng.random_range(-5.0..5.0),
            body_ax,
            body_ay,
            rng.random_range(-0.08..0.08),
        );
        let lung = |side: f32, rng: &mut R| {
            Ellipse::new(
                heart[0] + side * rng.random_range(60.0..80.0),
                heart[1] + rng.random_range(-10.0..10.0),
                rng.random_range(35.0..50.0),
                rng.random_range(55.0..75.0),
                side * rng.random_range(0.1..0.4),
            )
        };
        let lungs = [lung(-1.0, rng), lung(1.0, rng)];
        let liver = Ellipse::new(
            heart[0] - rng.random_range(40.0..70.0),
            heart[1] + rng.random_range(40.0..60.0),
            rng.random_range(60.0..90.0),
            rng.random_range(40.0..60.0),
            rng.random_range(-0.3..0.3),
        );
        let aorta = Ellipse::new(
            heart[0] + rng.random_range(20.0..35.0),
            heart[1] + rng.random_range(45.0..60.0),
            11.0,
            11.0,
            0.0,
        );
        let scar = (rng.random::<f32>() < scar_share).then(|| {
            let from = rng.random_range(0.0..0.5) * length;
            let to = (from + rng.random_range(0.3..0.7) * length).min(length);
            Scar {
                angle: rng.random_range(-PI..PI),
                half_width: rng.random_range(0.35..1.1),
                transmurality: rng.random_range(0.25..1.0),
                from_mm: from,
                to_mm: to,
                no_reflow: (rng.random::<f32>() < 0.35).then(|| rng.random_range(0.15..0.4)),
            }
        });
        Anatomy {
            heart,
            tilt: [rng.random_range(-0.15..0.15), rng.random_range(-0.15..0.15)],
            lv_sin_cos: lv_rot.sin_cos(),
            ecc: rng.random_range(0.82..1.0),
            r_endo_mm: r_endo,
            wall_mm: wall,
            base_z,
            length_mm: length,
            rv_sin_cos: rv_angle.sin_cos(),
            rv_width: rng.random_range(12.0..22.0),
            body,
            fat_mm: rng.random_range(6.0..16.0),
            lungs,
            liver,
            liver_from_z: base_z + length * rng.random_range(0.5..0.9),
            aorta,
            scar,
        }
    }

    /// The tissue at a point.
    pub fn tissue(&self, x: f32, y: f32, z: f32) -> Tissue {
        let b = self.body.norm(x, y);
        if b >= 1.0 {
            return Tissue::Air;
        }
        if b > 1.0 - self.fat_mm / self.body.ax.min(self.body.ay) {
            return Tissue::Fat;
        }
        let d = z - self.base_z;
        let hx = self.heart[0] + self.tilt[0] * d;
        let hy = self.heart[1] + self.tilt[1] * d;
        let r_epi = self.r_endo_mm + self.wall_mm;
        if (0.0..self.length_mm).contains(&d) {
            let fe = (1.0 - (d / self.length_mm).powi(2)).max(0.0).sqrt();
            let epi = Ellipse::rotated(hx, hy, r_epi * fe, r_epi * self.ecc * fe, self.lv_sin_cos);
            let s_e = epi.norm(x, y);
            if s_e < 1.0 {
                return self.lv_tissue(x, y, d, hx, hy, s_e);
            }
            // Right ventricle: a crescent against the septum, shorter than the LV.
            if d < self.length_mm * 0.8 {
                let f = (1.0 - (d / (self.length_mm * 0.8)).powi(2)).max(0.0).sqrt();
                let (s, c) = self.rv_sin_cos;
                let off = r_epi * fe + self.rv_width * 0.35 * f;
                let rv = Ellipse::rotated(
                    hx + c * off,
                    hy + s * off,
                    self.rv_width * 0.7 * f,
                    r_epi * 1.5 * f,
                    self.rv_sin_cos,
                );
                if rv.contains(x, y) {
                    return Tissue::RvBlood;
                }
            }
        } else if d < 0.0 && d > -25.0 {
            // Above the base: the left atrium, bright blood that is not LV.
            let la = Ellipse::rotated(
                hx,
                hy,
                self.r_endo_mm * 1.1,
                self.r_endo_mm * 0.9,
                self.lv_sin_cos,
            );
            if la.contains(x, y) {
                return Tissue::Vessel;
            }
        }
        if self.aorta.contains(x, y) {
            return Tissue::Vessel;
        }
        if self.lungs.iter().any(|l| l.contains(x, y)) {
            return Tissue::Lung;
        }
        if z > self.liver_from_z && self.liver.contains(x, y) {
            return Tissue::Liver;
        }
        Tissue::Muscle
    }

    /// Inside the epicardium: cavity, healthy myocardium, scar or no-reflow.
    fn lv_tissue(&self, x: f32, y: f32, d: f32, hx: f32, hy: f32, s_e: f32) -> Tissue {
        let endo_len = self.length_mm - self.wall_mm;
        let fi = if d < endo_len {
            (1.0 - (d / endo_len).powi(2)).max(0.0).sqrt()
        } else {
            0.0
        };
        let endo = Ellipse::rotated(
            hx,
            hy,
            (self.r_endo_mm * fi).max(1e-3),
            (self.r_endo_mm * self.ecc * fi).max(1e-3),
            self.lv_sin_cos,
        );
        let s_i = if fi > 0.0 {
            endo.norm(x, y)
        } else {
            f32::INFINITY
        };
        if s_i < 1.0 {
            return Tissue::LvBlood;
        }
        let Some(scar) = &self.scar else {
            return Tissue::Myocardium;
        };
        if !(scar.from_mm..scar.to_mm).contains(&d) {
            return Tissue::Myocardium;
        }
        let (s, c) = self.lv_sin_cos;
        let (dx, dy) = (x - hx, y - hy);
        let angle = (-s * dx + c * dy).atan2(c * dx + s * dy);
        let mut delta = (angle - scar.angle).abs() % (2.0 * PI);
        if delta > PI {
            delta = 2.0 * PI - delta;
        }
        if delta > scar.half_width {
            return Tissue::Myocardium;
        }
        // Depth into the wall along the ray from the centre: 0 at endo-, 1 at epicardium.
        let depth = if s_i.is_finite() {
            ((1.0 - 1.0 / s_i) / (1.0 / s_e - 1.0 / s_i)).clamp(0.0, 1.0)
        } else {
            0.5
        };
        if let Some(nr) = scar.no_reflow
            && depth < nr
            && delta < scar.half_width * 0.5
        {
            return Tissue::NoReflow;
        }
        if depth < scar.transmurality {
            Tissue::Scar
        } else {
            Tissue::Myocardium
        }
    }
}
