//! burn-flex's own loops (vendor/burn-flex `wide.rs`: elementwise passes, batch norm, bias and
//! weight-gradient sums) give the same bits whatever vector width they run at: a small
//! normalisation → LeakyReLU → convolution block, forward and backward, under each width
//! limit. On a CPU with AVX-512 this also runs the AVX2 and baseline versions.

use burn::tensor::activation::leaky_relu;
use burn::tensor::module::{batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use burn_flex::ops::wide::{VectorWidth, limit_vector_width};
use fedseg_site::train::{DeviceKind, device_for};

mod common;
use common::to_vec;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2000) as f32 / 500.0 - 2.0)
        .collect()
}

/// Every output and gradient of the block, as bits, by name.
fn block_bits() -> Vec<(&'static str, Vec<u32>)> {
    let device = device_for(DeviceKind::Cpu).unwrap().autodiff();
    // Over 64 Ki elements, so the elementwise passes split across threads; 70 px rows leave
    // tails after whole vectors.
    let (n, c, hw, c_out) = (2, 8, 70, 4);
    let tensor = |shape: Vec<usize>, seed: usize| {
        let len = shape.iter().product();
        Tensor::<1>::from_data(TensorData::new(values(len, seed), [len]), &device)
    };
    let x = tensor(vec![n, c, hw, hw], 1)
        .reshape([n, c, hw, hw])
        .require_grad();
    let gamma = tensor(vec![c], 2).require_grad();
    let beta = tensor(vec![c], 3).require_grad();
    let w = tensor(vec![c_out, c, 3, 3], 4)
        .reshape([c_out, c, 3, 3])
        .require_grad();
    let bias = tensor(vec![c_out], 5).require_grad();
    let up = tensor(vec![n, c_out, hw, hw], 6).reshape([n, c_out, hw, hw]);

    let norm = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5).output;
    let act = leaky_relu(norm, 0.01);
    let out = conv2d(
        act.clone(),
        w.clone(),
        Some(bias.clone()),
        ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
    );
    let grads = (out.clone() * up).sum().backward();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
    let grad4 = |t: &Tensor<4>| bits(to_vec(t.grad(&grads).expect("gradient")));
    let grad1 = |t: &Tensor<1>| bits(to_vec(t.grad(&grads).expect("gradient")));
    vec![
        ("activation", bits(to_vec(act))),
        ("output", bits(to_vec(out))),
        ("dL/dx", grad4(&x)),
        ("dL/dγ", grad1(&gamma)),
        ("dL/dβ", grad1(&beta)),
        ("dL/dw", grad4(&w)),
        ("dL/dbias", grad1(&bias)),
    ]
}

#[test]
fn every_vector_width_gives_the_same_bits() {
    let widest = block_bits();
    for width in [VectorWidth::Avx2, VectorWidth::Baseline] {
        limit_vector_width(width);
        let narrower = block_bits();
        limit_vector_width(VectorWidth::Avx512);
        for ((name, want), (_, got)) in widest.iter().zip(&narrower) {
            let first_difference = want.iter().zip(got).position(|(a, b)| a != b);
            assert_eq!(
                first_difference, None,
                "{name} at {width:?}: differs from the widest at index {first_difference:?}"
            );
            assert_eq!(want.len(), got.len(), "{name} at {width:?}: length");
        }
    }
}
