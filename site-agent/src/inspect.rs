//! What a hospital runs before joining: every subject found, its geometry, data type, intensity
//! range, label values and how they map, the slices it yields, and every problem.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use crate::data::labels::{BACKGROUND, BLOOD_POOL, LabelMap, MYOCARDIUM};
use crate::data::split::Split;
use crate::data::{DataError, Layout, Problem, SiteConfig, discover, load_subject};

#[derive(Debug, Clone, Serialize)]
pub struct LabelValueReport {
    pub value: i64,
    pub voxels: u64,
    /// `background`, `blood_pool`, `myocardium`, or `unmapped`.
    pub maps_to: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubjectReport {
    pub id: String,
    pub image: PathBuf,
    pub label: Option<PathBuf>,
    pub shape: [usize; 3],
    pub spacing_mm: [f32; 3],
    pub datatype: String,
    pub intensity_min: f32,
    pub intensity_max: f32,
    pub label_values: Vec<LabelValueReport>,
    /// 2D slices this subject yields, and how many of them show the LV.
    pub slices: usize,
    pub slices_with_lv: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub site: String,
    pub root: PathBuf,
    pub layout: Layout,
    pub label_map: LabelMap,
    pub subjects: Vec<SubjectReport>,
    pub problems: Vec<Problem>,
    pub split: Option<Split>,
    pub can_train: bool,
    /// Why the site cannot train, when it cannot.
    pub blockers: Vec<String>,
}

fn class_name(map: &LabelMap, value: i64) -> &'static str {
    match map.class_of(value) {
        Some(BACKGROUND) => "background",
        Some(BLOOD_POOL) => "blood_pool",
        Some(MYOCARDIUM) => "myocardium",
        _ => "unmapped",
    }
}

pub fn inspect(cfg: &SiteConfig) -> Result<InspectReport, DataError> {
    let found = discover(cfg.data.layout, &cfg.data.root)?;
    let map = cfg.label_map();
    let loaded: Vec<Result<SubjectReport, Problem>> = found
        .subjects
        .par_iter()
        .map(|files| {
            let s = load_subject(files, &map, true)?;
            let (lo, hi) = s.image.range();
            let label_values = s
                .label_values
                .iter()
                .flat_map(|v| v.counts.iter())
                .map(|(&value, &voxels)| LabelValueReport {
                    value,
                    voxels,
                    maps_to: class_name(&map, value),
                })
                .collect();
            let slices_with_lv = s
                .label
                .as_ref()
                .map(|l| {
                    l.axis_iter(ndarray::Axis(2))
                        .filter(|z| z.iter().any(|&c| c != BACKGROUND))
                        .count()
                })
                .unwrap_or(0);
            Ok(SubjectReport {
                id: s.files.id.clone(),
                image: s.files.image.clone(),
                label: s.files.label.clone(),
                shape: s.image.shape(),
                spacing_mm: s.image.spacing,
                datatype: format!("{:?}", s.image.datatype),
                intensity_min: lo,
                intensity_max: hi,
                label_values,
                slices: s.image.shape()[2],
                slices_with_lv,
            })
        })
        .collect();
    let mut problems = found.problems;
    let mut subjects = Vec::new();
    for r in loaded {
        match r {
            Ok(s) => subjects.push(s),
            Err(p) => problems.push(p),
        }
    }
    let mut blockers = Vec::new();
    let ids: Vec<String> = subjects.iter().map(|s| s.id.clone()).collect();
    let split = match cfg.split.apply(&ids) {
        Ok(s) => Some(s),
        Err(e) => {
            blockers.push(e);
            None
        }
    };
    if subjects.is_empty() {
        blockers.push("no subject with a readable image and a valid label".into());
    }
    // Per-value totals help a site see a label map problem at a glance.
    let mut totals: BTreeMap<i64, u64> = BTreeMap::new();
    for s in &subjects {
        for v in &s.label_values {
            *totals.entry(v.value).or_default() += v.voxels;
        }
    }
    if !subjects.is_empty() && !totals.keys().any(|v| map.class_of(*v) == Some(BLOOD_POOL)) {
        blockers.push("no voxel of any subject maps to blood_pool: check the label map".into());
    }
    Ok(InspectReport {
        site: cfg.site.name.clone(),
        root: cfg.data.root.clone(),
        layout: cfg.data.layout,
        label_map: map,
        can_train: blockers.is_empty(),
        subjects,
        problems,
        split,
        blockers,
    })
}

impl std::fmt::Display for InspectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "site {} — layout {} — {}",
            self.site,
            self.layout,
            self.root.display()
        )?;
        writeln!(
            f,
            "label map: background {:?}, blood_pool {:?}, myocardium {:?}",
            self.label_map.background, self.label_map.blood_pool, self.label_map.myocardium
        )?;
        writeln!(
            f,
            "{:<14} {:>15} {:>20} {:>8} {:>19} {:>10}  label values → class",
            "subject", "shape", "spacing mm", "dtype", "intensity", "slices/LV"
        )?;
        for s in &self.subjects {
            let labels: Vec<String> = s
                .label_values
                .iter()
                .map(|v| format!("{}→{}", v.value, v.maps_to))
                .collect();
            writeln!(
                f,
                "{:<14} {:>15} {:>20} {:>8} {:>19} {:>10}  {}",
                s.id,
                format!("{}×{}×{}", s.shape[0], s.shape[1], s.shape[2]),
                format!(
                    "{:.2}×{:.2}×{:.2}",
                    s.spacing_mm[0], s.spacing_mm[1], s.spacing_mm[2]
                ),
                s.datatype,
                format!("{:.0}..{:.0}", s.intensity_min, s.intensity_max),
                format!("{}/{}", s.slices, s.slices_with_lv),
                labels.join(" ")
            )?;
        }
        if let Some(split) = &self.split {
            let slices = |ids: &[String]| -> usize {
                self.subjects
                    .iter()
                    .filter(|s| ids.contains(&s.id))
                    .map(|s| s.slices)
                    .sum()
            };
            writeln!(
                f,
                "split: train {} subjects ({} slices), val {} ({}), test {} ({})",
                split.train.len(),
                slices(&split.train),
                split.val.len(),
                slices(&split.val),
                split.test.len(),
                slices(&split.test)
            )?;
        }
        if self.problems.is_empty() {
            writeln!(f, "problems: none")?;
        } else {
            writeln!(
                f,
                "problems ({}; these subjects are skipped):",
                self.problems.len()
            )?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
        }
        if self.can_train {
            write!(f, "ready to train: {} usable subjects", self.subjects.len())
        } else {
            write!(f, "CANNOT TRAIN: {}", self.blockers.join("; "))
        }
    }
}
