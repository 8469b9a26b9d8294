//! Local training (paper §2.6.4): Adam, deep-supervised CE + Dice, validation Dice every
//! epoch, best weights kept, seeded; a checkpoint after every epoch so an interrupted run
//! resumes where it stopped.

pub mod batch;
pub mod config;
pub mod heap;
pub mod progress;
pub mod threads;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use self::config::{DeviceKind, TrainConfig};
use self::progress::Progress;
use crate::augment::{AugmentConfig, augment};
use crate::data::{Part, PreparedSite};
use crate::eval::evaluate_site;
use crate::model::loss::deep_supervision_loss;
use crate::model::params::{
    apply_trainable, load_named, named_tensors, proximal_term, with_stable_ids,
};
use crate::model::safetensors::{SafetensorsError, read_safetensors, write_safetensors};
use crate::model::{NamedTensor, ParamsError, TrainableSet, UNet, UNetConfig};
use crate::preprocess::{Plane, PreprocessConfig};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training config: {0}")]
    Config(String),
    #[error("site {site} has no labelled training slices")]
    NoTrainingData { site: String },
    #[error(transparent)]
    Weights(#[from] SafetensorsError),
    #[error(transparent)]
    Params(#[from] ParamsError),
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("loss became {value} at epoch {epoch}: training diverged")]
    Diverged { epoch: usize, value: f32 },
}

/// The device for a config: CPU (flex backend) or CUDA when built with the `cuda` feature.
pub fn device_for(kind: DeviceKind) -> Result<Device, TrainError> {
    match kind {
        DeviceKind::Cpu => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => Ok(Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => Err(TrainError::Config(
            "train.device = \"cuda\" needs a site agent built with the cuda feature \
             (cargo build --release -p site-agent --features cuda)"
                .into(),
        )),
    }
}

/// What to train and where to write it.
pub struct TrainRequest<'a> {
    pub site: &'a PreparedSite,
    pub config: &'a TrainConfig,
    pub augment: &'a AugmentConfig,
    /// How the slices were prepared; recorded with the weights so `predict` can redo it.
    pub preprocess: &'a PreprocessConfig,
    /// Starting weights (transfer learning); `None` trains from scratch.
    pub init: Option<Vec<NamedTensor>>,
    pub trainable: TrainableSet,
    /// Best weights (by validation Dice) go here.
    pub out: &'a Path,
    /// Where per-epoch checkpoints live; resumed from if present.
    pub checkpoint_dir: Option<PathBuf>,
    pub progress: bool,
    /// FedProx: μ and the global model the local one is pulled towards.
    pub proximal: Option<(f64, Vec<NamedTensor>)>,
    /// Called after every epoch (the federated agent reports progress with it).
    pub on_epoch: Option<&'a (dyn Fn(&EpochStats) + Sync)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub loss: f32,
    pub val_dice: f64,
    pub slices_per_s: f32,
    pub seconds: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainOutcome {
    pub epochs: Vec<EpochStats>,
    pub best_epoch: usize,
    pub best_val_dice: f64,
    pub resumed_after_epoch: Option<usize>,
    pub parameters: usize,
}

/// Checkpoint bookkeeping, written after each epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    /// Identifies the run: a checkpoint of another config is not resumed.
    run_key: String,
    outcome: TrainOutcome,
}

/// Builds the model for a config on a device, seeded, with stable parameter ids.
pub fn build_model(unet: &UNetConfig, seed: u64, device: &Device) -> UNet {
    // The backend's generator is process-wide: two threads seeding and drawing at once would
    // interleave their draws, and the same seed would not give the same weights.
    static SEEDED_INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SEEDED_INIT.lock().unwrap_or_else(|p| p.into_inner());
    device.seed(seed);
    with_stable_ids(unet.init(device))
}

/// Safetensors metadata recording the architecture, so a file for another network is refused
/// with a clear message.
pub fn weights_metadata(unet: &UNetConfig, extra: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), "pt".into());
    m.insert(
        "fedseg.unet".into(),
        serde_json::to_string(unet).unwrap_or_default(),
    );
    for (k, v) in extra {
        m.insert(format!("fedseg.{k}"), v.clone());
    }
    m
}

pub fn save_weights(
    model: &UNet,
    unet: &UNetConfig,
    path: &Path,
    extra: &[(&str, String)],
) -> Result<(), SafetensorsError> {
    write_safetensors(path, &named_tensors(model), &weights_metadata(unet, extra))
}

