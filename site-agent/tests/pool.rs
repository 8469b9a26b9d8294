//! The CPU backend's 2D max pooling (ours where the windows tile the input: vendor/burn-flex
//! max_pool2d_tiled.rs; upstream's for the rest) against a direct reference: values, the
//! gradient (to the first maximum of each window), ties and NaN, at each vector width the CPU
//! has (the 2×2 case has AVX-512 and AVX2 versions).

use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Tensor, TensorData};
use burn_flex::ops::wide::{VectorWidth, limit_vector_width};
use fedseg_site::train::{DeviceKind, device_for};

mod common;
use common::to_vec;

struct Case {
    shape: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    ceil_mode: bool,
}

impl Case {
    fn out(&self) -> [usize; 2] {
        let size = |i: usize, n: usize| {
            let span = n + 2 * self.padding[i] - self.kernel[i];
            let steps = if self.ceil_mode {
                span.div_ceil(self.stride[i])
            } else {
                span / self.stride[i]
            };
            steps + 1
        };
        [size(0, self.shape[2]), size(1, self.shape[3])]
    }
}

/// Values with many ties (7 levels), so "the first maximum of a window" is tested.
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 7) as f32 - 3.0)
        .collect()
}

/// (output, dL/dx) for L = sum(output · up): each window's maximum over the input values it
/// covers (padding excluded), its gradient to the first maximum in row-major window order.
fn reference(c: &Case, xs: &[f32], ups: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let [n, ch, h, w] = c.shape;
    let [oh, ow] = c.out();
    let mut y = Vec::new();
    let mut dx = vec![0.0f32; xs.len()];
    for plane in 0..n * ch {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<(f32, usize)> = None;
                for ky in 0..c.kernel[0] {
                    for kx in 0..c.kernel[1] {
                        let iy = (oy * c.stride[0] + ky).checked_sub(c.padding[0]);
                        let ix = (ox * c.stride[1] + kx).checked_sub(c.padding[1]);
                        let (Some(iy), Some(ix)) = (iy, ix) else {
                            continue;
                        };
                        if iy >= h || ix >= w {
                            continue;
                        }
                        let at = plane * h * w + iy * w + ix;
                        if best.is_none_or(|(b, _)| xs[at] > b) {
                            best = Some((xs[at], at));
                        }
                    }
                }
                let (value, at) = best.expect("every window covers an input value");
                y.push(value);
                dx[at] += ups[(plane * oh + oy) * ow + ox];
            }
        }
    }
    (y, dx)
}

fn options(c: &Case) -> MaxPoolOptions<2> {
    MaxPoolOptions::new(c.kernel)
        .with_stride(c.stride)
        .with_padding(c.padding)
        .with_ceil_mode(c.ceil_mode)
}

fn check(c: &Case) {
    let device = device_for(DeviceKind::Cpu).unwrap().autodiff();
    let [oh, ow] = c.out();
    let out_shape = [c.shape[0], c.shape[1], oh, ow];
    let xs = values(c.shape.iter().product(), 1);
    let ups: Vec<f32> = (0..out_shape.iter().product::<usize>())
        .map(|i| (i % 5) as f32 + 1.0)
        .collect();
    let x: Tensor<4> =
        Tensor::from_data(TensorData::new(xs.clone(), c.shape), &device).require_grad();
    let up: Tensor<4> = Tensor::from_data(TensorData::new(ups.clone(), out_shape), &device);
    let y = max_pool2d(x.clone(), options(c));
    assert_eq!(y.dims(), out_shape, "output shape");
    let grads = (y.clone() * up).sum().backward();
    let (want_y, want_dx) = reference(c, &xs, &ups);
    assert_eq!(to_vec(y), want_y, "output of {:?}", c.shape);
    let dx = to_vec(x.grad(&grads).expect("x gradient"));
    assert_eq!(dx, want_dx, "dL/dx of {:?}", c.shape);
}

fn tiled(shape: [usize; 4], k: usize) -> Case {
    Case {
        shape,
        kernel: [k, k],
        stride: [k, k],
        padding: [0, 0],
        ceil_mode: false,
    }
}

/// The U-Net's 2×2 pooling with rows of 1 to 20 windows: every count of windows in a row's
/// last vector of 8 (AVX2) or 16 (AVX-512), and rows of several vectors.
fn check_2x2_rows() {
    for windows in 1..=20 {
        check(&tiled([1, 2, 6, 2 * windows], 2));
    }
    check(&tiled([2, 3, 8, 6], 2));
}

#[test]
fn max_pooling_matches_a_direct_reference() {
    check_2x2_rows();
    // 3×3 windows with a leftover row and column (floor mode drops them); non-square windows.
    check(&tiled([1, 2, 11, 7], 3));
    check(&Case {
        kernel: [2, 3],
        stride: [2, 3],
        ..tiled([2, 1, 6, 9], 2)
    });
    // Left to upstream: ceil mode with a partial window, overlapping windows with padding.
    check(&Case {
        ceil_mode: true,
        ..tiled([1, 2, 5, 5], 2)
    });
    check(&Case {
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        ..tiled([2, 2, 6, 5], 3)
    });
}

/// The narrower versions, which a CPU with AVX-512 would otherwise never run. (The limit is
/// process-wide, but every width gives the same results, so a test running beside this one
/// cannot tell.)
#[test]
fn every_vector_width_pools_alike() {
    for width in [VectorWidth::Avx2, VectorWidth::Baseline] {
        limit_vector_width(width);
        check_2x2_rows();
        nan_wins(width);
    }
    limit_vector_width(VectorWidth::Avx512);
}

#[test]
fn a_nan_in_a_window_is_its_maximum() {
    nan_wins(VectorWidth::Avx512);
}

fn nan_wins(width: VectorWidth) {
    let device = device_for(DeviceKind::Cpu).unwrap();
    let mut xs = values(2 * 4 * 4, 2);
    xs[5] = f32::NAN; // row 1, column 1 of the first plane: window (0, 0)
    let x: Tensor<4> = Tensor::from_data(TensorData::new(xs.clone(), [2, 1, 4, 4]), &device);
    let y = to_vec(max_pool2d(x, MaxPoolOptions::new([2, 2])));
    assert!(y[0].is_nan(), "window with a NaN at {width:?}: {}", y[0]);
    assert!(
        y[1..].iter().all(|v| !v.is_nan()),
        "other windows at {width:?}: {y:?}"
    );
}
