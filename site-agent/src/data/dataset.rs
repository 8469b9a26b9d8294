//! Loading a site's subjects: volumes read, labels mapped and checked, slices prepared.
//! A subject that fails is skipped and reported as a [`Problem`]; the others still load.

use ndarray::Array3;
use rayon::prelude::*;

use super::labels::{LabelMap, LabelValues};
use super::layout::{SubjectFiles, discover};
use super::problem::Problem;
use super::split::{Part, Split};
use super::{DataError, SiteConfig};
use crate::histogram::{Histogram, HistogramReference};
use crate::nifti_io::{Volume, read_volume};
use crate::preprocess::{Plane, PreprocessConfig, prepare_image, prepare_label};

/// One subject as read from disk, labels mapped to {0, 1, 2}.
#[derive(Debug, Clone)]
pub struct Subject {
    pub files: SubjectFiles,
    pub image: Volume,
    pub label: Option<Array3<u8>>,
    /// On-disk label values and their voxel counts, before mapping.
    pub label_values: Option<LabelValues>,
}

fn spacing_matches(a: [f32; 3], b: [f32; 3]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= 1e-3 * x.abs().max(y.abs()).max(1e-6))
}

/// Reads one subject. With `require_label`, a subject without a label file is a problem.
pub fn load_subject(
    files: &SubjectFiles,
    map: &LabelMap,
    require_label: bool,
) -> Result<Subject, Problem> {
    let id = files.id.as_str();
    let image =
        read_volume(&files.image).map_err(|e| Problem::subject(id, &files.image, e.reason()))?;
    let Some(label_path) = &files.label else {
        if require_label {
            return Err(Problem::subject(
                id,
                &files.image,
                "no label file found for this image",
            ));
        }
        return Ok(Subject {
            files: files.clone(),
            image,
            label: None,
            label_values: None,
        });
    };
    let label_problem = |m: String| Problem::subject(id, label_path, m);
    let raw = read_volume(label_path).map_err(|e| label_problem(e.reason()))?;
    if raw.shape() != image.shape() {
        return Err(label_problem(format!(
            "label shape {:?} differs from image shape {:?}",
            raw.shape(),
            image.shape()
        )));
    }
    if !spacing_matches(raw.spacing, image.spacing) {
        return Err(label_problem(format!(
            "label spacing {:?} mm differs from image spacing {:?} mm",
            raw.spacing, image.spacing
        )));
    }
    let values = LabelValues::of(raw.data.iter().copied());
    if values.non_integer > 0 {
        return Err(label_problem(format!(
            "{} label voxels are not integers",
            values.non_integer
        )));
    }
    let unmapped = values.unmapped(map);
    if !unmapped.is_empty() {
        return Err(label_problem(format!(
            "label values {unmapped:?} are not in the label map (background {:?}, blood_pool {:?}, myocardium {:?})",
            map.background, map.blood_pool, map.myocardium
        )));
    }
    // Every value is known (checked above), so the fallback never applies.
    let label = raw.data.mapv(|v| map.class_of(v as i64).unwrap_or(0));
    Ok(Subject {
        files: files.clone(),
        image,
        label: Some(label),
        label_values: Some(values),
    })
}

/// A subject's slices after preprocessing.
#[derive(Debug, Clone)]
pub struct PreparedSubject {
    pub id: String,
    pub slices: Vec<Plane<f32>>,
    pub labels: Option<Vec<Plane<u8>>>,
    /// The mapped labels on the original grid: Dice is scored there, as in the paper.
    pub original_labels: Option<Array3<u8>>,
    /// Geometry of the original volume, for writing predictions back.
    pub spacing: [f32; 3],
    pub shape: [usize; 3],
}

pub fn prepare_subject(subject: &Subject, cfg: &PreprocessConfig) -> PreparedSubject {
    PreparedSubject {
        id: subject.files.id.clone(),
        slices: prepare_image(&subject.image.data, subject.image.spacing, cfg),
        labels: subject
            .label
            .as_ref()
            .map(|l| prepare_label(l, subject.image.spacing, cfg)),
        original_labels: subject.label.clone(),
        spacing: subject.image.spacing,
        shape: subject.image.shape(),
    }
}

/// All usable subjects of a site, preprocessed, with the split and the problems met.
#[derive(Debug, Clone)]
pub struct PreparedSite {
    pub name: String,
    pub subjects: Vec<PreparedSubject>,
    pub split: Split,
    pub problems: Vec<Problem>,
    /// How the slices were prepared (to map predictions back to the original grids).
    pub preprocess: PreprocessConfig,
}

impl PreparedSite {
    pub fn part(&self, part: Part) -> impl Iterator<Item = &PreparedSubject> {
        let ids = self.split.ids(part);
        self.subjects.iter().filter(move |s| ids.contains(&s.id))
    }

    /// The site's histogram-matching reference: quantiles of its normalised training
    /// intensities (a statistic that may leave the site; no image does).
    pub fn histogram_reference(&self) -> HistogramReference {
        let mut h = Histogram::default();
        for s in self.part(Part::Train) {
            for slice in &s.slices {
                h.add(&slice.data);
            }
        }
        HistogramReference::from_histogram(&self.name, &h)
    }

    /// Number of 2D slices in a split part.
    pub fn slice_count(&self, part: Part) -> usize {
        self.part(part).map(|s| s.slices.len()).sum()
    }
}

/// Discovers, loads (in parallel) and preprocesses a site's subjects, then splits them.
pub fn prepare_site(cfg: &SiteConfig, require_labels: bool) -> Result<PreparedSite, DataError> {
    let found = discover(cfg.data.layout, &cfg.data.root)?;
    let map = cfg.label_map();
    let results: Vec<Result<PreparedSubject, Problem>> = found
        .subjects
        .par_iter()
        .map(|files| {
            load_subject(files, &map, require_labels).map(|s| prepare_subject(&s, &cfg.preprocess))
        })
        .collect();
    let mut problems = found.problems;
    let mut subjects = Vec::new();
    for r in results {
        match r {
            Ok(s) => subjects.push(s),
            Err(p) => {
                tracing::warn!("skipping: {p}");
                problems.push(p);
            }
        }
    }
    if subjects.is_empty() {
        return Err(DataError::NothingUsable(problems));
    }
    let ids: Vec<String> = subjects.iter().map(|s| s.id.clone()).collect();
    let split = cfg.split.apply(&ids).map_err(DataError::Split)?;
    Ok(PreparedSite {
        name: cfg.site.name.clone(),
        subjects,
        split,
        problems,
        preprocess: cfg.preprocess.clone(),
    })
}
