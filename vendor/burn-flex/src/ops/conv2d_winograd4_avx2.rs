//! fedseg: Winograd F(4×4, 3×3) with AVX2 + FMA, for the 3×3 convolutions whose rows hold 5 or
//! more 4-wide tiles (20, 24, 32, 48, 64, 96, 128 px…); `conv2d_winograd_avx2`'s F(2×2, 3×3)
//! takes the others.
//!
//! A tile is 4×4 outputs from a 6×6 input patch: 36 products per channel pair for 16 outputs
//! (2.25 per output, against F(2×2)'s 4 and the direct sum's 9), and per output fewer values of
//! `V` and `M` to write and read between the stages. The price is rounding: the transforms'
//! coefficients run to 8 and ⅙, so outputs differ from the direct sum by a few more units in
//! the last place than F(2×2)'s.
//!
//! Vectors run along 8 tiles of a row; each row is padded to whole vectors in `V` and `M` (the
//! padding tiles are computed and dropped), only a partial vector's loads and stores are cut
//! to the row. The input's columns `4t + k` are split out of four
//! consecutive vectors by a 4×4 transpose within 128-bit lanes, which leaves the tiles in the
//! order 0, 2, 4, 6, 1, 3, 5, 7; the same transpose of the four output columns puts the outputs
//! back in order. The element GEMMs are `conv2d_winograd_avx2`'s.
//!
//! The 3×3 weight gradient of the same convolutions is F(3×3, 4×4) the same way: a kernel tap
//! summed over a 4×4 tile of the output gradient is a correlation of the tile's 6×6 input
//! patch with it, so the input goes through the forward pass's transform, the output
//! gradient's tiles through `G'` (see [`WEIGHT_SCALE`]), and per element the products are
//! summed over tiles by `conv2d_winograd_avx2`'s dot-product kernel.

use core::arch::x86_64::*;

use super::conv2d_winograd::{Out, Tiles, stride};
use super::conv2d_winograd_avx2::{MR, element_gemm, weight_gemms};

/// Tile elements (6 × 6).
pub const ELEMENTS: usize = 36;
/// Tiles per vector.
const LANES: usize = 8;

/// Whether this kernel takes the convolution: whole 4×4 tiles, at least 5 per row, 16 or more
/// channels in and out. (A whole vector that ends a row reads two values past it, into the
/// padded plane's next row or slack.) With 4 tiles per row F(2×2)'s 8 fill a vector, where
/// these would fill half; from 5 up, these need fewer products per output even in a partly
/// filled vector (at 24 px: 2.25 / 0.75 = 3 against F(2×2)'s 4 / 0.75).
pub fn fit(s: &Tiles) -> bool {
    s.h_out % 4 == 0 && s.w_out % 4 == 0 && s.w_out >= 20 && s.c_in >= 16 && s.c_out >= 16
}

fn across(s: &Tiles) -> usize {
    s.w_out / 4
}

/// Tiles per row in `V` and `M`: whole vectors.
fn across_padded(s: &Tiles) -> usize {
    across(s).next_multiple_of(LANES)
}

/// The first `len` of 8 values from `at` (at most 8), zeros in the other lanes; nothing is
/// read past them.
#[target_feature(enable = "avx2,fma")]
unsafe fn load_first(at: *const f32, len: usize) -> __m256 {
    match len {
        0 => _mm256_setzero_ps(),
        8.. => unsafe { _mm256_loadu_ps(at) },
        _ => {
            let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), index);
            unsafe { _mm256_maskload_ps(at, mask) }
        }
    }
}

/// Tile rows per block: the block's `V` and `M` (36 values per tile and channel) within about
/// 1 MiB, as F(2×2)'s blocks.
pub fn rows_per_block(s: &Tiles) -> usize {
    let tiles = (7168 / (s.c_in + s.c_out)).max(1);
    (tiles / across_padded(s)).clamp(1, s.h_out / 4)
}

