//! Evaluation (paper §2.6.2, §2.6.5): predict slice-wise, stack into the volume, keep the
//! largest 3D LV component, optionally histogram-match to a reference first, and score 3D
//! Dice per subject for blood pool, myocardium and whole LV.
//!
//! Dice is scored on each subject's original grid: the prediction, made on the prepared
//! (resampled, cropped) slices, is mapped back with nearest neighbour, as `predict` writes it.

pub mod metrics;

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use self::metrics::{Structure, dice, keep_largest_lv_component};
use crate::data::{Part, PreparedSite};
use crate::histogram::{HistogramReference, match_to_reference};
use crate::model::UNet;
use crate::preprocess::{Plane, restore_label, slice_of};

/// Slices per forward pass at inference.
const PREDICT_BATCH: usize = 16;

/// Class maps of a subject's slices. `model` should be a validation snapshot
/// ([`burn::module::Module::valid`]) and `device` a plain (non-autodiff) device.
pub fn predict_slices(model: &UNet, slices: &[Plane<f32>], device: &Device) -> Vec<Plane<u8>> {
    let mut out = Vec::with_capacity(slices.len());
    for chunk in slices.chunks(PREDICT_BATCH) {
        let (w, h) = (chunk[0].width, chunk[0].height);
        let data: Vec<f32> = chunk.iter().flat_map(|s| s.data.iter().copied()).collect();
        let x = Tensor::<4>::from_data(TensorData::new(data, [chunk.len(), 1, h, w]), device);
        let classes = model.predict(x).argmax(1);
        let values: Vec<i64> = classes
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap_or_default();
        for s in 0..chunk.len() {
            out.push(Plane {
                width: w,
                height: h,
                data: values[s * w * h..(s + 1) * w * h]
                    .iter()
                    .map(|&c| c as u8)
                    .collect(),
            });
        }
    }
    out
}

/// Prediction with the paper's post-processing.
pub fn segment_subject(model: &UNet, slices: &[Plane<f32>], device: &Device) -> Vec<Plane<u8>> {
    let mut pred = predict_slices(model, slices, device);
    keep_largest_lv_component(&mut pred);
    pred
}

#[derive(Debug, Clone, Serialize)]
pub struct SubjectDice {
    pub subject: String,
    pub blood_pool: f64,
    pub myocardium: f64,
    pub lv: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

fn mean_std(values: impl Iterator<Item = f64>) -> MeanStd {
    let v: Vec<f64> = values.collect();
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    MeanStd {
        mean,
        std: var.sqrt(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SiteEvaluation {
    pub site: String,
    pub histogram_matching: bool,
    pub subjects: Vec<SubjectDice>,
    pub blood_pool: MeanStd,
    pub myocardium: MeanStd,
    pub lv: MeanStd,
}

/// Scores the labelled subjects of one split part.
pub fn evaluate_site(
    model: &UNet,
    site: &PreparedSite,
    part: Part,
    reference: Option<&HistogramReference>,
    device: &Device,
) -> SiteEvaluation {
    let mut subjects = Vec::new();
    for s in site.part(part) {
        let Some(original) = &s.original_labels else {
            continue;
        };
        let mut slices = s.slices.clone();
        if let Some(r) = reference {
            match_to_reference(&mut slices, r);
        }
        let prepared = segment_subject(model, &slices, device);
        let restored = restore_label(&prepared, s.shape, s.spacing, &site.preprocess);
        let planes =
            |v: &ndarray::Array3<u8>| (0..v.dim().2).map(|z| slice_of(v, z)).collect::<Vec<_>>();
        let (pred, labels) = (planes(&restored), planes(original));
        subjects.push(SubjectDice {
            subject: s.id.clone(),
            blood_pool: dice(&pred, &labels, Structure::BloodPool),
            myocardium: dice(&pred, &labels, Structure::Myocardium),
            lv: dice(&pred, &labels, Structure::WholeLv),
        });
    }
    SiteEvaluation {
        site: site.name.clone(),
        histogram_matching: reference.is_some(),
        blood_pool: mean_std(subjects.iter().map(|s| s.blood_pool)),
        myocardium: mean_std(subjects.iter().map(|s| s.myocardium)),
        lv: mean_std(subjects.iter().map(|s| s.lv)),
        subjects,
    }
}

impl SiteEvaluation {
    pub fn to_csv(&self) -> String {
        let mut out = String::from("site,subject,blood_pool,myocardium,lv\n");
        for s in &self.subjects {
            out.push_str(&format!(
                "{},{},{:.4},{:.4},{:.4}\n",
                self.site, s.subject, s.blood_pool, s.myocardium, s.lv
            ));
        }
        out
    }
}

impl std::fmt::Display for SiteEvaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "3D Dice at {}{}:",
            self.site,
            if self.histogram_matching {
                " (histogram-matched)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "{:<14} {:>10} {:>10} {:>10}",
            "subject", "blood pool", "myocardium", "LV"
        )?;
        for s in &self.subjects {
            writeln!(
                f,
                "{:<14} {:>10.3} {:>10.3} {:>10.3}",
                s.subject, s.blood_pool, s.myocardium, s.lv
            )?;
        }
        let ms = |m: &MeanStd| format!("{:.3}±{:.3}", m.mean, m.std);
        write!(
            f,
            "{:<14} {:>10} {:>10} {:>10}",
            "mean±std",
            ms(&self.blood_pool),
            ms(&self.myocardium),
            ms(&self.lv)
        )
    }
}
