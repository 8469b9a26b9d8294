//! fedseg: the AVX2 + FMA kernels of Winograd F(2×2, 3×3) (see `conv2d_winograd`), for CPUs
//! without AVX-512, where the other 3×3 convolutions run on the portable GEMM path.
//!
//! Vectors run along 8 tiles of a row. Each tile row is padded to whole vectors in `V` and `M`
//! (the padding tiles are computed and dropped), so the GEMMs see only whole vectors; only the
//! input loads and output stores of a partial vector are cut to the row.
//!
//! The even/odd column split is `shufps` within 128-bit lanes, which leaves a vector's tiles
//! in the order 0, 1, 4, 5, 2, 3, 6, 7; the GEMMs do not care, and on the way out `unpcklps` /
//! `unpckhps` of the even and odd outputs put that order back into 16 consecutive outputs — no
//! permute across lanes either way.
//!
//! Rows of 3 or 4 tiles (6 or 8 px: the `cpu` U-Net's bottleneck at 96 and 128 px) are not
//! padded to 8: a vector holds two tile rows, one per 128-bit lane, each lane loaded and
//! stored on its own (cut to 3 tiles, or empty past the block's last row); the same shuffles
//! then give each lane its row's tiles in order.

use core::arch::x86_64::*;

use super::conv2d_winograd::{ELEMENTS, Out, Tiles, stride};

/// Output channels per block of [`element_gemm`]; the packed weights are padded to it. 6 × 2
/// vectors: 12 accumulators, 2 loads and a broadcast in AVX2's 16 registers.
pub const MR: usize = 6;
/// Tiles per vector.
const LANES: usize = 8;

/// Tiles per row in `V` and `M`: whole vectors, or half a vector in two-rows mode.
fn across_padded(s: &Tiles) -> usize {
    if s.two_rows() {
        LANES / 2
    } else {
        s.across().next_multiple_of(LANES)
    }
}

/// Tiles of a block of `rows` tile rows in `V` and `M`: in two-rows mode an odd last row
/// takes a whole vector too.
fn tiles_of(s: &Tiles, rows: usize) -> usize {
    if s.two_rows() {
        rows.next_multiple_of(2) * LANES / 2
    } else {
        rows * across_padded(s)
    }
}

/// The block's vectors, as (tile row, first tile, tiles in the vector's low and high lane):
/// along each tile row, or one per pair of tile rows in two-rows mode (none in the high lane
/// past the block's last row).
fn vectors(s: &Tiles, rows: usize) -> impl Iterator<Item = (usize, usize, [usize; 2])> {
    let (across, two) = (s.across(), s.two_rows());
    (0..rows)
        .step_by(if two { 2 } else { 1 })
        .flat_map(move |r| {
            (0..across).step_by(LANES).map(move |x0| {
                let n = if two {
                    [across, if r + 1 < rows { across } else { 0 }]
                } else {
                    [LANES.min(across - x0), 0]
                };
                (r, x0, n)
            })
        })
}

/// Values of a lane of 4 that lie in a row of `len` from this lane's first, `first`.
fn lane_len(len: usize, first: usize) -> usize {
    len.saturating_sub(first).min(4)
}

/// A mask of the first `len` of 4 lanes, for `maskload` / `maskstore`.
#[target_feature(enable = "avx2")]
fn first_of_4(len: usize) -> __m128i {
    _mm_cmpgt_epi32(_mm_set1_epi32(len as i32), _mm_setr_epi32(0, 1, 2, 3))
}

/// `lens[0]` values at `at` in the low lane and `lens[1]` at `at + next` in the high one (at
/// most 4 each), zeros in the rest; nothing is read past them.
#[target_feature(enable = "avx2,fma")]
unsafe fn load_pair(at: *const f32, next: usize, lens: [usize; 2]) -> __m256 {
    if lens == [4, 4] {
        return unsafe { _mm256_loadu2_m128(at.add(next), at) };
    }
    let half = |at: *const f32, len: usize| {
        if len == 0 {
            _mm_setzero_ps()
        } else {
            unsafe { _mm_maskload_ps(at, first_of_4(len)) }
        }
    };
    let high = if lens[1] == 0 {
        _mm_setzero_ps()
    } else {
        half(unsafe { at.add(next) }, lens[1])
    };
    _mm256_set_m128(high, half(at, lens[0]))
}

