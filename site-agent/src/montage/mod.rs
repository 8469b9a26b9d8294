//! The picture of the domain shift (the analogue of the paper's Fig. 1): sample slices per
//! center with label contours, each center's intensity histogram, all histograms overlaid, and
//! the pairwise histogram distances. Built from the sites' configs through the normal loading
//! path, so it shows what the model will see.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::labels::BACKGROUND;
use crate::data::{DataError, PreparedSite, SiteConfig, prepare_site};
use crate::histogram::{Histogram, REFERENCE_LEVELS, wasserstein};
use crate::preprocess::Plane;
use fedseg_plot::{Canvas, Rgb};

const COLORS: [Rgb; 6] = [
    [230, 80, 60],
    [70, 160, 240],
    [90, 200, 90],
    [240, 190, 40],
    [200, 90, 220],
    [60, 210, 210],
];
const SAMPLES: usize = 4;
const HIST_BINS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum MontageError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{path}: cannot write PNG: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no site to show")]
    Empty,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShiftReport {
    pub sites: Vec<String>,
    /// Quantiles (5 %, 50 %, 95 %) of normalised intensities per site.
    pub percentiles: Vec<[f32; 3]>,
    /// 1-Wasserstein distance between the sites' normalised intensity distributions.
    pub distance: Vec<Vec<f32>>,
}

impl std::fmt::Display for ShiftReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "normalised intensity p5/p50/p95 and W1 distance between sites:"
        )?;
        write!(f, "{:<10} {:>17}", "site", "p5/p50/p95")?;
        for s in &self.sites {
            write!(f, " {s:>8}")?;
        }
        for (i, s) in self.sites.iter().enumerate() {
            let p = self.percentiles[i];
            write!(
                f,
                "\n{s:<10} {:>17}",
                format!("{:.2}/{:.2}/{:.2}", p[0], p[1], p[2])
            )?;
            for d in &self.distance[i] {
                write!(f, " {d:>8.3}")?;
            }
        }
        Ok(())
    }
}

/// Index of the slice showing the most LV.
fn most_lv_slice(labels: &[Plane<u8>]) -> usize {
    labels
        .iter()
        .enumerate()
        .max_by_key(|(_, l)| l.data.iter().filter(|&&c| c != BACKGROUND).count())
        .map(|(i, _)| i)
        .unwrap_or(0)
}

fn draw_slice(c: &mut Canvas, x0: usize, y0: usize, image: &Plane<f32>, label: Option<&Plane<u8>>) {
    for y in 0..image.height {
        for x in 0..image.width {
            let g = (image.get(x, y).clamp(0.0, 1.0) * 255.0) as u8;
            c.put(x0 + x, y0 + y, [g, g, g]);
        }
    }
    let Some(l) = label else { return };
    for y in 0..l.height {
        for x in 0..l.width {
            let v = l.get(x, y);
            if v == BACKGROUND {
                continue;
            }
            let edge = [(-1isize, 0isize), (1, 0), (0, -1), (0, 1)]
                .iter()
                .any(|(dx, dy)| l.get_or(x as isize + dx, y as isize + dy, BACKGROUND) != v);
            if edge {
                c.put(
                    x0 + x,
                    y0 + y,
                    if v == 1 { [255, 60, 60] } else { [60, 255, 60] },
                );
            }
        }
    }
}

