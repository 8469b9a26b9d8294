//! fedseg: f32 2D max pooling whose stride equals its kernel (the U-Net's 2×2 pooling), with
//! indices, one plane per task.
//!
//! Upstream runs every 2D pooling through its 3D code, which works out each window's valid
//! range (padding, dilation) again for every output value and branches on every comparison:
//! 12.5 ms for the U-Net's first pooling (batch 8, 16 maps, 128 px) on 2 cores. With the
//! windows tiling the input there is nothing to work out: each output reads its own
//! `kh × kw` tile, compared by selects (2×2 windows: 16 at a time with AVX-512, 8 with AVX2,
//! where the CPU has them).
//!
//! Same results as upstream: the first maximum in window order (rows, then columns) wins, a
//! NaN wins over any number (the last NaN of a window), and each index is the position within
//! its input plane (`y·w + x`), as `max_pool2d_backward` expects.

use alloc::vec;

use burn_backend::DType;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

/// The kernel when this path applies: f32, 4D, stride = kernel, no padding, dilation 1, and
/// windows that tile the input exactly when `ceil_mode` would otherwise add partial ones.
pub fn plan(
    x: &FlexTensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
) -> Option<[usize; 2]> {
    let shape = x.layout().shape();
    if x.dtype() != DType::F32
        || shape.num_dims() != 4
        || kernel != stride
        || padding != [0, 0]
        || dilation != [1, 1]
        || kernel.contains(&0)
    {
        return None;
    }
    let (h, w) = (shape[2], shape[3]);
    let fits = h >= kernel[0] && w >= kernel[1];
    let whole = h % kernel[0] == 0 && w % kernel[1] == 0;
    (fits && (whole || !ceil_mode)).then_some(kernel)
}

/// The pooled values and, for each, the index of the input value it took.
pub fn forward(x: FlexTensor, kernel: [usize; 2]) -> (FlexTensor, FlexTensor) {
    let x = x.to_contiguous();
    let shape = x.layout().shape();
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let [kh, kw] = kernel;
    let (oh, ow) = (h / kh, w / kw);
    let (plane_in, plane_out) = (h * w, oh * ow);
    let xs: &[f32] = x.storage();
    let mut out = vec![0.0f32; n * c * plane_out];
    let mut idx = vec![0i64; n * c * plane_out];
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    let vectors = {
        use crate::ops::wide::{VectorWidth, usable};
        let pairs = kernel == [2, 2] && plane_in <= i32::MAX as usize;
        (
            pairs && usable(VectorWidth::Avx512),
            pairs && usable(VectorWidth::Avx2),
        )
    };
    let pool_plane = |p: usize, o: &mut [f32], ix: &mut [i64]| {
        let src = &xs[p * plane_in..][..plane_in];
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        match vectors {
            // SAFETY: the CPU has AVX-512F (checked above); `src` holds h·w values, `o` and
            // `ix` (h/2)·(w/2).
            (true, _) => return unsafe { pool_2x2_avx512(src, h, w, o, ix) },
            // SAFETY: as above, with AVX2.
            (false, true) => return unsafe { pool_2x2_avx2(src, h, w, o, ix) },
            _ => {}
        }
        pool_tiles(src, w, kernel, [oh, ow], o, ix);
    };
    if plane_out > 0 {
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            out.par_chunks_mut(plane_out)
                .zip(idx.par_chunks_mut(plane_out))
                .enumerate()
                .for_each(|(p, (o, ix))| pool_plane(p, o, ix));
        }
        #[cfg(not(feature = "rayon"))]
        for (p, (o, ix)) in out
            .chunks_mut(plane_out)
            .zip(idx.chunks_mut(plane_out))
            .enumerate()
        {
            pool_plane(p, o, ix);
        }
    }
    let out_shape = Shape::from(vec![n, c, oh, ow]);
    (
        FlexTensor::new(
            Bytes::from_elems(out),
            Layout::contiguous(out_shape.clone()),
            DType::F32,
        ),
        FlexTensor::new(
            Bytes::from_elems(idx),
            Layout::contiguous(out_shape),
            DType::I64,
        ),
    )
}

