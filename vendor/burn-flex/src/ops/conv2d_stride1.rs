//! fedseg: f32 2D convolution with stride 1, no dilation and one group (the U-Net's 3×3
//! convolutions), forward and both backward passes, without im2col.
//!
//! Each image is zero-padded once into a plane of `(h + 2ph) × (w + 2pw)` values. The output is
//! computed on the same padded row length (`w + 2pw`): its last `kw - 1` columns per row are
//! garbage, cropped at the end. On that grid, kernel tap `(i, j)` is a constant offset
//! `i·(w + 2pw) + j` into the padded plane, so the convolution is `kh·kw` GEMMs of
//! `[c_out × c_in] · [c_in × positions]` reading the plane in place, accumulated into one buffer.
//! The backward passes are the same GEMMs transposed: the weight gradient multiplies the output
//! gradient (zero in the garbage columns) by the shifted planes; the input gradient scatters
//! `W_tapᵀ · dY` into a padded plane at each tap's offset and crops it.
//!
//! Measured on 2 cores (batch 8), against burn-flex's im2col path and its default backward
//! (a convolution of `x` by `dY`, and a transposed convolution): 16→16 maps at 128×128 forward
//! 67 → 18 ms, weight gradient 74 → 12 ms, input gradient 90 → 16 ms.
//!
//! On CPUs with AVX-512 or AVX2, 3×3 forward passes and input gradients with 16 or more
//! channels go to Winograd F(2×2, 3×3) instead (`conv2d_winograd`), on the same padded planes;
//! with AVX2, F(4×4, 3×3) where rows hold 5 or more of its tiles, and the weight gradients
//! too (F(3×3, 2×2) or F(3×3, 4×4) to match).
//!
//! Every sum runs in a fixed order (images in the batch are summed in batch order), so the
//! results do not depend on the number of threads.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_std::{Bytes, Shape};

#[cfg(all(target_arch = "x86_64", feature = "std"))]
use super::conv2d_winograd::Kernel;
use super::wide::wide1;
use crate::{FlexTensor, Layout};

/// Sizes of one convolution on the padded grid.
#[derive(Clone, Copy)]
pub struct Geometry {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ph: usize,
    pw: usize,
}

impl Geometry {
    /// Row length of the padded plane and of the output grid.
    fn row(&self) -> usize {
        self.w + 2 * self.pw
    }
    fn h_out(&self) -> usize {
        self.h + 2 * self.ph + 1 - self.kh
    }
    fn w_out(&self) -> usize {
        self.w + 2 * self.pw + 1 - self.kw
    }
    /// Values per padded plane; the slack lets the last tap read whole output rows.
    fn plane(&self) -> usize {
        (self.h + 2 * self.ph) * self.row() + self.kw
    }
    /// Output positions on the padded grid.
    fn grid(&self) -> usize {
        self.h_out() * self.row()
    }
    fn taps(&self) -> usize {
        self.kh * self.kw
    }
    fn tap_offset(&self, tap: usize) -> usize {
        (tap / self.kw) * self.row() + tap % self.kw
    }
    fn x_len(&self) -> usize {
        self.c_in * self.h * self.w
    }
    fn y_len(&self) -> usize {
        self.c_out * self.h_out() * self.w_out()
    }
    /// The convolution whose output is this one's input gradient: the output gradient padded
    /// by `k - 1 - p`, convolved with the weights flipped and transposed. `None` when the
    /// padding exceeds `k - 1`.
    #[cfg_attr(not(all(target_arch = "x86_64", feature = "std")), allow(dead_code))]
    fn transposed(&self) -> Option<Geometry> {
        (self.ph < self.kh && self.pw < self.kw).then(|| Geometry {
            batch: self.batch,
            c_in: self.c_out,
            c_out: self.c_in,
            h: self.h_out(),
            w: self.w_out(),
            kh: self.kh,
            kw: self.kw,
            ph: self.kh - 1 - self.ph,
            pw: self.kw - 1 - self.pw,
        })
    }
}

