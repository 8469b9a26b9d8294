//! Paper §2.6.2 and §2.6.5: keep the largest 3D connected component of the LV, and 3D Dice.

use std::collections::VecDeque;

use crate::data::labels::{BACKGROUND, BLOOD_POOL, MYOCARDIUM};
use crate::preprocess::Plane;

/// Keeps only the largest 6-connected 3D component of the LV (blood pool ∪ myocardium);
/// everything else becomes background. Slices are stacked in order.
pub fn keep_largest_lv_component(volume: &mut [Plane<u8>]) {
    let Some(first) = volume.first() else { return };
    let (w, h, d) = (first.width, first.height, volume.len());
    let idx = |x: usize, y: usize, z: usize| (z * h + y) * w + x;
    let mut component = vec![0u32; w * h * d];
    let mut sizes = vec![0usize]; // component 0 = unassigned
    let mut queue = VecDeque::new();
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                if volume[z].get(x, y) == BACKGROUND || component[idx(x, y, z)] != 0 {
                    continue;
                }
                let id = sizes.len() as u32;
                let mut size = 0;
                component[idx(x, y, z)] = id;
                queue.push_back((x, y, z));
                while let Some((cx, cy, cz)) = queue.pop_front() {
                    size += 1;
                    let mut visit = |nx: usize, ny: usize, nz: usize| {
                        let i = idx(nx, ny, nz);
                        if component[i] == 0 && volume[nz].get(nx, ny) != BACKGROUND {
                            component[i] = id;
                            queue.push_back((nx, ny, nz));
                        }
                    };
                    if cx > 0 {
                        visit(cx - 1, cy, cz);
                    }
                    if cx + 1 < w {
                        visit(cx + 1, cy, cz);
                    }
                    if cy > 0 {
                        visit(cx, cy - 1, cz);
                    }
                    if cy + 1 < h {
                        visit(cx, cy + 1, cz);
                    }
                    if cz > 0 {
                        visit(cx, cy, cz - 1);
                    }
                    if cz + 1 < d {
                        visit(cx, cy, cz + 1);
                    }
                }
                sizes.push(size);
            }
        }
    }
    let Some(largest) = (1..sizes.len()).max_by_key(|&i| sizes[i]) else {
        return;
    };
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let c = component[idx(x, y, z)];
                if c != 0 && c as usize != largest {
                    volume[z].set(x, y, BACKGROUND);
                }
            }
        }
    }
}

/// Which voxels a Dice score compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    BloodPool,
    Myocardium,
    /// Blood pool ∪ myocardium.
    WholeLv,
}

impl Structure {
    fn contains(self, c: u8) -> bool {
        match self {
            Structure::BloodPool => c == BLOOD_POOL,
            Structure::Myocardium => c == MYOCARDIUM,
            Structure::WholeLv => c == BLOOD_POOL || c == MYOCARDIUM,
        }
    }
}

/// 3D Dice, 2|X∩Y| / (|X| + |Y|), over all slices; 1 when both are empty.
pub fn dice(pred: &[Plane<u8>], truth: &[Plane<u8>], s: Structure) -> f64 {
    let (mut inter, mut total) = (0u64, 0u64);
    for (p, t) in pred.iter().zip(truth) {
        for (&a, &b) in p.data.iter().zip(&t.data) {
            let (a, b) = (s.contains(a), s.contains(b));
            inter += (a && b) as u64;
            total += a as u64 + b as u64;
        }
    }
    if total == 0 {
        1.0
    } else {
        2.0 * inter as f64 / total as f64
    }
}
