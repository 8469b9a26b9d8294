//! fedseg: f32 2D transposed convolution whose stride equals its kernel (the U-Net's 2×2,
//! stride-2 up-convolutions), forward and all three backward passes, each one GEMM per image.
//!
//! With stride = kernel and no padding, every output pixel gets exactly one input pixel's
//! contribution: output tile `(i, j)` of `kh × kw` pixels is `Wᵀ · x[:, i, j]`. So the forward
//! pass is `Z[c_out·kh·kw × h·w] = Wᵀ · X` (the weight `[c_in, c_out, kh, kw]` read as a
//! `c_in × c_out·kh·kw` matrix) scattered into the tiles; the input gradient gathers the output
//! gradient's tiles into `G` and computes `W · G`; the weight gradient is `X · Gᵀ` per image,
//! summed in batch order. Upstream runs the forward pass through its 3D code and the gradients
//! through burn-backend's defaults (a strided convolution via im2col, and transposes and
//! reductions), partly on one thread.
//!
//! Every sum runs in a fixed order, so results do not depend on the number of threads.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use burn_backend::DType;
use burn_backend::ops::ConvTransposeOptions;
use burn_std::{Bytes, Shape};

use super::conv2d_stride1::{Slot, gemm_f32, per_image, sum_in_batch_order};
use super::image_blocks::with_images;
use super::wide::wide1;
use crate::{FlexTensor, Layout};

/// Sizes of one transposed convolution with stride = kernel.
#[derive(Clone, Copy)]
pub struct Tiles {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
}

impl Tiles {
    /// Values per tile.
    fn k(&self) -> usize {
        self.kh * self.kw
    }
    /// Input positions per image (= tiles per output channel).
    fn hw(&self) -> usize {
        self.h * self.w
    }
    fn x_len(&self) -> usize {
        self.c_in * self.hw()
    }
    fn y_len(&self) -> usize {
        self.c_out * self.k() * self.hw()
    }
    /// Rows of `Z` / `G`: (output channel, tap).
    fn rows(&self) -> usize {
        self.c_out * self.k()
    }

    /// `f(z, y)` for every row `(c, a, b)` of `Z` and input row `i`: `Z[(c, a, b), (i, j)]`
    /// is at `z + j` and its output `y[c, i·kh + a, j·kw + b]` at `y + j·kw`.
    fn for_each_tile_row(&self, mut f: impl FnMut(usize, usize)) {
        let (ow, oh_ow) = (self.w * self.kw, self.h * self.kh * self.w * self.kw);
        for c in 0..self.c_out {
            for a in 0..self.kh {
                for b in 0..self.kw {
                    let r = (c * self.kh + a) * self.kw + b;
                    for i in 0..self.h {
                        // Row i of input positions → output row i·kh + a, columns j·kw + b.
                        f(
                            r * self.hw() + i * self.w,
                            c * oh_ow + (i * self.kh + a) * ow + b,
                        );
                    }
                }
            }
        }
    }
}

/// The sizes when this path applies: f32, stride = kernel, no padding, no output padding,
/// dilation 1, one group.
pub fn plan(
    x: &FlexTensor,
    weight: &FlexTensor,
    options: &ConvTransposeOptions<2>,
) -> Option<Tiles> {
    let xs = x.layout().shape();
    if x.dtype() != DType::F32 || xs.num_dims() != 4 {
        return None;
    }
    tiles([xs[0], xs[1], xs[2], xs[3]], weight, options)
}

/// [`plan`] for the input gradient, which is given the output gradient instead of `x`.
pub fn plan_backward(
    weight: &FlexTensor,
    output_grad: &FlexTensor,
    options: &ConvTransposeOptions<2>,
) -> Option<Tiles> {
    let (ys, ws) = (output_grad.layout().shape(), weight.layout().shape());
    if output_grad.dtype() != DType::F32 || ys.num_dims() != 4 || ws.num_dims() != 4 {
        return None;
    }
    let (kh, kw) = (ws[2], ws[3]);
    if kh == 0 || kw == 0 || ys[1] != ws[1] || ys[2] % kh != 0 || ys[3] % kw != 0 {
        return None;
    }
    tiles([ys[0], ws[0], ys[2] / kh, ys[3] / kw], weight, options)
}

