//! fedseg: elementwise passes over large contiguous buffers, split across rayon's threads.
//!
//! Upstream runs scalar, unary and binary elementwise ops on the calling thread. With the
//! convolutions parallel, those passes (LeakyReLU, its gradient, gradient accumulation, ...)
//! were where a U-Net training step on 2 cores left one core idle: a third of its wall time.
//! Each element is computed the same way whatever the split, so results do not depend on the
//! number of threads.

use alloc::vec::Vec;
use core::mem::MaybeUninit;

use super::wide::{wide1, wide2, wide3};

/// Below this many elements a pass stays on the calling thread: handing it out costs more
/// than it saves.
const MIN_PARALLEL: usize = 1 << 16;
/// Elements per task: enough to amortise the hand-out, few enough to balance the threads.
const CHUNK: usize = 1 << 14;

fn parallel(len: usize) -> bool {
    #[cfg(feature = "rayon")]
    {
        len >= MIN_PARALLEL && rayon::current_num_threads() > 1
    }
    #[cfg(not(feature = "rayon"))]
    {
        let _ = len;
        false
    }
}

/// `f` over consecutive pieces of `data`, together covering all of it.
pub(crate) fn for_each_mut<E: Send>(data: &mut [E], f: impl Fn(&mut [E]) + Send + Sync) {
    #[cfg(feature = "rayon")]
    if parallel(data.len()) {
        use rayon::prelude::*;
        data.par_chunks_mut(CHUNK).for_each(|d| wide1(d, &f));
        return;
    }
    wide1(data, f)
}

/// `f(dst piece, src piece)` over matching pieces of `dst` and `src` (the same length).
pub(crate) fn zip_mut<D: Send, S: Sync>(
    dst: &mut [D],
    src: &[S],
    f: impl Fn(&mut [D], &[S]) + Send + Sync,
) {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(feature = "rayon")]
    if parallel(dst.len()) {
        use rayon::prelude::*;
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| wide2(d, s, &f));
        return;
    }
    wide2(dst, src, f)
}

/// `src.map(op)` into a new vector, without initialising it first.
pub(crate) fn map<S: Copy + Sync, E: Send>(src: &[S], op: impl Fn(S) -> E + Send + Sync) -> Vec<E> {
    let mut out: Vec<E> = Vec::with_capacity(src.len());
    let fill = |o: &mut [MaybeUninit<E>], s: &[S]| {
        for (o, &s) in o.iter_mut().zip(s) {
            o.write(op(s));
        }
    };
    zip_mut(&mut out.spare_capacity_mut()[..src.len()], src, fill);
    // SAFETY: the pieces cover `src.len()` slots, each written once above.
    unsafe { out.set_len(src.len()) };
    out
}

/// `op(lhs[i], rhs[i])` into a new vector, without initialising it first.
pub(crate) fn zip_map<L: Copy + Sync, R: Copy + Sync, E: Send>(
    lhs: &[L],
    rhs: &[R],
    op: impl Fn(L, R) -> E + Send + Sync,
) -> Vec<E> {
    assert_eq!(lhs.len(), rhs.len(), "zip_map: operand lengths differ");
    let n = lhs.len();
    let mut out: Vec<E> = Vec::with_capacity(n);
    let fill = |o: &mut [MaybeUninit<E>], l: &[L], r: &[R]| {
        for ((o, &l), &r) in o.iter_mut().zip(l).zip(r) {
            o.write(op(l, r));
        }
    };
    let dst = &mut out.spare_capacity_mut()[..n];
    #[cfg(feature = "rayon")]
    if parallel(n) {
        use rayon::prelude::*;
        dst.par_chunks_mut(CHUNK)
            .zip(lhs.par_chunks(CHUNK))
            .zip(rhs.par_chunks(CHUNK))
            .for_each(|((o, l), r)| wide3(o, l, r, fill));
        // SAFETY: the pieces cover all `n` slots, each written once above.
        unsafe { out.set_len(n) };
        return out;
    }
    wide3(dst, lhs, rhs, fill);
    // SAFETY: as above, in one piece.
    unsafe { out.set_len(n) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_cover_every_element_in_order() {
        for n in [0, 1, MIN_PARALLEL - 1, MIN_PARALLEL, 3 * MIN_PARALLEL + 17] {
            let src: Vec<u32> = (0..n as u32).collect();
            let doubled = map(&src, |x| 2 * x);
            assert_eq!(doubled, src.iter().map(|x| 2 * x).collect::<Vec<_>>());
            let sums = zip_map(&src, &doubled, |a, b| a + b);
            assert_eq!(sums, src.iter().map(|x| 3 * x).collect::<Vec<_>>());
            let mut inplace = src.clone();
            zip_mut(&mut inplace, &src, |d, s| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d += s;
                }
            });
            assert_eq!(inplace, doubled);
            for_each_mut(&mut inplace, |d| d.iter_mut().for_each(|x| *x += 1));
            assert_eq!(inplace, src.iter().map(|x| 2 * x + 1).collect::<Vec<_>>());
        }
    }
}
