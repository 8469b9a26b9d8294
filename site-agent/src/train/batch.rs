//! Turning slices into tensors: the input batch and, per output head, one-hot targets at that
//! head's resolution.

use burn::tensor::{Device, Tensor, TensorData};

use crate::preprocess::Plane;

pub fn input_tensor(images: &[Plane<f32>], device: &Device) -> Tensor<4> {
    let (w, h) = (images[0].width, images[0].height);
    let data: Vec<f32> = images.iter().flat_map(|p| p.data.iter().copied()).collect();
    Tensor::from_data(TensorData::new(data, [images.len(), 1, h, w]), device)
}

/// One-hot `[B, classes, H/2^level, W/2^level]`, sampling the label at the centre of each
/// 2^level block.
pub fn one_hot_target(
    labels: &[Plane<u8>],
    classes: usize,
    level: usize,
    device: &Device,
) -> Tensor<4> {
    let f = 1usize << level;
    let (w, h) = (labels[0].width / f, labels[0].height / f);
    let mut data = vec![0.0f32; labels.len() * classes * h * w];
    for (b, l) in labels.iter().enumerate() {
        for y in 0..h {
            for x in 0..w {
                let c = (l.get(x * f + f / 2, y * f + f / 2) as usize).min(classes - 1);
                data[((b * classes + c) * h + y) * w + x] = 1.0;
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [labels.len(), classes, h, w]), device)
}

pub fn targets(
    labels: &[Plane<u8>],
    classes: usize,
    heads: usize,
    device: &Device,
) -> Vec<Tensor<4>> {
    (0..heads)
        .map(|level| one_hot_target(labels, classes, level, device))
        .collect()
}
