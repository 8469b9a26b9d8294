//! What the benches share (each bench uses part of it).
#![allow(dead_code)]

use std::time::Instant;

/// Median seconds of `repeats` runs of `f`, after one warm-up run.
pub fn median_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Fastest of `repeats` runs of `f`, after one warm-up run: on a shared host whose speed
/// wanders by 10–25 % from minute to minute, the best run is what the code itself costs.
pub fn min_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The bench's own arguments: cargo passes `--bench` (and the harness flags) to every bench.
pub fn positional_args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect()
}