/// The low lane's first `lens[0]` values to `at`, the high lane's first `lens[1]` to
/// `at + next`.
#[target_feature(enable = "avx2,fma")]
unsafe fn store_pair(at: *mut f32, next: usize, v: __m256, lens: [usize; 2]) {
    if lens == [4, 4] {
        return unsafe { _mm256_storeu2_m128(at.add(next), at, v) };
    }
    let halves = [_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v)];
    for (k, (half, len)) in halves.into_iter().zip(lens).enumerate() {
        if len > 0 {
            unsafe { _mm_maskstore_ps(at.add(k * next), first_of_4(len), half) };
        }
    }
}

/// Values of scratch one block needs ([`block`]'s `scratch`).
pub fn scratch(s: &Tiles) -> usize {
    scratch_of(s, s.rows_per_block())
}

/// Values of scratch one block of the weight gradient needs ([`weight_block`]'s `scratch`).
pub fn weight_scratch(s: &Tiles) -> usize {
    scratch_of(s, s.weight_rows_per_block())
}

fn scratch_of(s: &Tiles, rows: usize) -> usize {
    let tiles = tiles_of(s, rows);
    ELEMENTS * (stride(s.c_in, tiles) + stride(s.c_out, tiles))
}

/// Output rows `2·first ..` (tile rows `first .. first + rows_per_block`) of the convolution
/// of the padded planes `p` by `packed` (from `pack_weights` with [`MR`]).
///
/// # Safety
/// As `Kernel::block` (in `conv2d_winograd`) says, with `scratch` holding [`scratch`] values,
/// on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn block(
    s: Tiles,
    p: *const f32,
    packed: *const f32,
    out: Out<'_>,
    first: usize,
    scratch: *mut f32,
) {
    let rows = s.rows_per_block().min(s.h_out / 2 - first);
    let tiles = tiles_of(&s, rows);
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

/// One image's weight gradient in the transformed domain, for tile rows `first ..` (a block of
/// `weight_rows_per_block`):
/// `m[e][c_out × c_in] (+)= U_e · V_eᵀ` over the block's tiles, `U = G' dy G'ᵀ` of each
/// tile's 2×2 output gradient and `V` the forward pass's input transform (F(3×3, 2×2) run
/// backwards; `conv2d_winograd::weight_gradient` undoes the scalings and does `Aᵀ M A`).
/// Overwrites `m` when `accumulate` is false. The 16 elements in parallel when `par` says the
/// caller is not already.
///
/// # Safety
/// As [`block`], with `scratch` holding [`weight_scratch`] values, `dy` holding `c_out` planes
/// of `h_out·w_out` values instead of `out`, and `m` holding `16·c_out·c_in` values (any,
/// when `accumulate` is false).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn weight_block(
    s: Tiles,
    p: *const f32,
    dy: *const f32,
    first: usize,
    scratch: *mut f32,
    m: *mut f32,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    let rows = s.weight_rows_per_block().min(s.h_out / 2 - first);
    let tiles = tiles_of(&s, rows);
    let v = scratch;
    let (vs, us) = (stride(s.c_in, tiles), stride(s.c_out, tiles));
    let u = unsafe { scratch.add(ELEMENTS * vs) };
    unsafe {
        input_transform(s, p, first, rows, tiles, v, vs);
        output_grad_transform(s, dy, first, rows, tiles, u, us);
        weight_gemms(s, ELEMENTS, tiles, (u, us), (v, vs), m, accumulate, par);
    }
}

/// Images whose weight gradients [`weight_images`] sums in one block: as many whole images as
/// the weight gradient's budget of tiles holds (at least one). For images of fewer tiles than
/// a block (the 12- and 6-px levels of 96-px inputs: 48 and 16 tiles), whose per-image sums
/// were too short — each of `16·c_out·c_in` sums ended in a sum across lanes and a store after
/// two to six vectors — and took longer than `gemm`.
///
/// The budget is twice `Tiles::weight_rows_per_block`'s: conv bench at 96 px (batch 8), the
/// twelve 12- and 6-px weight gradients, two rounds: 24.5–28.3 ms at 32768, 20.8–21.9 at
/// 65536, 31–32 at 131072 (`gemm`: 27–40 on the same noisy host).
pub fn images_per_weight_block(s: &Tiles, batch: usize) -> usize {
    let image = tiles_of(s, s.h_out / 2);
    let budget = 65536 / (s.c_in + s.c_out);
    (budget / image).clamp(1, batch.max(1))
}

