//! The plan's `[[figure]]`s as PNG charts: bars of LV Dice per test center (Figs. 6, 7, 9,
//! 11), sweep curves (Figs. 8, 10) and validation Dice per federated round. A plan without
//! figures gets bars of every evaluated model and, if it federates, Dice per round.

use std::path::{Path, PathBuf};

use fedseg_plot::chart::{Chart, Point, Series};

use super::runs::Experiment;
use crate::plan::{Figure, FigureKind, StageKind};

fn default_figures(e: &Experiment) -> Vec<Figure> {
    let mut figs = vec![Figure {
        name: "dice".into(),
        kind: FigureKind::Bars,
        title: format!("{}: LV Dice per test center", e.plan),
        models: e.columns.iter().map(|c| c.label.clone()).collect(),
        x: None,
        xs: Vec::new(),
    }];
    let fed: Vec<String> = e
        .runs
        .first()
        .map(|r| {
            r.plan
                .stages
                .iter()
                .filter(|s| s.kind == StageKind::Fedavg)
                .map(|s| s.name.clone())
                .collect()
        })
        .unwrap_or_default();
    if !fed.is_empty() {
        figs.push(Figure {
            name: "rounds".into(),
            kind: FigureKind::Rounds,
            title: format!("{}: validation Dice per round", e.plan),
            models: fed,
            x: None,
            xs: Vec::new(),
        });
    }
    figs
}

fn chart(e: &Experiment, f: &Figure) -> Chart {
    let label = |m: &str| {
        e.column(m)
            .map(|c| c.label.clone())
            .unwrap_or_else(|| m.to_string())
    };
    let value = |m: &str, site: &str| -> Point {
        e.column(m)
            .and_then(|c| c.cells.get(site))
            .map(|s| (s.mean, s.sd))
    };
    let title = if f.title.is_empty() {
        f.name.clone()
    } else {
        f.title.clone()
    };
    let y_label = format!("LV Dice ({})", e.spread());
    match f.kind {
        FigureKind::Bars => Chart {
            title,
            x_label: "test center".into(),
            y_label,
            y_range: (0.0, 1.0),
            categories: e.sites.clone(),
            series: f
                .models
                .iter()
                .map(|m| Series {
                    label: label(m),
                    values: e.sites.iter().map(|s| value(m, s)).collect(),
                })
                .collect(),
        },
        FigureKind::Sweep => Chart {
            title,
            x_label: f.x.clone().unwrap_or_default(),
            y_label,
            y_range: (0.0, 1.0),
            categories: f.xs.iter().map(|x| format!("{x}")).collect(),
            series: e
                .sites
                .iter()
                .filter(|s| f.models.iter().any(|m| value(m, s).is_some()))
                .map(|s| Series {
                    label: s.clone(),
                    values: f.models.iter().map(|m| value(m, s)).collect(),
                })
                .collect(),
        },
        FigureKind::Rounds => {
            let series: Vec<Series> = f
                .models
                .iter()
                .map(|stage| Series {
                    label: stage.clone(),
                    values: e.round_dice(stage),
                })
                .collect();
            let rounds = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
            Chart {
                title,
                x_label: "round".into(),
                y_label: "mean validation Dice of the sites".into(),
                y_range: (0.0, 1.0),
                categories: (1..=rounds).map(|r| r.to_string()).collect(),
                series,
            }
        }
    }
}

/// Draws every figure of the experiment into `dir`; returns the files written.
pub fn write(e: &Experiment, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let figures = match e.runs.first() {
        Some(r) if !r.plan.figures.is_empty() => r.plan.figures.clone(),
        _ => default_figures(e),
    };
    let mut files = Vec::new();
    for f in &figures {
        let c = chart(e, f);
        let canvas = match f.kind {
            FigureKind::Bars => c.bars(),
            FigureKind::Sweep | FigureKind::Rounds => c.lines(),
        };
        let path = dir.join(format!("{}-{}.png", e.plan, f.name));
        canvas.save_png(&path)?;
        files.push(path);
    }
    Ok(files)
}
