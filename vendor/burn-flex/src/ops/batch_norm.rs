//! fedseg: `batch_norm_train` and its backward, each in a few passes over the data.
//!
//! burn-backend's defaults compose both from about ten tensor operations (swaps, reshapes,
//! reductions, broadcast arithmetic), each a full pass over the activations with its own
//! allocation. The U-Net's instance normalisation runs through these (as a batch norm of the
//! `[1, N·C, H, W]` view), twice per convolution block, so that cost was a large share of a
//! CPU training step.
//!
//! Computed in f32 (other float types are cast there and back). Each channel's sums run in a
//! fixed order, channels in parallel, so results do not depend on the number of threads. A
//! channel's statistics and its output come from one task, so the output pass finds the
//! channel's input still in cache; the loops are compiled for the CPU's widest vectors
//! (`wide.rs`).

use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use burn_backend::ops::{BatchNormTrain, BatchNormTrainBackward, FloatTensorOps};
use burn_backend::{DType, FloatDType};
use burn_std::{Bytes, Shape};

use super::wide::multiversion;
use crate::{Flex, FlexTensor, Layout};

/// Values per channel run and channels of an `[N, C, ...]` tensor.
fn runs(shape: &Shape) -> (usize, usize, usize) {
    let dims = shape.as_slice();
    let (n, c) = (dims[0], dims[1]);
    let run = dims[2..].iter().product::<usize>();
    (n, c, run)
}

fn f32_tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

fn as_f32(t: FlexTensor) -> FlexTensor {
    Flex::float_cast(t, FloatDType::F32).to_contiguous()
}

/// `Σ f(x)` over `xs` in 16 lanes of f32, the lanes then added in f64 (after the tail).
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    lane_sum2(xs, xs, |x, _| f(x))
}

/// `Σ f(x, y)` over `xs` and `ys` (the same length) in 16 lanes of f32, as [`lane_sum`].
#[inline(always)]
fn lane_sum2(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (xc, yc) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let (xt, yt) = (xc.remainder(), yc.remainder());
    for (x, y) in xc.zip(yc) {
        for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *a += f(x, y);
        }
    }
    let mut total: f64 = xt.iter().zip(yt).map(|(&x, &y)| f64::from(f(x, y))).sum();
    total += acc.iter().map(|&a| f64::from(a)).sum::<f64>();
    total
}

multiversion!(
    /// `Σ x` over a run (also the convolutions' bias gradient: `conv_bias_backward.rs`).
    pub(super) fn run_sum(xs: &[f32]) -> f64 {
        lane_sum(xs, |x| x)
    }
);

multiversion!(
    /// `Σ (x − m)²` over a run.
    fn run_square_deviation(xs: &[f32], m: f32) -> f64 {
        lane_sum(xs, |x| (x - m) * (x - m))
    }
);

multiversion!(
    /// `Σ dy` and `Σ dy·(x − m)` over a run.
    fn run_grad_sums(dy: &[f32], xs: &[f32], m: f32) -> (f64, f64) {
        (lane_sum(dy, |g| g), lane_sum2(dy, xs, |g, x| g * (x - m)))
    }
);

multiversion!(
    /// `out = x·scale + shift` over a run.
    fn run_affine(out: &mut [MaybeUninit<f32>], xs: &[f32], scale: f32, shift: f32) {
        for (o, &v) in out.iter_mut().zip(xs) {
            o.write(v * scale + shift);
        }
    }
);

multiversion!(
    /// `out = scale·(dy − dy_mean − (x − m)·slope)` over a run: the input gradient.
    fn run_input_grad(
        out: &mut [MaybeUninit<f32>],
        xs: &[f32],
        dy: &[f32],
        m: f32,
        coefficients: [f32; 3],
    ) {
        let [scale, dy_mean, slope] = coefficients;
        for ((o, &v), &g) in out.iter_mut().zip(xs).zip(dy) {
            o.write(scale * (g - dy_mean - (v - m) * slope));
        }
    }
);

/// `f(c)` for every channel, in parallel when rayon is on (also the convolutions' bias
/// gradient).
pub(super) fn per_channel<T: Send>(
    channels: usize,
    f: impl Fn(usize) -> T + Send + Sync,
) -> Vec<T> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        (0..channels).into_par_iter().map(f).collect()
    }
    #[cfg(not(feature = "rayon"))]
    (0..channels).map(f).collect()
}

/// The start of an output buffer, shared by the channel tasks that write its disjoint runs.
struct Runs(*mut MaybeUninit<f32>);
// SAFETY: the tasks sharing it write disjoint runs (see `per_channel_runs`).
unsafe impl Sync for Runs {}

