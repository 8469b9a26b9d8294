//! fedseg: f32 softmax and log-softmax along an axis that is not the last (a segmentation
//! network's class axis of `[N, C, H, W]`), computed where the values lie.
//!
//! Upstream's softmax swaps the axis to the end (a copy), runs rows of `C` values (3 for the
//! U-Net: a row's bookkeeping and a scalar `exp` call for every 3 values) and swaps back,
//! leaving a transposed result for the next operation; its log-softmax is burn-backend's
//! six-operation default. Here positions are the vector axis: per block of positions, the
//! maximum over the axis, then the exponentials and their sum, then the output, each pass
//! reading `C` rows of the block. Images (everything before the axis) run in parallel; each
//! sum runs over the axis in order, so results do not depend on the number of threads.

use alloc::vec;

use burn_backend::DType;
use burn_std::Bytes;
#[cfg(not(feature = "std"))]
#[allow(unused_imports)]
use num_traits::Float;

use crate::{FlexTensor, Layout};

/// Positions per block: the block's maximum and sum stay in L1.
const BLOCK: usize = 1024;

/// `(axis, inner)` sizes when this path applies (f32, an axis before the last): values along
/// the axis are `inner` apart.
pub fn plan(x: &FlexTensor, dim: usize) -> Option<(usize, usize)> {
    let dims = x.layout().shape().as_slice();
    if x.dtype() != DType::F32 || dim + 1 >= dims.len() {
        return None;
    }
    Some((dims[dim], dims[dim + 1..].iter().product()))
}

/// Softmax (or, with `log`, log-softmax) of `x` along the planned axis.
pub fn softmax(x: FlexTensor, (axis, inner): (usize, usize), log: bool) -> FlexTensor {
    let x = x.to_contiguous();
    let shape = x.layout().shape().clone();
    let xs: &[f32] = x.storage();
    let per = axis * inner;
    let mut out = vec![0.0f32; xs.len()];
    let image = |o: usize, dst: &mut [f32]| {
        let src = &xs[o * per..][..per];
        let (mut max, mut sum) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
        for start in (0..inner).step_by(BLOCK) {
            let len = BLOCK.min(inner - start);
            let (max, sum) = (&mut max[..len], &mut sum[..len]);
            let row = |c: usize| &src[c * inner + start..][..len];
            max.copy_from_slice(row(0));
            for c in 1..axis {
                for (m, &v) in max.iter_mut().zip(row(c)) {
                    *m = m.max(v);
                }
            }
            sum.fill(0.0);
            if log {
                // log softmax = (x − max) − ln Σ exp(x − max)
                for c in 0..axis {
                    for ((s, &v), &m) in sum.iter_mut().zip(row(c)).zip(max.iter()) {
                        *s += (v - m).exp();
                    }
                }
                for (m, s) in max.iter_mut().zip(sum.iter()) {
                    *m += s.ln();
                }
                for c in 0..axis {
                    let out_row = &mut dst[c * inner + start..][..len];
                    for ((e, &v), &shift) in out_row.iter_mut().zip(row(c)).zip(max.iter()) {
                        *e = v - shift;
                    }
                }
                continue;
            }
            for c in 0..axis {
                let out_row = &mut dst[c * inner + start..][..len];
                let terms = out_row
                    .iter_mut()
                    .zip(sum.iter_mut())
                    .zip(row(c))
                    .zip(max.iter());
                for (((e, s), &v), &m) in terms {
                    *e = (v - m).exp();
                    *s += *e;
                }
            }
            for s in sum.iter_mut() {
                *s = 1.0 / *s;
            }
            for c in 0..axis {
                let out_row = &mut dst[c * inner + start..][..len];
                for (e, &inv) in out_row.iter_mut().zip(sum.iter()) {
                    *e *= inv;
                }
            }
        }
    };
    if per > 0 {
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            out.par_chunks_mut(per)
                .enumerate()
                .for_each(|(o, dst)| image(o, dst));
        }
        #[cfg(not(feature = "rayon"))]
        for (o, dst) in out.chunks_mut(per).enumerate() {
            image(o, dst);
        }
    }
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(shape),
        DType::F32,
    )
}