/// Values of scratch [`weight_images`] needs for `images` images.
pub fn weight_images_scratch(s: &Tiles, images: usize) -> usize {
    let tiles = tiles_of(s, s.h_out / 2) * images;
    ELEMENTS * (stride(s.c_in, tiles) + stride(s.c_out, tiles))
}

/// The weight gradient in the transformed domain (as [`weight_block`]'s, overwriting `m`) of
/// whole images at once: `images` holds each one's padded planes and output gradient, and
/// every element's products are summed over all their tiles, image after image, in one
/// dot product.
///
/// # Safety
/// As [`weight_block`] for each image, with `scratch` holding
/// [`weight_images_scratch`]`(s, images.len())` values.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn weight_images(
    s: Tiles,
    images: &[(*const f32, *const f32)],
    scratch: *mut f32,
    m: *mut f32,
    par: gemm::Parallelism,
) {
    let rows = s.h_out / 2;
    let image = tiles_of(&s, rows);
    let tiles = image * images.len();
    let v = scratch;
    let (vs, us) = (stride(s.c_in, tiles), stride(s.c_out, tiles));
    let u = unsafe { scratch.add(ELEMENTS * vs) };
    for (k, &(p, dy)) in images.iter().enumerate() {
        // Each image's tiles at its own offset in every channel's row of `tiles`.
        unsafe {
            input_transform(s, p, 0, rows, tiles, v.add(k * image), vs);
            output_grad_transform(s, dy, 0, rows, tiles, u.add(k * image), us);
        }
    }
    unsafe { weight_gemms(s, ELEMENTS, tiles, (u, us), (v, vs), m, false, par) };
}

/// [`weight_gemm`] for each of `elements` tile elements (`U_e` at `u + e·us`, `V_e` at
/// `v + e·vs`, `m_e` at `m + e·c_out·c_in`), in parallel when `par` says the caller is not
/// already.
///
/// # Safety
/// As [`weight_gemm`] for every element.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn weight_gemms(
    s: Tiles,
    elements: usize,
    tiles: usize,
    (u, us): (*const f32, usize),
    (v, vs): (*const f32, usize),
    m: *mut f32,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    let per = s.c_out * s.c_in;
    // Plain addresses, so the elements can go to other threads: each writes its own `m_e`.
    let (u, v, m) = (u as usize, v as usize, m as usize);
    super::conv2d_stride1::for_each_part(elements, par, |e| unsafe {
        weight_gemm(
            s,
            tiles,
            (u as *const f32).add(e * us),
            (v as *const f32).add(e * vs),
            (m as *mut f32).add(e * per),
            accumulate,
        )
    });
}

