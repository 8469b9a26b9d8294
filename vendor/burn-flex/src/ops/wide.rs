//! fedseg: burn-flex's own loops compiled for the CPU's widest vectors.
//!
//! Generic loops (the elementwise passes of `parallel.rs`, batch-norm sums, ...) are compiled
//! for the target's baseline, which on x86-64 is SSE2: 4-lane vectors at best, and scalar code
//! where a loop reloaded a captured value for every element because it could not tell that
//! the output slice does not alias it. `wide1`/`wide2`/`wide3` call a closure from inside a
//! function compiled for AVX-512 (or AVX2 + FMA) when this CPU has it; the closure is inlined
//! there and vectorised at that width. The slices stay arguments of that function, so LLVM
//! knows a `&mut` slice aliases nothing else the closure reads.
//!
//! Results do not depend on the width: Rust neither reassociates nor contracts (into FMA)
//! floating-point arithmetic, so every element is computed by the same operations in the same
//! order. [`limit_vector_width`] caps the width (tests check that claim with it, and it runs
//! the narrower versions on a CPU that has AVX-512).

use core::sync::atomic::{AtomicU8, Ordering};

/// The widest vectors these loops may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VectorWidth {
    /// The target's baseline (SSE2 on x86-64).
    Baseline = 0,
    /// AVX2 with FMA.
    Avx2 = 1,
    /// AVX-512F (the default where the CPU has it).
    Avx512 = 2,
}

static LIMIT: AtomicU8 = AtomicU8::new(VectorWidth::Avx512 as u8);

/// Caps the vector width of burn-flex's own loops for the whole process (default: the widest
/// the CPU has). Results are the same at every width; this is for tests and benchmarks.
pub fn limit_vector_width(width: VectorWidth) {
    LIMIT.store(width as u8, Ordering::Relaxed);
}

/// Whether `width` is allowed and this CPU has it.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[inline(always)]
pub(crate) fn usable(width: VectorWidth) -> bool {
    LIMIT.load(Ordering::Relaxed) >= width as u8
        && match width {
            VectorWidth::Baseline => true,
            VectorWidth::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            VectorWidth::Avx512 => std::is_x86_feature_detected!("avx512f"),
        }
}

macro_rules! wide {
    ($(#[$doc:meta])* $name:ident, $avx512:ident, $avx2:ident, $($arg:ident: $ty:ident),+) => {
        $(#[$doc])*
        #[inline(always)]
        pub(crate) fn $name<$($ty,)+ R>($($arg: $ty,)+ f: impl FnOnce($($ty),+) -> R) -> R {
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            {
                if usable(VectorWidth::Avx512) {
                    // SAFETY: the CPU has AVX-512F, the only feature `$avx512` is built for.
                    return unsafe { $avx512($($arg,)+ f) };
                }
                if usable(VectorWidth::Avx2) {
                    // SAFETY: the CPU has AVX2 and FMA, the features `$avx2` is built for.
                    return unsafe { $avx2($($arg,)+ f) };
                }
            }
            f($($arg),+)
        }

        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        #[target_feature(enable = "avx512f")]
        unsafe fn $avx512<$($ty,)+ R>($($arg: $ty,)+ f: impl FnOnce($($ty),+) -> R) -> R {
            f($($arg),+)
        }

        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<$($ty,)+ R>($($arg: $ty,)+ f: impl FnOnce($($ty),+) -> R) -> R {
            f($($arg),+)
        }
    };
}

wide!(
    /// `f(a)`, vectorised for this CPU's widest vectors.
    wide1, avx512_1, avx2_1, a: A
);
wide!(
    /// `f(a, b)`, vectorised for this CPU's widest vectors.
    wide2, avx512_2, avx2_2, a: A, b: B
);
wide!(
    /// `f(a, b, c)`, vectorised for this CPU's widest vectors.
    wide3, avx512_3, avx2_3, a: A, b: B, c: C
);

/// `$vis fn $name(args) -> R { body }`, the body compiled three times (AVX-512, AVX2 + FMA,
/// baseline) and the best one this CPU runs called. Unlike `wide1`..`wide3`, which rely on LLVM
/// inlining their closure, the body itself is in each version: for kernels too large for the
/// inliner to take whole.
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? $body
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? $body
                if $crate::ops::wide::usable($crate::ops::wide::VectorWidth::Avx512) {
                    // SAFETY: the CPU has AVX-512F, the only feature `avx512` is built for.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::ops::wide::usable($crate::ops::wide::VectorWidth::Avx2) {
                    // SAFETY: the CPU has AVX2 and FMA, the features `avx2` is built for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body
        }
    };
}
pub(crate) use multiversion;
