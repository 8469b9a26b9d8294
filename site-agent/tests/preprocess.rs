//! Resampling, crop/pad and normalisation against volumes with known geometry.

use fedseg_site::preprocess::{PreprocessConfig, prepare_image, prepare_label};
use ndarray::Array3;

/// A disk of radius `r_mm` centred in a volume of `n`² pixels at `spacing` mm.
fn disk(n: usize, spacing: f32, r_mm: f32) -> Array3<f32> {
    Array3::from_shape_fn((n, n, 2), |(x, y, _)| {
        let c = n as f32 / 2.0 - 0.5;
        let d = ((x as f32 - c).powi(2) + (y as f32 - c).powi(2)).sqrt() * spacing;
        if d < r_mm { 1000.0 } else { 200.0 }
    })
}

#[test]
fn resampling_preserves_physical_size_and_crops_or_pads_to_the_configured_size() {
    let cfg = PreprocessConfig {
        spacing_mm: 1.25,
        size: 96,
    };
    for (n, spacing) in [(400, 0.75), (160, 1.88), (64, 1.25)] {
        let vol = disk(n, spacing, 25.0);
        let slices = prepare_image(&vol, [spacing, spacing, 8.0], &cfg);
        assert_eq!(slices.len(), 2);
        let s = &slices[0];
        assert_eq!((s.width, s.height), (96, 96));
        let (lo, hi) = s.min_max();
        assert_eq!((lo, hi), (0.0, 1.0), "min-max normalised after cropping");
        let area_px = s.data.iter().filter(|&&v| v > 0.5).count() as f32;
        let expected = std::f32::consts::PI * (25.0f32 / 1.25).powi(2);
        assert!(
            (area_px - expected).abs() < 0.05 * expected,
            "{n}@{spacing}: {area_px} vs {expected}"
        );
        // The disk stays centred.
        let cx: f32 = (0..96 * 96)
            .filter(|&i| s.data[i] > 0.5)
            .map(|i| (i % 96) as f32)
            .sum::<f32>()
            / area_px;
        assert!((cx - 47.5).abs() < 1.0, "{cx}");

        let label = vol.mapv(|v| if v > 500.0 { 1u8 } else { 0 });
        let lab = prepare_label(&label, [spacing, spacing, 8.0], &cfg);
        let lab_area = lab[0].data.iter().filter(|&&c| c == 1).count() as f32;
        assert!(
            (lab_area - area_px).abs() < 0.05 * expected,
            "label follows image"
        );
        assert!(
            lab[0].data.iter().all(|&c| c <= 1),
            "nearest neighbour: no new label values"
        );
    }
}

#[test]
fn padding_uses_the_volume_minimum() {
    // A small volume padded to a larger size: the pad must not create a new minimum.
    let vol = Array3::from_shape_fn((20, 20, 1), |(x, _, _)| 500.0 + x as f32);
    let s = &prepare_image(
        &vol,
        [1.25, 1.25, 8.0],
        &PreprocessConfig {
            spacing_mm: 1.25,
            size: 64,
        },
    )[0];
    assert_eq!(s.get(0, 0), 0.0);
    assert_eq!(s.min_max(), (0.0, 1.0));
    // Inside the original field of view, intensity still rises left to right.
    assert!(s.get(40, 32) > s.get(25, 32));
}

#[test]
fn labels_mapped_back_to_the_original_grid_match_the_original() {
    use fedseg_site::preprocess::restore_label;
    let cfg = PreprocessConfig {
        spacing_mm: 1.25,
        size: 96,
    };
    for (n, spacing) in [(200, 0.75), (90, 1.88)] {
        let label = disk(n, spacing, 25.0).mapv(|v| if v > 500.0 { 1u8 } else { 0 });
        let prepared = prepare_label(&label, [spacing, spacing, 8.0], &cfg);
        let back = restore_label(&prepared, [n, n, 2], [spacing, spacing, 8.0], &cfg);
        assert_eq!(back.dim(), label.dim());
        let (mut inter, mut total) = (0usize, 0usize);
        for (a, b) in back.iter().zip(label.iter()) {
            inter += (*a == 1 && *b == 1) as usize;
            total += (*a == 1) as usize + (*b == 1) as usize;
        }
        let dice = 2.0 * inter as f64 / total as f64;
        assert!(dice > 0.97, "{n}@{spacing}: round-trip Dice {dice}");
    }
}