/// `m[c_out × c_in] (+)= U[c_out × tiles] · V[c_in × tiles]ᵀ` for one tile element: dot
/// products along the tiles (contiguous in both), blocks of 4 output × 3 input channels in
/// registers (12 accumulators, 7 loads per 12 FMAs), each summed across its lanes at the end.
/// (The `gemm` crate, packing both sides for each block's short sums, ran at half the speed.)
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn weight_gemm(
    s: Tiles,
    tiles: usize,
    u: *const f32,
    v: *const f32,
    m: *mut f32,
    accumulate: bool,
) {
    const MO: usize = 4;
    const MC: usize = 3;
    for o0 in (0..s.c_out).step_by(MO) {
        // Rows past the end repeat the last one; their sums are not stored.
        let rows: [*const f32; MO] =
            core::array::from_fn(|i| unsafe { u.add((o0 + i).min(s.c_out - 1) * tiles) });
        for c0 in (0..s.c_in).step_by(MC) {
            let cols: [*const f32; MC] =
                core::array::from_fn(|j| unsafe { v.add((c0 + j).min(s.c_in - 1) * tiles) });
            let mut acc = [[_mm256_setzero_ps(); MC]; MO];
            for t in (0..tiles).step_by(LANES) {
                let b: [__m256; MC] =
                    core::array::from_fn(|j| unsafe { _mm256_loadu_ps(cols[j].add(t)) });
                for (i, acc) in acc.iter_mut().enumerate() {
                    let a = unsafe { _mm256_loadu_ps(rows[i].add(t)) };
                    for j in 0..MC {
                        acc[j] = _mm256_fmadd_ps(a, b[j], acc[j]);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate().take(s.c_out - o0) {
                for (j, &lanes) in acc.iter().enumerate().take(s.c_in - c0) {
                    let sum = lane_sum(lanes);
                    let dst = unsafe { &mut *m.add((o0 + i) * s.c_in + c0 + j) };
                    *dst = if accumulate { *dst + sum } else { sum };
                }
            }
        }
    }
}

/// The sum of a vector's 8 lanes, in a fixed order.
#[target_feature(enable = "avx2,fma")]
fn lane_sum(v: __m256) -> f32 {
    let four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps::<1>(two, two)))
}

/// `U[e][o][tile] = (G' dy G'ᵀ)[e]` for the block's tiles, `dy` each tile's 2×2 output
/// gradient and `G' = [[1, 0], [1, 1], [1, -1], [0, 1]]` (F(3, 2)'s `G` without its halves).
/// Tiles in the same order as [`input_transform`]'s; padding tiles are zero.
#[target_feature(enable = "avx2,fma")]
unsafe fn output_grad_transform(
    s: Tiles,
    dy: *const f32,
    first: usize,
    rows: usize,
    tiles: usize,
    u: *mut f32,
    us: usize,
) {
    let padded = across_padded(&s);
    for o in 0..s.c_out {
        for (r, x0, n) in vectors(&s, rows) {
            let mut t = [[_mm256_setzero_ps(); 4]; 2];
            for (k, t) in t.iter_mut().enumerate() {
                let src = unsafe {
                    dy.add(o * s.h_out * s.w_out + (2 * (first + r) + k) * s.w_out + 2 * x0)
                };
                let [a, b] = if s.two_rows() {
                    // The next tile row starts two rows of the output gradient further.
                    let next = 2 * s.w_out;
                    let lens = |first| n.map(|n| lane_len(2 * n, first));
                    unsafe {
                        [
                            load_pair(src, next, lens(0)),
                            load_pair(src.add(4), next, lens(4)),
                        ]
                    }
                } else if n[0] == LANES {
                    unsafe { [_mm256_loadu_ps(src), _mm256_loadu_ps(src.add(8))] }
                } else {
                    let n = n[0];
                    unsafe {
                        [
                            _mm256_maskload_ps(src, first_lanes(2 * n)),
                            _mm256_maskload_ps(src.add(8), first_lanes((2 * n).saturating_sub(8))),
                        ]
                    }
                };
                let even = _mm256_shuffle_ps::<0x88>(a, b);
                let odd = _mm256_shuffle_ps::<0xDD>(a, b);
                *t = [
                    even,
                    _mm256_add_ps(even, odd),
                    _mm256_sub_ps(even, odd),
                    odd,
                ];
            }
            let at = o * tiles + r * padded + x0;
            for j in 0..4 {
                let col = [
                    t[0][j],
                    _mm256_add_ps(t[0][j], t[1][j]),
                    _mm256_sub_ps(t[0][j], t[1][j]),
                    t[1][j],
                ];
                for (i, value) in col.into_iter().enumerate() {
                    unsafe { _mm256_storeu_ps(u.add((4 * i + j) * us + at), value) };
                }
            }
        }
    }
}

/// A mask of the first `len` of 8 lanes, for `maskload`.
#[target_feature(enable = "avx2")]
fn first_lanes(len: usize) -> __m256i {
    let len = len.min(LANES) as i32;
    let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(len), index)
}

