//! Documents the admin API returns (JSON) and their renderings for a terminal, markdown and
//! CSV: job summaries, per-stage/round status with each site's timings, and the cross-site
//! Dice table of a job's evaluate stages. `runs` and `figures` turn several jobs of one plan
//! (repeated seeds) into mean ± SD tables and PNG plots.

pub mod figures;
pub mod files;
pub mod runs;

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::engine::LiveSite;
use crate::records::{JobRecord, JobState, StageState, TaskState};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: String,
    pub name: String,
    pub state: JobState,
    pub reason: Option<String>,
    pub stage: String,
    pub created: f64,
    pub finished: Option<f64>,
}

impl JobSummary {
    pub fn of(job: &JobRecord) -> Self {
        Self {
            id: job.id.clone(),
            name: job.plan.name.clone(),
            state: job.state,
            reason: job.reason.clone(),
            stage: job
                .stages
                .get(job.stage)
                .map(|s| s.name.clone())
                .unwrap_or_else(|| "-".into()),
            created: job.created,
            finished: job.finished,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskStatus {
    pub site: String,
    pub state: TaskState,
    pub samples: Option<u64>,
    pub download_s: f64,
    pub work_s: f64,
    pub upload_s: f64,
    /// The site's best validation Dice in this round's local training.
    #[serde(default)]
    pub val_dice: Option<f32>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundStatus {
    pub round: u32,
    pub attempt: u32,
    pub open: bool,
    pub seconds: f64,
    pub aggregate_s: Option<f64>,
    pub output: Option<String>,
    pub tasks: Vec<TaskStatus>,
    pub rejected: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageStatus {
    pub name: String,
    pub kind: String,
    pub state: StageState,
    pub reason: Option<String>,
    pub output: Option<String>,
    /// Rounds the plan asks for (fedavg), so a reader can say "round 2/5".
    #[serde(default)]
    pub planned_rounds: u32,
    pub rounds: Vec<RoundStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub job: JobSummary,
    pub plan_hash: String,
    /// The plan as submitted, so that a report can be made from this document alone.
    #[serde(default)]
    pub plan_toml: String,
    pub stages: Vec<StageStatus>,
    pub sites: BTreeMap<String, serde_json::Value>,
}

impl JobStatus {
    pub fn of(job: &JobRecord, live: BTreeMap<String, LiveSite>) -> Self {
        let now = crate::records::now_s();
        let stages = job
            .stages
            .iter()
            .zip(&job.plan.stages)
            .map(|(s, plan)| StageStatus {
                name: s.name.clone(),
                planned_rounds: plan.rounds(),
                kind: format!("{:?}", s.kind).to_lowercase(),
                state: s.state,
                reason: s.reason.clone(),
                output: s.output.clone(),
                rounds: s
                    .rounds
                    .iter()
                    .map(|r| RoundStatus {
                        round: r.index + 1,
                        attempt: r.attempt,
                        open: r.closed.is_none(),
                        seconds: r.closed.unwrap_or(now) - r.opened,
                        aggregate_s: r.aggregate_s,
                        output: r.output.clone(),
                        tasks: r
                            .tasks
                            .iter()
                            .map(|(site, t)| TaskStatus {
                                site: site.clone(),
                                state: t.state,
                                samples: t.update.as_ref().map(|u| u.sample_count),
                                download_s: t.download_s,
                                work_s: t.work_s,
                                upload_s: t.upload_s,
                                val_dice: t.update.as_ref().map(|u| u.val_dice),
                                error: t.error.clone(),
                            })
                            .collect(),
                        rejected: r
                            .rejected
                            .iter()
                            .map(|x| format!("{}: {}", x.site, x.reason))
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        let sites = live
            .into_iter()
            .map(|(k, v)| (k, serde_json::to_value(v).unwrap_or_default()))
            .collect();
        Self {
            job: JobSummary::of(job),
            plan_hash: job.plan_hash.clone(),
            plan_toml: job.plan_toml.clone(),
            stages,
            sites,
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let j = &self.job;
        let _ = writeln!(
            s,
            "job {} ({}): {:?}{}",
            j.id,
            j.name,
            j.state,
            j.reason
                .as_ref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default()
        );
        for st in &self.stages {
            let _ = writeln!(
                s,
                "  stage {} [{}]: {:?}{}{}",
                st.name,
                st.kind,
                st.state,
                st.output
                    .as_ref()
                    .map(|o| format!(" → model {o}"))
                    .unwrap_or_default(),
                st.reason
                    .as_ref()
                    .map(|r| format!(" — {r}"))
                    .unwrap_or_default()
            );
            for r in &st.rounds {
                let _ = writeln!(
                    s,
                    "    round {}{} {}: {:.1} s{}",
                    r.round,
                    if r.attempt > 0 {
                        format!(" (attempt {})", r.attempt + 1)
                    } else {
                        String::new()
                    },
                    if r.open { "open" } else { "closed" },
                    r.seconds,
                    r.aggregate_s
                        .map(|a| format!(", aggregation {a:.2} s"))
                        .unwrap_or_default()
                );
                for t in &r.tasks {
                    let _ = writeln!(
                        s,
                        "      {:<12} {:<9} samples {:>6}  download {:>6.2} s  work {:>7.1} s  upload {:>6.2} s{}",
                        t.site,
                        format!("{:?}", t.state).to_lowercase(),
                        t.samples
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "-".into()),
                        t.download_s,
                        t.work_s,
                        t.upload_s,
                        t.error
                            .as_ref()
                            .map(|e| format!("  error: {e}"))
                            .unwrap_or_default()
                    );
                }
                for x in &r.rejected {
                    let _ = writeln!(s, "      rejected: {x}");
                }
            }
        }
        s
    }
}

/// Dice mean ± SD over subjects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    /// The model version evaluated (differs per site for a `{site}` template).
    pub version: String,
    pub n: usize,
    pub lv_mean: f64,
    pub lv_sd: f64,
    pub blood_pool_mean: f64,
    pub myocardium_mean: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultRow {
    pub stage: String,
    pub model: String,
    pub cells: BTreeMap<String, Cell>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub job: String,
    pub sites: Vec<String>,
    pub rows: Vec<ResultRow>,
}

/// A table as aligned text (first column left, the rest right-aligned to one width) or as
/// markdown.
pub fn table(header: &[String], rows: &[Vec<String>], markdown: bool) -> String {
    let mut s = String::new();
    if markdown {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        s.push_str(&line(header));
        s.push_str(&format!("|{}\n", "---|".repeat(header.len())));
        for r in rows {
            s.push_str(&line(r));
        }
        return s;
    }
    let cells = || {
        rows.iter()
            .chain(std::iter::once(&header.to_vec()))
            .cloned()
            .collect::<Vec<_>>()
    };
    let first = cells()
        .iter()
        .filter_map(|r| r.first().map(|c| c.chars().count()))
        .max()
        .unwrap_or(0);
    let width = cells()
        .iter()
        .flat_map(|r| r.iter().skip(1).map(|c| c.chars().count()))
        .max()
        .unwrap_or(0);
    for r in std::iter::once(&header.to_vec()).chain(rows) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i == 0 {
                let _ = write!(line, "{c:<first$}");
            } else {
                let _ = write!(line, "  {c:>width$}");
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    (m, var.sqrt())
}

impl Results {
    pub fn of(job: &JobRecord) -> Self {
        let mut sites = Vec::new();
        let mut rows = Vec::new();
        for (stage, plan) in job.stages.iter().zip(&job.plan.stages) {
            if plan.kind != crate::plan::StageKind::Evaluate {
                continue;
            }
            for s in &plan.sites {
                if !sites.contains(s) {
                    sites.push(s.clone());
                }
            }
            let mut by_model: BTreeMap<(usize, String), ResultRow> = BTreeMap::new();
            for e in &stage.evaluations {
                let order = plan
                    .models
                    .iter()
                    .position(|m| *m == e.model)
                    .unwrap_or(usize::MAX);
                let row = by_model
                    .entry((order, e.model.clone()))
                    .or_insert_with(|| ResultRow {
                        stage: stage.name.clone(),
                        model: e.model.clone(),
                        cells: BTreeMap::new(),
                    });
                let lv: Vec<f64> = e.subjects.iter().map(|s| s.lv).collect();
                let bp: Vec<f64> = e.subjects.iter().map(|s| s.blood_pool).collect();
                let myo: Vec<f64> = e.subjects.iter().map(|s| s.myocardium).collect();
                let (lv_mean, lv_sd) = mean_sd(&lv);
                row.cells.insert(
                    e.site.clone(),
                    Cell {
                        version: e.version.clone(),
                        n: lv.len(),
                        lv_mean,
                        lv_sd,
                        blood_pool_mean: mean_sd(&bp).0,
                        myocardium_mean: mean_sd(&myo).0,
                    },
                );
            }
            rows.extend(by_model.into_values());
        }
        Self {
            job: job.id.clone(),
            sites,
            rows,
        }
    }

    pub fn cell(&self, row: &ResultRow, site: &str) -> String {
        row.cells
            .get(site)
            .map(|c| format!("{:.3} ± {:.3}", c.lv_mean, c.lv_sd))
            .unwrap_or_else(|| "-".into())
    }

    /// LV Dice (mean ± SD) per model and site, for a terminal or markdown.
    fn by_model(&self, markdown: bool) -> String {
        let mut header = vec!["model (LV Dice)".to_string()];
        header.extend(self.sites.iter().cloned());
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| {
                let mut r = vec![format!("{}:{}", row.stage, row.model)];
                r.extend(self.sites.iter().map(|site| self.cell(row, site)));
                r
            })
            .collect();
        table(&header, &rows, markdown)
    }

    pub fn render(&self) -> String {
        self.by_model(false)
    }

    pub fn markdown(&self) -> String {
        self.by_model(true)
    }

    /// Column headings for the per-center view: the model, or "stage/model" where one
    /// model appears in more than one evaluate stage (e.g. with and without histogram
    /// matching).
    pub fn column_labels(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|r| {
                // "tl-{site}" is one column of per-center models: call it "tl".
                let model = r
                    .model
                    .replace(crate::plan::SITE_TEMPLATE, "")
                    .trim_matches(['-', '_', '.'])
                    .to_string();
                if self.rows.iter().filter(|o| o.model == r.model).count() > 1 {
                    format!("{}/{model}", r.stage)
                } else {
                    model
                }
            })
            .collect()
    }

    /// The paper's Table 5 orientation: one row per test center, one column per model,
    /// LV Dice mean ± SD ("-" where a model was not evaluated at that center).
    fn by_center_table(&self, markdown: bool) -> String {
        let mut header = vec!["test center".to_string()];
        header.extend(self.column_labels());
        let rows: Vec<Vec<String>> = self
            .sites
            .iter()
            .map(|site| {
                let mut r = vec![site.clone()];
                r.extend(self.rows.iter().map(|row| self.cell(row, site)));
                r
            })
            .collect();
        table(&header, &rows, markdown)
    }

    pub fn by_center(&self) -> String {
        self.by_center_table(false)
    }

    pub fn by_center_markdown(&self) -> String {
        self.by_center_table(true)
    }

    pub fn csv(&self) -> String {
        let mut s = String::from(
            "stage,model,version,site,subjects,lv_mean,lv_sd,blood_pool_mean,myocardium_mean\n",
        );
        for row in &self.rows {
            for (site, c) in &row.cells {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{:.4},{:.4},{:.4},{:.4}",
                    row.stage,
                    row.model,
                    c.version,
                    site,
                    c.n,
                    c.lv_mean,
                    c.lv_sd,
                    c.blood_pool_mean,
                    c.myocardium_mean
                );
            }
        }
        s
    }
}
