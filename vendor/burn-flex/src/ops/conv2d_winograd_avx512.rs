//! fedseg: the AVX-512 kernels of Winograd F(2×2, 3×3) (see `conv2d_winograd`). Vectors run
//! along 16 tiles of a row (8, half a vector, at 16 px); tails are masked.

use core::arch::x86_64::*;

use super::conv2d_stride1_avx512::{MR, lanes};
use super::conv2d_winograd::{ELEMENTS, Out, Tiles, stride};

/// The block's vectors of tiles: (tile row, first tile, tiles).
fn vectors(s: &Tiles, rows: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let across = s.across();
    (0..rows).flat_map(move |r| {
        (0..across)
            .step_by(16)
            .map(move |x0| (r, x0, 16.min(across - x0)))
    })
}

/// Values of scratch one block needs ([`block`]'s `scratch`).
pub fn scratch(s: &Tiles) -> usize {
    let tiles = s.rows_per_block() * s.across();
    ELEMENTS * (stride(s.c_in, tiles) + stride(s.c_out, tiles))
}

/// Output rows `2·first ..` (tile rows `first .. first + rows_per_block`) of the convolution
/// of the padded planes `p` by `packed` (from `pack_weights`).
///
/// # Safety
/// `p` holds `c_in` planes of `plane` values with `(h_out + 2)` rows of `row ≥ w_out + 2`;
/// `packed` comes from `pack_weights` with [`MR`] for these channel counts; `scratch` holds
/// [`scratch`] values; `out` holds `c_out` planes of `h_out·w_out` values, `bias` (if
/// any) `c_out` values, and no other thread writes these rows.
#[target_feature(enable = "avx512f")]
pub unsafe fn block(
    s: Tiles,
    p: *const f32,
    packed: *const f32,
    out: Out<'_>,
    first: usize,
    scratch: *mut f32,
) {
    let rows = s.rows_per_block().min(s.h_out / 2 - first);
    let tiles = rows * s.across();
    let v = scratch;
    let (vs, ms) = (stride(s.c_in, tiles), stride(s.c_out, tiles));
    let m = unsafe { scratch.add(ELEMENTS * vs) };
    let per = s.c_out.div_ceil(MR) * s.c_in * MR;
    unsafe {
        input_transform(s, p, first, rows, tiles, v, vs);
        for e in 0..ELEMENTS {
            element_gemm(s, tiles, v.add(e * vs), packed.add(e * per), m.add(e * ms));
        }
        output_transform(s, m, ms, first, rows, tiles, out);
    }
}

/// `V[e][c][tile] = (Bᵀ d B)[e]` for the block's tiles, `d` each tile's 4×4 input patch.
#[target_feature(enable = "avx512f")]
unsafe fn input_transform(
    s: Tiles,
    p: *const f32,
    first: usize,
    rows: usize,
    tiles: usize,
    v: *mut f32,
    vs: usize,
) {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let across = s.across();
    for c in 0..s.c_in {
        for (r, x0, n) in vectors(&s, rows) {
            // Columns 2·x0 .. 2·x0 + 2n + 2 of the tile row's four input rows; each row as its
            // columns 2t, 2t + 1, 2t + 2, 2t + 3 for the n tiles t.
            let mut t = [[_mm512_setzero_ps(); 4]; 4];
            for (i, t) in t.iter_mut().enumerate() {
                let src = unsafe { p.add(c * s.plane + (2 * (first + r) + i) * s.row + 2 * x0) };
                let load =
                    |at: *const f32, len: usize| unsafe { _mm512_maskz_loadu_ps(lanes(len), at) };
                let [a, b, c2, d2] = unsafe {
                    [
                        load(src, 2 * n + 2),
                        load(src.add(16), (2 * n + 2).saturating_sub(16)),
                        load(src.add(2), 2 * n),
                        load(src.add(18), (2 * n).saturating_sub(16)),
                    ]
                };
                let d = [
                    _mm512_permutex2var_ps(a, even, b),
                    _mm512_permutex2var_ps(a, odd, b),
                    _mm512_permutex2var_ps(c2, even, d2),
                    _mm512_permutex2var_ps(c2, odd, d2),
                ];
                // Bᵀ along the row.
                *t = [
                    _mm512_sub_ps(d[0], d[2]),
                    _mm512_add_ps(d[1], d[2]),
                    _mm512_sub_ps(d[2], d[1]),
                    _mm512_sub_ps(d[1], d[3]),
                ];
            }
            let at = r * across + x0;
            let keep = lanes(n);
            for j in 0..4 {
                // Bᵀ down the column.
                let col = [
                    _mm512_sub_ps(t[0][j], t[2][j]),
                    _mm512_add_ps(t[1][j], t[2][j]),
                    _mm512_sub_ps(t[2][j], t[1][j]),
                    _mm512_sub_ps(t[1][j], t[3][j]),
                ];
                for (i, value) in col.into_iter().enumerate() {
                    let e = 4 * i + j;
                    unsafe { _mm512_mask_storeu_ps(v.add(e * vs + c * tiles + at), keep, value) };
                }
            }
        }
    }
}

