//! fedseg: `batch_norm_train` and its backward, each in a few passes over the data.
//!
//! burn-backend's defaults compose both from about ten tensor operations (swaps, reshapes,
//! reductions, broadcast arithmetic), each a full pass over the activations with its own
//! allocation. The U-Net's instance normalisation runs through these (as a batch norm of the
//! `[1, N·C, H, W]` view), twice per convolution block, so that cost was a large share of a
//! CPU training step.
//!
//! Computed in f32 (other float types are cast there and back). Each channel's sums run in a
//! fixed order, channels in parallel, so results do not depend on the number of threads.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use burn_backend::ops::{BatchNormTrain, BatchNormTrainBackward, FloatTensorOps};
use burn_backend::{DType, FloatDType};
use burn_std::{Bytes, Shape};

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

/// `Σ f(i)` over `0..len` in 16 lanes of f32, the lanes then added in f64.
#[inline]
fn lane_sum(len: usize, f: impl Fn(usize) -> f32) -> f64 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let whole = len / LANES * LANES;
    for base in (0..whole).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(base + l);
        }
    }
    let mut total: f64 = (whole..len).map(|i| f64::from(f(i))).sum();
    total += acc.iter().map(|&a| f64::from(a)).sum::<f64>();
    total
}

/// `f(c)` for every channel, in parallel when rayon is on.
fn per_channel<T: Send>(channels: usize, f: impl Fn(usize) -> T + Send + Sync) -> Vec<T> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        (0..channels).into_par_iter().map(f).collect()
    }
    #[cfg(not(feature = "rayon"))]
    (0..channels).map(f).collect()
}

/// A new `[N, C, run]` buffer of `len` values, `f(c, run_index, out_run)` writing every value
/// of every run, runs in parallel when rayon is on (no zero fill first: it ran on the calling
/// thread while the others waited).
fn per_run(
    len: usize,
    channels: usize,
    run: usize,
    f: impl Fn(usize, usize, &mut [MaybeUninit<f32>]) + Send + Sync,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if run == 0 {
        return out;
    }
    let slots = &mut out.spare_capacity_mut()[..len];
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        slots
            .par_chunks_mut(run)
            .enumerate()
            .for_each(|(i, o)| f(i % channels, i, o));
    }
    #[cfg(not(feature = "rayon"))]
    for (i, o) in slots.chunks_mut(run).enumerate() {
        f(i % channels, i, o);
    }
    // SAFETY: the runs cover all `len` values (`len` is a multiple of `run`), and `f` writes
    // every value of its run (each caller zips its run with an input run of the same length).
    unsafe { out.set_len(len) };
    out
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
    let stats: Vec<(f32, f32)> = per_channel(c, |ch| {
        let at = |b: usize| &xs[(b * c + ch) * run..][..run];
        let mean = (0..n).map(|b| lane_sum(run, |i| at(b)[i])).sum::<f64>() / count;
        let m = mean as f32;
        let var = (0..n)
            .map(|b| lane_sum(run, |i| (at(b)[i] - m) * (at(b)[i] - m)))
            .sum::<f64>()
            / count;
        (m, var as f32)
    });
    let out = per_run(xs.len(), c, run, |ch, i, o| {
        let (mean, var) = stats[ch];
        let scale = gs[ch] / (var + epsilon as f32).sqrt();
        let shift = bs[ch] - mean * scale;
        for (o, &v) in o.iter_mut().zip(&xs[i * run..][..run]) {
            o.write(v * scale + shift);
        }
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
    let sums: Vec<(f32, f32, f32)> = per_channel(c, |ch| {
        let inv_std = 1.0 / (vs[ch] + epsilon as f32).sqrt();
        let m = ms[ch];
        let (mut dy_sum, mut dy_xc) = (0.0f64, 0.0f64);
        for b in 0..n {
            let off = (b * c + ch) * run;
            let (xr, gr) = (&xs[off..][..run], &dys[off..][..run]);
            dy_sum += lane_sum(run, |i| gr[i]);
            dy_xc += lane_sum(run, |i| gr[i] * (xr[i] - m));
        }
        (inv_std, dy_sum as f32, (dy_xc * f64::from(inv_std)) as f32)
    });
    let dx = per_run(xs.len(), c, run, |ch, i, o| {
        let (inv_std, dy_sum, dy_xhat) = sums[ch];
        // dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy·x̂)), with x̂ = (x − μ)/σ.
        let scale = gs[ch] * inv_std;
        let dy_mean = dy_sum / count;
        let slope = dy_xhat / count * inv_std;
        let m = ms[ch];
        let (xr, gr) = (&xs[i * run..][..run], &dys[i * run..][..run]);
        for ((o, &v), &g) in o.iter_mut().zip(xr).zip(gr) {
            o.write(scale * (g - dy_mean - (v - m) * slope));
        }
    });
    let channels = Shape::from(vec![c]);
    let back = |t: FlexTensor| Flex::float_cast(t, FloatDType::from(dtype));
    BatchNormTrainBackward {
        x_grad: back(f32_tensor(dx, shape)),
        gamma_grad: back(f32_tensor(
            sums.iter().map(|s| s.2).collect(),
            channels.clone(),
        )),
        beta_grad: back(f32_tensor(sums.iter().map(|s| s.1).collect(), channels)),
    }
}
