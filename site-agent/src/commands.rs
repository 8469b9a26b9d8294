//! The model commands of the site agent: train, evaluate, predict.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use fedseg_site::data::{Part, SiteConfig, prepare_site};
use fedseg_site::eval::{evaluate_site, segment_subject};
use fedseg_site::histogram::{HistogramReference, match_to_reference};
use fedseg_site::model::params::{load_named, param_count};
use fedseg_site::model::{TrainableSet, UNetConfig};
use fedseg_site::nifti_io::{read_volume, write_volume};
use fedseg_site::preprocess::{PreprocessConfig, prepare_image, restore_label};
use fedseg_site::train::{
    DeviceKind, TrainRequest, build_model, device_for, load_weights, train as run_training,
    weights_provenance,
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
    json: bool,
) -> Result<i32> {
    let mut cfg = SiteConfig::load(&config)?;
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
    let param_count = param_count(&build_model(
        &unet,
        0,
        &fedseg_site::train::device_for(DeviceKind::Cpu)?,
    ));
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

/// The architecture of a weights file: from its metadata, else the site config's.
fn weights_unet(
    weights: &Path,
    fallback: &UNetConfig,
) -> Result<(UNetConfig, Option<PreprocessConfig>)> {
    let (unet, pre) = weights_provenance(weights)?;
    Ok((unet.unwrap_or_else(|| fallback.clone()), pre))
}

fn load_reference(path: Option<PathBuf>) -> Result<Option<HistogramReference>> {
    Ok(path.map(|p| HistogramReference::load(&p)).transpose()?)
}

pub fn evaluate(
    config: PathBuf,
    weights: PathBuf,
    hist_ref: Option<PathBuf>,
    csv: Option<PathBuf>,
    part: Part,
    json: bool,
) -> Result<i32> {
    let cfg = SiteConfig::load(&config)?;
    let (unet, _) = weights_unet(&weights, &cfg.train.unet().map_err(anyhow::Error::msg)?)?;
    unet.validate(cfg.preprocess.size)
        .map_err(|e| anyhow::anyhow!("{}: {e}", weights.display()))?;
    let tensors = load_weights(&weights, &unet)?;
    let device = device_for(cfg.train.device)?;
    let model = load_named(build_model(&unet, 0, &device), &tensors)
        .with_context(|| format!("loading {}", weights.display()))?
        .valid();
    let reference = load_reference(hist_ref)?;
    let site = prepare_site(&cfg, true)?;
    let result = evaluate_site(&model, &site, part, reference.as_ref(), &device);
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
) -> Result<i32> {
    let (unet, pre) = weights_unet(&weights, &UNetConfig::cpu())?;
    let pre = pre.unwrap_or_default();
    unet.validate(pre.size)
        .map_err(|e| anyhow::anyhow!("{}: {e}", weights.display()))?;
    let tensors = load_weights(&weights, &unet)?;
    let device = device_for(DeviceKind::Cpu)?;
    let model = load_named(build_model(&unet, 0, &device), &tensors)
        .with_context(|| format!("loading {}", weights.display()))?
        .valid();
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
        let pred = segment_subject(&model, &slices, &device);
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
