//! `results.md`, `results.csv` and the PNG figures for one or more experiments (jobs grouped
//! by plan), written into one folder.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::runs::{CSV_HEADER, Experiment, Run};

/// Writes the report for `runs` into `out`; returns the experiments and the files written.
pub fn write_report(
    runs: Vec<Run>,
    out: &Path,
) -> std::io::Result<(Vec<Experiment>, Vec<PathBuf>)> {
    std::fs::create_dir_all(out)?;
    let experiments = Experiment::group(runs);
    let mut md = String::from("# fedseg results\n\n");
    let mut csv = String::from(CSV_HEADER);
    let mut files = Vec::new();
    for e in &experiments {
        let figures = super::figures::write(e, out)?;
        let _ = writeln!(
            md,
            "## {}\n\nJobs {} (seeds {}). LV Dice, {}; `-` where a model was not evaluated at \
             that center.\n\n{}",
            e.plan,
            e.jobs.join(", "),
            e.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            e.spread(),
            e.markdown()
        );
        for f in &figures {
            if let Some(name) = f.file_name().and_then(|n| n.to_str()) {
                let _ = writeln!(md, "![{name}]({name})\n");
            }
        }
        e.csv_rows(&mut csv);
        files.extend(figures);
    }
    let md_path = out.join("results.md");
    std::fs::write(&md_path, md)?;
    let csv_path = out.join("results.csv");
    std::fs::write(&csv_path, csv)?;
    let mut all = vec![md_path, csv_path];
    all.extend(files);
    Ok((experiments, all))
}
