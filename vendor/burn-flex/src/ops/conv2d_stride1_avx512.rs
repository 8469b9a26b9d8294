//! fedseg: AVX-512 kernels for `conv2d_stride1`, used when the CPU has `avx512f`.
//!
//! The GEMM path runs `kh·kw` GEMMs of depth `c_in` per convolution; at the U-Net's small
//! channel counts (16–32) each is too shallow for the GEMM to keep its accumulators in
//! registers, and it packs the shifted plane again for every tap. These kernels do the whole
//! convolution as one implicit GEMM over `k = (input channel, tap)`: the "right-hand matrix" is
//! read straight from the padded plane at `channel·plane + tap offset + position`, so nothing
//! is packed but the weights (once per call), and each block of outputs stays in registers
//! through all `c_in·kh·kw` steps.
//!
//! - [`conv_grid`]: `out[c_out × grid] = Σ_k W[c_out, k] · P[k, positions]`, blocks of
//!   [`MR`] output channels × 48 positions (24 accumulators), stored straight into the output
//!   without the grid's dropped columns.
//! - [`weight_grid`]: `dW[c_out, k] = Σ_positions dY[c_out, positions] · P[k, positions]`,
//!   blocks of 4 output channels × 6 `k`, vectors along each output row (read where they lie,
//!   no copy of `dY`), reduced at the end. Used for kernels other than 3×3, and for 3×3 ones
//!   with at most 16 output and fewer than 16 input channels (the U-Net's first layer).
//! - [`weight_3x3_rows`]: the other 3×3 weight gradients, the other way round: 16 output
//!   channels per vector (`dY` laid out as `[vector][position][16]` first), the input
//!   broadcast and shared by neighbouring positions, so no loads of `P` vectors and no sums
//!   across lanes. At the U-Net's shapes (batch 8, 2 threads) the step's 3×3 weight gradients
//!   went from 49 to 38 ms (140–190 → 200–280 GFLOP/s), a training step from 0.27–0.29 to
//!   0.24 s.
//!
//! Tails (positions, channels) use masked loads and stores, so nothing is read or written past
//! the data. Every sum runs in a fixed order that depends only on the shapes.

use core::arch::x86_64::*;

/// Output channels per block of [`conv_grid`]; packed weights are padded to a multiple of it.
pub const MR: usize = 8;
/// Vectors of 16 positions per block of [`conv_grid`].
const NV: usize = 3;
const NR: usize = NV * 16;
/// Positions per chunk: a chunk's slice of every input plane stays in cache while all output
/// channel blocks pass over it.
pub const CHUNK: usize = NR * 8;

/// Whether this CPU runs these kernels and `BURN_FLEX_CONV_KERNEL` does not ask for the
/// portable GEMM path (`gemm`) or for what a CPU with only AVX2 runs (`avx2`, `avx2-f2`)
/// instead (read on every call, so a test or bench can compare them).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::env::var("BURN_FLEX_CONV_KERNEL")
            .ok()
            .is_none_or(|v| v != "gemm" && !v.starts_with("avx2"))
}

/// The first `len` of 16 lanes.
pub fn lanes(len: usize) -> __mmask16 {
    if len >= 16 {
        0xFFFF
    } else {
        ((1u32 << len) - 1) as __mmask16
    }
}

/// Weights `[c_out][k]` packed as `[c_out / MR][k][MR]`, zero-padded to whole blocks;
/// `row(o, values)` writes output channel `o`'s `k_len` weights into `values`. Blocks are
/// packed in parallel: on the calling thread, the packing of the largest layers' weights kept
/// the other threads waiting.
pub fn pack(c_out: usize, k_len: usize, row: impl Fn(usize, &mut [f32]) + Send + Sync) -> Vec<f32> {
    let mut packed = vec![0.0f32; c_out.div_ceil(MR) * k_len * MR];
    let fill = |b: usize, block: &mut [f32]| {
        let mut values = vec![0.0f32; k_len];
        for r in 0..MR.min(c_out - b * MR) {
            row(b * MR + r, &mut values);
            for (k, &v) in values.iter().enumerate() {
                block[k * MR + r] = v;
            }
        }
    };
    if k_len == 0 {
        return packed;
    }
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        packed
            .par_chunks_mut(k_len * MR)
            .enumerate()
            .for_each(|(b, block)| fill(b, block));
    }
    #[cfg(not(feature = "rayon"))]
    for (b, block) in packed.chunks_mut(k_len * MR).enumerate() {
        fill(b, block);
    }
    packed
}

/// One convolution's sizes as the kernels see them.
#[derive(Clone, Copy)]
pub struct Shape {
    /// Output channels.
    pub c_out: usize,
    /// Input channels (planes of `P`).
    pub c_in: usize,
    /// Values per input plane.
    pub plane: usize,
    /// Output positions per channel on the padded grid.
    pub grid: usize,
    /// Positions per grid row; the first `w_out` of each are outputs, the rest are dropped.
    pub row: usize,
    pub w_out: usize,
}