/// One plane's `oh × ow` windows of `kh × kw`, window values in row-major order.
fn pool_tiles(
    src: &[f32],
    w: usize,
    [kh, kw]: [usize; 2],
    [oh, ow]: [usize; 2],
    o: &mut [f32],
    ix: &mut [i64],
) {
    for oy in 0..oh {
        for ox in 0..ow {
            let first = oy * kh * w + ox * kw;
            let (mut best, mut at) = (src[first], first);
            for ky in 0..kh {
                let row = first + ky * w;
                for (kx, &v) in src[row..][..kw].iter().enumerate() {
                    // Selects, not branches: on random activations a branch here is
                    // mispredicted about half the time.
                    let take = v > best || v.is_nan();
                    best = if take { v } else { best };
                    at = if take { row + kx } else { at };
                }
            }
            o[oy * ow + ox] = best;
            ix[oy * ow + ox] = at as i64;
        }
    }
}

/// [`pool_tiles`] for 2×2 windows, 16 outputs at a time: each pair of input rows is split into
/// the windows' four corners (even and odd columns), which are compared in window order.
///
/// # Safety
/// The CPU has AVX-512F; `src` holds `h·w` values, `o` and `ix` `(h/2)·(w/2)`.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx512f")]
unsafe fn pool_2x2_avx512(src: &[f32], h: usize, w: usize, o: &mut [f32], ix: &mut [i64]) {
    use core::arch::x86_64::*;
    let (oh, ow) = (h / 2, w / 2);
    assert!(src.len() >= h * w && o.len() >= oh * ow && ix.len() >= oh * ow);
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    let mask = |n: usize| -> u16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as u16
        }
    };
    for oy in 0..oh {
        let r0 = unsafe { src.as_ptr().add(2 * oy * w) };
        let r1 = unsafe { r0.add(w) };
        for ox in (0..ow).step_by(16) {
            let n = (ow - ox).min(16);
            // The first 2n values of each row from column 2·ox, in two vectors of 16.
            let (lo, hi) = (mask(2 * n), mask((2 * n).saturating_sub(16)));
            let load = |row: *const f32| unsafe {
                let a = _mm512_maskz_loadu_ps(lo, row.add(2 * ox));
                let b = _mm512_maskz_loadu_ps(hi, row.add(2 * ox + 16));
                (
                    _mm512_permutex2var_ps(a, even, b),
                    _mm512_permutex2var_ps(a, odd, b),
                )
            };
            let ((c00, c01), (c10, c11)) = (load(r0), load(r1));
            let (mut best, mut at) = (c00, _mm512_setzero_si512());
            for (v, offset) in [(c01, 1), (c10, w as i32), (c11, w as i32 + 1)] {
                let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best)
                    | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                best = _mm512_mask_blend_ps(take, best, v);
                at = _mm512_mask_blend_epi32(take, at, _mm512_set1_epi32(offset));
            }
            // Index in the plane: row 2·oy, column 2·(ox + lane), plus the corner's offset.
            let base = _mm512_set1_epi32((2 * oy * w + 2 * ox) as i32);
            let at = _mm512_add_epi32(_mm512_add_epi32(base, even), at);
            let m = mask(n);
            unsafe {
                _mm512_mask_storeu_ps(o.as_mut_ptr().add(oy * ow + ox), m, best);
                let dst = ix.as_mut_ptr().add(oy * ow + ox);
                let low = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(at));
                let high = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(at));
                _mm512_mask_storeu_epi64(dst, m as u8, low);
                _mm512_mask_storeu_epi64(dst.add(8), (m >> 8) as u8, high);
            }
        }
    }
}

