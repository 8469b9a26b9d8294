//! Batch normalisation with the batch's statistics on the CPU backend (vendor/burn-flex
//! `batch_norm.rs`; the U-Net's instance norm runs through it with one image) against a direct
//! f64 reference: output, mean, variance, and the gradients of sum(output · up) with respect
//! to the input, γ and β. Several images per batch and runs that are not whole vectors.

use burn::tensor::module::batch_norm_train;
use burn::tensor::{Tensor, TensorData};
use fedseg_site::train::{DeviceKind, device_for};

mod common;
use common::to_vec;

const EPSILON: f64 = 1e-5;

/// Values spread over [-3, 5) with a per-channel offset, so a mix-up of channels shows.
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 125.0 - 3.0 + (i % 5) as f32)
        .collect()
}

struct Reference {
    output: Vec<f64>,
    mean: Vec<f64>,
    variance: Vec<f64>,
    dx: Vec<f64>,
    dgamma: Vec<f64>,
    dbeta: Vec<f64>,
}

fn reference(
    [n, c, run]: [usize; 3],
    xs: &[f32],
    ups: &[f32],
    gamma: &[f32],
    beta: &[f32],
) -> Reference {
    let at = |b: usize, ch: usize, i: usize| (b * c + ch) * run + i;
    let count = (n * run) as f64;
    let mut r = Reference {
        output: vec![0.0; xs.len()],
        mean: vec![0.0; c],
        variance: vec![0.0; c],
        dx: vec![0.0; xs.len()],
        dgamma: vec![0.0; c],
        dbeta: vec![0.0; c],
    };
    for ch in 0..c {
        let all = || (0..n).flat_map(move |b| (0..run).map(move |i| at(b, ch, i)));
        let x = |k: usize| f64::from(xs[k]);
        let mean = all().map(x).sum::<f64>() / count;
        let var = all().map(|k| (x(k) - mean).powi(2)).sum::<f64>() / count;
        let sigma = (var + EPSILON).sqrt();
        let xhat = |k: usize| (x(k) - mean) / sigma;
        let g = f64::from(gamma[ch]);
        let up_mean = all().map(|k| f64::from(ups[k])).sum::<f64>() / count;
        let up_xhat_mean = all().map(|k| f64::from(ups[k]) * xhat(k)).sum::<f64>() / count;
        for k in all() {
            r.output[k] = g * xhat(k) + f64::from(beta[ch]);
            r.dx[k] = g / sigma * (f64::from(ups[k]) - up_mean - xhat(k) * up_xhat_mean);
        }
        (r.mean[ch], r.variance[ch]) = (mean, var);
        (r.dgamma[ch], r.dbeta[ch]) = (up_xhat_mean * count, up_mean * count);
    }
    r
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

fn check(shape: [usize; 4]) {
    let device = device_for(DeviceKind::Cpu).unwrap().autodiff();
    let [n, c, h, w] = shape;
    let len = n * c * h * w;
    let (xs, ups) = (values(len, 1), values(len, 2));
    let (gamma, beta) = (values(c, 3), values(c, 4));
    let x: Tensor<4> =
        Tensor::from_data(TensorData::new(xs.clone(), shape), &device).require_grad();
    let up: Tensor<4> = Tensor::from_data(TensorData::new(ups.clone(), shape), &device);
    let param = |v: &[f32]| {
        Tensor::<1>::from_data(TensorData::new(v.to_vec(), [c]), &device).require_grad()
    };
    let (g, b) = (param(&gamma), param(&beta));
    let out = batch_norm_train(x.clone(), g.clone(), b.clone(), EPSILON);
    let grads = (out.output.clone() * up).sum().backward();
    let want = reference([n, c, h * w], &xs, &ups, &gamma, &beta);
    let what = |name: &str| format!("{shape:?} {name}");
    assert_close(&what("output"), &to_vec(out.output), &want.output, 1e-4);
    assert_close(&what("mean"), &to_vec(out.mean), &want.mean, 1e-5);
    assert_close(
        &what("variance"),
        &to_vec(out.variance),
        &want.variance,
        1e-5,
    );
    let dx = to_vec(x.grad(&grads).expect("x gradient"));
    assert_close(&what("dL/dx"), &dx, &want.dx, 1e-4);
    let grad = |t: &Tensor<1>| to_vec(t.grad(&grads).expect("parameter gradient"));
    assert_close(&what("dL/dγ"), &grad(&g), &want.dgamma, 1e-4);
    assert_close(&what("dL/dβ"), &grad(&b), &want.dbeta, 1e-4);
}

#[test]
fn batch_norm_matches_a_direct_reference() {
    // Several images (a channel's runs are apart), runs of 63 (whole vectors and a tail), one
    // image as the instance norm uses it, and runs shorter than a vector.
    check([3, 5, 7, 9]);
    check([1, 6, 16, 20]);
    check([4, 2, 3, 3]);
}
