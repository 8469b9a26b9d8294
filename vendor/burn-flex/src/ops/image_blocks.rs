//! fedseg: an `[N, ...]` f32 tensor read image by image where it lies.
//!
//! A slice along the channel axis (what autodiff hands each input of a concatenation as its
//! gradient: the U-Net's up-convolutions get theirs so) is not contiguous as a whole, but each
//! image's values are. Kernels that work image by image read such a tensor in place; copying
//! it whole first (`to_contiguous`) cost a pass over the gradient per kernel that read it.

use burn_backend::DType;

use crate::FlexTensor;

/// Each image's values, contiguous, at `start + n·stride` of `values`.
pub(super) struct ImageBlocks<'a> {
    values: &'a [f32],
    start: usize,
    stride: usize,
    /// Values per image.
    pub len: usize,
}

impl<'a> ImageBlocks<'a> {
    /// Image `n`'s values.
    pub fn image(&self, n: usize) -> &'a [f32] {
        &self.values[self.start + n * self.stride..][..self.len]
    }
}

/// `t`'s images in place when `t` is f32 and every image's values are contiguous (row-major
/// below the first axis; any start and image stride); `None` otherwise.
pub(super) fn image_blocks(t: &FlexTensor) -> Option<ImageBlocks<'_>> {
    let layout = t.layout();
    let (dims, strides) = (layout.shape().as_slice(), layout.strides());
    if t.dtype() != DType::F32 || dims.is_empty() {
        return None;
    }
    let mut len = 1usize;
    for (&d, &s) in dims[1..].iter().zip(&strides[1..]).rev() {
        if d != 1 && s != len as isize {
            return None;
        }
        len *= d;
    }
    let stride = match dims[0] {
        0 | 1 => len,
        _ => usize::try_from(strides[0]).ok().filter(|&s| s >= len)?,
    };
    let values: &[f32] = t.storage();
    let start = layout.start_offset();
    let end = match dims[0] {
        0 => start,
        n => start + (n - 1) * stride + len,
    };
    (end <= values.len()).then_some(ImageBlocks {
        values,
        start,
        stride,
        len,
    })
}

/// `f` over `t`'s images: in place when [`image_blocks`] finds them, else from a contiguous
/// copy.
///
/// # Panics
/// If `t` is not f32 (the callers' plans check that first).
pub(super) fn with_images<R>(t: FlexTensor, f: impl FnOnce(&ImageBlocks<'_>) -> R) -> R {
    if let Some(blocks) = image_blocks(&t) {
        return f(&blocks);
    }
    let t = t.into_contiguous();
    let blocks = image_blocks(&t).expect("a contiguous f32 tensor lies image by image");
    f(&blocks)
}