/// Tile rows per block of the weight gradient: as `Tiles::weight_rows_per_block` (twice the
/// forward pass's, its sums over a block's tiles are short otherwise).
pub fn weight_rows_per_block(s: &Tiles) -> usize {
    let tiles = (14336 / (s.c_in + s.c_out)).max(1);
    (tiles / across_padded(s)).clamp(1, s.h_out / 4)
}

/// Values of scratch one [`block`] needs.
pub fn scratch(s: &Tiles) -> usize {
    scratch_of(s, rows_per_block(s))
}

/// Values of scratch one [`weight_block`] needs.
pub fn weight_scratch(s: &Tiles) -> usize {
    scratch_of(s, weight_rows_per_block(s))
}

fn scratch_of(s: &Tiles, rows: usize) -> usize {
    let tiles = rows * across_padded(s);
    ELEMENTS * (stride(s.c_in, tiles) + stride(s.c_out, tiles))
}

/// `G g Gᵀ` of a 3×3 kernel `g` (row-major), as 36 elements, with
/// `G = [[¼, 0, 0], [-⅙, -⅙, -⅙], [-⅙, ⅙, -⅙], [1/24, 1/12, ⅙], [1/24, -1/12, ⅙], [0, 0, 1]]`.
pub fn transform_kernel(g: [f32; 9]) -> [f32; ELEMENTS] {
    let col = |a: f32, b: f32, c: f32| {
        [
            a / 4.0,
            -(a + b + c) / 6.0,
            -(a - b + c) / 6.0,
            a / 24.0 + b / 12.0 + c / 6.0,
            a / 24.0 - b / 12.0 + c / 6.0,
            c,
        ]
    };
    let mut t = [[0.0f32; 6]; 3];
    for (r, row) in t.iter_mut().enumerate() {
        *row = col(g[3 * r], g[3 * r + 1], g[3 * r + 2]);
    }
    let mut u = [0.0f32; ELEMENTS];
    for j in 0..6 {
        let c = col(t[0][j], t[1][j], t[2][j]);
        for i in 0..6 {
            u[6 * i + j] = c[i];
        }
    }
    u
}

/// Output rows `4·first ..` (tile rows `first .. first + rows_per_block`) of the convolution
/// of the padded planes `p` by `packed` (from `pack_weights` with these [`ELEMENTS`] and
/// [`MR`]).
///
/// # Safety
/// As `Kernel::block` (in `conv2d_winograd`) says, with `scratch` holding [`scratch`] values,
/// on a CPU with AVX2 and FMA, for sizes that [`fit`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn block(
    s: Tiles,
    p: *const f32,
    packed: *const f32,
    out: Out<'_>,
    first: usize,
    scratch: *mut f32,
) {
    let rows = rows_per_block(&s).min(s.h_out / 4 - first);
    let tiles = rows * across_padded(&s);
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
/// [`weight_rows_per_block`]): `m[e][c_out × c_in] (+)= U_e · V_eᵀ` over the block's tiles,
/// `U = G' dy G'ᵀ` of each tile's 4×4 output gradient and `V` the forward pass's input
/// transform (`conv2d_winograd::weight_gradient` with [`WEIGHT_SCALE`] and [`WEIGHT_AT`]
/// finishes it). Overwrites `m` when `accumulate` is false. The
/// 36 elements in parallel when `par` says the caller is not already.
///
/// # Safety
/// As [`block`], with `scratch` holding [`weight_scratch`] values, `dy` holding `c_out` planes
/// of `h_out·w_out` values instead of `out`, and `m` holding `36·c_out·c_in` values (any,
/// when `accumulate` is false).
#[allow(clippy::too_many_arguments)]
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
    let rows = weight_rows_per_block(&s).min(s.h_out / 4 - first);
    let tiles = rows * across_padded(&s);
    let v = scratch;
    let (vs, us) = (stride(s.c_in, tiles), stride(s.c_out, tiles));
    let u = unsafe { scratch.add(ELEMENTS * vs) };
    unsafe {
        input_transform(s, p, first, rows, tiles, v, vs);
        output_grad_transform(s, dy, first, rows, tiles, u, us);
        weight_gemms(s, ELEMENTS, tiles, (u, us), (v, vs), m, accumulate, par);
    }
}

