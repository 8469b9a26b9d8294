//! Several jobs of one plan (the same experiment with different seeds) as one table:
//! LV Dice mean ± SD over runs for each model and test center, as the paper reports it
//! ("averaged over five runs"; SD across runs). With a single run the SD is over subjects.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::{JobStatus, Results, mean_sd};
use crate::plan::Plan;

/// One job's documents, as `job status --json` and `job results --format json` give them.
#[derive(Debug, Clone)]
pub struct Run {
    pub status: JobStatus,
    pub results: Results,
    pub plan: Plan,
}

impl Run {
    pub fn new(status: JobStatus, results: Results) -> Result<Self, String> {
        let plan = Plan::parse(&status.plan_toml)
            .map_err(|e| format!("job {}: its plan: {e}", status.job.id))?;
        Ok(Self {
            status,
            results,
            plan,
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub sd: f64,
    /// Runs (or, with one run, subjects) behind the numbers.
    pub n: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Column {
    /// "model", or "stage/model" where a model is evaluated by several stages.
    pub label: String,
    pub stage: String,
    pub model: String,
    pub cells: BTreeMap<String, Summary>,
}

/// The runs of one plan, aggregated.
#[derive(Debug, Clone, Serialize)]
pub struct Experiment {
    pub plan: String,
    pub jobs: Vec<String>,
    pub seeds: Vec<u64>,
    pub sites: Vec<String>,
    pub columns: Vec<Column>,
    #[serde(skip)]
    pub runs: Vec<Run>,
}

impl Experiment {
    /// Groups runs by plan name, in the order the plans first appear.
    pub fn group(runs: Vec<Run>) -> Vec<Experiment> {
        let mut groups: Vec<(String, Vec<Run>)> = Vec::new();
        for r in runs {
            match groups.iter_mut().find(|(n, _)| *n == r.plan.name) {
                Some((_, v)) => v.push(r),
                None => groups.push((r.plan.name.clone(), vec![r])),
            }
        }
        groups
            .into_iter()
            .map(|(name, runs)| Self::of(name, runs))
            .collect()
    }

    /// No completed run (the first job failed).
    pub fn empty(plan: &str) -> Self {
        Self::of(plan.to_string(), Vec::new())
    }

    fn of(plan: String, runs: Vec<Run>) -> Self {
        let mut sites: Vec<String> = Vec::new();
        let mut columns: Vec<Column> = Vec::new();
        for run in &runs {
            for s in &run.results.sites {
                if !sites.contains(s) {
                    sites.push(s.clone());
                }
            }
            for (row, label) in run.results.rows.iter().zip(run.results.column_labels()) {
                if !columns.iter().any(|c| c.label == label) {
                    columns.push(Column {
                        label,
                        stage: row.stage.clone(),
                        model: row.model.clone(),
                        cells: BTreeMap::new(),
                    });
                }
            }
        }
        for col in &mut columns {
            for site in &sites {
                let cells: Vec<&super::Cell> = runs
                    .iter()
                    .filter_map(|r| {
                        r.results
                            .rows
                            .iter()
                            .find(|row| row.stage == col.stage && row.model == col.model)
                            .and_then(|row| row.cells.get(site))
                    })
                    .collect();
                let summary = match cells.as_slice() {
                    [] => continue,
                    [one] => Summary {
                        mean: one.lv_mean,
                        sd: one.lv_sd,
                        n: one.n,
                    },
                    many => {
                        let means: Vec<f64> = many.iter().map(|c| c.lv_mean).collect();
                        let (mean, sd) = mean_sd(&means);
                        Summary {
                            mean,
                            sd,
                            n: many.len(),
                        }
                    }
                };
                col.cells.insert(site.clone(), summary);
            }
        }
        Self {
            plan,
            jobs: runs.iter().map(|r| r.status.job.id.clone()).collect(),
            seeds: runs.iter().map(|r| r.plan.seed).collect(),
            sites,
            columns,
            runs,
        }
    }

    /// What the ± means here.
    pub fn spread(&self) -> &'static str {
        if self.runs.len() > 1 {
            "mean ± SD over runs"
        } else {
            "mean ± SD over test subjects (one run)"
        }
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.label == name || format!("{}/{}", c.stage, c.model) == name)
            .or_else(|| self.columns.iter().find(|c| c.model == name))
    }

    fn cell_text(c: Option<&Summary>) -> String {
        c.map(|s| format!("{:.3} ± {:.3}", s.mean, s.sd))
            .unwrap_or_else(|| "-".into())
    }

    /// One row per test center, one column per model (the paper's Table 5 orientation).
    fn table(&self, markdown: bool) -> String {
        let mut header = vec!["test center".to_string()];
        header.extend(self.columns.iter().map(|c| c.label.clone()));
        let rows: Vec<Vec<String>> = self
            .sites
            .iter()
            .map(|site| {
                let mut r = vec![site.clone()];
                r.extend(
                    self.columns
                        .iter()
                        .map(|c| Self::cell_text(c.cells.get(site))),
                );
                r
            })
            .collect();
        super::table(&header, &rows, markdown)
    }

    pub fn render(&self) -> String {
        self.table(false)
    }

    pub fn markdown(&self) -> String {
        self.table(true)
    }

    /// Every job's every cell (not aggregated), for analysis elsewhere: each job's own CSV
    /// rows with the plan, job and seed in front.
    pub fn csv_rows(&self, out: &mut String) {
        for r in &self.runs {
            for line in r.results.csv().lines().skip(1) {
                let _ = writeln!(
                    out,
                    "{},{},{},{line}",
                    self.plan, r.status.job.id, r.plan.seed
                );
            }
        }
    }

    /// Mean validation Dice over a fedavg stage's sites, per round, averaged over runs.
    pub fn round_dice(&self, stage: &str) -> Vec<Option<(f64, f64)>> {
        let mut per_round: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for r in &self.runs {
            let Some(st) = r.status.stages.iter().find(|s| s.name == stage) else {
                continue;
            };
            // The last attempt of each round is the one that counted.
            let mut last: BTreeMap<u32, &super::RoundStatus> = BTreeMap::new();
            for round in &st.rounds {
                last.insert(round.round, round);
            }
            for (n, round) in last {
                let v: Vec<f64> = round
                    .tasks
                    .iter()
                    .filter_map(|t| t.val_dice.map(f64::from))
                    .collect();
                if !v.is_empty() {
                    per_round.entry(n).or_default().push(mean_sd(&v).0);
                }
            }
        }
        let max = per_round.keys().max().copied().unwrap_or(0);
        (1..=max)
            .map(|n| per_round.get(&n).map(|v| mean_sd(v)))
            .collect()
    }
}

pub const CSV_HEADER: &str = "plan,job,seed,stage,model,version,site,subjects,lv_mean,lv_sd,blood_pool_mean,myocardium_mean\n";