/// Where the outputs go: channel `o`'s output at grid position `y·row + x` (`x < w_out`) is
/// stored at `ptr[o·plane + y·w_out + x]`, plus `bias[o]` when there is a bias.
#[derive(Clone, Copy)]
pub struct Out<'a> {
    pub ptr: *mut f32,
    pub plane: usize,
    pub bias: Option<&'a [f32]>,
}

/// Grid positions `chunk·CHUNK ..` of `out = Σ_k W · P (+ bias)` where step
/// `k = c·taps + t` reads `P[c·plane + offsets[t] + position]`.
///
/// # Safety
/// `p` holds `c_in` planes of `plane` values and every `offsets[t] + position < plane` for
/// positions below `grid`; `packed` comes from [`pack`] with `k = c_in·offsets.len()`; `out`
/// holds `c_out` planes of `grid / row · w_out` values, `bias` (if any) `c_out` values, and no
/// other thread writes this chunk.
#[target_feature(enable = "avx512f")]
pub unsafe fn conv_grid(
    s: Shape,
    offsets: &[usize],
    p: *const f32,
    packed: *const f32,
    out: Out<'_>,
    chunk: usize,
) {
    let k_len = s.c_in * offsets.len();
    let start = chunk * CHUNK;
    let end = (start + CHUNK).min(s.grid);
    // Per block of NR positions in this chunk: the load masks (the grid's tail), and per vector
    // the lanes outside the dropped columns with where the first of them goes; stored
    // contiguously from there, as outputs are in grid order with the dropped ones removed.
    let mut blocks = [([0 as __mmask16; NV], [(0 as __mmask16, 0usize); NV]); CHUNK / NR];
    for (i, (masks, stores)) in blocks.iter_mut().enumerate() {
        let n = start + i * NR;
        let len = end.saturating_sub(n).min(NR);
        *masks = core::array::from_fn(|v| lanes(len.saturating_sub(16 * v)));
        *stores = core::array::from_fn(|v| {
            let (mut keep, mut at) = (0u16, None);
            for l in 0..16.min(len.saturating_sub(16 * v)) {
                let q = n + 16 * v + l;
                if q % s.row < s.w_out {
                    keep |= 1 << l;
                    at.get_or_insert(q / s.row * s.w_out + q % s.row);
                }
            }
            (keep, at.unwrap_or(0))
        });
    }
    let count = (end - start).div_ceil(NR);
    for block in 0..s.c_out.div_ceil(MR) {
        let rows = (s.c_out - block * MR).min(MR);
        let w = unsafe { packed.add(block * k_len * MR) };
        for (i, &(masks, stores)) in blocks.iter().enumerate().take(count) {
            unsafe {
                conv_block(
                    s,
                    offsets,
                    p.add(start + i * NR),
                    w,
                    masks,
                    out,
                    block * MR,
                    rows,
                    stores,
                );
            }
        }
    }
}

/// `MR × NR` outputs through all `k`.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_block(
    s: Shape,
    offsets: &[usize],
    p: *const f32,
    mut w: *const f32,
    masks: [__mmask16; NV],
    out: Out<'_>,
    first_row: usize,
    rows: usize,
    stores: [(__mmask16, usize); NV],
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for c in 0..s.c_in {
        let plane = unsafe { p.add(c * s.plane) };
        for &offset in offsets {
            let src = unsafe { plane.add(offset) };
            let b: [__m512; NV] = core::array::from_fn(|v| unsafe {
                _mm512_maskz_loadu_ps(masks[v], src.add(16 * v))
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(unsafe { *w.add(r) });
                for v in 0..NV {
                    acc[v] = _mm512_fmadd_ps(a, b[v], acc[v]);
                }
            }
            w = unsafe { w.add(MR) };
        }
    }
    for (r, acc) in acc.iter().enumerate().take(rows) {
        let o = first_row + r;
        let bias = out.bias.map_or(0.0, |b| b[o]);
        let bias = _mm512_set1_ps(bias);
        for v in 0..NV {
            let (keep, at) = stores[v];
            if keep == 0 {
                continue;
            }
            let packed = _mm512_maskz_compress_ps(keep, _mm512_add_ps(acc[v], bias));
            let count = keep.count_ones() as usize;
            unsafe { _mm512_mask_storeu_ps(out.ptr.add(o * out.plane + at), lanes(count), packed) };
        }
    }
}

/// Output channels per block of [`weight_grid`].
pub const WM: usize = 4;
/// Steps `k` per block of [`weight_grid`].
const WK: usize = 6;

