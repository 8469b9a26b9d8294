//! fedseg: 3×3 stride-1 convolutions by Winograd's F(2×2, 3×3), with AVX-512, for
//! `conv2d_stride1` (its forward pass and its input gradient, which is such a convolution too).
//!
//! Each 2×2 block of outputs (a tile) is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` of its 4×4 input patch
//! `d`: 16 products per input–output channel pair instead of 36. Per tile element the products
//! summed over input channels are one GEMM `M_e[c_out × tiles] = U_e[c_out × c_in] ·
//! V_e[c_in × tiles]`; the transforms cost a few additions per element. Tiles go in blocks of
//! whole tile rows, so a block's `V` and `M` stay in L2 between the input transform, the 16
//! GEMMs and the output transform. Vectors run along 16 tiles of a row (8, half a vector, at
//! 16 px): the input's even and odd columns are split by permutes, and the outputs
//! interleaved back the same way. The weights are transformed once per call.
//!
//! Every output is summed in an order that depends only on the shapes (so not on threads). Its
//! rounding differs from the direct sum's by a few units in the last place of the larger terms.

use core::arch::x86_64::*;

use super::conv2d_stride1_avx512::{MR, lanes};

/// Tile elements (4 × 4).
const ELEMENTS: usize = 16;

/// Whether this CPU runs these kernels and `BURN_FLEX_CONV_KERNEL` (`gemm`: the portable GEMM
/// path; `direct`: the AVX-512 direct kernel) does not ask for another (read on every call, so
/// a test or bench can compare them).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::env::var_os("BURN_FLEX_CONV_KERNEL").is_none_or(|v| v != "gemm" && v != "direct")
}

/// `G g Gᵀ` of a 3×3 kernel `g` (row-major), as 16 elements.
fn transform_kernel(g: [f32; 9]) -> [f32; ELEMENTS] {
    // G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]], applied to the columns then the rows.
    let col = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let mut t = [[0.0f32; 4]; 3];
    for (r, row) in t.iter_mut().enumerate() {
        *row = col(g[3 * r], g[3 * r + 1], g[3 * r + 2]);
    }
    let mut u = [0.0f32; ELEMENTS];
    for j in 0..4 {
        let c = col(t[0][j], t[1][j], t[2][j]);
        for i in 0..4 {
            u[4 * i + j] = c[i];
        }
    }
    u
}

/// The transformed weights of a convolution with `c_out × c_in` 3×3 kernels, `kernel(o, c)`
/// giving one (row-major): per tile element, `[c_out / MR][c_in][MR]` as `pack` lays out
/// weights, zero-padded to whole blocks. Each kernel is transformed once, blocks of output
/// channels in parallel (transformed once per element, the 128-channel layers' weights took
/// longer than their convolution).
pub fn pack_weights(
    c_out: usize,
    c_in: usize,
    kernel: impl Fn(usize, usize) -> [f32; 9] + Send + Sync,
) -> Vec<f32> {
    let per = c_out.div_ceil(MR) * c_in * MR;
    // [block][element][c][MR], moved to [element][block][c][MR] below.
    let mut blocks = vec![0.0f32; ELEMENTS * per];
    let fill = |b: usize, block: &mut [f32]| {
        for r in 0..MR.min(c_out - b * MR) {
            for c in 0..c_in {
                let u = transform_kernel(kernel(b * MR + r, c));
                for (e, &v) in u.iter().enumerate() {
                    block[(e * c_in + c) * MR + r] = v;
                }
            }
        }
    };
    let size = ELEMENTS * c_in * MR;
    if size == 0 {
        return blocks;
    }
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        blocks
            .par_chunks_mut(size)
            .enumerate()
            .for_each(|(b, block)| fill(b, block));
    }
    #[cfg(not(feature = "rayon"))]
    for (b, block) in blocks.chunks_mut(size).enumerate() {
        fill(b, block);
    }
    let mut packed = Vec::with_capacity(ELEMENTS * per);
    for e in 0..ELEMENTS {
        for block in blocks.chunks_exact(size) {
            packed.extend_from_slice(&block[e * c_in * MR..][..c_in * MR]);
        }
    }
    packed
}

/// One convolution's sizes: input planes as `conv2d_stride1` pads them, outputs unpadded.
#[derive(Clone, Copy)]
pub struct Tiles {
    pub c_in: usize,
    pub c_out: usize,
    /// Values per padded input plane, and per padded row.
    pub plane: usize,
    pub row: usize,
    /// Output size, both even; the padded input has `h_out + 2` rows of at least `w_out + 2`.
    pub h_out: usize,
    pub w_out: usize,
}

