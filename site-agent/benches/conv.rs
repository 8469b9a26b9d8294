//! The CPU backend's stride-1 3×3 convolutions at the CPU U-Net's shapes (128 px input unless asked): forward,
//! input gradient and weight gradient, in ms and GFLOP/s (counted as direct sums), on the kernels
//! this CPU picks, without Winograd (`BURN_FLEX_CONV_KERNEL=direct`: the AVX-512 direct kernels
//! where the CPU has them), on what a CPU with AVX2 but not AVX-512 picks
//! (`BURN_FLEX_CONV_KERNEL=avx2`), on that without F(4×4, 3×3) (`avx2-f2`) and on the portable
//! GEMM path (`BURN_FLEX_CONV_KERNEL=gemm`), shape by shape.
//!
//! `cargo bench -p site-agent --bench conv -- [BATCH] [REPEATS] [SIZE]`: SIZE is the input's
//! (default 128; `coordinator simulate`'s synthetic centers are 96 px, so their lower levels
//! are 12 and 6 px), each level half the one above.

use burn::tensor::TensorData;
use burn::tensor::ops::ConvOptions;
use burn_flex::FlexTensor;
use burn_flex::ops::conv2d_stride1 as conv;

mod support;

/// (input channels, output channels, image size) of every 3×3 convolution of the `cpu` U-Net
/// at 128 px.
const SHAPES: [(usize, usize, usize); 18] = [
    (1, 16, 128),
    (16, 16, 128),
    (16, 32, 64),
    (32, 32, 64),
    (32, 64, 32),
    (64, 64, 32),
    (64, 128, 16),
    (128, 128, 16),
    (128, 256, 8),
    (256, 256, 8),
    (256, 128, 16),
    (128, 128, 16),
    (128, 64, 32),
    (64, 64, 32),
    (64, 32, 64),
    (32, 32, 64),
    (32, 16, 128),
    (16, 16, 128),
];

/// The kernel choices compared, by name and `BURN_FLEX_CONV_KERNEL`.
const KERNELS: [(&str, Option<&str>); 5] = [
    ("default", None),
    ("no Winograd (AVX-512 direct, or gemm)", Some("direct")),
    (
        "avx2 (Winograd with AVX2: F(4x4) where its tiles fit, else F(2x2); gemm for the rest)",
        Some("avx2"),
    ),
    ("avx2-f2 (Winograd with AVX2, F(2x2) only)", Some("avx2-f2")),
    ("gemm (portable)", Some("gemm")),
];

fn tensor(shape: [usize; 4], seed: usize) -> FlexTensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn main() -> anyhow::Result<()> {
    // As the site agent does: freed buffers stay mapped, so a call's output does not pay for
    // fresh pages, and the work runs on rayon's threads (see `on_compute_threads`).
    fedseg_site::train::heap::keep_freed_memory();
    rayon::scope(|_| run())
}

fn run() -> anyhow::Result<()> {
    let args = support::positional_args();
    let batch: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let repeats: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let input: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(128);
    if input == 0 || !input.is_multiple_of(16) {
        anyhow::bail!(
            "input size {input}: the U-Net pools 4 times, so it must be a multiple of 16"
        );
    }
    let shapes = SHAPES.map(|(c_in, c_out, size)| (c_in, c_out, size * input / 128));
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    // Each shape on every kernel choice in turn, so that a slow spell of the host falls on all
    // of them rather than on one table.
    let mut seconds = vec![[[0.0f64; 3]; SHAPES.len()]; KERNELS.len()];
    for (i, &(c_in, c_out, size)) in shapes.iter().enumerate() {
        let x = tensor([batch, c_in, size, size], 1);
        let w = tensor([c_out, c_in, 3, 3], 2);
        let dy = tensor([batch, c_out, size, size], 3);
        let g = conv::plan(&x, &w, &options)
            .ok_or_else(|| anyhow::anyhow!("stride-1 path refused {c_in}→{c_out}"))?;
        for (k, (_, var)) in KERNELS.iter().enumerate() {
            // SAFETY: single-threaded here; the backend reads it on this thread at each call.
            unsafe {
                match var {
                    Some(v) => std::env::set_var("BURN_FLEX_CONV_KERNEL", v),
                    None => std::env::remove_var("BURN_FLEX_CONV_KERNEL"),
                }
            }
            seconds[k][i] = [
                support::min_seconds(repeats, || {
                    drop(conv::forward(g, x.clone(), w.clone(), None))
                }),
                support::min_seconds(repeats, || drop(conv::x_backward(g, w.clone(), dy.clone()))),
                support::min_seconds(repeats, || {
                    drop(conv::weight_backward(g, x.clone(), dy.clone()))
                }),
            ];
        }
    }
    for ((name, _), seconds) in KERNELS.iter().zip(&seconds) {
        println!("kernels: {name} (batch {batch}, best of {repeats})");
        println!("  c_in → c_out  size   forward ms  GFLOP/s   dx ms  GFLOP/s   dw ms  GFLOP/s");
        let mut total = [0.0f64; 3];
        for (&(c_in, c_out, size), t) in shapes.iter().zip(seconds) {
            let gflop = 2.0 * (batch * c_in * c_out * 9 * size * size) as f64 / 1e9;
            print!("  {c_in:4} → {c_out:<4} {size:5}");
            for (i, s) in t.iter().enumerate() {
                total[i] += s;
                print!("  {:9.2}  {:7.1}", s * 1e3, gflop / s);
            }
            println!();
        }
        println!(
            "  total ms: forward {:.1}, dx {:.1}, dw {:.1}",
            total[0] * 1e3,
            total[1] * 1e3,
            total[2] * 1e3
        );
    }
    Ok(())
}