/// Sizes of [`weight_grid`]'s operands.
#[derive(Clone, Copy)]
pub struct WeightShape {
    pub c_out: usize,
    /// Output rows and columns: `dY` is `[c_out][h_out][w_out]`.
    pub h_out: usize,
    pub w_out: usize,
    /// Row length of the padded planes of `P`.
    pub row: usize,
}

/// For output channels `block·WM ..` (at most [`WM`]) and every `k < starts.len()`:
/// `dw[o·k_len + k] = Σ_{y, x} dY[o][y][x] · P[starts[k] + y·row + x]`.
///
/// # Safety
/// `d` holds `c_out·h_out·w_out` values, `p` at least `starts[k] + (h_out - 1)·row + w_out`
/// for every `k`; `dw` holds `c_out·starts.len()` values and no other thread writes this
/// block's rows.
#[target_feature(enable = "avx512f")]
pub unsafe fn weight_grid(
    s: WeightShape,
    starts: &[usize],
    d: *const f32,
    p: *const f32,
    dw: *mut f32,
    block: usize,
) {
    let k_len = starts.len();
    let o0 = block * WM;
    let out_plane = s.h_out * s.w_out;
    // Rows and steps past the end repeat the last one; their sums are not stored.
    let rows: [*const f32; WM] =
        core::array::from_fn(|r| unsafe { d.add((o0 + r).min(s.c_out - 1) * out_plane) });
    for k0 in (0..k_len).step_by(WK) {
        let cols: [*const f32; WK] =
            core::array::from_fn(|t| unsafe { p.add(starts[(k0 + t).min(k_len - 1)]) });
        let mut acc = [[_mm512_setzero_ps(); WK]; WM];
        for y in 0..s.h_out {
            let (dy_at, p_at) = (y * s.w_out, y * s.row);
            let mut x = 0;
            while x < s.w_out {
                let m = lanes(s.w_out - x);
                let dv: [__m512; WM] = core::array::from_fn(|r| unsafe {
                    _mm512_maskz_loadu_ps(m, rows[r].add(dy_at + x))
                });
                for t in 0..WK {
                    let pv = unsafe { _mm512_maskz_loadu_ps(m, cols[t].add(p_at + x)) };
                    for r in 0..WM {
                        acc[r][t] = _mm512_fmadd_ps(dv[r], pv, acc[r][t]);
                    }
                }
                x += 16;
            }
        }
        for r in 0..WM.min(s.c_out - o0) {
            for t in 0..WK.min(k_len - k0) {
                unsafe { *dw.add((o0 + r) * k_len + k0 + t) = _mm512_reduce_add_ps(acc[r][t]) };
            }
        }
    }
}

/// Sizes of [`weight_3x3_rows`]' operands (one image).
#[derive(Clone, Copy)]
pub struct Weight3x3 {
    pub c_out: usize,
    pub c_in: usize,
    pub h_out: usize,
    pub w_out: usize,
    /// Row length and values per padded plane of `P`.
    pub row: usize,
    pub plane: usize,
}

impl Weight3x3 {
    /// Vectors of 16 output channels (the last one zero-padded).
    pub fn vectors(&self) -> usize {
        self.c_out.div_ceil(16)
    }
}

/// One piece of a 3×3 weight gradient: `vectors` vectors of output channels from vector
/// `v0`, input channels `c0 .. c0 + channels`.
#[derive(Clone, Copy)]
pub struct Weight3x3Piece {
    v0: usize,
    vectors: usize,
    c0: usize,
    channels: usize,
}

impl Weight3x3Piece {
    /// Accumulator vectors this piece keeps between rows.
    pub fn accumulators(&self) -> usize {
        self.vectors * self.channels * 9
    }
}

/// The pieces of a 3×3 weight gradient, which together cover every value once: two output
/// vectors × one input channel (18 accumulators), or one vector × two channels, with
/// one-channel pieces at the end.
pub fn weight_3x3_pieces(s: Weight3x3) -> Vec<Weight3x3Piece> {
    let vectors = s.vectors();
    let mut pieces = Vec::new();
    let mut v0 = 0;
    while v0 < vectors {
        let (width, per) = if vectors - v0 >= 2 { (2, 1) } else { (1, 2) };
        let mut c0 = 0;
        while c0 < s.c_in {
            let channels = per.min(s.c_in - c0);
            pieces.push(Weight3x3Piece {
                v0,
                vectors: width,
                c0,
                channels,
            });
            c0 += channels;
        }
        v0 += width;
    }
    pieces
}

