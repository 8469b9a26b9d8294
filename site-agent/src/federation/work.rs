//! Running one task on local data: train/finetune (from a downloaded model, with a trainable
//! set, a training fraction, FedProx and FedBN-local parameters), evaluate, statistics.
//! Everything here is blocking and runs off the async runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::module::Module;
use fedseg_proto::pb;
use fedseg_proto::safetensors::{NamedTensor, write_safetensors};

use crate::augment::AugmentMode;
use crate::data::{Part, PreparedSite, SiteConfig, prepare_site};
use crate::eval::evaluate_site;
use crate::histogram::HistogramReference;
use crate::model::TrainableSet;
use crate::model::params::{load_named, merge_local, named_tensors, partition_local};
use crate::model::safetensors::read_safetensors;
use crate::train::threads::on_compute_threads;
use crate::train::{EpochStats, TrainRequest, WeightsFile, build_model, device_for, train};

/// What a finished task leaves to send.
pub enum Outcome {
    /// Weights to upload, with the header that announces them (size filled in at send time).
    Update {
        file: PathBuf,
        header: pb::UploadHeader,
    },
    Report(pb::ReportRequest),
}

/// The site's data, prepared once per training fraction.
pub struct Workbench {
    pub config: SiteConfig,
    pub work_dir: PathBuf,
    sites: Mutex<HashMap<u64, Arc<PreparedSite>>>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Workbench {
    pub fn new(config: SiteConfig, work_dir: PathBuf) -> Self {
        Self {
            config,
            work_dir,
            sites: Mutex::new(HashMap::new()),
        }
    }

    pub fn site(&self, fraction: f64) -> Result<Arc<PreparedSite>, String> {
        let key = fraction.to_bits();
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sites.get(&key) {
            return Ok(s.clone());
        }
        let mut cfg = self.config.clone();
        cfg.split.train_fraction = fraction;
        cfg.split.validate()?;
        let site = Arc::new(prepare_site(&cfg, true).map_err(err)?);
        for p in &site.problems {
            tracing::warn!("skipped: {p}");
        }
        sites.insert(key, site.clone());
        Ok(site)
    }

    /// Where FedBN-local parameters of a job's stage live; keyed by "job.stage".
    fn local_file(&self, version_or_key: &str) -> PathBuf {
        // Model versions are "<job>.<stage>.r<round>": drop the round.
        let key = match version_or_key.rsplit_once(".r") {
            Some((k, r)) if r.chars().all(|c| c.is_ascii_digit()) => k,
            _ => version_or_key,
        };
        self.work_dir
            .join("local")
            .join(format!("{key}.safetensors"))
    }

    pub fn train(
        &self,
        task: &pb::Task,
        spec: &pb::TrainSpec,
        init: Option<&Path>,
        out_dir: &Path,
        on_epoch: &(dyn Fn(&EpochStats) + Sync),
    ) -> Result<Outcome, String> {
        let started = std::time::Instant::now();
        let mut cfg = self.config.train.clone();
        cfg.model = spec.model.clone();
        cfg.unet = None;
        cfg.epochs = spec.epochs as usize;
        cfg.batch_size = spec.batch_size as usize;
        cfg.learning_rate = spec.learning_rate;
        cfg.seed = spec.seed;
        let unet = cfg.unet()?;
        let mut augment = self.config.augment.clone();
        augment.mode = match spec.augment.as_str() {
            "" => augment.mode,
            "none" => AugmentMode::None,
            "spatial" => AugmentMode::Spatial,
            "spatial+intensity" => AugmentMode::SpatialIntensity,
            other => return Err(format!("unknown augmentation {other:?}")),
        };
        let site = self.site(spec.train_fraction)?;
        let trainable = TrainableSet::parse(&spec.trainable, unet.levels)?;
        let local = (!spec.local.is_empty())
            .then(|| TrainableSet::parse(&spec.local, unet.levels))
            .transpose()?;
        let stage_key = format!("{}.{}", task.job_id, task.stage_name);
        let local_path = self.local_file(&stage_key);
        let mut init_tensors = match init {
            Some(p) => Some(
                WeightsFile::read(p)
                    .map_err(err)?
                    .tensors_for(&unet)
                    .map_err(err)?,
            ),
            None => None,
        };
        if local.is_some()
            && local_path.is_file()
            && let Some(shared) = init_tensors.take()
        {
            let own = read_safetensors(&local_path).map_err(err)?.tensors;
            init_tensors = Some(merge_local(shared, &own));
        }
        let proximal = match (&init_tensors, spec.prox_mu > 0.0) {
            (Some(t), true) => Some((spec.prox_mu, t.clone())),
            _ => None,
        };
        std::fs::create_dir_all(out_dir).map_err(err)?;
        let weights = out_dir.join("trained.safetensors");
        let outcome = train(TrainRequest {
            site: &site,
            config: &cfg,
            augment: &augment,
            preprocess: &self.config.preprocess,
            init: init_tensors,
            trainable,
            out: &weights,
            // Per task: an agent restarted mid-training resumes at its last epoch.
            checkpoint_dir: Some(out_dir.join("checkpoint")),
            progress: false,
            proximal,
            on_epoch: Some(on_epoch),
        })
        .map_err(err)?;
        let file = read_safetensors(&weights).map_err(err)?;
        let tensors = match &local {
            Some(set) => {
                let (shared, own) = partition_local(file.tensors, set);
                if let Some(parent) = local_path.parent() {
                    std::fs::create_dir_all(parent).map_err(err)?;
                }
                write_safetensors(&local_path, &own, &Default::default()).map_err(err)?;
                shared
            }
            None => file.tensors,
        };
        let update = out_dir.join("update.safetensors");
        write_safetensors(&update, &tensors, &file.metadata).map_err(err)?;
        let last = outcome.epochs.last();
        Ok(Outcome::Update {
            file: update,
            header: pb::UploadHeader {
                task_id: task.task_id.clone(),
                size: 0,
                sample_count: site.slice_count(Part::Train) as u64,
                train_loss: last.map_or(0.0, |e| e.loss),
                val_dice: outcome.best_val_dice as f32,
                download_s: 0.0,
                train_s: started.elapsed().as_secs_f64(),
            },
        })
    }

    pub fn evaluate(
        &self,
        task: &pb::Task,
        spec: &pb::EvaluateSpec,
        models: &[(String, PathBuf)],
    ) -> Result<Outcome, String> {
        let started = std::time::Instant::now();
        let device = device_for(self.config.train.device).map_err(err)?;
        let fallback = self.config.train.unet()?;
        let site = self.site(1.0)?;
        let reference = (!spec.reference_quantiles.is_empty()).then(|| HistogramReference {
            site: spec.reference_site.clone(),
            pixels: 0,
            quantiles: spec.reference_quantiles.clone(),
        });
        if let Some(r) = &reference {
            r.validate()
                .map_err(|e| format!("histogram reference: {e}"))?;
        }
        let mut scores = Vec::new();
        for (version, path) in models {
            let file = WeightsFile::read(path).map_err(err)?;
            let unet = file.unet.clone().unwrap_or_else(|| fallback.clone());
            let mut tensors: Vec<NamedTensor> = file.tensors_for(&unet).map_err(err)?;
            let local = self.local_file(version);
            let fresh = build_model(&unet, 0, &device);
            if local.is_file() {
                tensors = merge_local(tensors, &read_safetensors(&local).map_err(err)?.tensors);
            } else {
                // A FedBN model at a site that kept no norm parameters of its own (it did not
                // train in that stage): the norm layers start from their initial affine values.
                let have: std::collections::BTreeSet<String> =
                    tensors.iter().map(|t| t.name.clone()).collect();
                let missing: Vec<NamedTensor> = named_tensors(&fresh)
                    .into_iter()
                    .filter(|t| !have.contains(&t.name) && t.name.contains(".norm"))
                    .collect();
                if !missing.is_empty() {
                    tracing::info!(version, "no local norm parameters here; using initial ones");
                    tensors.extend(missing);
                }
            }
            let model = load_named(fresh, &tensors)
                .map_err(|e| format!("model {version}: {e}"))?
                .valid();
            let result = on_compute_threads(self.config.train.device, || {
                evaluate_site(&model, &site, Part::Test, reference.as_ref(), &device)
            });
            if result.subjects.is_empty() {
                return Err(format!("site {} has no labelled test subject", site.name));
            }
            scores.push(pb::ModelScores {
                version: version.clone(),
                subjects: result
                    .subjects
                    .iter()
                    .map(|s| pb::SubjectScore {
                        subject: s.subject.clone(),
                        blood_pool: s.blood_pool,
                        myocardium: s.myocardium,
                        lv: s.lv,
                    })
                    .collect(),
            });
        }
        Ok(Outcome::Report(pb::ReportRequest {
            task_id: task.task_id.clone(),
            report: Some(pb::report_request::Report::Evaluation(
                pb::EvaluationReport { models: scores },
            )),
            seconds: started.elapsed().as_secs_f64(),
            error: String::new(),
        }))
    }

    pub fn stats(&self, task: &pb::Task) -> Result<Outcome, String> {
        let started = std::time::Instant::now();
        let site = self.site(1.0)?;
        let reference = site.histogram_reference();
        Ok(Outcome::Report(pb::ReportRequest {
            task_id: task.task_id.clone(),
            report: Some(pb::report_request::Report::Stats(pb::StatsReport {
                quantiles: reference.quantiles,
                voxels: reference.pixels,
            })),
            seconds: started.elapsed().as_secs_f64(),
            error: String::new(),
        }))
    }
}
