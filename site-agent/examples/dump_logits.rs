//! Writes a deterministic input batch and the U-Net's output-head logits for a weights file, as
//! safetensors, so `tools/compare_with_pytorch.py` can run the PyTorch twin on the same input
//! with the same weights and compare: a check of the architecture, not only of the names.
//!
//! `cargo run --release -p site-agent --example dump_logits -- W.safetensors OUT.safetensors [SIZE]`

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use fedseg_site::model::NamedTensor;
use fedseg_site::model::params::load_named;
use fedseg_site::model::safetensors::write_safetensors;
use fedseg_site::train::{DeviceKind, WeightsFile, build_model, device_for};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, out, rest @ ..] = &args[..] else {
        anyhow::bail!("usage: dump_logits W.safetensors OUT.safetensors [SIZE]");
    };
    let size: usize = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let weights = PathBuf::from(weights);
    let file = WeightsFile::read(&weights)?;
    let unet = file
        .unet
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{}: no fedseg.unet metadata", weights.display()))?;
    let device = device_for(DeviceKind::Cpu)?;
    let model = load_named(build_model(&unet, 0, &device), &file.tensors_for(&unet)?)?.valid();
    // Two smooth, different slices: reproducible without sharing a random generator.
    let batch = 2;
    let input: Vec<f32> = (0..batch * size * size)
        .map(|i| {
            let (b, y, x) = (i / (size * size), (i / size) % size, i % size);
            0.5 + 0.5 * ((x as f32 * 0.11 + b as f32).sin() * (y as f32 * 0.07).cos())
        })
        .collect();
    let x = Tensor::<4>::from_data(
        TensorData::new(input.clone(), [batch, 1, size, size]),
        &device,
    );
    let logits = model.predict(x);
    let shape = logits.dims().to_vec();
    let data = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    write_safetensors(
        &PathBuf::from(out),
        &[
            NamedTensor {
                name: "input".into(),
                shape: vec![batch, 1, size, size],
                data: input,
            },
            NamedTensor {
                name: "logits".into(),
                shape,
                data,
            },
        ],
        &BTreeMap::new(),
    )?;
    Ok(())
}