/// F(3×3, 4×4)'s `conv2d_winograd::weight_gradient` constants, for `m` as [`weight_block`]
/// leaves it. That is F(3×3, 4×4) on the forward pass's six points: its `Bᵀ` is the forward
/// pass's, its `G` is `G' = [[1, 0, 0, 0], [1, 1, 1, 1], [1, -1, 1, -1], [1, 2, 4, 8],
/// [1, -2, 4, -8], [0, 0, 0, 1]]` with row `i` scaled by `f_i` (left out of `U`, so element
/// `(i, j)` is scaled by `f_i · f_j` at the end), and `Aᵀ` is this one.
pub const WEIGHT_SCALE: [f32; 6] = [0.25, -1.0 / 6.0, -1.0 / 6.0, 1.0 / 24.0, 1.0 / 24.0, 1.0];
pub const WEIGHT_AT: [[f32; 6]; 3] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 1.0],
];

/// `G' dy` of four values (see [`WEIGHT_SCALE`]).
#[target_feature(enable = "avx2,fma")]
fn times_g(c: [__m256; 4]) -> [__m256; 6] {
    let (two, four, eight) = (
        _mm256_set1_ps(2.0),
        _mm256_set1_ps(4.0),
        _mm256_set1_ps(8.0),
    );
    let (even, odd) = (_mm256_add_ps(c[0], c[2]), _mm256_add_ps(c[1], c[3]));
    let even2 = _mm256_fmadd_ps(four, c[2], c[0]);
    let odd2 = _mm256_fmadd_ps(eight, c[3], _mm256_mul_ps(two, c[1]));
    [
        c[0],
        _mm256_add_ps(even, odd),
        _mm256_sub_ps(even, odd),
        _mm256_add_ps(even2, odd2),
        _mm256_sub_ps(even2, odd2),
        c[3],
    ]
}

/// `U[e][o][tile] = (G' dy G'ᵀ)[e]` for the block's tiles, `dy` each tile's 4×4 output
/// gradient. Tiles in the same order as [`input_transform`]'s.
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
    let (across, padded) = (across(&s), across_padded(&s));
    for o in 0..s.c_out {
        for r in 0..rows {
            for x0 in (0..across).step_by(LANES) {
                // The vector's 4n columns; padding tiles zero.
                let len = 4 * LANES.min(across - x0);
                let mut t = [[_mm256_setzero_ps(); 6]; 4];
                for (k, t) in t.iter_mut().enumerate() {
                    let src = unsafe {
                        dy.add(o * s.h_out * s.w_out + (4 * (first + r) + k) * s.w_out + 4 * x0)
                    };
                    // `wrapping_add`: a partial vector's later loads may start past the buffer
                    // (and read nothing).
                    let load = |at: usize| unsafe {
                        load_first(src.wrapping_add(at), len.saturating_sub(at))
                    };
                    *t = times_g(transpose4(load(0), load(8), load(16), load(24)));
                }
                let at = o * tiles + r * padded + x0;
                for j in 0..6 {
                    let col = times_g(core::array::from_fn(|k| t[k][j]));
                    for (i, value) in col.into_iter().enumerate() {
                        unsafe { _mm256_storeu_ps(u.add((6 * i + j) * us + at), value) };
                    }
                }
            }
        }
    }
}

