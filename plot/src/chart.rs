//! Grouped bar charts and line charts with ± SD error bars, for Dice (y in [0, 1] unless
//! told otherwise), drawn on a [`Canvas`].

use crate::canvas::{Canvas, Rgb};
use crate::font::text_width;

pub const PALETTE: [Rgb; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];
const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [30, 30, 30];
const GRID: Rgb = [225, 225, 225];

/// A value with its spread; `None` where there is nothing to draw.
pub type Point = Option<(f64, f64)>;

pub struct Series {
    pub label: String,
    /// One entry per category (bars) or per x value (lines).
    pub values: Vec<Point>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub y_range: (f64, f64),
    /// Bar groups, or the x positions of a line chart (as text, in order).
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

struct Frame {
    left: f32,
    top: f32,
    width: f32,
    height: f32,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn y(&self, v: f64) -> f32 {
        let t = ((v - self.y0) / (self.y1 - self.y0)).clamp(0.0, 1.0) as f32;
        self.top + self.height * (1.0 - t)
    }
}

const W: usize = 900;
const H: usize = 520;
const SCALE: usize = 2;

impl Chart {
    fn frame(&self, c: &mut Canvas) -> Frame {
        let legend_w = self
            .series
            .iter()
            .map(|s| text_width(&s.label, SCALE))
            .max()
            .unwrap_or(0)
            + 40;
        let f = Frame {
            left: 80.0,
            top: 70.0,
            width: (W - 80 - 20 - legend_w) as f32,
            height: (H - 70 - 80) as f32,
            y0: self.y_range.0,
            y1: self.y_range.1,
        };
        c.text(10, 12, &self.title, SCALE, INK);
        for i in 0..=5 {
            let v = f.y0 + (f.y1 - f.y0) * i as f64 / 5.0;
            let y = f.y(v);
            c.line(f.left, y, f.left + f.width, y, GRID);
            let label = format!("{v:.1}");
            let x = (f.left as usize).saturating_sub(text_width(&label, SCALE) + 8);
            c.text(x, y as usize - 6, &label, SCALE, INK);
        }
        c.line(f.left, f.top, f.left, f.top + f.height, INK);
        c.line(
            f.left,
            f.top + f.height,
            f.left + f.width,
            f.top + f.height,
            INK,
        );
        c.text(10, 36, &self.y_label, SCALE, INK);
        let xl = (f.left + f.width / 2.0) as usize;
        c.text(
            xl.saturating_sub(text_width(&self.x_label, SCALE) / 2),
            H - 24,
            &self.x_label,
            SCALE,
            INK,
        );
        let lx = (f.left + f.width) as usize + 20;
        for (i, s) in self.series.iter().enumerate() {
            let y = f.top as usize + 10 + i * 24;
            c.rect(lx, y, 14, 14, PALETTE[i % PALETTE.len()]);
            c.text(lx + 20, y, &s.label, SCALE, INK);
        }
        f
    }

    fn category_label(&self, c: &mut Canvas, f: &Frame, i: usize, center: f32) {
        let label = &self.categories[i];
        let x = (center as usize).saturating_sub(text_width(label, SCALE) / 2);
        c.text(x, (f.top + f.height) as usize + 10, label, SCALE, INK);
    }

    fn error_bar(c: &mut Canvas, f: &Frame, x: f32, (m, sd): (f64, f64)) {
        let (lo, hi) = (f.y(m - sd), f.y(m + sd));
        c.line(x, lo, x, hi, INK);
        c.line(x - 4.0, lo, x + 4.0, lo, INK);
        c.line(x - 4.0, hi, x + 4.0, hi, INK);
    }

    /// One group of bars per category, one bar per series.
    pub fn bars(&self) -> Canvas {
        let mut c = Canvas::new(W, H, WHITE);
        let f = self.frame(&mut c);
        let groups = self.categories.len().max(1) as f32;
        let group_w = f.width / groups;
        let n = self.series.len().max(1) as f32;
        let bar_w = (group_w * 0.8 / n).max(2.0);
        for g in 0..self.categories.len() {
            let start = f.left + group_w * g as f32 + group_w * 0.1;
            self.category_label(&mut c, &f, g, start + group_w * 0.4);
            for (i, s) in self.series.iter().enumerate() {
                let Some(Some((m, sd))) = s.values.get(g) else {
                    continue;
                };
                let x = start + bar_w * i as f32;
                let top = f.y(*m);
                let bottom = f.top + f.height;
                c.rect(
                    x as usize,
                    top as usize,
                    (bar_w - 2.0).max(1.0) as usize,
                    (bottom - top).max(1.0) as usize,
                    PALETTE[i % PALETTE.len()],
                );
                Self::error_bar(&mut c, &f, x + bar_w / 2.0 - 1.0, (*m, *sd));
            }
        }
        c
    }

    /// One line per series over the categories as evenly spaced x positions.
    pub fn lines(&self) -> Canvas {
        let mut c = Canvas::new(W, H, WHITE);
        let f = self.frame(&mut c);
        let n = self.categories.len();
        let x_at = |i: usize| {
            if n <= 1 {
                f.left + f.width / 2.0
            } else {
                f.left + 30.0 + (f.width - 60.0) * i as f32 / (n - 1) as f32
            }
        };
        for i in 0..n {
            self.category_label(&mut c, &f, i, x_at(i));
        }
        for (k, s) in self.series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let mut prev: Option<(f32, f32)> = None;
            for (i, v) in s.values.iter().enumerate().take(n) {
                let Some((m, sd)) = v else {
                    prev = None;
                    continue;
                };
                let (x, y) = (x_at(i), f.y(*m));
                if let Some((px, py)) = prev {
                    c.line(px, py, x, y, color);
                }
                c.rect(x as usize - 3, y as usize - 3, 7, 7, color);
                Self::error_bar(&mut c, &f, x, (*m, *sd));
                prev = Some((x, y));
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "Dice".into(),
            y_range: (0.0, 1.0),
            categories: vec!["a".into(), "b".into()],
            series: vec![
                Series {
                    label: "one".into(),
                    values: vec![Some((0.5, 0.1)), None],
                },
                Series {
                    label: "two".into(),
                    values: vec![Some((0.9, 0.0)), Some((0.2, 0.05))],
                },
            ],
        }
    }

    fn count(c: &Canvas, color: Rgb) -> usize {
        c.pixels().chunks(3).filter(|p| *p == color).count()
    }

    #[test]
    fn bars_are_as_tall_as_their_values() {
        let c = chart().bars();
        // Series "two" at 0.9 is a taller bar than "one" at 0.5; both colours are drawn.
        let (one, two) = (count(&c, PALETTE[0]), count(&c, PALETTE[1]));
        assert!(one > 0 && two > one, "{one} {two}");
    }

    #[test]
    fn lines_skip_missing_points() {
        let c = chart().lines();
        assert!(count(&c, PALETTE[0]) > 0);
        assert!(count(&c, PALETTE[1]) > count(&c, PALETTE[0]));
    }
}