/// [`pool_2x2_avx512`] with AVX2: 8 outputs at a time, masked loads and stores for a row's
/// last few. Splitting 16 values into even and odd columns with `shuffle_ps` leaves them in
/// the order 0 2 8 10 4 6 12 14 (it works within 128-bit lanes); the comparisons do not mind,
/// so only the results are put back in order.
///
/// # Safety
/// The CPU has AVX2; `src` holds `h·w` values, `o` and `ix` `(h/2)·(w/2)`.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx2")]
unsafe fn pool_2x2_avx2(src: &[f32], h: usize, w: usize, o: &mut [f32], ix: &mut [i64]) {
    use core::arch::x86_64::*;
    let (oh, ow) = (h / 2, w / 2);
    assert!(src.len() >= h * w && o.len() >= oh * ow && ix.len() >= oh * ow);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Lanes below `n` set (all bits), the rest clear.
    let mask = |n: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lanes);
    // Column of each shuffled lane's window (its even corner), relative to the first.
    let even = _mm256_setr_epi32(0, 2, 8, 10, 4, 6, 12, 14);
    // 64-bit pairs 0 2 1 3: the shuffled order back to column order.
    const ORDER: i32 = 0b11_01_10_00;
    for oy in 0..oh {
        let r0 = unsafe { src.as_ptr().add(2 * oy * w) };
        let r1 = unsafe { r0.add(w) };
        for ox in (0..ow).step_by(8) {
            let n = (ow - ox).min(8);
            // The first 2n values of each row from column 2·ox, in two vectors of 8; no
            // pointer is formed past the row when the second holds none.
            let (lo, hi) = (mask(2 * n), mask((2 * n).saturating_sub(8)));
            let load = |row: *const f32| unsafe {
                let a = _mm256_maskload_ps(row.add(2 * ox), lo);
                let b = if n > 4 {
                    _mm256_maskload_ps(row.add(2 * ox + 8), hi)
                } else {
                    _mm256_setzero_ps()
                };
                (
                    _mm256_shuffle_ps::<0b10_00_10_00>(a, b),
                    _mm256_shuffle_ps::<0b11_01_11_01>(a, b),
                )
            };
            let ((c00, c01), (c10, c11)) = (load(r0), load(r1));
            let (mut best, mut at) = (c00, _mm256_setzero_si256());
            for (v, offset) in [(c01, 1), (c10, w as i32), (c11, w as i32 + 1)] {
                let take = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(v, best),
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
                );
                best = _mm256_blendv_ps(best, v, take);
                at = _mm256_blendv_epi8(at, _mm256_set1_epi32(offset), _mm256_castps_si256(take));
            }
            // Index in the plane: row 2·oy, column 2·ox + the window's column, plus the
            // corner's offset; then both back in column order.
            let base = _mm256_set1_epi32((2 * oy * w + 2 * ox) as i32);
            let at = _mm256_add_epi32(_mm256_add_epi32(base, even), at);
            let best = _mm256_castpd_ps(_mm256_permute4x64_pd::<ORDER>(_mm256_castps_pd(best)));
            let at = _mm256_permute4x64_epi64::<ORDER>(at);
            let m = mask(n);
            unsafe {
                _mm256_maskstore_ps(o.as_mut_ptr().add(oy * ow + ox), m, best);
                let dst = ix.as_mut_ptr().add(oy * ow + ox);
                let wide = |half: __m128i| _mm256_cvtepi32_epi64(half);
                let (m_low, m_high) = (
                    wide(_mm256_castsi256_si128(m)),
                    wide(_mm256_extracti128_si256::<1>(m)),
                );
                _mm256_maskstore_epi64(dst, m_low, wide(_mm256_castsi256_si128(at)));
                if n > 4 {
                    _mm256_maskstore_epi64(
                        dst.add(4),
                        m_high,
                        wide(_mm256_extracti128_si256::<1>(at)),
                    );
                }
            }
        }
    }
}
