//! Prometheus text metrics: counters the services bump, and gauges read from the store at
//! scrape time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::Federation;
use crate::records::{JobState, StageState};

/// Counters the services bump; everything else is read from the store when scraped.
#[derive(Default)]
pub struct Counters {
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    rejected: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    pub fn received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn rejected(&self, message: &str) {
        let mut m = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(reason_label(message)).or_default() += 1;
    }
}

/// A refusal message reduced to a label with few values, as Prometheus wants.
pub fn reason_label(message: &str) -> &'static str {
    let m = message.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| m.contains(w));
    if has(&["stale", "round is closed", "rounds are closed"]) {
        "stale"
    } else if has(&["duplicate", "already"]) {
        "duplicate"
    } else if has(&["belongs to site", "has no task"]) {
        "wrong_site"
    } else if has(&["exceeds", "limit"]) {
        "too_large"
    } else if has(&["digest"]) {
        "digest"
    } else if has(&["finite", "nan"]) {
        "not_finite"
    } else if has(&["dtype", "f32"]) {
        "dtype"
    } else if has(&["shape", "missing", "unexpected", "tensor"]) {
        "schema"
    } else if has(&["truncated", "out of order", "header"]) {
        "malformed"
    } else {
        "other"
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The metrics page.
pub fn render(fed: &Federation) -> String {
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        fedseg_proto::http::metric(&mut s, name, kind, help, &samples)
    };
    let live = fed.live_sites();
    let connected = live.keys().filter(|site| fed.is_alive(site)).count();
    let known = fed.store.sites().map(|s| s.len()).unwrap_or(0);
    metric(
        "fedseg_sites_connected",
        "gauge",
        "Sites heard from within heartbeat_timeout_s.",
        vec![(String::new(), connected as f64)],
    );
    metric(
        "fedseg_sites_known",
        "gauge",
        "Sites that have ever joined.",
        vec![(String::new(), known as f64)],
    );
    let jobs = fed.store.jobs().unwrap_or_default();
    let mut by_state: BTreeMap<&str, f64> = [
        ("running", 0.0),
        ("done", 0.0),
        ("failed", 0.0),
        ("cancelled", 0.0),
    ]
    .into_iter()
    .collect();
    for j in &jobs {
        let k = match j.state {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        };
        *by_state.entry(k).or_default() += 1.0;
    }
    metric(
        "fedseg_jobs",
        "gauge",
        "Jobs by state.",
        by_state
            .into_iter()
            .map(|(k, v)| (format!("{{state=\"{k}\"}}"), v))
            .collect(),
    );
    let (mut rounds, mut states, mut phases) = (Vec::new(), Vec::new(), Vec::new());
    for j in &jobs {
        for st in &j.stages {
            let at = format!("job=\"{}\",stage=\"{}\"", label(&j.id), label(&st.name));
            let closed: Vec<_> = st.rounds.iter().filter(|r| r.closed.is_some()).collect();
            rounds.push((format!("{{{at}}}"), closed.len() as f64));
            let state = match st.state {
                StageState::Pending => "pending",
                StageState::Running => "running",
                StageState::Done => "done",
                StageState::Failed => "failed",
            };
            states.push((format!("{{{at},state=\"{state}\"}}"), 1.0));
            if let Some(r) = closed.last() {
                let slowest = |f: fn(&crate::records::TaskRecord) -> f64| {
                    r.tasks.values().map(f).fold(0.0, f64::max)
                };
                for (phase, v) in [
                    ("download", slowest(|t| t.download_s)),
                    ("work", slowest(|t| t.work_s)),
                    ("upload", slowest(|t| t.upload_s)),
                    ("aggregate", r.aggregate_s.unwrap_or(0.0)),
                ] {
                    phases.push((format!("{{{at},phase=\"{phase}\"}}"), v));
                }
            }
        }
    }
    metric(
        "fedseg_rounds_closed_total",
        "counter",
        "Closed rounds (retries included) per job and stage.",
        rounds,
    );
    metric(
        "fedseg_stage_state",
        "gauge",
        "1 for the state each stage is in.",
        states,
    );
    metric(
        "fedseg_round_phase_seconds",
        "gauge",
        "The last closed round of each stage: the slowest site's download, work and upload, and the coordinator's aggregation.",
        phases,
    );
    metric(
        "fedseg_bytes_received_total",
        "counter",
        "Model bytes received from sites.",
        vec![(
            String::new(),
            fed.counters.bytes_received.load(Ordering::Relaxed) as f64,
        )],
    );
    metric(
        "fedseg_bytes_sent_total",
        "counter",
        "Model bytes sent to sites.",
        vec![(
            String::new(),
            fed.counters.bytes_sent.load(Ordering::Relaxed) as f64,
        )],
    );
    let rejected = fed
        .counters
        .rejected
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), *v as f64))
        .collect();
    metric(
        "fedseg_rejected_updates_total",
        "counter",
        "Updates refused, by reason.",
        rejected,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_get_a_small_set_of_labels() {
        assert_eq!(
            reason_label("task 1/0/0/0/a: its round is closed (stale update)"),
            "stale"
        );
        assert_eq!(
            reason_label("task x: duplicate, an update was already accepted"),
            "duplicate"
        );
        assert_eq!(
            reason_label("update of 9 bytes exceeds the coordinator's limit"),
            "too_large"
        );
        assert_eq!(
            reason_label("tensor enc.0.conv1.weight: value 3 is not finite"),
            "not_finite"
        );
        assert_eq!(reason_label("something new"), "other");
    }
}