/// A weights file read once: its tensors and the architecture and preprocessing it records.
#[derive(Debug, Clone)]
pub struct WeightsFile {
    pub path: PathBuf,
    pub tensors: Vec<NamedTensor>,
    pub unet: Option<UNetConfig>,
    pub preprocess: Option<PreprocessConfig>,
}

impl WeightsFile {
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let file = read_safetensors(path)?;
        let meta = |key: &str| file.metadata.get(key).cloned();
        Ok(Self {
            path: path.to_path_buf(),
            unet: meta("fedseg.unet").and_then(|s| serde_json::from_str(&s).ok()),
            preprocess: meta("fedseg.preprocess").and_then(|s| serde_json::from_str(&s).ok()),
            tensors: file.tensors,
        })
    }

    /// The tensors, if the file was made for `unet` (or does not say what it was made for).
    pub fn tensors_for(self, unet: &UNetConfig) -> Result<Vec<NamedTensor>, TrainError> {
        match &self.unet {
            Some(theirs) if theirs != unet => Err(TrainError::Checkpoint {
                path: self.path,
                reason: format!(
                    "weights are for another architecture: {theirs:?}, this model is {unet:?}"
                ),
            }),
            _ => Ok(self.tensors),
        }
    }
}

/// Reads a weights file and checks that it was made for `unet` (when it says).
pub fn load_weights(path: &Path, unet: &UNetConfig) -> Result<Vec<NamedTensor>, TrainError> {
    WeightsFile::read(path)?.tensors_for(unet)
}

