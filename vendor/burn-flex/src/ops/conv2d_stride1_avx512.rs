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
//!   [`MR`] output channels × 48 positions (24 accumulators).
//! - [`weight_grid`]: `dW[c_out, k] = Σ_positions dY[c_out, positions] · P[k, positions]`,
//!   blocks of 4 output channels × 6 `k`, vectors along the positions, reduced at the end.
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

/// Whether this CPU runs these kernels and `BURN_FLEX_CONV_KERNEL=gemm` does not ask for the
/// portable GEMM path instead (read on every call, so a test or bench can compare both).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::env::var_os("BURN_FLEX_CONV_KERNEL").is_none_or(|v| v != "gemm")
}

/// The first `len` of 16 lanes.
fn lanes(len: usize) -> __mmask16 {
    if len >= 16 {
        0xFFFF
    } else {
        ((1u32 << len) - 1) as __mmask16
    }
}

/// Weights `[c_out][k]` (row stride `k_len`) packed as `[c_out / MR][k][MR]`, zero-padded to
/// whole blocks; `at(o, k)` gives the weight of output channel `o` at step `k`.
pub fn pack(c_out: usize, k_len: usize, at: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let blocks = c_out.div_ceil(MR);
    let mut packed = vec![0.0f32; blocks * k_len * MR];
    for o in 0..c_out {
        let (b, r) = (o / MR, o % MR);
        for k in 0..k_len {
            packed[(b * k_len + k) * MR + r] = at(o, k);
        }
    }
    packed
}

/// One convolution's sizes as the kernels see them.
#[derive(Clone, Copy)]
pub struct Shape {
    /// Output channels (rows of `out`).
    pub c_out: usize,
    /// Input channels (planes of `P`).
    pub c_in: usize,
    /// Values per input plane.
    pub plane: usize,
    /// Output positions per channel (row stride of `out`).
    pub grid: usize,
}

/// Output positions `chunk·CHUNK ..` of `out[c_out × grid] = Σ_k W · P` where step
/// `k = c·taps + t` reads `P[c·plane + offsets[t] + position]`.
///
/// # Safety
/// `p` holds `c_in` planes of `plane` values and every `offsets[t] + position < plane` for
/// positions below `grid`; `packed` comes from [`pack`] with `k = c_in·offsets.len()`; `out`
/// holds `c_out·grid` values and no other thread writes this chunk.
#[target_feature(enable = "avx512f")]
pub unsafe fn conv_grid(
    s: Shape,
    offsets: &[usize],
    p: *const f32,
    packed: *const f32,
    out: *mut f32,
    chunk: usize,
) {
    let k_len = s.c_in * offsets.len();
    let start = chunk * CHUNK;
    let end = (start + CHUNK).min(s.grid);
    for block in 0..s.c_out.div_ceil(MR) {
        let rows = (s.c_out - block * MR).min(MR);
        let w = unsafe { packed.add(block * k_len * MR) };
        let mut n = start;
        while n < end {
            let len = (end - n).min(NR);
            let masks = [
                lanes(len),
                lanes(len.saturating_sub(16)),
                lanes(len.saturating_sub(32)),
            ];
            unsafe {
                conv_block(
                    s,
                    offsets,
                    p.add(n),
                    w,
                    out.add(block * MR * s.grid + n),
                    rows,
                    masks,
                );
            }
            n += NR;
        }
    }
}

/// `MR × NR` outputs through all `k`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn conv_block(
    s: Shape,
    offsets: &[usize],
    p: *const f32,
    mut w: *const f32,
    out: *mut f32,
    rows: usize,
    masks: [__mmask16; NV],
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
        for v in 0..NV {
            unsafe { _mm512_mask_storeu_ps(out.add(r * s.grid + 16 * v), masks[v], acc[v]) };
        }
    }
}

/// Output channels per block of [`weight_grid`].
pub const WM: usize = 4;
/// Steps `k` per block of [`weight_grid`].
const WK: usize = 6;

/// For output channels `block·WM ..` (at most [`WM`]) and every `k < starts.len()`:
/// `dw[o·k_len + k] = Σ_{n < grid} d[o·grid + n] · P[starts[k] + n]`.
///
/// # Safety
/// `d` holds `c_out·grid` values, `p` at least `starts[k] + grid` for every `k`; `dw` holds
/// `c_out·starts.len()` values and no other thread writes this block's rows.
#[target_feature(enable = "avx512f")]
pub unsafe fn weight_grid(
    c_out: usize,
    grid: usize,
    starts: &[usize],
    d: *const f32,
    p: *const f32,
    dw: *mut f32,
    block: usize,
) {
    let k_len = starts.len();
    let o0 = block * WM;
    // Rows and steps past the end repeat the last one; their sums are not stored.
    let rows: [*const f32; WM] =
        core::array::from_fn(|r| unsafe { d.add((o0 + r).min(c_out - 1) * grid) });
    for k0 in (0..k_len).step_by(WK) {
        let cols: [*const f32; WK] =
            core::array::from_fn(|t| unsafe { p.add(starts[(k0 + t).min(k_len - 1)]) });
        let mut acc = [[_mm512_setzero_ps(); WK]; WM];
        let mut n = 0;
        while n < grid {
            let m = lanes(grid - n);
            let dv: [__m512; WM] =
                core::array::from_fn(|r| unsafe { _mm512_maskz_loadu_ps(m, rows[r].add(n)) });
            for t in 0..WK {
                let pv = unsafe { _mm512_maskz_loadu_ps(m, cols[t].add(n)) };
                for r in 0..WM {
                    acc[r][t] = _mm512_fmadd_ps(dv[r], pv, acc[r][t]);
                }
            }
            n += 16;
        }
        for r in 0..WM.min(c_out - o0) {
            for t in 0..WK.min(k_len - k0) {
                unsafe { *dw.add((o0 + r) * k_len + k0 + t) = _mm512_reduce_add_ps(acc[r][t]) };
            }
        }
    }
}
