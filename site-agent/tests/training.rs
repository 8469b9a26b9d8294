//! Local training end to end on a small synthetic site: it trains, keeps the best weights,
//! resumes an interrupted run exactly, and the evaluate/predict commands work on its output.

use std::path::{Path, PathBuf};
use std::process::Command;

use fedseg_site::data::{SiteConfig, prepare_site};
use fedseg_site::model::TrainableSet;
use fedseg_site::model::safetensors::read_safetensors;
use fedseg_site::nifti_io::read_volume;
use fedseg_site::synth::{Modality, SynthOptions, synthesize};
use fedseg_site::train::{TrainRequest, train};

/// A 4-subject EMIDEC-like site, prepared at 64×64 px and 3 mm, tiny model, 2 per batch.
fn small_site(dir: &Path) -> PathBuf {
    synthesize(&SynthOptions {
        out: dir.to_path_buf(),
        centers: vec!["emidec".into()],
        subjects: 4,
        seed: 5,
        modality: Modality::Lge,
    })
    .unwrap();
    let cfg = dir.join("emidec/site.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .replace("spacing_mm = 1.25", "spacing_mm = 3.0")
        .replace("size = 128", "size = 64")
        .replace("test = 1", "test = 1\ntrain = 2")
        .replace("model = \"cpu\"", "model = \"tiny\"")
        .replace("epochs = 50", "epochs = 3")
        .replace("batch_size = 8", "batch_size = 4");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn run(
    cfg_path: &Path,
    out: &Path,
    ckpt: &Path,
    epochs: usize,
) -> fedseg_site::train::TrainOutcome {
    let mut cfg = SiteConfig::load(cfg_path).unwrap();
    cfg.train.epochs = epochs;
    let site = prepare_site(&cfg, true).unwrap();
    train(TrainRequest {
        site: &site,
        config: &cfg.train,
        augment: &cfg.augment,
        preprocess: &cfg.preprocess,
        init: None,
        trainable: TrainableSet::all(),
        out,
        checkpoint_dir: Some(ckpt.to_path_buf()),
        progress: false,
        proximal: None,
        on_epoch: None,
    })
    .unwrap()
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_site(dir.path());

    let straight = run(
        &cfg,
        &dir.path().join("a.safetensors"),
        &dir.path().join("a.ckpt"),
        3,
    );
    assert_eq!(straight.epochs.len(), 3);
    assert_eq!(straight.resumed_after_epoch, None);
    assert!(
        straight.epochs[2].loss < straight.epochs[0].loss,
        "{:?}",
        straight.epochs
    );

    // The same run stopped after two epochs, then started again.
    let first = run(
        &cfg,
        &dir.path().join("b.safetensors"),
        &dir.path().join("b.ckpt"),
        2,
    );
    assert_eq!(first.epochs.len(), 2);
    let resumed = run(
        &cfg,
        &dir.path().join("b.safetensors"),
        &dir.path().join("b.ckpt"),
        3,
    );
    assert_eq!(resumed.resumed_after_epoch, Some(1));
    assert_eq!(resumed.epochs.len(), 3);
    assert_eq!(resumed.epochs[..2], first.epochs[..2]);

    let a = read_safetensors(&dir.path().join("a.ckpt/model.safetensors")).unwrap();
    let b = read_safetensors(&dir.path().join("b.ckpt/model.safetensors")).unwrap();
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(x.name, y.name);
        assert!(
            x.data
                .iter()
                .zip(&y.data)
                .all(|(p, q)| p.to_bits() == q.to_bits()),
            "{} differs between the uninterrupted and the resumed run",
            x.name
        );
    }
    assert_eq!(straight.epochs[2].loss, resumed.epochs[2].loss);
}

/// Runs the site-agent binary.
fn site_agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_site-agent"))
        .args(args)
        .output()
        .expect("site-agent runs")
}

#[test]
fn train_evaluate_and_predict_commands() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_site(dir.path());
    let weights = dir.path().join("w.safetensors");
    let o = site_agent(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--epochs",
        "2",
        "--trainable",
        "enc:0-1, dec:0-1, head, ds",
        "--out",
        weights.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let outcome: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(outcome["epochs"].as_array().unwrap().len(), 2);
    let meta = read_safetensors(&weights).unwrap().metadata;
    assert!(
        meta.contains_key("fedseg.unet") && meta.contains_key("fedseg.preprocess"),
        "{meta:?}"
    );

    let csv = dir.path().join("dice.csv");
    let o = site_agent(&[
        "evaluate",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("mean±std") && table.contains("Case_"),
        "{table}"
    );
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        csv_text.starts_with("site,subject,blood_pool,myocardium,lv\nemidec,Case_"),
        "{csv_text}"
    );

    // With histogram matching to the site's own reference.
    let reference = dir.path().join("ref.json");
    let o = site_agent(&[
        "stats",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        reference.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = site_agent(&[
        "evaluate",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--hist-ref",
        reference.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("histogram-matched"));

    // Predict on the image folder of one subject: a label volume on the image's grid.
    let site = prepare_site(&SiteConfig::load(&cfg).unwrap(), true).unwrap();
    let id = &site.subjects[0].id;
    let image = dir.path().join(format!("emidec/{id}/Images/{id}.nii.gz"));
    let out_dir = dir.path().join("pred");
    let o = site_agent(&[
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        image.to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let seg = read_volume(&out_dir.join(format!("{id}_seg.nii.gz"))).unwrap();
    let img = read_volume(&image).unwrap();
    assert_eq!(seg.shape(), img.shape());
    assert_eq!(seg.spacing, img.spacing);
    assert_eq!(seg.header.srow_x, img.header.srow_x);
    assert!(seg.data.iter().all(|&v| v == 0.0 || v == 1.0 || v == 2.0));

    // A weights file for another architecture is refused before anything runs.
    let o = site_agent(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--model",
        "cpu",
        "--init",
        weights.to_str().unwrap(),
        "--out",
        dir.path().join("x.safetensors").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("another architecture"));
}

/// A CPU build asked for the GPU says which build it needs, before any training starts.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_cpu_build_asked_for_cuda_names_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_site(dir.path());
    let weights = dir.path().join("w.safetensors");
    let o = site_agent(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--device",
        "cuda",
        "--out",
        weights.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--features cuda"), "{stderr}");
    assert!(!weights.exists(), "nothing trained");
}
