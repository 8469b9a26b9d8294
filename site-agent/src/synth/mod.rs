//! Synthetic multi-center LGE-MRI phantoms written in each center's on-disk layout, so that
//! synthetic data travels exactly the path real hospital data takes.

pub mod anatomy;
pub mod centers;
pub mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use self::anatomy::{Anatomy, Tissue};
pub use self::centers::{CENTER_NAMES, Modality};
use self::centers::{CenterProfile, Encoding, profile};
use self::render::{Acquisition, render};
use crate::augment::AugmentConfig;
use crate::data::config::{DataSection, SiteSection};
use crate::data::layout::subject_paths;
use crate::data::split::{Amount, SplitSpec};
use crate::data::{Layout, SiteConfig};
use crate::nifti_io::{NiftiIoError, header_with_spacing, write_volume};
use crate::preprocess::PreprocessConfig;
use crate::train::TrainConfig;

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("unknown center {0:?}; known centers: emidec, mscmr, vh, stpau")]
    UnknownCenter(String),
    #[error("--subjects must be at least 3 (one each for train, validation and test), got {0}")]
    TooFewSubjects(usize),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Nifti(#[from] NiftiIoError),
}

#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub out: PathBuf,
    pub centers: Vec<String>,
    pub subjects: usize,
    pub seed: u64,
    pub modality: Modality,
}

/// Mean and standard deviation of a tissue, relative to the subject's LV blood signal.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TissueStat {
    pub mean: f32,
    /// Over all voxels of all subjects (includes differences between subjects).
    pub sd: f32,
    /// Mean of the per-subject standard deviations (relative to blood, like the means): the
    /// within-tissue variation one would measure in one image.
    pub sd_within: f32,
    pub voxels: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CenterSummary {
    pub center: String,
    pub layout: Layout,
    pub dir: PathBuf,
    pub subjects: usize,
    pub with_scar: usize,
    /// Relative to LV blood = 1 (after removing the zero offset of phase-sensitive data).
    pub blood_pool: TissueStat,
    pub myocardium: TissueStat,
    pub scar: TissueStat,
    /// Share of voxels stored as exactly 0.
    pub zero_fraction: f32,
}

/// Accumulates per-tissue relative intensities over subjects.
#[derive(Default)]
struct Acc {
    sum: f64,
    sq: f64,
    n: u64,
}

impl Acc {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.sq += v * v;
        self.n += 1;
    }
    fn merge(&mut self, o: &Acc) {
        self.sum += o.sum;
        self.sq += o.sq;
        self.n += o.n;
    }
    fn stat(&self) -> TissueStat {
        if self.n == 0 {
            return TissueStat::default();
        }
        let mean = self.sum / self.n as f64;
        let var = (self.sq / self.n as f64 - mean * mean).max(0.0);
        TissueStat {
            mean: mean as f32,
            sd: var.sqrt() as f32,
            sd_within: 0.0,
            voxels: self.n,
        }
    }
}

struct SubjectStats {
    blood: Acc,
    myo: Acc,
    scar: Acc,
    zeros: u64,
    voxels: u64,
    has_scar: bool,
}