/// The geometry when this path applies: f32, stride 1, dilation 1, one group, symmetric padding,
/// a kernel that fits the padded input. 1×1 kernels too: upstream's 1×1 forward is fast, but
/// its backward passes (a convolution with an image-sized kernel for the weight gradient) ran
/// on one thread.
fn geometry(x: &Shape, weight: &Shape, dtype: DType, options: &ConvOptions<2>) -> Option<Geometry> {
    if dtype != DType::F32
        || options.stride != [1, 1]
        || options.dilation != [1, 1]
        || options.groups != 1
        || options.is_asymmetric()
    {
        return None;
    }
    let (x, weight) = (x.as_slice(), weight.as_slice());
    if x.len() != 4 || weight.len() != 4 || x[1] != weight[1] {
        return None;
    }
    let [ph, pw] = options.padding_begin();
    let g = Geometry {
        batch: x[0],
        c_in: x[1],
        c_out: weight[0],
        h: x[2],
        w: x[3],
        kh: weight[2],
        kw: weight[3],
        ph,
        pw,
    };
    let fits = g.kh <= g.h + 2 * ph && g.kw <= g.w + 2 * pw;
    let useful = g.batch > 0 && g.c_in > 0 && g.c_out > 0;
    (fits && useful).then_some(g)
}

/// The geometry of this convolution when this path takes it (`conv2d` and both backward
/// passes), `None` when upstream's code should.
pub fn plan(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> Option<Geometry> {
    if x.dtype() != weight.dtype() {
        return None;
    }
    geometry(
        x.layout().shape(),
        weight.layout().shape(),
        x.dtype(),
        options,
    )
}

/// One image's channels, zero-padded into planes: written once, borders and interior in order
/// (no zero fill of the whole buffer first).
fn pad_planes(g: &Geometry, image: &[f32], channels: usize) -> Vec<f32> {
    let (row, plane) = (g.row(), g.plane());
    let mut p = Vec::with_capacity(channels * plane);
    for c in 0..channels {
        p.resize(p.len() + g.ph * row, 0.0);
        for y in 0..g.h {
            p.resize(p.len() + g.pw, 0.0);
            p.extend_from_slice(&image[(c * g.h + y) * g.w..][..g.w]);
            p.resize(p.len() + row - g.w - g.pw, 0.0);
        }
        p.resize((c + 1) * plane, 0.0);
    }
    p
}

/// One image's output gradient on the padded grid, zero in the garbage columns.
fn grid_of(g: &Geometry, dy: &[f32]) -> Vec<f32> {
    let (row, h_out, w_out) = (g.row(), g.h_out(), g.w_out());
    let mut d = vec![0.0f32; g.c_out * g.grid()];
    for c in 0..g.c_out {
        for y in 0..h_out {
            d[c * g.grid() + y * row..][..w_out]
                .copy_from_slice(&dy[(c * h_out + y) * w_out..][..w_out]);
        }
    }
    d
}

/// `dst[m × n] (+)= lhs[m × k] · rhs[k × n]`, strides in elements (row stride, column stride).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    rhs_strides: (usize, usize),
    parallelism: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_strides.1 as isize,
            dst_strides.0 as isize,
            accumulate,
            lhs,
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs,
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// An image's slice of a [`per_image`] buffer, not yet written.
pub(super) type Slot<'a> = &'a mut [MaybeUninit<f32>];

/// A new `[batch × per]` buffer, filled by `f(image, out)` for every image, each writing its
/// own `out` slice: images in parallel when there are enough of them, otherwise one at a time
/// with a parallel GEMM. Nothing is zeroed first: every filler writes each value once (a zero
/// fill of every convolution's output was a few percent of a training step).
///
/// # Safety
/// `f` writes every value of the slice it is given.
pub(super) unsafe fn per_image<F>(batch: usize, per: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, Slot<'_>, gemm::Parallelism) + Send + Sync,
{
    let mut out: Vec<f32> = Vec::with_capacity(batch * per);
    let slots = &mut out.spare_capacity_mut()[..batch * per];
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        if batch >= rayon::current_num_threads() {
            slots
                .par_chunks_mut(per)
                .enumerate()
                .for_each(|(b, o)| f(b, o, gemm::Parallelism::None));
        } else {
            for (b, o) in slots.chunks_mut(per).enumerate() {
                f(b, o, gemm::Parallelism::Rayon(0));
            }
        }
    }
    #[cfg(not(feature = "rayon"))]
    for (b, o) in slots.chunks_mut(per).enumerate() {
        f(b, o, gemm::Parallelism::None);
    }
    // SAFETY: the `batch` slices of `per` values cover the buffer, and `f` wrote each (the
    // caller's promise).
    unsafe { out.set_len(batch * per) };
    out
}

/// `dst` written with `src`'s values.
fn write_slice(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v);
    }
}

