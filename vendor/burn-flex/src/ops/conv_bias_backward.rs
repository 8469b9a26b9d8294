//! fedseg: the bias gradient of 2D convolutions, straight from the output gradient.
//!
//! burn-backend's default swaps the batch and channel axes, which copies the whole output
//! gradient into a new layout, and then sums; here each channel is summed where it lies,
//! channels in parallel, each in a fixed order (results do not depend on the number of
//! threads).

use alloc::vec;
use alloc::vec::Vec;

use burn_backend::DType;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

/// The gradient of a 2D convolution's (or transposed convolution's) bias: per output channel,
/// the sum of its output gradient `[N, C, H, W]` over images and positions; `None` unless f32.
pub fn bias_backward(output_grad: FlexTensor) -> Option<FlexTensor> {
    if output_grad.dtype() != DType::F32 || output_grad.layout().shape().num_dims() != 4 {
        return None;
    }
    let output_grad = output_grad.to_contiguous();
    let dys: &[f32] = output_grad.storage();
    let shape = output_grad.layout().shape();
    let (batch, c_out, plane) = (shape[0], shape[1], shape[2] * shape[3]);
    let channel = |c: usize| -> f32 {
        let mut total = 0.0f64;
        for n in 0..batch {
            let run = &dys[(n * c_out + c) * plane..][..plane];
            // 16 lanes of f32, then f64 across lanes and images.
            let mut lanes = [0.0f32; 16];
            let whole = plane / 16 * 16;
            for chunk in run[..whole].chunks_exact(16) {
                for (l, v) in lanes.iter_mut().zip(chunk) {
                    *l += v;
                }
            }
            total += lanes.iter().map(|&l| f64::from(l)).sum::<f64>();
            total += run[whole..].iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        total as f32
    };
    #[cfg(feature = "rayon")]
    let db: Vec<f32> = {
        use rayon::prelude::*;
        (0..c_out).into_par_iter().map(channel).collect()
    };
    #[cfg(not(feature = "rayon"))]
    let db: Vec<f32> = (0..c_out).map(channel).collect();
    Some(FlexTensor::new(
        Bytes::from_elems(db),
        Layout::contiguous(Shape::from(vec![c_out])),
        DType::F32,
    ))
}
