//! Histogram matching moves a shifted distribution onto the reference (measured, asserted).

use fedseg_site::histogram::{
    Histogram, HistogramReference, REFERENCE_LEVELS, match_to_reference, wasserstein,
};
use fedseg_site::preprocess::Plane;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A slice with a dark background, grey "myocardium" and bright "blood".
fn slice(rng: &mut ChaCha8Rng, levels: [f32; 3], noise: f32) -> Plane<f32> {
    let n = 64;
    let data = (0..n * n)
        .map(|i| {
            let (x, y) = ((i % n) as f32 - 32.0, (i / n) as f32 - 32.0);
            let r = (x * x + y * y).sqrt();
            let base = if r < 10.0 {
                levels[2]
            } else if r < 16.0 {
                levels[1]
            } else {
                levels[0]
            };
            (base + noise * (rng.random::<f32>() - 0.5)).clamp(0.0, 1.0)
        })
        .collect();
    Plane {
        width: n,
        height: n,
        data,
    }
}

#[test]
fn matching_reduces_the_distance_to_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let train: Vec<Plane<f32>> = (0..6)
        .map(|_| slice(&mut rng, [0.1, 0.3, 0.9], 0.1))
        .collect();
    let reference = HistogramReference::from_histogram("emidec", &Histogram::of_slices(&train));
    assert_eq!(reference.quantiles.len(), REFERENCE_LEVELS);
    reference.validate().unwrap();

    // Another center: different contrast, brightness and noise.
    let mut test: Vec<Plane<f32>> = (0..4)
        .map(|_| slice(&mut rng, [0.25, 0.6, 0.75], 0.2))
        .collect();
    let before = wasserstein(
        &Histogram::of_slices(&test).quantiles(REFERENCE_LEVELS),
        &reference.quantiles,
    );
    match_to_reference(&mut test, &reference);
    let after = wasserstein(
        &Histogram::of_slices(&test).quantiles(REFERENCE_LEVELS),
        &reference.quantiles,
    );
    assert!(
        before > 0.1,
        "the test distribution starts far away ({before})"
    );
    assert!(after < 0.2 * before, "W1 {before} → {after}");
    assert!(
        test.iter()
            .all(|s| s.data.iter().all(|v| (0.0..=1.0).contains(v)))
    );
}

#[test]
fn matching_is_monotonic_so_structures_keep_their_order() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let reference = HistogramReference::from_histogram(
        "ref",
        &Histogram::of_slices(&[slice(&mut rng, [0.05, 0.2, 0.8], 0.05)]),
    );
    let mut test = vec![slice(&mut rng, [0.3, 0.5, 0.7], 0.0)];
    match_to_reference(&mut test, &reference);
    let (bg, myo, blood) = (
        test[0].get(0, 0),
        test[0].get(32 + 13, 32),
        test[0].get(32, 32),
    );
    assert!(bg < myo && myo < blood, "{bg} {myo} {blood}");
}

#[test]
fn reference_files_round_trip_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let r = HistogramReference::from_histogram(
        "x",
        &Histogram::of_slices(&[slice(&mut rng, [0.1, 0.4, 0.9], 0.1)]),
    );
    let path = dir.path().join("ref.json");
    r.save(&path).unwrap();
    assert_eq!(HistogramReference::load(&path).unwrap(), r);

    std::fs::write(
        &path,
        "{\"site\":\"x\",\"pixels\":3,\"quantiles\":[0.5,0.2,0.9]}",
    )
    .unwrap();
    let err = HistogramReference::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("ref.json") && err.contains("non-decreasing"),
        "{err}"
    );
    std::fs::write(&path, "not json").unwrap();
    let err = HistogramReference::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("ref.json") && err.contains("not a histogram reference"),
        "{err}"
    );
}