/// Adds rows `rows` of one image to a piece's accumulators:
/// `acc[v][c·9 + tap] += Σ_{y, x} dT[v0 + v][y·w_out + x] · P[c0 + c][tap offset + y·row + x]`,
/// where `dT[vector][position]` holds 16 output channels. Output channels lie in the vector
/// lanes and the input is broadcast, so each vector of `dT` feeds 9 or 18 multiply-adds and
/// nothing is summed across lanes. The caller passes rows in order, so every sum runs over
/// rows and columns in that order.
///
/// # Safety
/// `d` holds `vectors·h_out·w_out·16` values, `p` `c_in·plane` values with
/// `2·row + 2 + (h_out - 1)·row + w_out <= plane`; `acc` holds the piece's
/// [`accumulators`](Weight3x3Piece::accumulators) and `rows.end <= h_out`.
#[target_feature(enable = "avx512f")]
pub unsafe fn weight_3x3_rows(
    s: Weight3x3,
    piece: Weight3x3Piece,
    rows: core::ops::Range<usize>,
    d: *const f32,
    p: *const f32,
    acc: &mut [__m512],
) {
    unsafe {
        match (piece.vectors, piece.channels) {
            (2, 1) => rows_block::<2, 1, 9, 2>(s, piece, rows, d, p, acc),
            (1, 2) => rows_block::<1, 2, 18, 4>(s, piece, rows, d, p, acc),
            _ => rows_block::<1, 1, 9, 4>(s, piece, rows, d, p, acc),
        }
    }
}

/// [`weight_3x3_rows`] for `MV` output vectors × `CB` input channels (`KB = 9·CB` taps), `X`
/// positions of a row at a time: their three taps of an input row share `X + 2` broadcasts
/// (tap `j` at position `x + i` reads what tap `j + 1` reads at `x + i - 1`), which halves
/// the loads per multiply-add when there is one output vector. Not inlined: with the versions
/// in one function, the accumulators spilled to the stack.
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn rows_block<const MV: usize, const CB: usize, const KB: usize, const X: usize>(
    s: Weight3x3,
    piece: Weight3x3Piece,
    rows: core::ops::Range<usize>,
    d: *const f32,
    p: *const f32,
    acc: &mut [__m512],
) {
    const { assert!(KB == 9 * CB && X <= 4) };
    assert!(acc.len() >= MV * KB);
    let positions = s.h_out * s.w_out;
    let mut sums: [[__m512; KB]; MV] =
        core::array::from_fn(|v| core::array::from_fn(|j| acc[v * KB + j]));
    let d = unsafe { d.add(piece.v0 * positions * 16) };
    let p = unsafe { p.add(piece.c0 * s.plane) };
    // `n` positions from `x`: each sum still takes positions in order.
    macro_rules! step {
        ($n:expr, $d_row:expr, $p_row:expr, $x:expr) => {{
            let dv: [[__m512; $n]; MV] = core::array::from_fn(|v| {
                core::array::from_fn(|i| unsafe {
                    _mm512_loadu_ps($d_row.add(v * positions * 16 + ($x + i) * 16))
                })
            });
            for c in 0..CB {
                for r in 0..3 {
                    let at = unsafe { $p_row.add(c * s.plane + r * s.row + $x) };
                    let b: [__m512; 6] = core::array::from_fn(|m| {
                        if m < $n + 2 {
                            _mm512_set1_ps(unsafe { *at.add(m) })
                        } else {
                            _mm512_setzero_ps()
                        }
                    });
                    for j in 0..3 {
                        for i in 0..$n {
                            for v in 0..MV {
                                let k = c * 9 + r * 3 + j;
                                sums[v][k] = _mm512_fmadd_ps(dv[v][i], b[i + j], sums[v][k]);
                            }
                        }
                    }
                }
            }
        }};
    }
    for y in rows {
        let d_row = unsafe { d.add(y * s.w_out * 16) };
        let p_row = unsafe { p.add(y * s.row) };
        let mut x = 0;
        while x + X <= s.w_out {
            step!(X, d_row, p_row, x);
            x += X;
        }
        while x < s.w_out {
            step!(1, d_row, p_row, x);
            x += 1;
        }
    }
    for (v, sums) in sums.iter().enumerate() {
        acc[v * KB..][..KB].copy_from_slice(sums);
    }
}

/// Writes a piece's accumulators (16 values each, as [`weight_3x3_rows`] leaves them) into
/// `dw[o][c][tap]` (`c_out·c_in·9` values, all of them once the pieces of
/// [`weight_3x3_pieces`] are written), dropping the padding channels.
pub fn write_3x3_piece(s: Weight3x3, piece: Weight3x3Piece, acc: &[f32], dw: &mut [f32]) {
    let k_len = s.c_in * 9;
    let per_vector = piece.channels * 9;
    for (i, lanes) in acc.chunks_exact(16).take(piece.accumulators()).enumerate() {
        let (v, j) = (i / per_vector, i % per_vector);
        let first = 16 * (piece.v0 + v);
        for (l, &value) in lanes.iter().enumerate().take(s.c_out.saturating_sub(first)) {
            dw[(first + l) * k_len + piece.c0 * 9 + j] = value;
        }
    }
}
