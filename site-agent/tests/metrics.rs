//! Largest connected component and 3D Dice against hand-built volumes with known answers.

use fedseg_site::eval::metrics::{Structure, dice, keep_largest_lv_component};
use fedseg_site::preprocess::Plane;

fn volume(slices: &[&[&str]]) -> Vec<Plane<u8>> {
    slices
        .iter()
        .map(|rows| {
            let width = rows[0].len();
            let data = rows
                .iter()
                .flat_map(|r| r.bytes().map(|b| if b == b'.' { 0 } else { b - b'0' }))
                .collect();
            Plane {
                width,
                height: rows.len(),
                data,
            }
        })
        .collect()
}

#[test]
fn the_largest_3d_lv_component_survives() {
    // A 2-slice object (blood pool + myocardium touching, 6 voxels) and two smaller blobs:
    // one in-plane (3 voxels), one only diagonally connected to the big one (not 6-connected).
    let mut v = volume(&[
        &["12...", "12...", ".....", "...22", "....."],
        &["1....", "1....", ".....", "....2", "..1.."],
    ]);
    keep_largest_lv_component(&mut v);
    let expected = volume(&[
        &["12...", "12...", ".....", ".....", "....."],
        &["1....", "1....", ".....", ".....", "....."],
    ]);
    assert_eq!(v, expected);

    let mut empty = volume(&[&["...", "..."]]);
    keep_largest_lv_component(&mut empty);
    assert_eq!(empty, volume(&[&["...", "..."]]));
}

#[test]
fn dice_matches_hand_counts() {
    let truth = volume(&[&["1122", "1122"], &["1122", "...."]]);
    let pred = volume(&[&["1222", "11.2"], &["1122", "..2."]]);
    // Blood pool: truth 6, pred 5, overlap 5 → 10/11.
    assert!((dice(&pred, &truth, Structure::BloodPool) - 10.0 / 11.0).abs() < 1e-12);
    // Myocardium: truth 6, pred 7, overlap 5 → 10/13.
    assert!((dice(&pred, &truth, Structure::Myocardium) - 10.0 / 13.0).abs() < 1e-12);
    // LV: truth 12, pred 12, overlap 11 → 22/24.
    assert!((dice(&pred, &truth, Structure::WholeLv) - 22.0 / 24.0).abs() < 1e-12);
    let none = volume(&[&["....", "...."]]);
    assert_eq!(dice(&none, &none, Structure::WholeLv), 1.0);
    assert_eq!(dice(&none, &truth[..1], Structure::WholeLv), 0.0);
}