/// One image's output from the padded grid `acc[c_out × grid]`: the valid columns, plus bias.
fn crop_grid(g: &Geometry, acc: &[f32], o: Slot<'_>, bias: Option<&[f32]>) {
    let (row, grid, h_out, w_out) = (g.row(), g.grid(), g.h_out(), g.w_out());
    for c in 0..g.c_out {
        let add = bias.map_or(0.0, |bs| bs[c]);
        for y in 0..h_out {
            let src = &acc[c * grid + y * row..][..w_out];
            let dst = &mut o[(c * h_out + y) * w_out..][..w_out];
            for (d, s) in dst.iter_mut().zip(src) {
                d.write(s + add);
            }
        }
    }
}

/// Runs `f(i)` for `i < count`, in parallel when `par` says the caller is not already.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
pub(super) fn for_each_part<F: Fn(usize) + Send + Sync>(
    count: usize,
    par: gemm::Parallelism,
    f: F,
) {
    #[cfg(feature = "rayon")]
    if let gemm::Parallelism::Rayon(_) = par {
        use rayon::prelude::*;
        (0..count).into_par_iter().for_each(f);
        return;
    }
    let _ = par;
    (0..count).for_each(f);
}

/// A pointer that parts running on other threads write through, each to its own range.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: every user writes a range no other part touches (see `for_each_part` callers).
#[cfg(all(target_arch = "x86_64", feature = "std"))]
unsafe impl<T> Send for Shared<T> {}
#[cfg(all(target_arch = "x86_64", feature = "std"))]
unsafe impl<T> Sync for Shared<T> {}
#[cfg(all(target_arch = "x86_64", feature = "std"))]
impl<T> Shared<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// One image's output `o[c_out × h_out × w_out]` (plus bias) from its padded planes `p`, by the
/// AVX-512 kernel, which stores the valid columns straight into `o`.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn conv_avx512(
    g: &Geometry,
    p: &[f32],
    packed: &[f32],
    o: Slot<'_>,
    bias: Option<&[f32]>,
    par: gemm::Parallelism,
) {
    use super::conv2d_stride1_avx512::{CHUNK, Out, Shape, conv_grid};
    let offsets: Vec<usize> = (0..g.taps()).map(|t| g.tap_offset(t)).collect();
    let s = Shape {
        c_out: g.c_out,
        c_in: g.c_in,
        plane: g.plane(),
        grid: g.grid(),
        row: g.row(),
        w_out: g.w_out(),
    };
    let plane = g.h_out() * g.w_out();
    assert!(p.len() >= s.c_in * s.plane && o.len() == s.c_out * plane);
    assert!(bias.is_none_or(|b| b.len() >= s.c_out));
    let out = Shared(o.as_mut_ptr().cast::<f32>());
    for_each_part(s.grid.div_ceil(CHUNK), par, |chunk| {
        let out = Out {
            ptr: out.get(),
            plane,
            bias,
        };
        // SAFETY: sizes asserted above, `packed` was packed for this geometry, and each chunk
        // writes the outputs of its own grid positions.
        unsafe { conv_grid(s, &offsets, p.as_ptr(), packed.as_ptr(), out, chunk) };
    });
}

/// The Winograd kernel that takes this convolution, if one does: 3×3, a shape where it is
/// faster (see `Tiles::fit`), and a kernel for this CPU not turned off.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn winograd_kernel(g: &Geometry) -> Option<super::conv2d_winograd::Kernel> {
    ((g.kh, g.kw) == (3, 3))
        .then(|| super::conv2d_winograd::Kernel::chosen(&tiles(g)))
        .flatten()
}

/// This convolution's sizes as the Winograd kernels see them.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn tiles(g: &Geometry) -> super::conv2d_winograd::Tiles {
    super::conv2d_winograd::Tiles {
        c_in: g.c_in,
        c_out: g.c_out,
        plane: g.plane(),
        row: g.row(),
        h_out: g.h_out(),
        w_out: g.w_out(),
    }
}

