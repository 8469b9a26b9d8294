//! fedseg: 3×3 stride-1 convolutions by Winograd's F(2×2, 3×3) for `conv2d_stride1` (its
//! forward pass and its input gradient, which is such a convolution too): what the AVX-512
//! (`conv2d_winograd_avx512`) and AVX2 (`conv2d_winograd_avx2`) kernels share, and which of
//! them runs.
//!
//! Each 2×2 block of outputs (a tile) is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` of its 4×4 input patch
//! `d`: 16 products per input–output channel pair instead of 36. Per tile element the products
//! summed over input channels are one GEMM `M_e[c_out × tiles] = U_e[c_out × c_in] ·
//! V_e[c_in × tiles]`; the transforms cost a few additions per element. Tiles go in blocks of
//! whole tile rows, so a block's `V` and `M` stay in L2 between the input transform, the 16
//! GEMMs and the output transform. Vectors run along the tiles of a row: the input's even and
//! odd columns are split by permutes, and the outputs interleaved back the same way. The
//! weights are transformed once per call. With AVX2, convolutions whose rows hold 5 or more
//! 4×4 tiles take F(4×4, 3×3) (`conv2d_winograd4_avx2`) the same way.
//!
//! Every output is summed in an order that depends only on the shapes (so not on threads). Its
//! rounding differs from the direct sum's by a few units in the last place of the larger terms.

/// Tile elements (4 × 4).
pub const ELEMENTS: usize = 16;

/// The Winograd kernels of one instruction set (and tile size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Avx512,
    /// AVX2 and FMA: CPUs without AVX-512 (AMD before Zen 4, most Intel desktop parts).
    Avx2,
    /// AVX2 and FMA with F(4×4, 3×3) (`conv2d_winograd4_avx2`), where its tiles fit.
    Avx2Large,
}

impl Kernel {
    /// The kernel this CPU runs for a convolution of these sizes, if Winograd takes it (see
    /// [`Tiles::fit`], [`Tiles::fit_avx2`]), unless `BURN_FLEX_CONV_KERNEL` asks for none
    /// (`gemm`: the portable GEMM path; `direct`: the AVX-512 direct kernel) or for the AVX2
    /// ones (`avx2`, so that CPUs with AVX-512 test and measure them too; `avx2-f2`: AVX2 with
    /// F(2×2, 3×3) only). Read on every call, so a test or bench can compare them.
    pub fn chosen(s: &Tiles) -> Option<Kernel> {
        if !s.fit_avx2() {
            return None;
        }
        let asked = std::env::var("BURN_FLEX_CONV_KERNEL").unwrap_or_default();
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let avx2 = |large: bool| {
            avx2.then(|| {
                if large && super::conv2d_winograd4_avx2::fit(s) {
                    Kernel::Avx2Large
                } else {
                    Kernel::Avx2
                }
            })
        };
        match asked.as_str() {
            "gemm" | "direct" => None,
            "avx2" => avx2(true),
            "avx2-f2" => avx2(false),
            _ if std::is_x86_feature_detected!("avx512f") => s.fit().then_some(Kernel::Avx512),
            _ => avx2(true),
        }
    }

    /// Output channels per block of the element GEMMs, which [`Kernel::pack_weights`] pads to.
    fn mr(self) -> usize {
        match self {
            Kernel::Avx512 => super::conv2d_stride1_avx512::MR,
            Kernel::Avx2 | Kernel::Avx2Large => super::conv2d_winograd_avx2::MR,
        }
    }

    /// Tile elements.
    pub fn elements(self) -> usize {
        match self {
            Kernel::Avx512 | Kernel::Avx2 => ELEMENTS,
            Kernel::Avx2Large => super::conv2d_winograd4_avx2::ELEMENTS,
        }
    }

    /// Tile rows of the output.
    pub fn tile_rows(self, s: &Tiles) -> usize {
        match self {
            Kernel::Avx512 | Kernel::Avx2 => s.h_out / 2,
            Kernel::Avx2Large => s.h_out / 4,
        }
    }

    /// Tile rows per call of [`Kernel::block`].
    pub fn rows_per_block(self, s: &Tiles) -> usize {
        match self {
            Kernel::Avx512 | Kernel::Avx2 => s.rows_per_block(),
            Kernel::Avx2Large => super::conv2d_winograd4_avx2::rows_per_block(s),
        }
    }

    /// Values of scratch one call of [`Kernel::block`] needs.
    pub fn scratch(self, s: &Tiles) -> usize {
        match self {
            Kernel::Avx512 => super::conv2d_winograd_avx512::scratch(s),
            Kernel::Avx2 => super::conv2d_winograd_avx2::scratch(s),
            Kernel::Avx2Large => super::conv2d_winograd4_avx2::scratch(s),
        }
    }

