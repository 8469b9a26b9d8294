//! Softmax and log-softmax on the CPU backend (ours along an axis before the last:
//! vendor/burn-flex softmax_channels.rs, recorded as one op each by vendor/burn-autodiff)
//! against a direct f64 reference: values and the gradient of sum(output · up).

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Tensor, TensorData};
use fedseg_site::train::{DeviceKind, device_for};

mod common;
use common::to_vec;

/// Values in [-4, 4), and one large enough that an unshifted exp would overflow.
fn values(n: usize, seed: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2000) as f32 / 250.0 - 4.0)
        .collect();
    v[n / 2] = 120.0;
    v
}

/// (output, dL/dx) along axis `dim` of `shape`, in f64.
fn reference(
    shape: &[usize],
    dim: usize,
    xs: &[f32],
    ups: &[f32],
    log: bool,
) -> (Vec<f64>, Vec<f64>) {
    let axis = shape[dim];
    let inner: usize = shape[dim + 1..].iter().product();
    let outer: usize = shape[..dim].iter().product();
    let (mut y, mut dx) = (vec![0.0f64; xs.len()], vec![0.0f64; xs.len()]);
    for o in 0..outer {
        for j in 0..inner {
            let at = |c: usize| (o * axis + c) * inner + j;
            let max = (0..axis)
                .map(|c| f64::from(xs[at(c)]))
                .fold(f64::MIN, f64::max);
            let sum: f64 = (0..axis).map(|c| (f64::from(xs[at(c)]) - max).exp()).sum();
            let p = |c: usize| (f64::from(xs[at(c)]) - max).exp() / sum;
            let up_sum: f64 = (0..axis).map(|c| f64::from(ups[at(c)])).sum();
            let up_dot_p: f64 = (0..axis).map(|c| f64::from(ups[at(c)]) * p(c)).sum();
            for c in 0..axis {
                let u = f64::from(ups[at(c)]);
                if log {
                    y[at(c)] = f64::from(xs[at(c)]) - max - sum.ln();
                    dx[at(c)] = u - p(c) * up_sum;
                } else {
                    y[at(c)] = p(c);
                    dx[at(c)] = p(c) * (u - up_dot_p);
                }
            }
        }
    }
    (y, dx)
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

fn check<const D: usize>(shape: [usize; D], dim: usize) {
    let device = device_for(DeviceKind::Cpu).unwrap().autodiff();
    let n = shape.iter().product();
    let (xs, ups) = (values(n, 1), values(n, 2));
    for log in [false, true] {
        let x: Tensor<D> =
            Tensor::from_data(TensorData::new(xs.clone(), shape), &device).require_grad();
        let up: Tensor<D> = Tensor::from_data(TensorData::new(ups.clone(), shape), &device);
        let y = if log {
            log_softmax(x.clone(), dim)
        } else {
            softmax(x.clone(), dim)
        };
        let grads = (y.clone() * up).sum().backward();
        let (want_y, want_dx) = reference(&shape, dim, &xs, &ups, log);
        let what = format!(
            "{} of {shape:?} along {dim}",
            if log { "log_softmax" } else { "softmax" }
        );
        assert_close(&format!("{what}: output"), &to_vec(y), &want_y);
        let dx = to_vec(x.grad(&grads).expect("x gradient"));
        assert_close(&format!("{what}: dL/dx"), &dx, &want_dx);
    }
}

#[test]
fn softmax_and_log_softmax_match_a_direct_reference() {
    // The U-Net's class axis (3 classes) over more positions than one block of 1024; an axis of
    // one; a 2D tensor's first axis.
    check([2, 3, 40, 33], 1);
    check([2, 1, 4, 5], 1);
    check([6, 4], 0);
    // Along the last axis: upstream's softmax, burn-backend's log-softmax.
    check([3, 7], 1);
}