/// `Bᵀ d` of six values, with
/// `Bᵀ = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
///        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]`.
#[target_feature(enable = "avx2,fma")]
fn times_bt(d: [__m256; 6]) -> [__m256; 6] {
    let (two, four, five) = (
        _mm256_set1_ps(2.0),
        _mm256_set1_ps(4.0),
        _mm256_set1_ps(5.0),
    );
    let (d31, d42) = (_mm256_sub_ps(d[3], d[1]), _mm256_sub_ps(d[4], d[2]));
    [
        _mm256_fmadd_ps(four, d[0], _mm256_fnmadd_ps(five, d[2], d[4])),
        _mm256_fnmadd_ps(four, _mm256_add_ps(d[1], d[2]), _mm256_add_ps(d[3], d[4])),
        _mm256_fmadd_ps(four, _mm256_sub_ps(d[1], d[2]), _mm256_sub_ps(d[4], d[3])),
        _mm256_fmadd_ps(two, d31, d42),
        _mm256_fnmadd_ps(two, d31, d42),
        _mm256_fmadd_ps(four, d[1], _mm256_fnmadd_ps(five, d[3], d[5])),
    ]
}

/// `Aᵀ m` of six values, with
/// `Aᵀ = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]`.
#[target_feature(enable = "avx2,fma")]
fn times_at(m: [__m256; 6]) -> [__m256; 4] {
    let (a, b) = (_mm256_add_ps(m[1], m[2]), _mm256_sub_ps(m[1], m[2]));
    let (c, d) = (_mm256_add_ps(m[3], m[4]), _mm256_sub_ps(m[3], m[4]));
    [
        _mm256_add_ps(_mm256_add_ps(m[0], a), c),
        _mm256_fmadd_ps(_mm256_set1_ps(2.0), d, b),
        _mm256_fmadd_ps(_mm256_set1_ps(4.0), c, a),
        _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0), d, b), m[5]),
    ]
}

/// The 4×4 transpose within each 128-bit lane: value `k` of `a`, `b`, `c`, `d`'s lane into
/// vector `k`'s lane. Its own inverse.
#[target_feature(enable = "avx2,fma")]
fn transpose4(a: __m256, b: __m256, c: __m256, d: __m256) -> [__m256; 4] {
    let (ab_low, cd_low) = (_mm256_unpacklo_ps(a, b), _mm256_unpacklo_ps(c, d));
    let (ab_high, cd_high) = (_mm256_unpackhi_ps(a, b), _mm256_unpackhi_ps(c, d));
    [
        _mm256_shuffle_ps::<0x44>(ab_low, cd_low),
        _mm256_shuffle_ps::<0xEE>(ab_low, cd_low),
        _mm256_shuffle_ps::<0x44>(ab_high, cd_high),
        _mm256_shuffle_ps::<0xEE>(ab_high, cd_high),
    ]
}

/// `V[e][c][tile] = (Bᵀ d B)[e]` for the block's tiles, `d` each tile's 6×6 input patch.
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
    let (across, padded) = (across(&s), across_padded(&s));
    for c in 0..s.c_in {
        for r in 0..rows {
            for x0 in (0..across).step_by(LANES) {
                let n = LANES.min(across - x0);
                let mut t = [[_mm256_setzero_ps(); 6]; 6];
                for (i, t) in t.iter_mut().enumerate() {
                    let src =
                        unsafe { p.add(c * s.plane + (4 * (first + r) + i) * s.row + 4 * x0) };
                    // A partial vector reads its 4n + 2 columns only.
                    let load = |at: usize| unsafe {
                        if n == LANES {
                            _mm256_loadu_ps(src.add(at))
                        } else {
                            load_first(src.wrapping_add(at), (4 * n + 2).saturating_sub(at))
                        }
                    };
                    // Columns 4t .. 4t + 3 of the 8 tiles t, then 4t + 4 and 4t + 5 (a whole
                    // vector's last load ends two values past the row: see `fit`).
                    let [d0, d1, d2, d3] = transpose4(load(0), load(8), load(16), load(24));
                    let [d4, d5, ..] = transpose4(load(4), load(12), load(20), load(28));
                    *t = times_bt([d0, d1, d2, d3, d4, d5]);
                }
                let at = c * tiles + r * padded + x0;
                for j in 0..6 {
                    let col = times_bt(core::array::from_fn(|i| t[i][j]));
                    for (i, value) in col.into_iter().enumerate() {
                        unsafe { _mm256_storeu_ps(v.add((6 * i + j) * vs + at), value) };
                    }
                }
            }
        }
    }
}