/// One image's output `o[c_out × h_out × w_out]` (plus bias) from its padded planes `p`, by
/// Winograd in blocks of tile rows, with the weights `packed` for `kernel`.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn winograd(
    g: &Geometry,
    kernel: super::conv2d_winograd::Kernel,
    p: &[f32],
    packed: &[f32],
    o: Slot<'_>,
    bias: Option<&[f32]>,
    par: gemm::Parallelism,
) {
    use super::conv2d_winograd::Out;
    let s = tiles(g);
    let plane = s.h_out * s.w_out;
    assert!(s.row >= s.w_out + 2 && s.plane >= (s.h_out + 2) * s.row + 2);
    assert!(p.len() >= s.c_in * s.plane && o.len() == s.c_out * plane);
    assert!(packed.len() == kernel.packed_len(s.c_out, s.c_in));
    assert!(bias.is_none_or(|b| b.len() >= s.c_out));
    let out = Shared(o.as_mut_ptr().cast::<f32>());
    let rows = kernel.rows_per_block(&s);
    for_each_part(kernel.tile_rows(&s).div_ceil(rows), par, |i| {
        let mut scratch: Vec<f32> = Vec::with_capacity(kernel.scratch(&s));
        let out = Out {
            ptr: out.get(),
            plane,
            bias,
        };
        // SAFETY: sizes asserted above, `kernel` is one this CPU runs (`Kernel::chosen`);
        // every value of `scratch` is written before it is read; each block writes its own
        // output rows.
        unsafe {
            kernel.block(
                s,
                p.as_ptr(),
                packed.as_ptr(),
                out,
                i * rows,
                scratch.as_mut_ptr(),
            )
        };
    });
}

/// One image's 3×3 weight gradient in Winograd's transformed domain (`m[elements][c_out ×
/// c_in]`, see the kernels' `weight_gradient`) from its padded planes `p` and output gradient
/// `dy`, by the AVX2 kernels (F(3×3, 4×4) for `Kernel::Avx2Large`, else F(3×3, 2×2)), block
/// of tile rows after block.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn winograd_weight(
    g: &Geometry,
    kernel: Kernel,
    p: &[f32],
    dy: &[f32],
    m: Slot<'_>,
    par: gemm::Parallelism,
) {
    use super::{conv2d_winograd_avx2 as small, conv2d_winograd4_avx2 as big};
    let s = tiles(g);
    assert!(s.row >= s.w_out + 2 && s.plane >= (s.h_out + 2) * s.row + 2);
    assert!(p.len() >= s.c_in * s.plane && dy.len() == s.c_out * s.h_out * s.w_out);
    let large = kernel == Kernel::Avx2Large;
    let (scratch, rows) = if large {
        (big::weight_scratch(&s), big::weight_rows_per_block(&s))
    } else {
        (small::weight_scratch(&s), s.weight_rows_per_block())
    };
    assert!(m.len() == kernel.elements() * s.c_out * s.c_in);
    let mut scratch: Vec<f32> = Vec::with_capacity(scratch);
    let (m, scratch) = (m.as_mut_ptr().cast::<f32>(), scratch.as_mut_ptr());
    for (i, first) in (0..kernel.tile_rows(&s)).step_by(rows).enumerate() {
        // SAFETY: sizes asserted above; `winograd_kernel` chose these AVX2 kernels for these
        // sizes, so this CPU has them and they fit; every value of `scratch` is written before
        // it is read; the first block overwrites `m`.
        unsafe {
            if large {
                big::weight_block(s, p.as_ptr(), dy.as_ptr(), first, scratch, m, i > 0, par)
            } else {
                small::weight_block(s, p.as_ptr(), dy.as_ptr(), first, scratch, m, i > 0, par)
            }
        };
    }
}

/// The weight gradient in Winograd's transformed domain (F(3×3, 2×2), as [`winograd_weight`])
/// of the images `images` together, each image smaller than a block of it (see
/// `conv2d_winograd_avx2::images_per_weight_block`).
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn winograd_weight_images(
    g: &Geometry,
    xs: &[f32],
    dys: &[f32],
    images: core::ops::Range<usize>,
    m: Slot<'_>,
    par: gemm::Parallelism,
) {
    use super::conv2d_winograd_avx2 as small;
    let s = tiles(g);
    assert!(s.row >= s.w_out + 2 && s.plane >= (s.h_out + 2) * s.row + 2);
    assert!(m.len() == super::conv2d_winograd::ELEMENTS * s.c_out * s.c_in);
    let planes: Vec<Vec<f32>> = images
        .clone()
        .map(|b| pad_planes(g, &xs[b * g.x_len()..][..g.x_len()], g.c_in))
        .collect();
    let pairs: Vec<(*const f32, *const f32)> = images
        .zip(&planes)
        .map(|(b, p)| (p.as_ptr(), dys[b * g.y_len()..][..g.y_len()].as_ptr()))
        .collect();
    let mut scratch: Vec<f32> = Vec::with_capacity(small::weight_images_scratch(&s, pairs.len()));
    // SAFETY: sizes asserted above and sliced from whole images; `winograd_kernel` chose the
    // AVX2 kernels for these sizes; every value of `scratch` is written before it is read, and
    // every value of `m` is overwritten.
    unsafe {
        small::weight_images(
            s,
            &pairs,
            scratch.as_mut_ptr(),
            m.as_mut_ptr().cast::<f32>(),
            par,
        )
    };
}

fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(shape)),
        DType::F32,
    )
}

/// `conv2d(x, weight) + bias`.
pub fn forward(
    g: Geometry,
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let weight = weight.to_contiguous();
    let bias = bias.map(|b| b.to_contiguous());
    let (xs, ws): (&[f32], &[f32]) = (x.storage(), weight.storage());
    let bs: Option<&[f32]> = bias.as_ref().map(|b| b.storage());
    let (grid, plane, taps) = (g.grid(), g.plane(), g.taps());
    let (h_out, w_out) = (g.h_out(), g.w_out());
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    let transformed = winograd_kernel(&g).map(|kernel| {
        let packed = kernel.pack_weights(g.c_out, g.c_in, |o, c| {
            core::array::from_fn(|tap| ws[(o * g.c_in + c) * 9 + tap])
        });
        (kernel, packed)
    });
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    let packed = (transformed.is_none() && super::conv2d_stride1_avx512::available()).then(|| {
        let k_len = g.c_in * taps;
        super::conv2d_stride1_avx512::pack(g.c_out, k_len, |o, row| {
            row.copy_from_slice(&ws[o * k_len..][..k_len])
        })
    });
    let fill = |b: usize, o: Slot<'_>, par: gemm::Parallelism| {
        let p = pad_planes(&g, &xs[b * g.x_len()..][..g.x_len()], g.c_in);
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if let Some((kernel, packed)) = &transformed {
            winograd(&g, *kernel, &p, packed, o, bs, par);
            return;
        }
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if let Some(packed) = &packed {
            conv_avx512(&g, &p, packed, o, bs, par);
            return;
        }
        let mut acc = vec![0.0f32; g.c_out * grid];
        for tap in 0..taps {
            // acc[c_out × grid] += W[:, :, tap] · P[:, offset ..]
            unsafe {
                gemm_f32(
                    g.c_out,
                    grid,
                    g.c_in,
                    acc.as_mut_ptr(),
                    (grid, 1),
                    tap > 0,
                    ws.as_ptr().add(tap),
                    (g.c_in * taps, taps),
                    p.as_ptr().add(g.tap_offset(tap)),
                    (plane, 1),
                    par,
                );
            }
        }
        crop_grid(&g, &acc, o, bs);
    };
    // SAFETY: the AVX-512 kernel stores every output position; on the GEMM path `crop_grid`
    // writes every value.
    let out = unsafe { per_image(g.batch, g.y_len(), fill) };
    tensor(out, vec![g.batch, g.c_out, h_out, w_out])
}

/// The gradient of `conv2d` with respect to `x`.
pub fn x_backward(g: Geometry, weight: FlexTensor, output_grad: FlexTensor) -> FlexTensor {
    let weight = weight.to_contiguous();
    let output_grad = output_grad.to_contiguous();
    let (ws, dys): (&[f32], &[f32]) = (weight.storage(), output_grad.storage());
    let (row, grid, plane, taps) = (g.row(), g.grid(), g.plane(), g.taps());
    // dX = conv(dY padded by k - 1 - p, W with in/out swapped and taps reversed).
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if let Some((t, kernel)) = g.transposed().and_then(|t| Some((t, winograd_kernel(&t)?))) {
        let packed = kernel.pack_weights(t.c_out, t.c_in, |ci, co| {
            core::array::from_fn(|tap| ws[(co * g.c_in + ci) * 9 + 8 - tap])
        });
        let fill = |b: usize, o: Slot<'_>, par: gemm::Parallelism| {
            let p = pad_planes(&t, &dys[b * g.y_len()..][..g.y_len()], t.c_in);
            winograd(&t, kernel, &p, &packed, o, None, par);
        };
        // SAFETY: the Winograd blocks store every input position.
        let dx = unsafe { per_image(g.batch, g.x_len(), fill) };
        return tensor(dx, vec![g.batch, g.c_in, g.h, g.w]);
    }
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if let Some(t) = g
        .transposed()
        .filter(|_| super::conv2d_stride1_avx512::available())
    {
        let packed = super::conv2d_stride1_avx512::pack(t.c_out, t.c_in * taps, |ci, row| {
            for (co, taps_of) in row.chunks_exact_mut(taps).enumerate() {
                let w = &ws[(co * g.c_in + ci) * taps..][..taps];
                for (v, &wv) in taps_of.iter_mut().zip(w.iter().rev()) {
                    *v = wv;
                }
            }
        });
        let fill = |b: usize, o: Slot<'_>, par: gemm::Parallelism| {
            let p = pad_planes(&t, &dys[b * g.y_len()..][..g.y_len()], t.c_in);
            conv_avx512(&t, &p, &packed, o, None, par);
        };
        // SAFETY: the AVX-512 kernel stores every input position.
        let dx = unsafe { per_image(g.batch, g.x_len(), fill) };
        return tensor(dx, vec![g.batch, g.c_in, g.h, g.w]);
    }
    let fill = |b: usize, o: Slot<'_>, par: gemm::Parallelism| {
        let d = grid_of(&g, &dys[b * g.y_len()..][..g.y_len()]);
        let mut dp = vec![0.0f32; g.c_in * plane];
        for tap in 0..taps {
            // dP[:, offset ..] += W[:, :, tap]ᵀ · dY
            unsafe {
                gemm_f32(
                    g.c_in,
                    grid,
                    g.c_out,
                    dp.as_mut_ptr().add(g.tap_offset(tap)),
                    (plane, 1),
                    true,
                    ws.as_ptr().add(tap),
                    (taps, g.c_in * taps),
                    d.as_ptr(),
                    (grid, 1),
                    par,
                );
            }
        }
        for c in 0..g.c_in {
            for y in 0..g.h {
                write_slice(
                    &mut o[(c * g.h + y) * g.w..][..g.w],
                    &dp[c * plane + (y + g.ph) * row + g.pw..][..g.w],
                );
            }
        }
    };
    // SAFETY: every row of every channel is copied out of `dp`.
    let dx = unsafe { per_image(g.batch, g.x_len(), fill) };
    tensor(dx, vec![g.batch, g.c_in, g.h, g.w])
}

