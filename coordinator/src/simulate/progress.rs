//! One line per change of a running job: which stage and round, and what each of its sites
//! is doing (downloading, training epoch e/E with its validation Dice, uploading, done).

use crate::records::{StageState, TaskState};
use crate::report::JobStatus;

/// The line describing `status` now, and the part of it whose change is worth a new line
/// (the epoch counts; the loss and slices/s wobble every heartbeat).
pub fn describe(status: &JobStatus) -> Option<(String, String)> {
    let n = status.stages.len();
    let (i, stage) = status
        .stages
        .iter()
        .enumerate()
        .find(|(_, s)| s.state == StageState::Running)?;
    let round = stage.rounds.last();
    let rounds_total = stage.planned_rounds;
    let mut key = format!("{i}");
    let mut line = format!("stage {}/{n} {} [{}]", i + 1, stage.name, stage.kind);
    if let Some(r) = round {
        if rounds_total > 1 {
            line.push_str(&format!(" round {}/{rounds_total}", r.round));
        }
        if r.attempt > 0 {
            line.push_str(&format!(" (attempt {})", r.attempt + 1));
        }
        key.push_str(&format!("/{}/{}", r.round, r.attempt));
        let mut sites = Vec::new();
        for t in &r.tasks {
            let live = status.sites.get(&t.site);
            let live_str = |k: &str| live.and_then(|l| l[k].as_str()).unwrap_or("").to_string();
            let live_num = |k: &str| live.and_then(|l| l[k].as_f64()).unwrap_or(0.0);
            let what = match t.state {
                TaskState::Done => "done".to_string(),
                TaskState::Failed => format!("failed: {}", t.error.clone().unwrap_or_default()),
                TaskState::Assigned => {
                    // The heartbeat may still describe the site's previous task.
                    let on_this =
                        live_str("task_id").starts_with(&format!("{}/{i}/", status.job.id));
                    let state = if on_this {
                        live_str("state")
                    } else {
                        String::new()
                    };
                    let epochs = live_num("epochs");
                    match state.as_str() {
                        "" | "idle" => "queued".to_string(),
                        s if epochs > 0.0 => format!("{s} {}/{epochs}", live_num("epoch")),
                        s => s.to_string(),
                    }
                }
            };
            key.push_str(&format!("/{}={what}", t.site));
            let extra = match t.state {
                TaskState::Assigned if what.starts_with("training") && live_num("epoch") > 0.0 => {
                    format!(
                        " (val Dice {:.2}, {:.0} slices/s)",
                        live_num("val_dice"),
                        live_num("slices_per_s")
                    )
                }
                _ => String::new(),
            };
            sites.push(format!("{} {what}{extra}", t.site));
        }
        if !sites.is_empty() {
            line.push_str(": ");
            line.push_str(&sites.join(" · "));
        }
    }
    Some((key, line))
}