/// Outputs `Aᵀ M A` (plus bias) of the block's tiles, transposed back into rows.
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
    let (across, padded) = (across(&s), across_padded(&s));
    for o in 0..s.c_out {
        let bias = _mm256_set1_ps(out.bias.map_or(0.0, |b| b[o]));
        for r in 0..rows {
            for x0 in (0..across).step_by(LANES) {
                let n = LANES.min(across - x0);
                let at = o * tiles + r * padded + x0;
                let load = |e: usize| unsafe { _mm256_loadu_ps(m.add(e * ms + at)) };
                // Aᵀ along each element row, then down the four columns.
                let t: [[__m256; 4]; 6] =
                    core::array::from_fn(|i| times_at(core::array::from_fn(|j| load(6 * i + j))));
                let y: [[__m256; 4]; 4] =
                    core::array::from_fn(|x| times_at(core::array::from_fn(|i| t[i][x])));
                for row in 0..4 {
                    let dst = unsafe {
                        out.ptr
                            .add(o * out.plane + (4 * (first + r) + row) * s.w_out + 4 * x0)
                    };
                    let with_bias: [__m256; 4] =
                        core::array::from_fn(|x| _mm256_add_ps(y[x][row], bias));
                    let [a, b, c, d] =
                        transpose4(with_bias[0], with_bias[1], with_bias[2], with_bias[3]);
                    if n == LANES {
                        unsafe {
                            _mm256_storeu_ps(dst, a);
                            _mm256_storeu_ps(dst.add(8), b);
                            _mm256_storeu_ps(dst.add(16), c);
                            _mm256_storeu_ps(dst.add(24), d);
                        }
                    } else {
                        let mut row = [0.0f32; 4 * LANES];
                        for (k, v) in [a, b, c, d].into_iter().enumerate() {
                            unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(8 * k), v) };
                        }
                        unsafe { core::ptr::copy_nonoverlapping(row.as_ptr(), dst, 4 * n) };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The identities behind the tiles, in scalars: `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` gives the 16
    /// outputs of a 3×3 correlation over a 6×6 patch.
    #[test]
    fn a_kernel_transform_reproduces_a_direct_correlation() {
        let g = [0.3f32, -1.2, 0.7, 2.0, 0.1, -0.4, 0.9, 1.5, -0.6];
        let d: [f32; 36] = core::array::from_fn(|i| (i as f32 * 0.37).sin());
        let u = transform_kernel(g);
        let bt = [
            [4.0f32, 0.0, -5.0, 0.0, 1.0, 0.0],
            [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
            [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
            [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
            [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
            [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
        ];
        let at = [
            [1.0f32, 1.0, 1.0, 1.0, 1.0, 0.0],
            [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
            [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
            [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
        ];
        let mut mm = [0.0f32; 36];
        for i in 0..6 {
            for j in 0..6 {
                let mut v = 0.0;
                for a in 0..6 {
                    for b in 0..6 {
                        v += bt[i][a] * d[6 * a + b] * bt[j][b];
                    }
                }
                mm[6 * i + j] = u[6 * i + j] * v;
            }
        }
        for y in 0..4 {
            for x in 0..4 {
                let mut got = 0.0;
                for i in 0..6 {
                    for j in 0..6 {
                        got += at[y][i] * mm[6 * i + j] * at[x][j];
                    }
                }
                let mut want = 0.0;
                for ky in 0..3 {
                    for kx in 0..3 {
                        want += d[6 * (y + ky) + x + kx] * g[3 * ky + kx];
                    }
                }
                assert!((got - want).abs() < 1e-4, "({y}, {x}): {got} vs {want}");
            }
        }
    }
}
