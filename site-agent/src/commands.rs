//! The model commands of the site agent: train, evaluate, predict.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use fedseg_site::data::{Part, SiteConfig, prepare_site};
use fedseg_site::eval::{evaluate_site, segment_subject};
use fedseg_site::histogram::{HistogramReference, match_to_reference};
use fedseg_site::model::params::{load_named, param_count};
use fedseg_site::model::{TrainableSet, UNet, UNetConfig};
use fedseg_site::nifti_io::{read_volume, write_volume};
use fedseg_site::preprocess::{PreprocessConfig, prepare_image, restore_label};
use fedseg_site::train::threads::on_compute_threads;
use fedseg_site::train::{
    DeviceKind, TrainRequest, WeightsFile, build_model, device_for, load_weights,
    train as run_training,
};

#[allow(clippy::too_many_arguments)]
pub fn train(
    config: PathBuf,
    init: Option<PathBuf>,
    trainable: String,
    epochs: Option<usize>,
    model: Option<String>,
    out: PathBuf,
    checkpoint: Option<PathBuf>,
    device: Option<DeviceKind>,
    json: bool,
) -> Result<i32> {
    let mut cfg = load_config(&config, device)?;
    if let Some(e) = epochs {
        cfg.train.epochs = e;
    }
    if let Some(m) = model {
        cfg.train.model = m;
        cfg.train.unet = None;
    }
    cfg.train
        .validate(cfg.preprocess.size)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    // A device this build lacks is refused before the data is read.
    device_for(cfg.train.device)?;
    let unet = cfg.train.unet().map_err(anyhow::Error::msg)?;
    let set = TrainableSet::parse(&trainable, unet.levels)
        .map_err(|e| anyhow::anyhow!("--trainable: {e}"))?;
    let init = init
        .map(|p| load_weights(&p, &unet).with_context(|| format!("--init {}", p.display())))
        .transpose()?;
    let site = prepare_site(&cfg, true)?;
    for p in &site.problems {
        eprintln!("skipped: {p}");
    }
    let param_count = param_count(&build_model(&unet, 0, &device_for(DeviceKind::Cpu)?));
    eprintln!(
        "training {} at {}: {} train / {} val subjects ({} / {} slices), {param_count} parameters, trainable: {set}",
        cfg.train.model,
        site.name,
        site.split.train.len(),
        site.split.val.len(),
        site.slice_count(Part::Train),
        site.slice_count(Part::Val),
    );
    let checkpoint = checkpoint.unwrap_or_else(|| {
        let mut p = out.clone().into_os_string();
        p.push(".ckpt");
        PathBuf::from(p)
    });
    let outcome = run_training(TrainRequest {
        site: &site,
        config: &cfg.train,
        augment: &cfg.augment,
        preprocess: &cfg.preprocess,
        init,
        trainable: set,
        out: &out,
        checkpoint_dir: Some(checkpoint),
        progress: !json,
        proximal: None,
        on_epoch: None,
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        let total: f32 = outcome.epochs.iter().map(|e| e.seconds).sum();
        println!(
            "best validation Dice {:.3} at epoch {}; {} epochs in {:.0} s; weights: {}",
            outcome.best_val_dice,
            outcome.best_epoch + 1,
            outcome.epochs.len(),
            total,
            out.display()
        );
    }
    Ok(0)
}

/// A validation-mode model from a weights file, whose recorded architecture wins over
/// `fallback`; also returns the preprocessing the file records.
fn model_from_weights(
    path: &Path,
    fallback: &UNetConfig,
    input_size: Option<usize>,
    device: &Device,
) -> Result<(UNet, Option<PreprocessConfig>)> {
    let file = WeightsFile::read(path)?;
    let unet = file.unet.clone().unwrap_or_else(|| fallback.clone());
    let pre = file.preprocess.clone();
    let size = input_size
        .or(pre.as_ref().map(|p| p.size))
        .unwrap_or_default()
        .max(1);
    unet.validate(size)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let model = load_named(build_model(&unet, 0, device), &file.tensors_for(&unet)?)
        .with_context(|| format!("loading {}", path.display()))?
        .valid();
    Ok((model, pre))
}

/// A site config, with `--device` (when given) in place of its `train.device`.
fn load_config(path: &Path, device: Option<DeviceKind>) -> Result<SiteConfig> {
    let mut cfg = SiteConfig::load(path)?;
    if let Some(d) = device {
        cfg.train.device = d;
    }
    Ok(cfg)
}

fn load_reference(path: Option<PathBuf>) -> Result<Option<HistogramReference>> {
    Ok(path.map(|p| HistogramReference::load(&p)).transpose()?)
}

#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    config: PathBuf,
    weights: PathBuf,
    hist_ref: Option<PathBuf>,
    csv: Option<PathBuf>,
    part: Part,
    device: Option<DeviceKind>,
    json: bool,
) -> Result<i32> {
    let cfg = load_config(&config, device)?;
    let device = device_for(cfg.train.device)?;
    let fallback = cfg.train.unet().map_err(anyhow::Error::msg)?;
    let (model, _) = model_from_weights(&weights, &fallback, Some(cfg.preprocess.size), &device)?;
    let reference = load_reference(hist_ref)?;
    let site = prepare_site(&cfg, true)?;
    let result = on_compute_threads(cfg.train.device, || {
        evaluate_site(&model, &site, part, reference.as_ref(), &device)
    });
    if result.subjects.is_empty() {
        bail!("site {} has no labelled subject in that split", site.name);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("{result}");
    }
    if let Some(path) = csv {
        std::fs::write(&path, result.to_csv())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(0)
}

fn nifti_inputs(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)
        .with_context(|| format!("reading {}", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".nii") || n.ends_with(".nii.gz")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no .nii or .nii.gz files", input.display());
    }
    Ok(files)
}

pub fn predict(
    weights: PathBuf,
    input: PathBuf,
    output: PathBuf,
    hist_ref: Option<PathBuf>,
    device: DeviceKind,
) -> Result<i32> {
    let kind = device;
    let device = device_for(kind)?;
    let (model, pre) = model_from_weights(&weights, &UNetConfig::cpu(), None, &device)?;
    let pre = pre.unwrap_or_default();
    let reference = load_reference(hist_ref)?;
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    let mut failed = 0;
    for file in nifti_inputs(&input)? {
        let volume = match read_volume(&file) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("skipped: {e}");
                failed += 1;
                continue;
            }
        };
        let mut slices = prepare_image(&volume.data, volume.spacing, &pre);
        if let Some(r) = &reference {
            match_to_reference(&mut slices, r);
        }
        let pred = on_compute_threads(kind, || segment_subject(&model, &slices, &device));
        let label = restore_label(&pred, volume.shape(), volume.spacing, &pre).mapv(f32::from);
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("volume.nii.gz");
        let stem = name.trim_end_matches(".gz").trim_end_matches(".nii");
        let out = output.join(format!("{stem}_seg.nii.gz"));
        write_volume::<u8>(&out, &label, &volume.header)?;
        println!("{} → {}", file.display(), out.display());
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