fn checkpoint_err(path: &Path, reason: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn train_pairs(site: &PreparedSite) -> Vec<(&Plane<f32>, &Plane<u8>)> {
    site.part(Part::Train)
        .filter_map(|s| s.labels.as_ref().map(|l| s.slices.iter().zip(l.iter())))
        .flatten()
        .collect()
}

/// Trains `req.site`'s model as `req.config` says, on rayon's threads when on the CPU
/// ([`threads`]).
pub fn train(req: TrainRequest<'_>) -> Result<TrainOutcome, TrainError> {
    threads::on_compute_threads(req.config.device, || train_here(req))
}

fn train_here(req: TrainRequest<'_>) -> Result<TrainOutcome, TrainError> {
    let cfg = req.config;
    let size = req
        .site
        .subjects
        .first()
        .and_then(|s| s.slices.first())
        .map(|p| p.width)
        .unwrap_or(0);
    cfg.validate(size).map_err(TrainError::Config)?;
    let unet = cfg.unet().map_err(TrainError::Config)?;
    let pairs = train_pairs(req.site);
    if pairs.is_empty() {
        return Err(TrainError::NoTrainingData {
            site: req.site.name.clone(),
        });
    }
    let device = device_for(cfg.device)?;
    let ad = device.clone().autodiff();
    let mut model = build_model(&unet, cfg.seed, &ad);
    if let Some(init) = &req.init {
        model = load_named(model, init)?;
    }
    model = apply_trainable(model, &req.trainable);
    let mut optim: ModuleOptimizer = AdamConfig::new().init();
    let heads = 1 + unet.deep_supervision;

    let run_key = format!(
        "{}|{:?}|{}|{}|{}|{}",
        req.site.name, unet, cfg.batch_size, cfg.learning_rate, cfg.seed, req.trainable
    );
    let mut outcome = TrainOutcome {
        epochs: Vec::new(),
        best_epoch: 0,
        best_val_dice: f64::NEG_INFINITY,
        resumed_after_epoch: None,
        parameters: crate::model::params::param_count(&model),
    };
    if let Some(dir) = &req.checkpoint_dir {
        std::fs::create_dir_all(dir).map_err(|e| checkpoint_err(dir, e))?;
        let state_path = dir.join("state.json");
        if state_path.is_file() {
            let text =
                std::fs::read_to_string(&state_path).map_err(|e| checkpoint_err(&state_path, e))?;
            let state: CheckpointState =
                serde_json::from_str(&text).map_err(|e| checkpoint_err(&state_path, e))?;
            if state.run_key == run_key && !state.outcome.epochs.is_empty() {
                let weights = read_safetensors(&dir.join("model.safetensors"))?;
                model = apply_trainable(load_named(model, &weights.tensors)?, &req.trainable);
                optim = optim
                    .load(dir.join("optim.bpk"))
                    .map_err(|e| checkpoint_err(&dir.join("optim.bpk"), format!("{e:?}")))?;
                outcome = state.outcome;
                outcome.resumed_after_epoch = outcome.epochs.last().map(|e| e.epoch);
                tracing::info!("resuming after epoch {}", outcome.epochs.len());
            } else {
                tracing::warn!(
                    "{}: checkpoint of another run, starting afresh",
                    state_path.display()
                );
            }
        }
    }

    let anchor: Option<(f64, BTreeMap<String, NamedTensor>)> = req
        .proximal
        .as_ref()
        .map(|(mu, t)| (*mu, t.iter().map(|x| (x.name.clone(), x.clone())).collect()));
    let mut progress = Progress::new(req.progress, cfg.epochs);
    for epoch in outcome.epochs.len()..cfg.epochs {
        let started = Instant::now();
        progress.start_epoch(epoch, pairs.len());
        // Per-epoch RNG: a resumed run sees the same shuffles and augmentations.
        let mut rng =
            ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut batches) = (0.0f32, 0usize);
        for (b, chunk) in order.chunks(cfg.batch_size).enumerate() {
            let mut images = Vec::with_capacity(chunk.len());
            let mut labels = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let (mut img, mut lab) = (pairs[i].0.clone(), pairs[i].1.clone());
                augment(
                    req.augment,
                    req.preprocess.spacing_mm,
                    &mut img,
                    &mut lab,
                    &mut rng,
                );
                images.push(img);
                labels.push(lab);
            }
            let x = batch::input_tensor(&images, &ad);
            let targets = batch::targets(&labels, unet.classes, heads, &ad);
            let mut loss = deep_supervision_loss(model.forward(x), targets);
            // The reported loss stays the segmentation loss; the proximal term only steers.
            let value: f32 = loss.clone().into_scalar::<f32>();
            if let Some((mu, anchor)) = &anchor
                && let Some(term) = proximal_term(&model, anchor)
            {
                loss = loss + term.mul_scalar(*mu / 2.0);
            }
            if !value.is_finite() {
                return Err(TrainError::Diverged { epoch, value });
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.learning_rate, model, grads);
            loss_sum += value;
            batches += 1;
            progress.step(
                (b * cfg.batch_size + chunk.len()).min(pairs.len()),
                loss_sum / batches as f32,
            );
        }
        let train_secs = started.elapsed().as_secs_f32();
        let valid = model.valid();
        let val_part = if req.site.split.val.is_empty() {
            Part::Train
        } else {
            Part::Val
        };
        let val = evaluate_site(&valid, req.site, val_part, None, &device);
        let stats = EpochStats {
            epoch,
            loss: loss_sum / batches.max(1) as f32,
            val_dice: val.lv.mean,
            slices_per_s: pairs.len() as f32 / train_secs.max(1e-6),
            seconds: started.elapsed().as_secs_f32(),
        };
        let best = stats.val_dice > outcome.best_val_dice;
        progress.end_epoch(stats.loss, stats.val_dice, best, stats.slices_per_s);
        if best {
            outcome.best_val_dice = stats.val_dice;
            outcome.best_epoch = epoch;
            save_weights(
                &valid,
                &unet,
                req.out,
                &[
                    ("epoch", epoch.to_string()),
                    ("val_dice", format!("{:.4}", stats.val_dice)),
                    ("site", req.site.name.clone()),
                    (
                        "preprocess",
                        serde_json::to_string(req.preprocess).unwrap_or_default(),
                    ),
                ],
            )?;
        }
        if let Some(f) = req.on_epoch {
            f(&stats);
        }
        outcome.epochs.push(stats);
        if let Some(dir) = &req.checkpoint_dir {
            write_checkpoint(
                dir,
                &valid,
                &unet,
                &optim,
                &CheckpointState {
                    run_key: run_key.clone(),
                    outcome: outcome.clone(),
                },
            )?;
        }
    }
    Ok(outcome)
}

fn write_checkpoint(
    dir: &Path,
    model: &UNet,
    unet: &UNetConfig,
    optim: &ModuleOptimizer,
    state: &CheckpointState,
) -> Result<(), TrainError> {
    save_weights(model, unet, &dir.join("model.safetensors"), &[])?;
    let optim_path = dir.join("optim.bpk");
    let tmp = dir.join("optim.bpk.tmp");
    optim
        .save(&tmp)
        .map_err(|e| checkpoint_err(&tmp, format!("{e:?}")))?;
    std::fs::rename(&tmp, &optim_path).map_err(|e| checkpoint_err(&optim_path, e))?;
    // The state file is written last: it names a complete checkpoint.
    let state_path = dir.join("state.json");
    let text = serde_json::to_string_pretty(state).map_err(|e| checkpoint_err(&state_path, e))?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, text).map_err(|e| checkpoint_err(&tmp, e))?;
    std::fs::rename(&tmp, &state_path).map_err(|e| checkpoint_err(&state_path, e))
}
