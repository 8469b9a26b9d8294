//! The read-only status page: one static HTML document whose script polls the JSON below
//! (the same documents the admin API returns) and redraws jobs, stages, the live round, the
//! Dice-per-round chart and the cross-site results table.

use serde_json::{Value, json};

use crate::engine::{EngineError, Federation};
use crate::report::{JobStatus, JobSummary, Results};

pub const PAGE: &str = include_str!("status_page.html");

/// Every job, newest first.
pub fn jobs(fed: &Federation) -> Result<Value, EngineError> {
    let mut jobs: Vec<JobSummary> = fed.store.jobs()?.iter().map(JobSummary::of).collect();
    jobs.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(json!(jobs))
}

/// Known sites with their live state (the admin API's `sites` document).
pub fn sites(fed: &Federation) -> Result<Value, EngineError> {
    Ok(json!(fed.site_rows()?))
}

/// One job's status (stages, rounds, per-site tasks, live sites) and its results table.
pub fn job(fed: &Federation, id: &str) -> Result<Value, EngineError> {
    let job = fed.job(id)?;
    Ok(json!({
        "status": JobStatus::of(&job, fed.live_sites()),
        "results": Results::of(&job),
    }))
}