fn tiles(
    [batch, c_in, h, w]: [usize; 4],
    weight: &FlexTensor,
    options: &ConvTransposeOptions<2>,
) -> Option<Tiles> {
    let ws = weight.layout().shape();
    if weight.dtype() != DType::F32
        || ws.num_dims() != 4
        || ws[0] != c_in
        || options.groups != 1
        || options.dilation != [1, 1]
        || options.padding != [0, 0]
        || options.padding_out != [0, 0]
        || options.stride != [ws[2], ws[3]]
    {
        return None;
    }
    let t = Tiles {
        batch,
        c_in,
        c_out: ws[1],
        h,
        w,
        kh: ws[2],
        kw: ws[3],
    };
    (t.batch > 0 && t.c_in > 0 && t.c_out > 0 && t.k() > 0 && t.hw() > 0).then_some(t)
}

fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(shape)),
        DType::F32,
    )
}

/// One image's output gradient gathered into `G[(c_out, tap) × (i, j)]`.
fn gather(t: &Tiles, dy: &[f32]) -> Vec<f32> {
    let len = t.rows() * t.hw();
    let mut g: Vec<f32> = Vec::with_capacity(len);
    wide1(&mut g.spare_capacity_mut()[..len], |g| {
        t.for_each_tile_row(|z, y| {
            let row = &mut g[z..][..t.w];
            let src = &dy[y..][..(t.w - 1) * t.kw + 1];
            match t.kw {
                // The U-Net's 2×2 up-convolutions: a stride the compiler vectorises.
                2 => every_kth::<2>(row, src),
                _ => {
                    for (v, &d) in row.iter_mut().zip(src.iter().step_by(t.kw)) {
                        v.write(d);
                    }
                }
            }
        });
    });
    // SAFETY: `for_each_tile_row` visits each of G's `rows·h` rows of `w` once, and each is
    // written in full above: all `len` values.
    unsafe { g.set_len(len) };
    g
}

/// `dst[j·K] = src[j] + add` for every `j`; `dst` holds `(src.len() − 1)·K + 1` values.
#[inline(always)]
fn to_every_kth<const K: usize>(dst: &mut [MaybeUninit<f32>], src: &[f32], add: f32) {
    let Some((last, rest)) = src.split_last() else {
        return;
    };
    for (chunk, &v) in dst.chunks_exact_mut(K).zip(rest) {
        chunk[0].write(v + add);
    }
    dst[rest.len() * K].write(last + add);
}

/// `out[j] = src[j·K]` for every `j`; `src` holds `(out.len() − 1)·K + 1` values.
#[inline(always)]
fn every_kth<const K: usize>(out: &mut [MaybeUninit<f32>], src: &[f32]) {
    let Some((last, rest)) = out.split_last_mut() else {
        return;
    };
    for (v, chunk) in rest.iter_mut().zip(src.chunks_exact(K)) {
        v.write(chunk[0]);
    }
    last.write(src[rest.len() * K]);
}