impl Tiles {
    fn across(&self) -> usize {
        self.w_out / 2
    }
    /// Tile rows per block: the block's `V` and `M` (16 values per tile and channel) within
    /// about 1 MiB, so they stay in L2 from one stage to the next.
    pub fn rows_per_block(&self) -> usize {
        let tiles = (16384 / (self.c_in + self.c_out)).max(1);
        (tiles / self.across()).clamp(1, self.h_out / 2)
    }
    /// Whether these kernels take the convolution: whole tiles, at least 8 per row, and 16 or
    /// more channels in and out — every 3×3 convolution of the `cpu` U-Net but its first
    /// (1 → 16 maps), where the transforms would cost more than the products they save. At
    /// 16 channels and 128 px it measured level with the direct kernel to 10 % faster, at 32
    /// and more channels 25–40 % faster.
    pub fn fit(&self) -> bool {
        self.h_out % 2 == 0
            && self.w_out % 2 == 0
            && self.across() >= 8
            && self.c_in >= 16
            && self.c_out >= 16
    }
    /// The block's vectors of tiles: (tile row, first tile, tiles).
    fn vectors(&self, rows: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let across = self.across();
        (0..rows).flat_map(move |r| {
            (0..across)
                .step_by(16)
                .map(move |x0| (r, x0, 16.min(across - x0)))
        })
    }
    /// Values of scratch one block needs ([`block`]'s `scratch`).
    pub fn scratch(&self) -> usize {
        let tiles = self.rows_per_block() * self.across();
        ELEMENTS * (stride(self.c_in, tiles) + stride(self.c_out, tiles))
    }
}

/// Values from one tile element's `channels × tiles` matrix to the next: a multiple of 16
/// (aligned vectors stay aligned) that is not one of 1024. The transforms touch all 16 elements
/// of a tile at once; 16 streams 4 KiB apart fall into the same L1 sets, which made them
/// miss (the transforms took as long as the GEMMs).
fn stride(channels: usize, tiles: usize) -> usize {
    let n = (channels * tiles).next_multiple_of(16);
    if n % 1024 == 0 { n + 16 } else { n }
}

/// Where the outputs go: channel `o`'s output `(y, x)` at `ptr[o·plane + y·w_out + x]`, plus
/// `bias[o]` when there is a bias.
#[derive(Clone, Copy)]
pub struct Out<'a> {
    pub ptr: *mut f32,
    pub plane: usize,
    pub bias: Option<&'a [f32]>,
}

/// Output rows `2·first ..` (tile rows `first .. first + rows_per_block`) of the convolution
/// of the padded planes `p` by `packed` (from [`pack_weights`]).
///
/// # Safety
/// `p` holds `c_in` planes of `plane` values with `(h_out + 2)` rows of `row ≥ w_out + 2`;
/// `packed` comes from [`pack_weights`] for these channel counts; `scratch` holds
/// [`Tiles::scratch`] values; `out` holds `c_out` planes of `h_out·w_out` values, `bias` (if
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
        for (r, x0, n) in s.vectors(rows) {
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
        for (r, x0, n) in s.vectors(rows) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The 1D identities behind the tiles: F(2, 3) gives the two outputs of a 3-tap
    /// correlation over 4 inputs.
    #[test]
    fn a_kernel_transform_reproduces_a_direct_correlation() {
        let g = [0.3f32, -1.2, 0.7, 2.0, 0.1, -0.4, 0.9, 1.5, -0.6];
        let d: [f32; 16] = core::array::from_fn(|i| (i as f32 * 0.37).sin());
        let u = transform_kernel(g);
        // V = Bᵀ d B, Y = Aᵀ (U ⊙ V) A, in scalars.
        let bt = [
            [1.0f32, 0.0, -1.0, 0.0],
            [0.0, 1.0, 1.0, 0.0],
            [0.0, -1.0, 1.0, 0.0],
            [0.0, 1.0, 0.0, -1.0],
        ];
        let at = [[1.0f32, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
        let mut mm = [0.0f32; 16];
        for i in 0..4 {
            for j in 0..4 {
                let mut v = 0.0;
                for a in 0..4 {
                    for b in 0..4 {
                        v += bt[i][a] * d[4 * a + b] * bt[j][b];
                    }
                }
                mm[4 * i + j] = u[4 * i + j] * v;
            }
        }
        for y in 0..2 {
            for x in 0..2 {
                let mut got = 0.0;
                for i in 0..4 {
                    for j in 0..4 {
                        got += at[y][i] * mm[4 * i + j] * at[x][j];
                    }
                }
                let mut want = 0.0;
                for ky in 0..3 {
                    for kx in 0..3 {
                        want += d[4 * (y + ky) + x + kx] * g[3 * ky + kx];
                    }
                }
                assert!((got - want).abs() < 1e-5, "({y}, {x}): {got} vs {want}");
            }
        }
    }
}
