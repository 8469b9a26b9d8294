//! The U-Net: names, safetensors round trip and every bad-weights case, exact freezing,
//! config errors, and that it learns.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use fedseg_site::model::loss::deep_supervision_loss;
use fedseg_site::model::params::{apply_trainable, load_named, named_tensors, param_count};
use fedseg_site::model::safetensors::{read_safetensors, write_safetensors};
use fedseg_site::model::{TrainableSet, UNetConfig};
use fedseg_site::preprocess::Plane;
use fedseg_site::train::batch::{input_tensor, targets};
use fedseg_site::train::{DeviceKind, build_model, device_for, load_weights, save_weights};

fn tiny() -> UNetConfig {
    UNetConfig::tiny()
}

#[test]
fn parameter_names_are_block_structured_and_counts_printed() {
    let device = device_for(DeviceKind::Cpu).unwrap();
    for (name, cfg) in [
        ("tiny", UNetConfig::tiny()),
        ("cpu", UNetConfig::cpu()),
        ("paper", UNetConfig::paper()),
    ] {
        let model = build_model(&cfg, 0, &device);
        let names: Vec<String> = named_tensors(&model).into_iter().map(|t| t.name).collect();
        for expected in [
            "enc.0.conv1.weight",
            "enc.0.conv1.bias",
            "enc.0.norm1.weight",
            "enc.0.norm2.bias",
            "dec.0.up.weight",
            "dec.0.block.conv2.weight",
            "ds.0.weight",
            "head.weight",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{name}: {expected} missing from {names:?}"
            );
        }
        assert!(
            names
                .iter()
                .any(|n| n == &format!("enc.{}.conv2.weight", cfg.levels - 1))
        );
        println!("{name}: {} parameters", param_count(&model));
    }
    // The same counts as the PyTorch twin in tools/pytorch_unet_bench.py.
    let count = |cfg: UNetConfig| param_count(&build_model(&cfg, 0, &device));
    assert_eq!(count(UNetConfig::tiny()), 29_710);
    assert_eq!(count(UNetConfig::cpu()), 1_944_089);
    assert_eq!(count(UNetConfig::paper()), 31_107_372);
}

#[test]
fn weights_round_trip_through_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let device = device_for(DeviceKind::Cpu).unwrap();
    let a = build_model(&tiny(), 1, &device);
    let path = dir.path().join("w.safetensors");
    save_weights(&a, &tiny(), &path, &[("site", "x".into())]).unwrap();
    let file = read_safetensors(&path).unwrap();
    assert_eq!(
        file.metadata.get("fedseg.site").map(String::as_str),
        Some("x")
    );
    let b = load_named(
        build_model(&tiny(), 2, &device),
        &load_weights(&path, &tiny()).unwrap(),
    )
    .unwrap();
    assert_eq!(named_tensors(&a), named_tensors(&b));
    // A different seed really gives different weights, so the equality above means something.
    assert_ne!(
        named_tensors(&a),
        named_tensors(&build_model(&tiny(), 2, &device))
    );
}

#[test]
fn bad_weights_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let device = device_for(DeviceKind::Cpu).unwrap();
    let model = build_model(&tiny(), 1, &device);
    let path = dir.path().join("w.safetensors");
    save_weights(&model, &tiny(), &path, &[]).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_weights(&truncated, &tiny()).unwrap_err().to_string();
    assert!(
        err.contains("truncated.safetensors") && err.contains("truncated"),
        "{err}"
    );

    let text = dir.path().join("text.safetensors");
    std::fs::write(&text, "hello, I am not a weights file").unwrap();
    let err = load_weights(&text, &tiny()).unwrap_err().to_string();
    assert!(
        err.contains("text.safetensors") && err.contains("not a safetensors file"),
        "{err}"
    );

    let err = load_weights(&path, &UNetConfig::cpu())
        .unwrap_err()
        .to_string();
    assert!(err.contains("another architecture"), "{err}");

    // Without architecture metadata, names and shapes still catch a mismatch, each by name.
    let mut tensors = named_tensors(&model);
    tensors.retain(|t| t.name != "head.bias");
    tensors.push(fedseg_site::model::NamedTensor {
        name: "extra.weight".into(),
        shape: vec![1],
        data: vec![0.0],
    });
    if let Some(t) = tensors.iter_mut().find(|t| t.name == "enc.0.conv1.weight") {
        t.shape = vec![8, 1, 1, 9];
    }
    let plain = dir.path().join("plain.safetensors");
    write_safetensors(&plain, &tensors, &BTreeMap::new()).unwrap();
    let err = load_named(
        build_model(&tiny(), 1, &device),
        &load_weights(&plain, &tiny()).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing tensor head.bias"), "{err}");
    assert!(err.contains("unexpected tensor extra.weight"), "{err}");
    assert!(
        err.contains("enc.0.conv1.weight has shape [8, 1, 1, 9]"),
        "{err}"
    );
}