/// The gradient of `conv2d` with respect to `weight`.
pub fn weight_backward(g: Geometry, x: FlexTensor, output_grad: FlexTensor) -> FlexTensor {
    let x = x.to_contiguous();
    let output_grad = output_grad.to_contiguous();
    let (xs, dys): (&[f32], &[f32]) = (x.storage(), output_grad.storage());
    let (grid, plane, taps) = (g.grid(), g.plane(), g.taps());
    let w_len = g.c_out * g.c_in * taps;
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if super::conv2d_stride1_avx512::available() {
        // The broadcast kernel for 3×3 kernels, except with few input channels and one vector
        // of output channels: it splits an image into a piece per input channel or two, so the
        // first layer (1 → 16 maps at 128 px) took 0.9–1.1 ms against 0.3–0.4 ms.
        if (g.kh, g.kw) == (3, 3) && (g.c_out > 16 || g.c_in >= 16) {
            return tensor(
                weight_grad_3x3_avx512(&g, xs, dys),
                vec![g.c_out, g.c_in, 3, 3],
            );
        }
        // One gradient per image, summed in batch order by `sum_images`.
        return sum_images(&g, &weight_grads_avx512(&g, xs, dys));
    }
    // Winograd only where the alternative is the GEMM path below (not measured against the
    // AVX-512 kernels above): F(3×3, 4×4) where the forward pass takes 4×4 tiles.
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if let Some(kernel @ (Kernel::Avx2 | Kernel::Avx2Large)) = winograd_kernel(&g) {
        let large = kernel == Kernel::Avx2Large;
        let m_len = kernel.elements() * g.c_out * g.c_in;
        // Small images (F(2×2)) go several to a block, summed over all their tiles at once.
        let group = if large {
            1
        } else {
            super::conv2d_winograd_avx2::images_per_weight_block(&tiles(&g), g.batch)
        };
        let fill = |i: usize, m: Slot<'_>, par: gemm::Parallelism| {
            if group > 1 {
                let images = i * group..((i + 1) * group).min(g.batch);
                return winograd_weight_images(&g, xs, dys, images, m, par);
            }
            let p = pad_planes(&g, &xs[i * g.x_len()..][..g.x_len()], g.c_in);
            winograd_weight(&g, kernel, &p, &dys[i * g.y_len()..][..g.y_len()], m, par);
        };
        // SAFETY: the first block of tile rows (or the group's one block) writes every value
        // of the slot.
        let per = unsafe { per_image(g.batch.div_ceil(group), m_len, fill) };
        let m = sum_in_batch_order(&per, m_len);
        let dw = if large {
            use super::conv2d_winograd4_avx2::{WEIGHT_AT, WEIGHT_SCALE};
            super::conv2d_winograd::weight_gradient(&m, g.c_out, g.c_in, WEIGHT_SCALE, WEIGHT_AT)
        } else {
            use super::conv2d_winograd::{WEIGHT_AT, WEIGHT_SCALE};
            super::conv2d_winograd::weight_gradient(&m, g.c_out, g.c_in, WEIGHT_SCALE, WEIGHT_AT)
        };
        return tensor(dw, vec![g.c_out, g.c_in, 3, 3]);
    }
    let fill = |b: usize, dw: Slot<'_>, par: gemm::Parallelism| {
        let p = pad_planes(&g, &xs[b * g.x_len()..][..g.x_len()], g.c_in);
        let d = grid_of(&g, &dys[b * g.y_len()..][..g.y_len()]);
        for tap in 0..taps {
            // dW[:, :, tap] = dY[c_out × grid] · P[:, offset ..]ᵀ
            unsafe {
                gemm_f32(
                    g.c_out,
                    g.c_in,
                    grid,
                    dw.as_mut_ptr().cast::<f32>().add(tap),
                    (g.c_in * taps, taps),
                    false,
                    d.as_ptr(),
                    (grid, 1),
                    p.as_ptr().add(g.tap_offset(tap)),
                    (1, plane),
                    par,
                );
            }
        }
    };
    // SAFETY: each tap's GEMM (not accumulating) writes that tap's value of every (c_out, c_in) pair.
    let per = unsafe { per_image(g.batch, w_len, fill) };
    sum_images(&g, &per)
}

