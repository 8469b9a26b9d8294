//! The CPU backend's 2D convolution (ours for stride 1: vendor/burn-flex conv2d_stride1.rs;
//! upstream's for the rest) and transposed convolution (ours for stride = kernel) against a
//! direct f64 sum: forward and every gradient, for the U-Net's shapes and the edges of the
//! fast paths. Shared by `conv.rs` (the kernels this CPU picks), `conv_avx2.rs` (what a CPU
//! with AVX2 but not AVX-512 picks) and `conv_gemm.rs` (the portable GEMM path).

use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Tensor, TensorData};
use fedseg_site::train::{DeviceKind, device_for};

use crate::common::to_vec;

struct Case {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [(usize, usize); 2],
}

impl Case {
    fn out(&self) -> [usize; 2] {
        let size = |i: usize, n: usize| {
            (n + self.padding[i].0 + self.padding[i].1 - self.kernel[i]) / self.stride[i] + 1
        };
        [size(0, self.h), size(1, self.w)]
    }
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

/// (output, dL/dx, dL/dw, dL/db) for L = sum(output · upstream), summed directly in f64.
fn reference(
    c: &Case,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    up: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let [ho, wo] = c.out();
    let [kh, kw] = c.kernel;
    let mut y = vec![0.0f64; c.batch * c.c_out * ho * wo];
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    let mut db = vec![0.0f64; b.len()];
    for n in 0..c.batch {
        for o in 0..c.c_out {
            for oy in 0..ho {
                for ox in 0..wo {
                    let yi = ((n * c.c_out + o) * ho + oy) * wo + ox;
                    let g = f64::from(up[yi]);
                    let mut s = f64::from(b[o]);
                    db[o] += g;
                    for i in 0..c.c_in {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * c.stride[0] + ky) as isize - c.padding[0].0 as isize;
                                let ix = (ox * c.stride[1] + kx) as isize - c.padding[1].0 as isize;
                                if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                                    continue;
                                }
                                let xi = ((n * c.c_in + i) * c.h + iy as usize) * c.w + ix as usize;
                                let wi = ((o * c.c_in + i) * kh + ky) * kw + kx;
                                s += f64::from(x[xi]) * f64::from(w[wi]);
                                dx[xi] += g * f64::from(w[wi]);
                                dw[wi] += g * f64::from(x[xi]);
                            }
                        }
                    }
                    y[yi] = s;
                }
            }
        }
    }
    (y, dx, dw, db)
}

fn assert_close(what: &str, got: &[f32], want: &[f64], scale: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * scale.max(1.0);
        assert!(
            (f64::from(*g) - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tolerance {tol})"
        );
    }
}

/// An operation's inputs and what it gave: x, weight, bias and the upstream gradient (values
/// seeded by `seed`), the output and the gradients of L = sum(output · upstream).
struct Run {
    xs: Vec<f32>,
    ws: Vec<f32>,
    bs: Vec<f32>,
    ups: Vec<f32>,
    y: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
}

fn run(
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    y_shape: [usize; 4],
    seed: usize,
    op: impl Fn(Tensor<4>, Tensor<4>, Tensor<1>) -> Tensor<4>,
) -> Run {
    let device = device_for(DeviceKind::Cpu).unwrap().autodiff();
    let c_out = y_shape[1];
    let xs = values(x_shape.iter().product(), seed);
    let ws = values(w_shape.iter().product(), seed + 1);
    let bs = values(c_out, seed + 2);
    let ups = values(y_shape.iter().product(), seed + 3);
    let x: Tensor<4> =
        Tensor::from_data(TensorData::new(xs.clone(), x_shape), &device).require_grad();
    let w: Tensor<4> =
        Tensor::from_data(TensorData::new(ws.clone(), w_shape), &device).require_grad();
    let b: Tensor<1> =
        Tensor::from_data(TensorData::new(bs.clone(), [c_out]), &device).require_grad();
    let up: Tensor<4> = Tensor::from_data(TensorData::new(ups.clone(), y_shape), &device);
    let y = op(x.clone(), w.clone(), b.clone());
    assert_eq!(y.dims(), y_shape);
    let grads = (y.clone() * up).sum().backward();
    Run {
        y: to_vec(y),
        dx: to_vec(x.grad(&grads).expect("x gradient")),
        dw: to_vec(w.grad(&grads).expect("weight gradient")),
        db: to_vec(b.grad(&grads).expect("bias gradient")),
        xs,
        ws,
        bs,
        ups,
    }
}