fn subject_id(layout: Layout, center: &str, index: usize, has_scar: bool) -> String {
    match layout {
        // EMIDEC names pathological cases P and normal ones N.
        Layout::Emidec => format!("Case_{}{:03}", if has_scar { 'P' } else { 'N' }, index + 1),
        Layout::Mscmr => format!("patient{}", index + 1),
        Layout::Generic => format!("{center}_{:03}", index + 1),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A seed per (center, subject), so subjects are independent and can render in parallel.
fn subject_seed(seed: u64, center: usize, subject: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((center as u64) << 32 | subject as u64)
}

fn write_subject(
    p: &CenterProfile,
    dir: &Path,
    center_index: usize,
    index: usize,
    opts: &SynthOptions,
) -> Result<SubjectStats, SynthError> {
    let mut rng = ChaCha8Rng::seed_from_u64(subject_seed(opts.seed, center_index, index));
    let acq = Acquisition::random(p, &mut rng);
    let extent = acq.shape[2] as f32 * acq.spacing[2];
    let anatomy = Anatomy::random(&mut rng, extent, acq.fov_mm(), p.scar_share);
    let r = render(&anatomy, p, &acq, &mut rng);
    let has_scar = anatomy.scar.is_some() && r.tissue.iter().any(|t| *t == Tissue::Scar);
    let id = subject_id(p.layout, p.name, index, anatomy.scar.is_some());
    let (image_path, label_path) = subject_paths(p.layout, dir, &id);
    for parent in [image_path.parent(), label_path.parent()]
        .into_iter()
        .flatten()
    {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let origin = [
        -(acq.shape[0] as f32) * acq.spacing[0] / 2.0,
        -(acq.shape[1] as f32) * acq.spacing[1] / 2.0,
        0.0,
    ];
    let mut header = header_with_spacing(acq.spacing, origin);
    if p.name == "vh" {
        // Like some public datasets: a unit-scale affine while pixdim holds the true spacing.
        header.qform_code = 0;
        header.srow_x = [1.0, 0.0, 0.0, 0.0];
        header.srow_y = [0.0, 1.0, 0.0, 0.0];
        header.srow_z = [0.0, 0.0, 1.0, 0.0];
    }
    match p.encoding {
        Encoding::PhaseSensitive12Bit { .. } | Encoding::MagnitudeUint16 => {
            write_volume::<u16>(&image_path, &r.image, &header)?
        }
        Encoding::MagnitudeInt16 { .. } => write_volume::<i16>(&image_path, &r.image, &header)?,
        Encoding::MagnitudeFloat32 => write_volume::<f32>(&image_path, &r.image, &header)?,
    }
    match p.layout {
        Layout::Mscmr => write_volume::<i16>(&label_path, &r.label, &header)?,
        _ => write_volume::<u8>(&label_path, &r.label, &header)?,
    }

    let zero = match p.encoding {
        Encoding::PhaseSensitive12Bit { zero } => zero,
        _ => 0.0,
    };
    let mut stats = SubjectStats {
        blood: Acc::default(),
        myo: Acc::default(),
        scar: Acc::default(),
        zeros: 0,
        voxels: r.image.len() as u64,
        has_scar,
    };
    let (nx, ny, _) = r.tissue.dim();
    for ((i, j, k), t) in r.tissue.indexed_iter() {
        let v = r.image[[i, j, k]];
        if v == 0.0 {
            stats.zeros += 1;
        }
        // Tissue statistics inside regions, as one would place an ROI: in-plane neighbours of
        // the same tissue (partial volume at borders is real, but not "within-tissue").
        let interior = i > 0
            && j > 0
            && i + 1 < nx
            && j + 1 < ny
            && [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
                .iter()
                .all(|&(a, b)| r.tissue[[a, b, k]] == *t);
        if !interior {
            continue;
        }
        let rel = ((v - zero) / acq.blood_level) as f64;
        match t {
            Tissue::LvBlood => stats.blood.add(rel),
            Tissue::Myocardium => stats.myo.add(rel),
            Tissue::Scar => stats.scar.add(rel),
            _ => {}
        }
    }
    Ok(stats)
}

/// The site config written beside each center's data, accepted as is by the other commands.
pub fn site_config(center: &str, layout: Layout, subjects: usize) -> SiteConfig {
    let test = ((subjects as f64 * 0.25).round() as usize).max(1);
    let val = ((subjects as f64 * 0.15).round() as usize).max(1);
    SiteConfig {
        site: SiteSection {
            name: center.to_string(),
        },
        data: DataSection {
            root: PathBuf::from("."),
            layout,
        },
        labels: None,
        preprocess: PreprocessConfig::default(),
        split: SplitSpec {
            seed: 42,
            test: Amount::Count(test),
            val: Amount::Count(val),
            train: None,
            train_fraction: 1.0,
        },
        augment: AugmentConfig::default(),
        train: TrainConfig::default(),
        federation: None,
    }
}

/// Writes every requested center under `opts.out/<center>/`, each with its `site.toml`.
pub fn synthesize(opts: &SynthOptions) -> Result<Vec<CenterSummary>, SynthError> {
    if opts.subjects < 3 {
        return Err(SynthError::TooFewSubjects(opts.subjects));
    }
    let mut profiles = Vec::new();
    for name in &opts.centers {
        let index = CENTER_NAMES
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| SynthError::UnknownCenter(name.clone()))?;
        // `profile` knows every name in CENTER_NAMES.
        let p =
            profile(name, opts.modality).ok_or_else(|| SynthError::UnknownCenter(name.clone()))?;
        profiles.push((index, p));
    }
    let jobs: Vec<(usize, usize)> = (0..profiles.len())
        .flat_map(|c| (0..opts.subjects).map(move |s| (c, s)))
        .collect();
    let results: Vec<(usize, Result<SubjectStats, SynthError>)> = jobs
        .par_iter()
        .map(|&(c, s)| {
            let (index, p) = &profiles[c];
            (c, write_subject(p, &opts.out.join(p.name), *index, s, opts))
        })
        .collect();
    let mut per_center: BTreeMap<usize, Vec<SubjectStats>> = BTreeMap::new();
    for (c, r) in results {
        per_center.entry(c).or_default().push(r?);
    }
    let mut out = Vec::new();
    for (c, (_, p)) in profiles.iter().enumerate() {
        let dir = opts.out.join(p.name);
        let cfg_path = dir.join("site.toml");
        std::fs::write(
            &cfg_path,
            site_config(p.name, p.layout, opts.subjects).to_toml(),
        )
        .map_err(io_err(&cfg_path))?;
        let stats = per_center.remove(&c).unwrap_or_default();
        let (mut blood, mut myo, mut scar) = (Acc::default(), Acc::default(), Acc::default());
        let (mut zeros, mut voxels) = (0, 0);
        let within = |f: fn(&SubjectStats) -> &Acc| {
            let per: Vec<f32> = stats
                .iter()
                .map(f)
                .filter(|a| a.n > 1)
                .map(|a| a.stat().sd)
                .collect();
            // An empty f32 sum is -0.0; report 0.
            (per.iter().sum::<f32>() / per.len().max(1) as f32).max(0.0)
        };
        let sd_within = [
            within(|s| &s.blood),
            within(|s| &s.myo),
            within(|s| &s.scar),
        ];
        for s in &stats {
            blood.merge(&s.blood);
            myo.merge(&s.myo);
            scar.merge(&s.scar);
            zeros += s.zeros;
            voxels += s.voxels;
        }
        out.push(CenterSummary {
            center: p.name.to_string(),
            layout: p.layout,
            dir,
            subjects: stats.len(),
            with_scar: stats.iter().filter(|s| s.has_scar).count(),
            blood_pool: TissueStat {
                sd_within: sd_within[0],
                ..blood.stat()
            },
            myocardium: TissueStat {
                sd_within: sd_within[1],
                ..myo.stat()
            },
            scar: TissueStat {
                sd_within: sd_within[2],
                ..scar.stat()
            },
            zero_fraction: zeros as f32 / voxels.max(1) as f32,
        });
    }
    Ok(out)
}