/// `V[e][c][tile] = (Bᵀ d B)[e]` for the block's tiles, `d` each tile's 4×4 input patch.
#[target_feature(enable = "avx2,fma")]
unsafe fn input_transform(
    s: Tiles,
    p: *const f32,
    first: usize,
    rows: usize,
    tiles: usize,
    v: *mut f32,
    vs: usize,
) {
    let padded = across_padded(&s);
    for c in 0..s.c_in {
        for (r, x0, n) in vectors(&s, rows) {
            // Columns 2·x0 .. 2·x0 + 2n + 2 of the tile row's four input rows; each row as
            // its columns 2t, 2t + 1, 2t + 2, 2t + 3 for the n tiles t.
            let mut t = [[_mm256_setzero_ps(); 4]; 4];
            for (i, t) in t.iter_mut().enumerate() {
                let src = unsafe { p.add(c * s.plane + (2 * (first + r) + i) * s.row + 2 * x0) };
                // A whole vector reads columns up to 2·x0 + 17 < w_out + 2 ≤ row.
                let [a, b, c2, d2] = if s.two_rows() {
                    let next = 2 * s.row;
                    // Lanes past a lane's 2n + 2 columns (or past the block) stay zero.
                    let lens = |first| {
                        n.map(|n| {
                            if n == 0 {
                                0
                            } else {
                                lane_len(2 * n + 2, first)
                            }
                        })
                    };
                    unsafe {
                        [
                            load_pair(src, next, lens(0)),
                            load_pair(src.add(4), next, lens(4)),
                            load_pair(src.add(2), next, lens(2)),
                            load_pair(src.add(6), next, lens(6)),
                        ]
                    }
                } else if n[0] == LANES {
                    unsafe {
                        [
                            _mm256_loadu_ps(src),
                            _mm256_loadu_ps(src.add(8)),
                            _mm256_loadu_ps(src.add(2)),
                            _mm256_loadu_ps(src.add(10)),
                        ]
                    }
                } else {
                    let load = |at: *const f32, len: usize| unsafe {
                        _mm256_maskload_ps(at, first_lanes(len))
                    };
                    let n = n[0];
                    unsafe {
                        [
                            load(src, 2 * n + 2),
                            load(src.add(8), (2 * n + 2).saturating_sub(8)),
                            load(src.add(2), 2 * n),
                            load(src.add(10), (2 * n).saturating_sub(8)),
                        ]
                    }
                };
                let d = [
                    _mm256_shuffle_ps::<0x88>(a, b),
                    _mm256_shuffle_ps::<0xDD>(a, b),
                    _mm256_shuffle_ps::<0x88>(c2, d2),
                    _mm256_shuffle_ps::<0xDD>(c2, d2),
                ];
                // Bᵀ along the row.
                *t = [
                    _mm256_sub_ps(d[0], d[2]),
                    _mm256_add_ps(d[1], d[2]),
                    _mm256_sub_ps(d[2], d[1]),
                    _mm256_sub_ps(d[1], d[3]),
                ];
            }
            let at = c * tiles + r * padded + x0;
            for j in 0..4 {
                // Bᵀ down the column.
                let col = [
                    _mm256_sub_ps(t[0][j], t[2][j]),
                    _mm256_add_ps(t[1][j], t[2][j]),
                    _mm256_sub_ps(t[2][j], t[1][j]),
                    _mm256_sub_ps(t[1][j], t[3][j]),
                ];
                for (i, value) in col.into_iter().enumerate() {
                    let e = 4 * i + j;
                    unsafe { _mm256_storeu_ps(v.add(e * vs + at), value) };
                }
            }
        }
    }
}

/// `M[o][tile] = Σ_c U[o][c] · V[c][tile]` for one tile element: blocks of [`MR`] output
/// channels × 2 vectors (one at the end), accumulated in registers through all input channels.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn element_gemm(
    s: Tiles,
    tiles: usize,
    v: *const f32,
    u: *const f32,
    m: *mut f32,
) {
    let vectors = tiles / LANES;
    for block in 0..s.c_out.div_ceil(MR) {
        let rows = MR.min(s.c_out - block * MR);
        let w = unsafe { u.add(block * s.c_in * MR) };
        let m = unsafe { m.add(block * MR * tiles) };
        unsafe {
            for pair in 0..vectors / 2 {
                gemm_block::<2>(s.c_in, tiles, v, w, m, rows, 2 * LANES * pair);
            }
            if vectors % 2 == 1 {
                gemm_block::<1>(s.c_in, tiles, v, w, m, rows, tiles - LANES);
            }
        }
    }
}