/// `M[o][tile] = Σ_c U[o][c] · V[c][tile]` for one tile element: blocks of [`MR`] output
/// channels × 48 tiles (fewer at the end), accumulated in registers through all input
/// channels.
#[target_feature(enable = "avx512f")]
unsafe fn element_gemm(s: Tiles, tiles: usize, v: *const f32, u: *const f32, m: *mut f32) {
    // Blocks of 3 vectors; 4 left over go as 2 + 2 (one vector alone loads a broadcast per
    // FMA, which halved the speed of a third of the 16-pixel layers' tiles).
    let vectors = tiles.div_ceil(16);
    let threes = if vectors % 3 == 1 && vectors > 3 {
        vectors / 3 - 1
    } else {
        vectors / 3
    };
    for block in 0..s.c_out.div_ceil(MR) {
        let rows = MR.min(s.c_out - block * MR);
        let w = unsafe { u.add(block * s.c_in * MR) };
        let m = unsafe { m.add(block * MR * tiles) };
        unsafe {
            for b in 0..threes {
                gemm_block::<3>(s.c_in, tiles, v, w, m, rows, 48 * b);
            }
            let mut t0 = 48 * threes;
            while t0 < tiles {
                if tiles - t0 > 16 {
                    gemm_block::<2>(s.c_in, tiles, v, w, m, rows, t0);
                    t0 += 32;
                } else {
                    gemm_block::<1>(s.c_in, tiles, v, w, m, rows, t0);
                    t0 += 16;
                }
            }
        }
    }
}

/// `rows × 16·NV` outputs of [`element_gemm`] from tile `t0`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gemm_block<const NV: usize>(
    c_in: usize,
    tiles: usize,
    v: *const f32,
    mut w: *const f32,
    m: *mut f32,
    rows: usize,
    t0: usize,
) {
    let masks: [__mmask16; NV] =
        core::array::from_fn(|i| lanes((tiles - t0).saturating_sub(16 * i)));
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for c in 0..c_in {
        let src = unsafe { v.add(c * tiles + t0) };
        let b: [__m512; NV] =
            core::array::from_fn(|i| unsafe { _mm512_maskz_loadu_ps(masks[i], src.add(16 * i)) });
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(unsafe { *w.add(r) });
            for i in 0..NV {
                acc[i] = _mm512_fmadd_ps(a, b[i], acc[i]);
            }
        }
        w = unsafe { w.add(MR) };
    }
    for (r, acc) in acc.iter().enumerate().take(rows) {
        let dst = unsafe { m.add(r * tiles + t0) };
        for i in 0..NV {
            unsafe { _mm512_mask_storeu_ps(dst.add(16 * i), masks[i], acc[i]) };
        }
    }
}

/// Outputs `Aᵀ M A` (plus bias) of the block's tiles, interleaved back into rows.
#[target_feature(enable = "avx512f")]
unsafe fn output_transform(
    s: Tiles,
    m: *const f32,
    ms: usize,
    first: usize,
    rows: usize,
    tiles: usize,
    out: Out<'_>,
) {
    let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let across = s.across();
    for o in 0..s.c_out {
        let bias = _mm512_set1_ps(out.bias.map_or(0.0, |b| b[o]));
        for (r, x0, n) in vectors(&s, rows) {
            let at = r * across + x0;
            let keep = lanes(n);
            let load =
                |e: usize| unsafe { _mm512_maskz_loadu_ps(keep, m.add(e * ms + o * tiles + at)) };
            // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] along each element row, then down.
            let mut t = [[_mm512_setzero_ps(); 2]; 4];
            for (i, t) in t.iter_mut().enumerate() {
                let e = [
                    load(4 * i),
                    load(4 * i + 1),
                    load(4 * i + 2),
                    load(4 * i + 3),
                ];
                *t = [
                    _mm512_add_ps(_mm512_add_ps(e[0], e[1]), e[2]),
                    _mm512_sub_ps(_mm512_sub_ps(e[1], e[2]), e[3]),
                ];
            }
            for y in 0..2 {
                let cols: [__m512; 2] = core::array::from_fn(|j| {
                    let v = if y == 0 {
                        _mm512_add_ps(_mm512_add_ps(t[0][j], t[1][j]), t[2][j])
                    } else {
                        _mm512_sub_ps(_mm512_sub_ps(t[1][j], t[2][j]), t[3][j])
                    };
                    _mm512_add_ps(v, bias)
                });
                let dst = unsafe {
                    out.ptr
                        .add(o * out.plane + (2 * (first + r) + y) * s.w_out + 2 * x0)
                };
                // The tiles' first 8 make this row's first 16 outputs, the next 8 the rest.
                unsafe {
                    _mm512_mask_storeu_ps(
                        dst,
                        lanes(2 * n),
                        _mm512_permutex2var_ps(cols[0], low, cols[1]),
                    );
                    _mm512_mask_storeu_ps(
                        dst.add(16),
                        lanes((2 * n).saturating_sub(16)),
                        _mm512_permutex2var_ps(cols[0], high, cols[1]),
                    );
                }
            }
        }
    }
}
