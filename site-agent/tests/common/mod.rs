//! What the tests share.

use burn::tensor::Tensor;

/// A tensor's values as f32, in row-major order.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}
