//! Training-step benchmark of the U-Net: seconds per step, slices/s and peak memory, for
//! comparison with `tools/pytorch_unet_bench.py` on the same machine.
//!
//! `cargo bench -p site-agent --bench train_step -- [cpu|paper|tiny] [BATCH] [SIZE] [STEPS] [cpu|cuda]`
//! (`cuda` needs `--features cuda`; peak GPU memory is read outside, e.g. by nvidia-smi, as the
//! process RSS says nothing about it).

use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams};
use fedseg_site::model::UNetConfig;
use fedseg_site::model::loss::deep_supervision_loss;
use fedseg_site::model::params::param_count;
use fedseg_site::preprocess::Plane;
use fedseg_site::train::batch::{input_tensor, targets};
use fedseg_site::train::threads::on_compute_threads;
use fedseg_site::train::{DeviceKind, build_model, device_for};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod support;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    // As the site agent does (its `main`).
    fedseg_site::train::heap::keep_freed_memory();
    let args = support::positional_args();
    let model_name = args.first().map(String::as_str).unwrap_or("cpu");
    let unet = UNetConfig::by_name(model_name)
        .ok_or_else(|| anyhow::anyhow!("unknown model {model_name}"))?;
    let batch: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let size: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let steps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let device_kind = match args.get(4).map(String::as_str) {
        None | Some("cpu") => DeviceKind::Cpu,
        Some("cuda") => DeviceKind::Cuda,
        Some(other) => anyhow::bail!("unknown device {other}: cpu or cuda"),
    };
    unet.validate(size).map_err(anyhow::Error::msg)?;

    let device = device_for(device_kind)?.autodiff();
    let mut model = build_model(&unet, 0, &device);
    let params = param_count(&model);
    let mut optim = AdamConfig::new().init();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let images: Vec<Plane<f32>> = (0..batch)
        .map(|_| Plane {
            width: size,
            height: size,
            data: (0..size * size).map(|_| rng.random()).collect(),
        })
        .collect();
    let labels: Vec<Plane<u8>> = (0..batch)
        .map(|_| Plane {
            width: size,
            height: size,
            data: (0..size * size).map(|_| rng.random_range(0..3u8)).collect(),
        })
        .collect();
    // A GPU compiles and autotunes its kernels over the first steps.
    let warmup = if device_kind == DeviceKind::Cuda {
        10
    } else {
        2
    };
    // As `train` runs its loop: on rayon's threads when on the CPU.
    let (mut times, phases) = on_compute_threads(device_kind, || -> anyhow::Result<_> {
        let mut times = Vec::new();
        // Where a step's time goes, per phase. Only on the CPU: its operations run as they are
        // called, while a GPU's are queued and would be timed by the next sync.
        let mut phases: Vec<[f64; 5]> = Vec::new();
        for step in 0..warmup + steps {
            let t = Instant::now();
            let mut lap = Lap(Instant::now());
            let x = input_tensor(&images, &device);
            let tg = targets(&labels, unet.classes, 1 + unet.deep_supervision, &device);
            let inputs = lap.next();
            let outputs = model.forward(x);
            let forward = lap.next();
            let loss = deep_supervision_loss(outputs, tg);
            let loss_time = lap.next();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let backward = lap.next();
            model = optim.step(1e-3, model, grads);
            // GPU work is queued: wait for it, or the step time measures only the queueing.
            device.sync()?;
            let optimizer = lap.next();
            let seconds = t.elapsed().as_secs_f64();
            // Each step as it ends: a run stopped early (a GPU still autotuning) still tells.
            eprintln!("step {step}: {seconds:.3} s");
            if step >= warmup {
                times.push(seconds);
                phases.push([inputs, forward, loss_time, backward, optimizer]);
            }
        }
        Ok((times, phases))
    })?;
    if device_kind == DeviceKind::Cpu && !phases.is_empty() {
        let names = ["inputs", "forward", "loss", "backward", "optimizer"];
        let medians: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut v: Vec<f64> = phases.iter().map(|p| p[i]).collect();
                v.sort_by(f64::total_cmp);
                format!("{name} {:.1}", v[v.len() / 2] * 1e3)
            })
            .collect();
        eprintln!("phase medians (ms): {}", medians.join(", "));
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "burn {device_kind:?} {model_name} params={params} batch={batch} size={size} step_min={:.3}s step_median={median:.3}s \
         slices_per_s={:.1} peak_rss_mib={:.0}",
        times[0],
        batch as f64 / median,
        peak_rss_mib()
    );
    Ok(())
}

/// Seconds between successive calls.
struct Lap(Instant);

impl Lap {
    fn next(&mut self) -> f64 {
        let now = Instant::now();
        let seconds = now.duration_since(self.0).as_secs_f64();
        self.0 = now;
        seconds
    }
}