fn check(c: &Case) {
    let [kh, kw] = c.kernel;
    let [ho, wo] = c.out();
    let options = ConvOptions::new_with_padding(c.stride, c.padding, [1, 1], 1);
    let r = run(
        [c.batch, c.c_in, c.h, c.w],
        [c.c_out, c.c_in, kh, kw],
        [c.batch, c.c_out, ho, wo],
        1,
        |x, w, b| conv2d(x, w, Some(b), options.clone()),
    );
    let (want_y, want_dx, want_dw, want_db) = reference(c, &r.xs, &r.ws, &r.bs, &r.ups);
    // Sums over more terms carry more f32 rounding.
    let terms = (c.c_in * kh * kw) as f64;
    let batch_terms = (c.batch * ho * wo) as f64;
    assert_close("output", &r.y, &want_y, terms.sqrt());
    assert_close("dL/dx", &r.dx, &want_dx, (c.c_out * kh * kw) as f64);
    assert_close("dL/dw", &r.dw, &want_dw, batch_terms.sqrt());
    assert_close("dL/db", &r.db, &want_db, batch_terms.sqrt());
}

/// Stride-1 convolutions: the U-Net's shapes and every edge of their kernels.
pub fn stride_one() {
    let same = |batch, c_in, c_out, size| Case {
        batch,
        c_in,
        c_out,
        h: size,
        w: size,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [(1, 1), (1, 1)],
    };
    // The U-Net's 3×3 "same" convolutions: a batch split over threads, and one image alone
    // (the GEMM itself parallel).
    check(&same(4, 3, 5, 9));
    check(&same(1, 6, 4, 12));
    check(&same(3, 16, 8, 8));
    // No padding, a non-square kernel with its own padding, a non-square image.
    check(&Case {
        padding: [(0, 0), (0, 0)],
        ..same(2, 2, 3, 7)
    });
    check(&Case {
        w: 11,
        kernel: [5, 3],
        padding: [(2, 2), (1, 1)],
        ..same(2, 3, 2, 6)
    });
    // Several chunks of positions, channel counts that fill no block of the AVX-512 kernels
    // (8 and 4 output channels, 6 steps), one image alone (chunks and blocks in parallel).
    check(&same(1, 17, 20, 40));
    check(&same(2, 1, 3, 33));
    // The weight gradient's broadcast kernel (more than 16 output channels): two vectors with a
    // one-vector piece left over, an odd number of input channels, several bands of rows, and
    // no padding.
    check(&same(2, 5, 40, 20));
    check(&Case {
        padding: [(0, 0), (0, 0)],
        ..same(3, 3, 33, 12)
    });
    // Winograd (3×3, even output of 16 or more columns, 16 or more channels in and out): a
    // tile row of one whole vector of tiles and a part one (with AVX2, F(4×4): 8 + 2 tiles),
    // output channels that fill no block; rows of 8 tiles (half a vector); then a non-square
    // image in two blocks of tile rows, one image alone (the blocks in parallel).
    check(&same(2, 32, 36, 40));
    check(&same(2, 16, 24, 16));
    // AVX2's vectors of 8 tiles: 21 per row (two and a part), 21 rows in one block (an odd
    // number of vectors, so one alone at the end), output channels that fill no block of 6.
    check(&same(1, 16, 20, 42));
    check(&Case {
        h: 12,
        w: 36,
        ..same(1, 96, 90, 0)
    });
    // AVX2's F(4×4, 3×3) (rows of whole vectors of 8 four-wide tiles): one vector per row,
    // output channels that fill no block of 6; then two vectors per row, a non-square image in
    // two blocks of tile rows (5 and 1), one image alone (the blocks in parallel).
    check(&same(2, 16, 20, 32));
    check(&Case {
        h: 24,
        w: 64,
        ..same(1, 48, 40, 0)
    });
    // F(4×4) in a partial vector: 6 tiles per row (24 px, simulate's fourth level), and 5
    // (its smallest row) in one image of 2 tile rows.
    check(&same(2, 16, 20, 24));
    check(&Case {
        h: 8,
        w: 20,
        ..same(1, 32, 24, 0)
    });
    // AVX2's rows of 4 tiles, two per vector (8 px wide): two images; then one image of 28
    // tile rows in blocks of 10, 10 and 8 (the budget gives 11 rows, an odd number) for the
    // forward pass and of 22 and 6 for the weight gradient.
    check(&same(2, 16, 24, 8));
    check(&Case {
        h: 56,
        w: 8,
        ..same(1, 192, 180, 0)
    });
    // AVX2's short rows (`coordinator simulate`'s 96-px images end in 12- and 6-px levels):
    // 6 tiles padded to a vector of 8; 5 tiles with an odd number of tile rows (7); rows of 3
    // tiles two per vector with an odd number of tile rows (3, the last vector's high lane
    // empty); rows of 4 tiles likewise; then one image of 23 tile rows of 3 in blocks of 14
    // and 9 for the forward pass and in one odd block of 23 for the weight gradient. Their
    // weight gradients sum several whole images in one block: all of a batch (12 and 6 px),
    // then 7 images of 6 px at 384 → 360 maps in groups of 5 and 2.
    check(&same(2, 16, 20, 12));
    check(&Case {
        h: 14,
        w: 10,
        ..same(1, 24, 18, 0)
    });
    check(&same(2, 16, 20, 6));
    check(&Case {
        h: 6,
        w: 8,
        ..same(2, 16, 18, 0)
    });
    check(&Case {
        h: 46,
        w: 6,
        ..same(1, 192, 180, 0)
    });
    check(&same(7, 384, 360, 6));
    // Padding beyond the kernel: the input gradient cannot be a convolution of the padded
    // output gradient.
    check(&Case {
        padding: [(3, 3), (2, 2)],
        ..same(2, 3, 2, 6)
    });
    // 1×1: the U-Net's deep-supervision heads (16 maps → 3 classes), and one with padding.
    let pointwise = |batch, c_in, c_out, size| Case {
        kernel: [1, 1],
        padding: [(0, 0), (0, 0)],
        ..same(batch, c_in, c_out, size)
    };
    check(&pointwise(3, 16, 3, 20));
    check(&pointwise(1, 5, 9, 7));
    check(&Case {
        padding: [(1, 1), (2, 2)],
        ..pointwise(2, 3, 2, 6)
    });
}

