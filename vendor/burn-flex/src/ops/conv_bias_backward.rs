//! fedseg: the bias gradient of 2D convolutions, straight from the output gradient.
//!
//! burn-backend's default swaps the batch and channel axes, which copies the whole output
//! gradient into a new layout, and then sums; here each channel is summed where it lies (also
//! in a channel slice of a larger tensor: `image_blocks.rs`), channels in parallel, each in a
//! fixed order (results do not depend on the number of threads).

use alloc::vec;

use burn_backend::DType;
use burn_std::{Bytes, Shape};

use super::batch_norm::{per_channel, run_sum};
use super::image_blocks::with_images;
use crate::{FlexTensor, Layout};

/// The gradient of a 2D convolution's (or transposed convolution's) bias: per output channel,
/// the sum of its output gradient `[N, C, H, W]` over images and positions; `None` unless f32.
pub fn bias_backward(output_grad: FlexTensor) -> Option<FlexTensor> {
    if output_grad.dtype() != DType::F32 || output_grad.layout().shape().num_dims() != 4 {
        return None;
    }
    let shape = output_grad.layout().shape();
    let (batch, c_out, plane) = (shape[0], shape[1], shape[2] * shape[3]);
    let db = with_images(output_grad, |dys| {
        let channel = |c: usize| -> f32 {
            (0..batch)
                .map(|n| run_sum(&dys.image(n)[c * plane..][..plane]))
                .sum::<f64>() as f32
        };
        per_channel(c_out, channel)
    });
    Some(FlexTensor::new(
        Bytes::from_elems(db),
        Layout::contiguous(Shape::from(vec![c_out])),
        DType::F32,
    ))
}