/// A 3×3 weight gradient by [`weight_3x3_rows`]: per image, the output gradient laid out as
/// vectors of 16 channels per position, then bands of rows, each band through every piece of
/// the gradient while it is in cache. The images' accumulators are summed in batch order as
/// they lie (contiguous), then written into the weight's layout once (written per image, the
/// scattered stores were 3.5 % of a training step).
///
/// [`weight_3x3_rows`]: super::conv2d_stride1_avx512::weight_3x3_rows
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn weight_grad_3x3_avx512(g: &Geometry, xs: &[f32], dys: &[f32]) -> Vec<f32> {
    use super::conv2d_stride1_avx512::{
        Weight3x3, weight_3x3_pieces, weight_3x3_rows, write_3x3_piece,
    };
    use core::arch::x86_64::{__m512, _mm512_setzero_ps};
    let s = Weight3x3 {
        c_out: g.c_out,
        c_in: g.c_in,
        h_out: g.h_out(),
        w_out: g.w_out(),
        row: g.row(),
        plane: g.plane(),
    };
    let pieces = weight_3x3_pieces(s);
    let offsets: Vec<usize> = pieces
        .iter()
        .scan(0, |at, piece| {
            let start = *at;
            *at += piece.accumulators();
            Some(start)
        })
        .collect();
    let accumulators: usize = pieces.iter().map(|piece| piece.accumulators()).sum();
    let positions = s.h_out * s.w_out;
    // About 256 positions per band: the band's output gradient and input rows stay in L1/L2
    // while every piece passes over them.
    let band = (256 / s.w_out).max(1);
    assert!(2 * s.row + 2 + (s.h_out - 1) * s.row + s.w_out <= s.plane);
    let fill = |b: usize, dw: Slot<'_>, par: gemm::Parallelism| {
        let p = pad_planes(g, &xs[b * g.x_len()..][..g.x_len()], g.c_in);
        let d = vectors_of_16(&dys[b * g.y_len()..][..g.y_len()], g.c_out, positions);
        assert!(p.len() >= g.c_in * s.plane && d.len() == s.vectors() * positions * 16);
        // SAFETY: an all-zero vector is a valid __m512.
        let mut acc: Vec<__m512> = vec![unsafe { _mm512_setzero_ps() }; accumulators];
        let shared = Shared(acc.as_mut_ptr());
        for y0 in (0..s.h_out).step_by(band) {
            let rows = y0..(y0 + band).min(s.h_out);
            for_each_part(pieces.len(), par, |i| {
                let piece = pieces[i];
                // SAFETY: each piece has its own accumulators; sizes asserted above.
                unsafe {
                    let acc = core::slice::from_raw_parts_mut(
                        shared.get().add(offsets[i]),
                        piece.accumulators(),
                    );
                    weight_3x3_rows(s, piece, rows.clone(), d.as_ptr(), p.as_ptr(), acc);
                }
            });
        }
        // SAFETY: a vector is 16 f32 values.
        let values =
            unsafe { core::slice::from_raw_parts(acc.as_ptr().cast::<f32>(), acc.len() * 16) };
        dw.write_copy_of_slice(values);
    };
    // SAFETY: each image copies all its accumulators.
    let per = unsafe { per_image(g.batch, accumulators * 16, fill) };
    let sums = sum_in_batch_order(&per, accumulators * 16);
    let mut dw = vec![0.0f32; g.c_out * g.c_in * 9];
    for (piece, &at) in pieces.iter().zip(&offsets) {
        write_3x3_piece(s, *piece, &sums[at * 16..], &mut dw);
    }
    dw
}