/// `rows × 8·NV` outputs of [`element_gemm`] from tile `t0`.
#[target_feature(enable = "avx2,fma")]
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
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    for c in 0..c_in {
        let src = unsafe { v.add(c * tiles + t0) };
        let b: [__m256; NV] = core::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(8 * i)) });
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = unsafe { _mm256_broadcast_ss(&*w.add(r)) };
            for i in 0..NV {
                acc[i] = _mm256_fmadd_ps(a, b[i], acc[i]);
            }
        }
        w = unsafe { w.add(MR) };
    }
    for (r, acc) in acc.iter().enumerate().take(rows) {
        let dst = unsafe { m.add(r * tiles + t0) };
        for i in 0..NV {
            unsafe { _mm256_storeu_ps(dst.add(8 * i), acc[i]) };
        }
    }
}

/// Outputs `Aᵀ M A` (plus bias) of the block's tiles, interleaved back into rows.
#[target_feature(enable = "avx2,fma")]
unsafe fn output_transform(
    s: Tiles,
    m: *const f32,
    ms: usize,
    first: usize,
    rows: usize,
    tiles: usize,
    out: Out<'_>,
) {
    let padded = across_padded(&s);
    for o in 0..s.c_out {
        let bias = _mm256_set1_ps(out.bias.map_or(0.0, |b| b[o]));
        for (r, x0, n) in vectors(&s, rows) {
            let at = o * tiles + r * padded + x0;
            let load = |e: usize| unsafe { _mm256_loadu_ps(m.add(e * ms + at)) };
            // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] along each element row, then down.
            let mut t = [[_mm256_setzero_ps(); 2]; 4];
            for (i, t) in t.iter_mut().enumerate() {
                let e = [
                    load(4 * i),
                    load(4 * i + 1),
                    load(4 * i + 2),
                    load(4 * i + 3),
                ];
                *t = [
                    _mm256_add_ps(_mm256_add_ps(e[0], e[1]), e[2]),
                    _mm256_sub_ps(_mm256_sub_ps(e[1], e[2]), e[3]),
                ];
            }
            for y in 0..2 {
                let cols: [__m256; 2] = core::array::from_fn(|j| {
                    let v = if y == 0 {
                        _mm256_add_ps(_mm256_add_ps(t[0][j], t[1][j]), t[2][j])
                    } else {
                        _mm256_sub_ps(_mm256_sub_ps(t[1][j], t[2][j]), t[3][j])
                    };
                    _mm256_add_ps(v, bias)
                });
                let dst = unsafe {
                    out.ptr
                        .add(o * out.plane + (2 * (first + r) + y) * s.w_out + 2 * x0)
                };
                // Tiles in the order 0, 1, 4, 5 | 2, 3, 6, 7: the low halves of each lane
                // are outputs 0–7, the high halves 8–15.
                let low = _mm256_unpacklo_ps(cols[0], cols[1]);
                let high = _mm256_unpackhi_ps(cols[0], cols[1]);
                if s.two_rows() {
                    // Each lane's row: outputs 0–3 in `low`, 4–7 in `high`.
                    let next = 2 * s.w_out;
                    let lens = |first| n.map(|n| lane_len(2 * n, first));
                    unsafe {
                        store_pair(dst, next, low, lens(0));
                        store_pair(dst.add(4), next, high, lens(4));
                    }
                } else if n[0] == LANES {
                    unsafe {
                        _mm256_storeu_ps(dst, low);
                        _mm256_storeu_ps(dst.add(8), high);
                    }
                } else {
                    let n = n[0];
                    let mut row = [0.0f32; 2 * LANES];
                    unsafe {
                        _mm256_storeu_ps(row.as_mut_ptr(), low);
                        _mm256_storeu_ps(row.as_mut_ptr().add(8), high);
                        core::ptr::copy_nonoverlapping(row.as_ptr(), dst, 2 * n);
                    }
                }
            }
        }
    }
}