/// Convolutions the stride-1 path leaves to upstream.
pub fn others() {
    let base = Case {
        batch: 2,
        c_in: 3,
        c_out: 4,
        h: 8,
        w: 7,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [(1, 1), (1, 1)],
    };
    // Strided and asymmetric padding take upstream's code (whose weight gradient is itself a
    // convolution, ours where it has stride 1).
    check(&Case {
        stride: [2, 2],
        ..base
    });
    check(&Case {
        padding: [(1, 0), (0, 1)],
        ..base
    });
    check(&Case {
        kernel: [1, 1],
        stride: [2, 2],
        padding: [(0, 0), (0, 0)],
        ..base
    });
}

/// A transposed convolution `[c_in → c_out]`, square kernel, stride and padding.
struct Transposed {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Transposed {
    fn out(&self) -> [usize; 2] {
        let size = |n: usize| (n - 1) * self.stride + self.kernel - 2 * self.padding;
        [size(self.h), size(self.w)]
    }
}

/// (output, dL/dx, dL/dw, dL/db) of a transposed convolution for L = sum(output · upstream):
/// each input pixel scatters `x · w[c_in, c_out]` into the kernel-sized window at
/// `stride · position - padding`, summed directly in f64.
fn transposed_reference(
    c: &Transposed,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    up: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let [ho, wo] = c.out();
    let k = c.kernel;
    let mut y = vec![0.0f64; c.batch * c.c_out * ho * wo];
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    let mut db = vec![0.0f64; b.len()];
    for n in 0..c.batch {
        for o in 0..c.c_out {
            for p in 0..ho * wo {
                let yi = (n * c.c_out + o) * ho * wo + p;
                y[yi] += f64::from(b[o]);
                db[o] += f64::from(up[yi]);
            }
        }
        for i in 0..c.c_in {
            for iy in 0..c.h {
                for ix in 0..c.w {
                    let xi = ((n * c.c_in + i) * c.h + iy) * c.w + ix;
                    for o in 0..c.c_out {
                        for ky in 0..k {
                            for kx in 0..k {
                                let oy = (iy * c.stride + ky) as isize - c.padding as isize;
                                let ox = (ix * c.stride + kx) as isize - c.padding as isize;
                                if oy < 0 || ox < 0 || oy >= ho as isize || ox >= wo as isize {
                                    continue;
                                }
                                let yi = ((n * c.c_out + o) * ho + oy as usize) * wo + ox as usize;
                                let wi = ((i * c.c_out + o) * k + ky) * k + kx;
                                let g = f64::from(up[yi]);
                                y[yi] += f64::from(x[xi]) * f64::from(w[wi]);
                                dx[xi] += g * f64::from(w[wi]);
                                dw[wi] += g * f64::from(x[xi]);
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw, db)
}

/// `grad_as_slice`: the output passes through a concatenation and back out, so its gradient
/// arrives as a channel slice of a larger tensor (as in the U-Net's decoder), not contiguous.
fn check_transposed(c: &Transposed, grad_as_slice: bool) {
    let k = c.kernel;
    let [ho, wo] = c.out();
    let options = ConvTransposeOptions::new(
        [c.stride, c.stride],
        [c.padding, c.padding],
        [0, 0],
        [1, 1],
        1,
    );
    let r = run(
        [c.batch, c.c_in, c.h, c.w],
        [c.c_in, c.c_out, k, k],
        [c.batch, c.c_out, ho, wo],
        5,
        |x, w, b| {
            let y = conv_transpose2d(x, w, Some(b), options.clone());
            if !grad_as_slice {
                return y;
            }
            let [n, _, h, w] = y.dims();
            let extra = Tensor::<4>::ones([n, 2, h, w], &y.device());
            Tensor::cat(vec![y, extra], 1).narrow(1, 0, c.c_out)
        },
    );
    let (want_y, want_dx, want_dw, want_db) = transposed_reference(c, &r.xs, &r.ws, &r.bs, &r.ups);
    let batch_terms = (c.batch * ho * wo) as f64;
    assert_close("transposed output", &r.y, &want_y, (c.c_in * k * k) as f64);
    assert_close(
        "transposed dL/dx",
        &r.dx,
        &want_dx,
        (c.c_out * k * k) as f64,
    );
    assert_close("transposed dL/dw", &r.dw, &want_dw, batch_terms.sqrt());
    assert_close("transposed dL/db", &r.db, &want_db, batch_terms.sqrt());
}

/// Transposed convolutions: stride = kernel takes the tiled path (vendor/burn-flex
/// conv_transpose2d_tiled.rs), the rest upstream's.
pub fn transposed() {
    let up = |batch, c_in, c_out, h, w, kernel| Transposed {
        batch,
        c_in,
        c_out,
        h,
        w,
        kernel,
        stride: kernel,
        padding: 0,
    };
    // The U-Net's 2×2 up-convolutions (images in parallel), one image alone with a 3×3 tile
    // (the GEMM itself parallel), and a tile of one pixel.
    check_transposed(&up(3, 8, 4, 5, 6, 2), false);
    check_transposed(&up(1, 3, 5, 4, 4, 3), false);
    check_transposed(&up(2, 4, 3, 3, 5, 1), false);
    // Its gradient a channel slice (read in place), with several images and with one.
    check_transposed(&up(3, 8, 4, 5, 6, 2), true);
    check_transposed(&up(1, 3, 5, 4, 4, 3), true);
    // Overlapping windows and padding: upstream's code.
    check_transposed(
        &Transposed {
            stride: 2,
            padding: 1,
            ..up(2, 3, 2, 4, 5, 3)
        },
        false,
    );
}