/// One image's `[channels][positions]` values as `[vector][position][16]`: 16 channels per
/// vector, zeros past `channels`; 16 positions at a time, so the block being written stays in
/// cache.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn vectors_of_16(values: &[f32], channels: usize, positions: usize) -> Vec<f32> {
    let vectors = channels.div_ceil(16);
    let mut out = vec![0.0f32; vectors * positions * 16];
    for (v, block) in out.chunks_exact_mut(positions * 16).enumerate() {
        let lanes = 16.min(channels - 16 * v);
        for (q0, rows) in (0..positions).step_by(16).zip(block.chunks_mut(16 * 16)) {
            for l in 0..lanes {
                let column = &values[(16 * v + l) * positions + q0..][..rows.len() / 16];
                for (row, &value) in rows.chunks_exact_mut(16).zip(column) {
                    row[l] = value;
                }
            }
        }
    }
    out
}

/// Each image's weight gradient into its slice of `per`, by the AVX-512 kernel.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn weight_grads_avx512(g: &Geometry, xs: &[f32], dys: &[f32]) -> Vec<f32> {
    use super::conv2d_stride1_avx512::{WM, WeightShape, weight_grid};
    let (plane, taps) = (g.plane(), g.taps());
    // Step k = (input channel, tap) starts at its plane plus the tap's offset.
    let starts: Vec<usize> = (0..g.c_in * taps)
        .map(|k| (k / taps) * plane + g.tap_offset(k % taps))
        .collect();
    let s = WeightShape {
        c_out: g.c_out,
        h_out: g.h_out(),
        w_out: g.w_out(),
        row: g.row(),
    };
    let fill = |b: usize, dw: Slot<'_>, par: gemm::Parallelism| {
        let p = pad_planes(g, &xs[b * g.x_len()..][..g.x_len()], g.c_in);
        let d = &dys[b * g.y_len()..][..g.y_len()];
        // Every start + (h_out - 1)·row + w_out <= c_in·plane (the last tap's offset is
        // (kh - 1)·row + kw - 1, and plane covers (h + 2ph)·row + kw).
        assert!(p.len() >= g.c_in * plane && d.len() == g.y_len());
        let dw = Shared(dw.as_mut_ptr().cast::<f32>());
        for_each_part(g.c_out.div_ceil(WM), par, |block| {
            // SAFETY: sizes checked above; each block writes its own rows of dw
            // (c_out·starts.len() values per image).
            unsafe { weight_grid(s, &starts, d.as_ptr(), p.as_ptr(), dw.get(), block) };
        });
    };
    // SAFETY: each block writes all `starts.len()` sums of its rows; the blocks cover `c_out`.
    unsafe { per_image(g.batch, g.c_out * starts.len(), fill) }
}

/// The per-image weight gradients summed in batch order, as the weight's tensor.
fn sum_images(g: &Geometry, per: &[f32]) -> FlexTensor {
    let dw = sum_in_batch_order(per, g.c_out * g.c_in * g.taps());
    tensor(dw, vec![g.c_out, g.c_in, g.kh, g.kw])
}

/// `per` (one `w_len` gradient per image) summed in batch order; pieces of the gradient in
/// parallel (each piece's sum in the same order whatever the split).
pub(super) fn sum_in_batch_order(per: &[f32], w_len: usize) -> Vec<f32> {
    let mut dw = per[..w_len].to_vec();
    let add_images = |start: usize, piece: &mut [f32]| {
        for image in per.chunks_exact(w_len).skip(1) {
            for (a, v) in piece.iter_mut().zip(&image[start..]) {
                *a += v;
            }
        }
    };
    const PIECE: usize = 4096;
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        dw.par_chunks_mut(PIECE)
            .enumerate()
            .for_each(|(i, piece)| wide1(piece, |piece| add_images(i * PIECE, piece)));
    }
    #[cfg(not(feature = "rayon"))]
    for (i, piece) in dw.chunks_mut(PIECE).enumerate() {
        wide1(piece, |piece| add_images(i * PIECE, piece));
    }
    dw
}
