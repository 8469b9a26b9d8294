//! The U-Net's operations other than convolutions, one at a time at the `cpu` U-Net's largest
//! activation (batch 8, 16 maps, 128 px): forward and forward + backward, in ms. The same
//! list in PyTorch: `tools/pytorch_ops_bench.py`. Where a training step's non-convolution time
//! goes, for comparison.
//!
//! `cargo bench -p site-agent --bench ops -- [REPEATS] [NAME] [WIDTH]` (NAME: only the ops whose
//! name contains it, e.g. for a profile of one; WIDTH: `avx512` (default), `avx2` or `baseline`,
//! the widest vectors burn-flex's own kernels may use, to compare their versions on one CPU)

use burn::nn::InstanceNormConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::tensor::activation::{leaky_relu, log_softmax, softmax};
use burn::tensor::{Distribution, Tensor};
use burn_flex::ops::wide::{VectorWidth, limit_vector_width};
use fedseg_site::model::norm::instance_norm;
use fedseg_site::train::{DeviceKind, device_for};

mod support;

/// Median milliseconds of `repeats` runs of `f` (after one warm-up run).
fn time(repeats: usize, f: impl FnMut()) -> f64 {
    support::median_seconds(repeats, f) * 1e3
}

fn main() -> anyhow::Result<()> {
    fedseg_site::train::heap::keep_freed_memory();
    let args = support::positional_args();
    let repeats: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let only = args.get(1).map(String::as_str).unwrap_or("");
    limit_vector_width(match args.get(2).map(String::as_str) {
        None | Some("avx512") => VectorWidth::Avx512,
        Some("avx2") => VectorWidth::Avx2,
        Some("baseline") => VectorWidth::Baseline,
        Some(other) => anyhow::bail!("WIDTH is avx512, avx2 or baseline, not {other:?}"),
    });
    let device = device_for(DeviceKind::Cpu)?.autodiff();
    let shape = [8, 16, 128, 128];
    let x: Tensor<4> = Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let up: Tensor<4> = Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let logits: Tensor<4> =
        Tensor::random([8, 3, 128, 128], Distribution::Normal(0.0, 1.0), &device);
    let pool = MaxPool2dConfig::new([2, 2]).init();
    let norm = InstanceNormConfig::new(16).with_affine(true).init(&device);

    // (name, forward, forward + backward): backward of sum(output · up).
    type Op<'a> = Box<dyn Fn(Tensor<4>) -> Tensor<4> + 'a>;
    let ops: Vec<(&str, Tensor<4>, Op)> = vec![
        ("leaky_relu", x.clone(), Box::new(|t| leaky_relu(t, 0.01))),
        (
            "instance_norm",
            x.clone(),
            Box::new(|t| instance_norm(&norm, t)),
        ),
        (
            "norm+leaky",
            x.clone(),
            Box::new(|t| leaky_relu(instance_norm(&norm, t), 0.01)),
        ),
        (
            "cat (2×16 maps)",
            x.clone(),
            Box::new(|t: Tensor<4>| {
                Tensor::cat(vec![t.clone(), t], 1).slice([0..8, 0..16, 0..128, 0..128])
            }),
        ),
        ("max_pool2d", x.clone(), Box::new(|t| pool.forward(t))),
        ("add", x.clone(), Box::new(|t: Tensor<4>| t.clone() + t)),
        (
            "softmax (3 classes)",
            logits.clone(),
            Box::new(|t| softmax(t, 1)),
        ),
        (
            "log_softmax (3 classes)",
            logits.clone(),
            Box::new(|t| log_softmax(t, 1)),
        ),
    ];
    println!("op                        forward ms   forward+backward ms   (median of {repeats})");
    for (name, input, op) in ops.iter().filter(|(name, ..)| name.contains(only)) {
        let forward = time(repeats, || {
            let _ = op(input.clone());
        });
        let both = time(repeats, || {
            let t = input.clone().require_grad();
            let y = op(t.clone());
            let up = if y.dims() == up.dims() {
                up.clone()
            } else {
                y.clone().detach()
            };
            let grads = (y * up).sum().backward();
            let _ = t.grad(&grads);
        });
        println!("{name:<26} {forward:>10.2} {both:>21.2}");
    }
    Ok(())
}