#[test]
fn impossible_configs_fail_before_training() {
    let mut deep = UNetConfig::cpu();
    deep.levels = 9;
    let err = deep.validate(128).unwrap_err();
    assert!(err.contains("bottleneck"), "{err}");
    assert!(
        UNetConfig::cpu()
            .validate(100)
            .unwrap_err()
            .contains("multiple of 16")
    );
    let err = TrainableSet::parse("", 4).unwrap_err();
    assert!(err.contains("names no block"), "{err}");
    assert!(
        TrainableSet::parse("enc:0-7", 4)
            .unwrap_err()
            .contains("blocks 0..=3")
    );
    assert!(
        TrainableSet::parse("encoder:1", 4)
            .unwrap_err()
            .contains("unknown block kind")
    );
    let cfg = fedseg_site::train::TrainConfig {
        batch_size: 0,
        ..Default::default()
    };
    assert!(cfg.validate(128).unwrap_err().contains("batch_size"));
}

/// Disks on noise: a task a U-Net learns in seconds.
fn toy_batch(n: usize, size: usize, seed: u64) -> (Vec<Plane<f32>>, Vec<Plane<u8>>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..n {
        let (cx, cy) = (
            rng.random_range(20.0..44.0f32),
            rng.random_range(20.0..44.0f32),
        );
        let r = rng.random_range(6.0..10.0f32);
        let mut img = Plane::filled(size, size, 0.0f32);
        let mut lab = Plane::filled(size, size, 0u8);
        for y in 0..size {
            for x in 0..size {
                let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                let (v, c) = if d < r {
                    (0.9, 1)
                } else if d < r + 4.0 {
                    (0.4, 2)
                } else {
                    (0.1, 0)
                };
                img.set(x, y, v + 0.05 * rng.random::<f32>());
                lab.set(x, y, c);
            }
        }
        images.push(img);
        labels.push(lab);
    }
    (images, labels)
}

#[test]
fn it_learns_a_trivial_task_and_frozen_blocks_stay_bit_identical() {
    let device = device_for(DeviceKind::Cpu).unwrap().autodiff();
    let cfg = tiny();
    let before = build_model(&cfg, 3, &device);
    let set = TrainableSet::parse("enc:0-1,dec:0,head,ds", cfg.levels).unwrap();
    let mut model = apply_trainable(before.clone(), &set);
    let mut optim = AdamConfig::new().init();
    let (images, labels) = toy_batch(8, 64, 1);
    let heads = 1 + cfg.deep_supervision;
    let mut losses = Vec::new();
    for _ in 0..40 {
        let loss = deep_supervision_loss(
            model.forward(input_tensor(&images, &device)),
            targets(&labels, cfg.classes, heads, &device),
        );
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    assert!(losses[39] < 0.5 * losses[0], "loss falls: {:?}", losses);

    // Dice on unseen disks.
    let plain = device_for(DeviceKind::Cpu).unwrap();
    let valid = model.valid();
    let (test_images, test_labels) = toy_batch(4, 64, 2);
    let pred = fedseg_site::eval::predict_slices(&valid, &test_images, &plain);
    let lv = fedseg_site::eval::metrics::dice(
        &pred,
        &test_labels,
        fedseg_site::eval::metrics::Structure::WholeLv,
    );
    assert!(lv > 0.8, "LV Dice {lv}");

    // Frozen: every tensor outside the set is bit-identical; inside, they moved.
    let after = named_tensors(&valid);
    let start = named_tensors(&before.valid());
    for (a, b) in after.iter().zip(&start) {
        assert_eq!(a.name, b.name);
        let same = a
            .data
            .iter()
            .zip(&b.data)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        if set.contains(&a.name) {
            // A conv bias right before instance norm is cancelled by it: its gradient is 0.
            let cancelled = a.name.ends_with(".bias") && a.name.contains(".conv");
            assert!(!same || cancelled, "{} should have trained", a.name);
        } else {
            assert!(same, "{} is frozen but changed", a.name);
        }
    }
    assert!(
        after.iter().any(|t| t.name == "enc.2.conv1.weight"),
        "a frozen encoder block exists"
    );
}

#[test]
fn local_parameters_stay_apart_and_merge_back() {
    use fedseg_site::model::params::{merge_local, partition_local};
    let device = device_for(DeviceKind::Cpu).unwrap();
    let site = named_tensors(&build_model(&tiny(), 1, &device));
    let global = named_tensors(&build_model(&tiny(), 2, &device));
    let local_set = TrainableSet::parse("norm", tiny().levels).unwrap();
    // Norm parameters start at 1 and 0 everywhere: give the site its own values.
    let site: Vec<_> = site
        .into_iter()
        .map(|mut t| {
            if t.name.contains(".norm") {
                t.data.iter_mut().for_each(|v| *v += 0.5);
            }
            t
        })
        .collect();
    let (shared, local) = partition_local(site.clone(), &local_set);
    assert!(!local.is_empty() && local.iter().all(|t| t.name.contains(".norm")));
    assert!(shared.iter().all(|t| !t.name.contains(".norm")));
    assert_eq!(shared.len() + local.len(), site.len());
    // A global model arrives: the site keeps its own norm parameters, takes the rest.
    let (global_shared, _) = partition_local(global.clone(), &local_set);
    let merged = merge_local(global_shared, &local);
    let model = load_named(build_model(&tiny(), 3, &device), &merged).unwrap();
    for t in named_tensors(&model) {
        let expected = if t.name.contains(".norm") {
            &site
        } else {
            &global
        };
        let e = expected.iter().find(|e| e.name == t.name).unwrap();
        assert_eq!(t.data, e.data, "{}", t.name);
    }
}