    /// The transformed weights of a convolution with `c_out × c_in` 3×3 kernels, `kernel(o, c)`
    /// giving one (row-major), as this kernel's [`Kernel::block`] reads them: see
    /// [`pack_weights`]. Their length is `elements · ⌈c_out / mr⌉ · c_in · mr`.
    pub fn pack_weights(
        self,
        c_out: usize,
        c_in: usize,
        kernel: impl Fn(usize, usize) -> [f32; 9] + Send + Sync,
    ) -> Vec<f32> {
        match self {
            Kernel::Avx512 | Kernel::Avx2 => {
                pack_weights(self.mr(), c_out, c_in, kernel, transform_kernel)
            }
            Kernel::Avx2Large => pack_weights(
                self.mr(),
                c_out,
                c_in,
                kernel,
                super::conv2d_winograd4_avx2::transform_kernel,
            ),
        }
    }

    /// Its packed weights' length for these channel counts.
    pub fn packed_len(self, c_out: usize, c_in: usize) -> usize {
        self.elements() * c_out.div_ceil(self.mr()) * c_in * self.mr()
    }

    /// Output rows from tile row `first` (a block of [`Kernel::rows_per_block`]) of the
    /// convolution of the padded planes `p` by `packed`.
    ///
    /// # Safety
    /// `p` holds `c_in` planes of `plane ≥ (h_out + 2)·row + 2` values with rows of
    /// `row ≥ w_out + 2`; `packed` comes from [`Kernel::pack_weights`] of this kernel for these
    /// channel counts; `scratch` holds [`Kernel::scratch`] values; `out` holds `c_out` planes
    /// of `h_out·w_out` values, `bias` (if any) `c_out` values, and no other thread writes these
    /// rows; the kernel is one [`Kernel::chosen`] gave for these sizes.
    pub unsafe fn block(
        self,
        s: Tiles,
        p: *const f32,
        packed: *const f32,
        out: Out<'_>,
        first: usize,
        scratch: *mut f32,
    ) {
        unsafe {
            match self {
                Kernel::Avx512 => {
                    super::conv2d_winograd_avx512::block(s, p, packed, out, first, scratch)
                }
                Kernel::Avx2 => {
                    super::conv2d_winograd_avx2::block(s, p, packed, out, first, scratch)
                }
                Kernel::Avx2Large => {
                    super::conv2d_winograd4_avx2::block(s, p, packed, out, first, scratch)
                }
            }
        }
    }
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
/// giving one (row-major) and `transform` turning one into its `E` tile elements: per tile
/// element, `[c_out / mr][c_in][mr]`, zero-padded to whole blocks of `mr` output channels.
/// Each kernel is transformed once, blocks of output channels in parallel (transformed once
/// per element, the 128-channel layers' weights took longer than their convolution).
fn pack_weights<const E: usize>(
    mr: usize,
    c_out: usize,
    c_in: usize,
    kernel: impl Fn(usize, usize) -> [f32; 9] + Send + Sync,
    transform: fn([f32; 9]) -> [f32; E],
) -> Vec<f32> {
    let per = c_out.div_ceil(mr) * c_in * mr;
    // [block][element][c][mr], moved to [element][block][c][mr] below.
    let mut blocks = vec![0.0f32; E * per];
    let fill = |b: usize, block: &mut [f32]| {
        for r in 0..mr.min(c_out - b * mr) {
            for c in 0..c_in {
                let u = transform(kernel(b * mr + r, c));
                for (e, &v) in u.iter().enumerate() {
                    block[(e * c_in + c) * mr + r] = v;
                }
            }
        }
    };
    let size = E * c_in * mr;
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
    let mut packed = Vec::with_capacity(E * per);
    for e in 0..E {
        for block in blocks.chunks_exact(size) {
            packed.extend_from_slice(&block[e * c_in * mr..][..c_in * mr]);
        }
    }
    packed
}

/// F(3×3, 2×2)'s [`weight_gradient`] constants: its `Bᵀ` is the forward pass's with its last
/// row negated and its `G` has halves in its middle rows, left out of `U`: so element `(i, j)`
/// is scaled by `f_i · f_j`, `f = [1, ½, ½, -1]` (exact: powers of two), then `Aᵀ M A` with
/// this `Aᵀ`.
pub const WEIGHT_SCALE: [f32; 4] = [1.0, 0.5, 0.5, -1.0];
pub const WEIGHT_AT: [[f32; 4]; 3] = [
    [1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 1.0],
];

/// The 3×3 weight gradient `[c_out][c_in][3][3]` from its transformed domain `m[e][c_out ×
/// c_in]` (`N × N` elements, summed over tiles and images) as the kernels' `weight_block`
/// leaves it: element `(i, j)` scaled by `f[i] · f[j]`, then `Aᵀ M A` with `at` (3 × `N`).
pub fn weight_gradient<const N: usize>(
    m: &[f32],
    c_out: usize,
    c_in: usize,
    f: [f32; N],
    at: [[f32; N]; 3],
) -> Vec<f32> {
    let per = c_out * c_in;
    assert_eq!(m.len(), N * N * per);
    let mut dw = vec![0.0f32; per * 9];
    for (pair, dw) in dw.chunks_exact_mut(9).enumerate() {
        let e: [[f32; N]; N] = core::array::from_fn(|i| {
            core::array::from_fn(|j| f[i] * f[j] * m[(N * i + j) * per + pair])
        });
        for ky in 0..3 {
            // Aᵀ down the columns, then along the row.
            let row: [f32; N] = core::array::from_fn(|j| (0..N).map(|i| at[ky][i] * e[i][j]).sum());
            for kx in 0..3 {
                dw[3 * ky + kx] = (0..N).map(|j| at[kx][j] * row[j]).sum();
            }
        }
    }
    dw
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
    /// Tiles per tile row.
    pub fn across(&self) -> usize {
        self.w_out / 2
    }
    /// Tile rows per block: the block's `V` and `M` (16 values per tile and channel) within
    /// about 1 MiB, so they stay in L2 from one stage to the next.
    pub fn rows_per_block(&self) -> usize {
        self.rows_within(16384)
    }
    /// Tile rows per block of the weight gradient: twice as many, as its sums over a block's
    /// tiles are short at many channels (64 tiles at 128 + 128) and each ends in a sum across
    /// lanes and a store. AVX2 conv bench, all 14 weight gradients, by budget: 4096: 108–110
    /// ms, 8192: 82–86, 16384: 60–80 (a noisy host), 32768: 64–65, 65536: 66–70.
    pub fn weight_rows_per_block(&self) -> usize {
        self.rows_within(32768)
    }
    /// Tile rows of about `budget / (c_in + c_out)` tiles: at least one, at most all; pairs of
    /// them where the AVX2 kernels put two rows in a vector ([`Tiles::two_rows`]), unless the
    /// block holds them all.
    fn rows_within(&self, budget: usize) -> usize {
        let tiles = (budget / (self.c_in + self.c_out)).max(1);
        let all = self.h_out / 2;
        let rows = (tiles / self.across()).clamp(1, all);
        if self.two_rows() && rows < all {
            (rows & !1).max(2)
        } else {
            rows
        }
    }
    /// Whether the AVX-512 kernels take the convolution: whole tiles, at least 8 per row, and
    /// 16 or more channels in and out — every 3×3 convolution of the `cpu` U-Net at 128 px but
    /// its first (1 → 16 maps), where the transforms would cost more than the products they
    /// save. At 16 channels and 128 px it measured level with the direct kernel to 10 % faster,
    /// at 32 and more channels 25–40 % faster.
    pub fn fit(&self) -> bool {
        self.fit_avx2() && self.across() >= 8
    }

    /// Whether the AVX2 kernels take it: whole tiles, at least 3 per row, 16 or more channels.
    /// Rows of 3 or 4 tiles (6 and 8 px) go two to a vector ([`Tiles::two_rows`]), longer rows
    /// are padded to whole vectors (5–7 tiles fill 62–88 % of one). Against `gemm`: 10–40 %
    /// faster at 16 channels and 128 px, about twice as fast at 32 and more channels; at the
    /// 8-px bottleneck (128 → 256, 256 → 256 maps, which took as long as the 128-px layers on
    /// `gemm`) about twice as fast too.
    pub fn fit_avx2(&self) -> bool {
        self.h_out % 2 == 0
            && self.w_out % 2 == 0
            && self.across() >= 3
            && self.c_in >= 16
            && self.c_out >= 16
    }

    /// Whether the AVX2 kernels hold two tile rows (of 3 or 4 tiles) in each vector, one per
    /// 128-bit lane.
    pub fn two_rows(&self) -> bool {
        self.across() <= 4
    }
}

/// Values from one tile element's `channels × tiles` matrix to the next: a multiple of 16
/// (aligned vectors stay aligned) that is not one of 1024. The transforms touch all 16 elements
/// of a tile at once; 16 streams 4 KiB apart fall into the same L1 sets, which made them
/// miss (the transforms took as long as the GEMMs).
pub fn stride(channels: usize, tiles: usize) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The identities behind the tiles: `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` gives the four outputs of
    /// a 3×3 correlation over a 4×4 patch.
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