/// `conv_transpose2d(x, weight) + bias`.
pub fn forward(
    t: Tiles,
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let weight = weight.to_contiguous();
    let bias = bias.map(|b| b.to_contiguous());
    let (xs, ws): (&[f32], &[f32]) = (x.storage(), weight.storage());
    let bs: Option<&[f32]> = bias.as_ref().map(|b| b.storage());
    let (rows, hw) = (t.rows(), t.hw());
    let fill = |n: usize, o: Slot<'_>, par: gemm::Parallelism| {
        let mut z = vec![0.0f32; rows * hw];
        // Z[rows × hw] = Wᵀ[rows × c_in] · X[c_in × hw]
        // SAFETY: Z, W and X are rows·hw, c_in·rows and c_in·hw values, read with these strides.
        unsafe {
            gemm_f32(
                rows,
                hw,
                t.c_in,
                z.as_mut_ptr(),
                (hw, 1),
                false,
                ws.as_ptr(),
                (1, rows),
                xs[n * t.x_len()..].as_ptr(),
                (hw, 1),
                par,
            );
        }
        wide1(o, |o| {
            t.for_each_tile_row(|zr, y| {
                let add = bs.map_or(0.0, |b| b[(zr / hw) / t.k()]);
                let (src, dst) = (&z[zr..][..t.w], &mut o[y..][..(t.w - 1) * t.kw + 1]);
                match t.kw {
                    // As in `gather`.
                    2 => to_every_kth::<2>(dst, src, add),
                    _ => {
                        for (d, &v) in dst.iter_mut().step_by(t.kw).zip(src) {
                            d.write(v + add);
                        }
                    }
                }
            });
        });
    };
    // SAFETY: with stride = kernel and no padding the tiles cover the output, and every tile row is written.
    let out = unsafe { per_image(t.batch, t.y_len(), fill) };
    tensor(out, vec![t.batch, t.c_out, t.h * t.kh, t.w * t.kw])
}

/// The gradient of [`forward`] with respect to `x`.
pub fn x_backward(t: Tiles, weight: FlexTensor, output_grad: FlexTensor) -> FlexTensor {
    let weight = weight.to_contiguous();
    let ws: &[f32] = weight.storage();
    let (rows, hw) = (t.rows(), t.hw());
    with_images(output_grad, |dys| {
        debug_assert_eq!(dys.len, t.y_len());
        let fill = |n: usize, o: Slot<'_>, par: gemm::Parallelism| {
            let g = gather(&t, dys.image(n));
            // dX[c_in × hw] = W[c_in × rows] · G[rows × hw]
            // SAFETY: sizes as in `forward`.
            unsafe {
                gemm_f32(
                    t.c_in,
                    hw,
                    rows,
                    o.as_mut_ptr().cast::<f32>(),
                    (hw, 1),
                    false,
                    ws.as_ptr(),
                    (rows, 1),
                    g.as_ptr(),
                    (hw, 1),
                    par,
                );
            }
        };
        // SAFETY: the GEMM (not accumulating) writes all of `dX`.
        let dx = unsafe { per_image(t.batch, t.x_len(), fill) };
        tensor(dx, vec![t.batch, t.c_in, t.h, t.w])
    })
}

/// The gradient of [`forward`] with respect to `weight`.
pub fn weight_backward(t: Tiles, x: FlexTensor, output_grad: FlexTensor) -> FlexTensor {
    let x = x.to_contiguous();
    let xs: &[f32] = x.storage();
    let (rows, hw) = (t.rows(), t.hw());
    let w_len = t.c_in * rows;
    let per = with_images(output_grad, |dys| {
        debug_assert_eq!(dys.len, t.y_len());
        // One gradient per image, summed in batch order below.
        let fill = |n: usize, dw: Slot<'_>, par: gemm::Parallelism| {
            let g = gather(&t, dys.image(n));
            // dW[c_in × rows] = X[c_in × hw] · Gᵀ[hw × rows]
            // SAFETY: sizes as in `forward`.
            unsafe {
                gemm_f32(
                    t.c_in,
                    rows,
                    hw,
                    dw.as_mut_ptr().cast::<f32>(),
                    (rows, 1),
                    false,
                    xs[n * t.x_len()..].as_ptr(),
                    (hw, 1),
                    g.as_ptr(),
                    (1, hw),
                    par,
                );
            }
        };
        // SAFETY: the GEMM (not accumulating) writes all of `dW`.
        unsafe { per_image(t.batch, w_len, fill) }
    });
    tensor(
        sum_in_batch_order(&per, w_len),
        vec![t.c_in, t.c_out, t.kh, t.kw],
    )
}
