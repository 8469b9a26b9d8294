//! Augmentation keeps image and label aligned and labels in {0, 1, 2}; intensity operations
//! behave as their names say; everything is reproducible from a seed.

use fedseg_site::augment::intensity::{
    bilateral, brightness, contrast, gamma, gaussian_noise, inverse_gamma,
};
use fedseg_site::augment::spatial::{Warp, flip_horizontal, flip_vertical, warp};
use fedseg_site::augment::{AugmentConfig, AugmentMode, augment};
use fedseg_site::preprocess::Plane;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// An off-centre blood pool (1) in a myocardial ring (2); the image encodes the label
/// (0.1 background, 0.5 myocardium, 0.9 blood) so alignment can be checked pixel by pixel.
fn phantom() -> (Plane<f32>, Plane<u8>) {
    let n = 64;
    let mut label = Plane::filled(n, n, 0u8);
    for y in 0..n {
        for x in 0..n {
            let r2 = (x as f32 - 24.0).powi(2) + ((y as f32 - 36.0) / 0.8).powi(2);
            label.set(
                x,
                y,
                if r2 < 64.0 {
                    1
                } else if r2 < 169.0 {
                    2
                } else {
                    0
                },
            );
        }
    }
    let image = Plane {
        width: n,
        height: n,
        data: label
            .data
            .iter()
            .map(|&c| [0.1, 0.9, 0.5][c as usize])
            .collect(),
    };
    (image, label)
}

/// Share of pixels, away from label borders, whose image value does not match their label.
fn misaligned(image: &Plane<f32>, label: &Plane<u8>) -> f32 {
    let (mut bad, mut n) = (0, 0);
    for y in 1..label.height - 1 {
        for x in 1..label.width - 1 {
            let c = label.get(x, y);
            let interior = [(0, 1), (2, 1), (1, 0), (1, 2)]
                .iter()
                .all(|&(dx, dy)| label.get(x + dx - 1, y + dy - 1) == c);
            if !interior || (c == 0 && image.get(x, y) < 0.05) {
                continue; // borders interpolate; 0 is the warp's fill
            }
            n += 1;
            let expected = [0.1, 0.9, 0.5][c as usize];
            if (image.get(x, y) - expected).abs() > 0.15 {
                bad += 1;
            }
        }
    }
    bad as f32 / n.max(1) as f32
}

fn labels_valid(label: &Plane<u8>) -> bool {
    label.data.iter().all(|&c| c <= 2)
}

#[test]
fn flips_move_image_and_label_together_exactly() {
    let (mut image, mut label) = phantom();
    flip_horizontal(&mut image);
    flip_horizontal(&mut label);
    assert_eq!(misaligned(&image, &label), 0.0);
    assert_eq!(label.get(63 - 24, 36), 1);
    flip_vertical(&mut image);
    flip_vertical(&mut label);
    assert_eq!(misaligned(&image, &label), 0.0);
    assert_eq!(label.get(63 - 24, 63 - 36), 1);
}

#[test]
fn rotation_rescaling_and_crop_keep_alignment() {
    for (angle, zoom, shift) in [
        (30.0, 1.0, [0.0, 0.0]),
        (-30.0, 1.0, [0.0, 0.0]),
        (0.0, 0.75 / 1.88, [0.0, 0.0]),
        (0.0, 1.25 / 0.75, [0.0, 0.0]),
        (12.0, 1.3, [-7.0, 5.0]),
    ] {
        let (mut image, mut label) = phantom();
        let before = label.data.iter().filter(|&&c| c == 1).count() as f32;
        warp(&mut image, &mut label, Warp::new(angle, zoom, shift));
        assert!(labels_valid(&label));
        assert!(
            misaligned(&image, &label) < 0.01,
            "angle {angle} zoom {zoom}: {}",
            misaligned(&image, &label)
        );
        let after = label.data.iter().filter(|&&c| c == 1).count() as f32;
        // Area scales with zoom².
        let expected = before * zoom * zoom;
        assert!(
            (after - expected).abs() < 0.12 * expected + 4.0,
            "zoom {zoom}: {after} vs {expected}"
        );
    }
}