/// A new `[N, C, run]` buffer and a value per channel: `f(ch, runs)` gets channel `ch`'s `N`
/// runs (`runs[b]` is run `b·C + ch`), must write every value of them, and returns the
/// channel's value. Channels run in parallel; each reads its input and writes its output in
/// one task, so the second pass over a run finds it in cache (no zero fill first either: it
/// ran on the calling thread while the others waited).
fn per_channel_runs<T: Send>(
    n: usize,
    c: usize,
    run: usize,
    f: impl Fn(usize, &mut [&mut [MaybeUninit<f32>]]) -> T + Send + Sync,
) -> (Vec<f32>, Vec<T>) {
    let len = n * c * run;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let start = Runs(out.spare_capacity_mut().as_mut_ptr());
    let start = &start;
    let values = per_channel(c, |ch| {
        let mut runs: Vec<&mut [MaybeUninit<f32>]> = (0..n)
            // SAFETY: run `b·C + ch` lies inside the `len` slots, and no other task makes a
            // slice of it: each channel is handed to one task.
            .map(|b| unsafe {
                core::slice::from_raw_parts_mut(start.0.add((b * c + ch) * run), run)
            })
            .collect();
        f(ch, &mut runs)
    });
    // SAFETY: the channels' runs cover all `len` slots, and `f` writes every value of its runs
    // (each caller zips a run with an input run of the same length).
    unsafe { out.set_len(len) };
    (out, values)
}

/// Batch normalisation with the batch's own statistics: the output, and per channel the mean
/// and biased variance.
pub fn train(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> BatchNormTrain<Flex> {
    let dtype = x.dtype();
    let shape = x.layout().shape().clone();
    let (x, gamma, beta) = (as_f32(x), as_f32(gamma), as_f32(beta));
    let (xs, gs, bs): (&[f32], &[f32], &[f32]) = (x.storage(), gamma.storage(), beta.storage());
    let (n, c, run) = runs(&shape);
    let count = (n * run).max(1) as f64;
    let (out, stats) = per_channel_runs(n, c, run, |ch, outs| {
        let at = |b: usize| &xs[(b * c + ch) * run..][..run];
        let mean = (0..n).map(|b| run_sum(at(b))).sum::<f64>() / count;
        let m = mean as f32;
        let var = ((0..n).map(|b| run_square_deviation(at(b), m)).sum::<f64>() / count) as f32;
        let scale = gs[ch] / (var + epsilon as f32).sqrt();
        let shift = bs[ch] - m * scale;
        for (b, o) in outs.iter_mut().enumerate() {
            run_affine(o, at(b), scale, shift);
        }
        (m, var)
    });
    let channels = Shape::from(vec![c]);
    let back = |t: FlexTensor| Flex::float_cast(t, FloatDType::from(dtype));
    BatchNormTrain {
        output: back(f32_tensor(out, shape)),
        mean: back(f32_tensor(
            stats.iter().map(|s| s.0).collect(),
            channels.clone(),
        )),
        variance: back(f32_tensor(stats.iter().map(|s| s.1).collect(), channels)),
    }
}

/// Gradients of [`train`] with respect to its input, `gamma` and `beta`.
pub fn train_backward(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    epsilon: f64,
    output_grad: FlexTensor,
) -> BatchNormTrainBackward<Flex> {
    let dtype = x.dtype();
    let shape = x.layout().shape().clone();
    let (x, gamma, mean, variance, grad) = (
        as_f32(x),
        as_f32(gamma),
        as_f32(mean),
        as_f32(variance),
        as_f32(output_grad),
    );
    let (xs, gs, ms, vs, dys): (&[f32], &[f32], &[f32], &[f32], &[f32]) = (
        x.storage(),
        gamma.storage(),
        mean.storage(),
        variance.storage(),
        grad.storage(),
    );
    let (n, c, run) = runs(&shape);
    let count = (n * run).max(1) as f32;
    // Per channel: 1/σ, Σ dy, Σ dy·x̂ (the beta and gamma gradients).
    // Per channel: Σ dy and Σ dy·x̂ (the beta and gamma gradients), then the input gradient.
    let (dx, sums) = per_channel_runs(n, c, run, |ch, outs| {
        let at = |b: usize| {
            let off = (b * c + ch) * run;
            (&xs[off..][..run], &dys[off..][..run])
        };
        let inv_std = 1.0 / (vs[ch] + epsilon as f32).sqrt();
        let m = ms[ch];
        let (mut dy_sum, mut dy_xc) = (0.0f64, 0.0f64);
        for b in 0..n {
            let (xr, gr) = at(b);
            let (s, sx) = run_grad_sums(gr, xr, m);
            dy_sum += s;
            dy_xc += sx;
        }
        let (dy_sum, dy_xhat) = (dy_sum as f32, (dy_xc * f64::from(inv_std)) as f32);
        // dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy·x̂)), with x̂ = (x − μ)/σ.
        let scale = gs[ch] * inv_std;
        let dy_mean = dy_sum / count;
        let slope = dy_xhat / count * inv_std;
        for (b, o) in outs.iter_mut().enumerate() {
            let (xr, gr) = at(b);
            run_input_grad(o, xr, gr, m, [scale, dy_mean, slope]);
        }
        (dy_sum, dy_xhat)
    });
    let channels = Shape::from(vec![c]);
    let back = |t: FlexTensor| Flex::float_cast(t, FloatDType::from(dtype));
    BatchNormTrainBackward {
        x_grad: back(f32_tensor(dx, shape)),
        gamma_grad: back(f32_tensor(
            sums.iter().map(|s| s.1).collect(),
            channels.clone(),
        )),
        beta_grad: back(f32_tensor(sums.iter().map(|s| s.0).collect(), channels)),
    }
}