/// Where a panel sits on the canvas.
#[derive(Clone, Copy)]
struct Panel {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

fn draw_histogram(c: &mut Canvas, panel: Panel, density: &[f32], color: Rgb, filled: bool) {
    // Scale to the tallest bin but the first: zeroed backgrounds would flatten everything else.
    let top = density.iter().skip(1).copied().fold(1e-9f32, f32::max);
    let Panel { x: x0, y: y0, w, h } = panel;
    let bw = w as f32 / density.len() as f32;
    let mut prev: Option<(f32, f32)> = None;
    for (i, &d) in density.iter().enumerate() {
        let bar = ((d / top).min(1.0) * (h as f32 - 2.0)) as usize;
        let x = x0 as f32 + i as f32 * bw;
        if filled {
            c.rect(x as usize, y0 + h - bar, bw.ceil() as usize, bar, color);
        } else {
            let pt = (x + bw / 2.0, (y0 + h - bar) as f32);
            if let Some(p) = prev {
                c.line(p.0, p.1, pt.0, pt.1, color);
            }
            prev = Some(pt);
        }
    }
}

pub fn write_montage(configs: &[PathBuf], out: &Path) -> Result<ShiftReport, MontageError> {
    if configs.is_empty() {
        return Err(MontageError::Empty);
    }
    let mut sites: Vec<PreparedSite> = Vec::new();
    for path in configs {
        let cfg = SiteConfig::load(path)?;
        sites.push(prepare_site(&cfg, false)?);
    }
    let hists: Vec<Histogram> = sites
        .iter()
        .map(|s| {
            let mut h = Histogram::default();
            for subj in &s.subjects {
                for sl in &subj.slices {
                    h.add(&sl.data);
                }
            }
            h
        })
        .collect();
    let quantiles: Vec<Vec<f32>> = hists
        .iter()
        .map(|h| h.quantiles(REFERENCE_LEVELS))
        .collect();
    let report = ShiftReport {
        sites: sites.iter().map(|s| s.name.clone()).collect(),
        percentiles: hists
            .iter()
            .map(|h| [h.quantile(0.05), h.quantile(0.5), h.quantile(0.95)])
            .collect(),
        distance: quantiles
            .iter()
            .map(|a| quantiles.iter().map(|b| wasserstein(a, b)).collect())
            .collect(),
    };

    let tile = sites
        .iter()
        .flat_map(|s| s.subjects.first())
        .flat_map(|s| s.slices.first())
        .map(|p| p.width.max(p.height))
        .max()
        .unwrap_or(128);
    let gap = 8;
    let name_w = 110;
    let hist_w = 256;
    let row_h = tile + gap;
    let width = name_w + SAMPLES * (tile + gap) + hist_w + gap;
    let overlay_h = 180;
    let height = 40 + sites.len() * row_h + overlay_h + 40 + 20 * (sites.len() + 1);
    let mut c = Canvas::new(width, height, [18, 18, 24]);
    c.text(
        gap,
        10,
        "DOMAIN SHIFT: SLICES (BLOOD POOL RED, MYOCARDIUM GREEN), HISTOGRAMS",
        2,
        [230, 230, 230],
    );
    for (r, site) in sites.iter().enumerate() {
        let y0 = 40 + r * row_h;
        let color = COLORS[r % COLORS.len()];
        c.rect(0, y0, 6, tile, color);
        c.text(12, y0 + tile / 2 - 7, &site.name, 2, color);
        for (k, subj) in site.subjects.iter().take(SAMPLES).enumerate() {
            let z = subj
                .labels
                .as_deref()
                .map(most_lv_slice)
                .unwrap_or(subj.slices.len() / 2);
            let x0 = name_w + k * (tile + gap);
            if let Some(image) = subj.slices.get(z) {
                draw_slice(
                    &mut c,
                    x0,
                    y0,
                    image,
                    subj.labels.as_ref().and_then(|l| l.get(z)),
                );
            }
        }
        let hx = name_w + SAMPLES * (tile + gap);
        c.rect(hx, y0, hist_w, tile, [34, 34, 44]);
        let panel = Panel {
            x: hx,
            y: y0,
            w: hist_w,
            h: tile,
        };
        draw_histogram(&mut c, panel, &hists[r].density(HIST_BINS), color, true);
    }
    let oy = 40 + sites.len() * row_h + 10;
    let ow = width - 2 * gap;
    c.text(
        gap,
        oy,
        "ALL CENTERS: NORMALISED INTENSITY 0 TO 1",
        2,
        [230, 230, 230],
    );
    c.rect(gap, oy + 20, ow, overlay_h - 20, [34, 34, 44]);
    for (r, h) in hists.iter().enumerate() {
        let panel = Panel {
            x: gap,
            y: oy + 20,
            w: ow,
            h: overlay_h - 20,
        };
        draw_histogram(
            &mut c,
            panel,
            &h.density(HIST_BINS),
            COLORS[r % COLORS.len()],
            false,
        );
    }
    let ty = oy + overlay_h + 10;
    c.text(gap, ty, "W1 DISTANCE BETWEEN CENTERS", 2, [230, 230, 230]);
    for (i, row) in report.distance.iter().enumerate() {
        let mut line = format!("{:<8}", report.sites[i]);
        for d in row {
            line.push_str(&format!(" {d:.3}"));
        }
        c.text(gap, ty + 20 * (i + 1), &line, 2, COLORS[i % COLORS.len()]);
    }
    c.save_png(out).map_err(|source| MontageError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(report)
}