#[test]
fn random_augmentation_keeps_alignment_labels_and_range_and_is_seeded() {
    let cfg = AugmentConfig {
        mode: AugmentMode::Spatial,
        probability: 0.8,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut changed = 0;
    for _ in 0..40 {
        let (mut image, mut label) = phantom();
        augment(&cfg, 1.25, &mut image, &mut label, &mut rng);
        assert!(labels_valid(&label));
        assert!(misaligned(&image, &label) < 0.01);
        if label != phantom().1 {
            changed += 1;
        }
    }
    assert!(
        changed > 30,
        "spatial ops at p=0.8 should change most slices ({changed}/40)"
    );

    let cfg = AugmentConfig {
        mode: AugmentMode::SpatialIntensity,
        probability: 0.5,
    };
    let run = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut image, mut label) = phantom();
        augment(&cfg, 1.25, &mut image, &mut label, &mut rng);
        (image, label)
    };
    let (a, la) = run(9);
    let (b, lb) = run(9);
    assert_eq!((a.data.clone(), la), (b.data, lb));
    assert!(a.data.iter().all(|v| (0.0..=1.0).contains(v)));
    let none = AugmentConfig {
        mode: AugmentMode::None,
        probability: 1.0,
    };
    let (mut image, mut label) = phantom();
    augment(
        &none,
        1.25,
        &mut image,
        &mut label,
        &mut ChaCha8Rng::seed_from_u64(1),
    );
    assert_eq!((image, label), phantom());
}

fn mean_sd(p: &Plane<f32>) -> (f32, f32) {
    let n = p.data.len() as f32;
    let m = p.data.iter().sum::<f32>() / n;
    (
        m,
        (p.data.iter().map(|v| (v - m).powi(2)).sum::<f32>() / n).sqrt(),
    )
}

#[test]
fn intensity_operations_do_what_they_say() {
    let (base, _) = phantom();
    let mut g = base.clone();
    gamma(&mut g, 1.5);
    assert!((g.get(24, 36) - 0.9f32.powf(1.5)).abs() < 1e-6);
    let mut ig = base.clone();
    inverse_gamma(&mut ig, 1.5);
    assert!((ig.get(24, 36) - (1.0 - 0.1f32.powf(1.5))).abs() < 1e-6);
    let mut b = base.clone();
    brightness(&mut b, 0.2);
    assert!((mean_sd(&b).0 - mean_sd(&base).0 - 0.2).abs() < 1e-4);
    let mut c = base.clone();
    contrast(&mut c, -0.5);
    assert!((mean_sd(&c).1 - 0.5 * mean_sd(&base).1).abs() < 1e-4);
    let mut noisy = Plane::filled(128, 128, 0.5f32);
    gaussian_noise(&mut noisy, 0.03, &mut ChaCha8Rng::seed_from_u64(2));
    assert!((mean_sd(&noisy).1 - 0.03).abs() < 0.003);
    // Bilateral filtering smooths noise inside regions but keeps the edges of the phantom.
    let mut edges = base.clone();
    gaussian_noise(&mut edges, 0.03, &mut ChaCha8Rng::seed_from_u64(3));
    let noisy_sd = (edges.get(24, 36) - 0.9).abs();
    bilateral(&mut edges, 0.1);
    let region: Vec<f32> = (30..42).map(|y| edges.get(24, y)).collect();
    let sd = (region.iter().map(|v| (v - 0.9).powi(2)).sum::<f32>() / region.len() as f32).sqrt();
    assert!(sd < 0.03, "{sd} {noisy_sd}");
    assert!(
        (edges.get(24, 36) - edges.get(2, 2)).abs() > 0.6,
        "edge between blood and background kept"
    );
}
