//! Early aggregation: a round's mean computed while its last updates are still being made
//! durable. Once an update's bytes have all arrived and hashed, the fsyncs that make it (and
//! its blob name) durable take 0.2-0.7 s on a busy disk; if every other update of the round is
//! in by then, the aggregation runs meanwhile, reading the last files through handles opened
//! before they were moved. The close of the round uses the result only if it aggregated
//! exactly the updates that were accepted (same sites, digests and weights, so the same
//! bytes, bit for bit); otherwise the result is thrown away and the round aggregates as usual.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use crate::strategy::{AggregateOutcome, Aggregation};

/// An update that arrived whole (size and digest checked), not yet accepted.
#[derive(Clone)]
pub struct Arrived {
    pub digest: String,
    pub weight: f64,
    pub file: Arc<File>,
    /// Where the file was when it arrived, for messages.
    pub path: PathBuf,
}

/// Which round of which job an aggregation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundKey {
    pub job: String,
    pub stage: usize,
    pub round: u32,
    pub attempt: u32,
}

/// What an aggregation read: site, digest and weight (as bits) per update, in order.
pub type Inputs = Vec<(String, String, u64)>;

struct Run {
    round: RoundKey,
    inputs: Inputs,
    /// Task ids of the inputs that were not yet accepted when the run started.
    arrived: Vec<String>,
    result: Receiver<Result<AggregateOutcome, String>>,
}

#[derive(Default)]
pub struct Early {
    /// Updates between arrival and acceptance, by task id.
    arrived: Mutex<HashMap<String, Arrived>>,
    /// At most one early aggregation per job.
    runs: Mutex<HashMap<String, Run>>,
}

/// Removes an arrived update from `Early` when its acceptance (or refusal) is over. Unless
/// `accepted` was called, an early aggregation that read the update is discarded with it.
pub struct ArrivedGuard<'a> {
    early: &'a Early,
    task_id: String,
    accepted: bool,
}

impl ArrivedGuard<'_> {
    pub fn accepted(mut self) {
        self.accepted = true;
    }
}

impl Drop for ArrivedGuard<'_> {
    fn drop(&mut self) {
        lock(&self.early.arrived).remove(&self.task_id);
        if !self.accepted {
            let mut runs = lock(&self.early.runs);
            let used: Vec<String> = runs
                .iter()
                .filter(|(_, r)| r.arrived.contains(&self.task_id))
                .map(|(job, _)| job.clone())
                .collect();
            for job in used {
                if let Some(run) = runs.remove(&job) {
                    discard(run);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Early {
    /// Records an update that arrived for `task_id` until the guard is dropped. A second
    /// upload for the same task (a duplicate) does not replace the first.
    pub fn arrived(&self, task_id: &str, update: Arrived) -> ArrivedGuard<'_> {
        lock(&self.arrived)
            .entry(task_id.to_string())
            .or_insert(update);
        ArrivedGuard {
            early: self,
            task_id: task_id.to_string(),
            accepted: false,
        }
    }

    pub fn arrived_for(&self, task_id: &str) -> Option<Arrived> {
        lock(&self.arrived).get(task_id).cloned()
    }

    /// Starts `aggregation` on its own thread, replacing (and discarding) any earlier one of
    /// the job.
    pub fn start(
        &self,
        round: RoundKey,
        inputs: Inputs,
        arrived: Vec<String>,
        aggregation: Aggregation,
    ) {
        let (tx, rx) = sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("early-aggregation".into())
            .spawn(move || {
                let _ = tx.send(aggregation.run());
            });
        if let Err(e) = spawned {
            tracing::warn!("early aggregation not started: {e}");
            return;
        }
        tracing::debug!(?round, "early aggregation started");
        let job = round.job.clone();
        let old = lock(&self.runs).insert(
            job,
            Run {
                round,
                inputs,
                arrived,
                result: rx,
            },
        );
        if let Some(old) = old {
            discard(old);
        }
    }

    /// The job's early aggregation if it was of `round` over exactly `inputs`, waiting for it
    /// to finish; any other early aggregation of the job is discarded.
    pub fn take(&self, round: &RoundKey, inputs: &Inputs) -> Option<AggregateOutcome> {
        let run = lock(&self.runs).remove(&round.job)?;
        if run.round != *round || run.inputs != *inputs {
            discard(run);
            return None;
        }
        match run.result.recv() {
            Ok(Ok(outcome)) => Some(outcome),
            // A failed early run is simply redone the usual way, which reports the error.
            Ok(Err(e)) => {
                tracing::debug!("early aggregation failed: {e}");
                None
            }
            Err(_) => None,
        }
    }

    /// Drops a job's early aggregation, if any (the job ended some other way).
    pub fn forget(&self, job: &str) {
        if let Some(run) = lock(&self.runs).remove(job) {
            discard(run);
        }
    }
}

/// Deletes a run's output files once it finishes, off the caller's thread.
fn discard(run: Run) {
    let _ = std::thread::Builder::new()
        .name("early-discard".into())
        .spawn(move || {
            if let Ok(Ok(outcome)) = run.result.recv() {
                let _ = std::fs::remove_file(&outcome.model.path);
                if let Some((m, v)) = outcome.moments {
                    let _ = std::fs::remove_file(&m.path);
                    let _ = std::fs::remove_file(&v.path);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::{FedAvg, UpdateInput};
    use fedseg_proto::safetensors::{NamedTensor, read_safetensors, write_safetensors};
    use std::collections::BTreeMap;
    use std::path::Path;

    fn update(dir: &Path, site: &str, values: &[f32], weight: f64) -> UpdateInput {
        let path = dir.join(site);
        let t = [NamedTensor {
            name: "w".into(),
            shape: vec![values.len()],
            data: values.to_vec(),
        }];
        write_safetensors(&path, &t, &BTreeMap::new()).expect("write");
        UpdateInput {
            site: site.into(),
            path,
            weight,
            open: None,
            held: None,
        }
    }

    fn aggregation(dir: &Path) -> (Aggregation, Inputs) {
        let updates = vec![
            update(dir, "a", &[1.0, 10.0], 1.0),
            update(dir, "b", &[4.0, 40.0], 3.0),
        ];
        let inputs = updates
            .iter()
            .map(|u| (u.site.clone(), "digest".to_string(), u.weight.to_bits()))
            .collect();
        let aggregation = Aggregation {
            strategy: Box::new(FedAvg),
            updates,
            previous: None,
            moments: None,
            out_dir: dir.to_path_buf(),
            metadata: BTreeMap::new(),
        };
        (aggregation, inputs)
    }

    fn key(round: u32) -> RoundKey {
        RoundKey {
            job: "000001".into(),
            stage: 1,
            round,
            attempt: 0,
        }
    }

    #[test]
    fn the_round_it_was_started_for_gets_the_early_result() {
        let d = tempfile::tempdir().expect("tempdir");
        let (agg, inputs) = aggregation(d.path());
        let early = Early::default();
        early.start(key(0), inputs.clone(), Vec::new(), agg);
        let outcome = early.take(&key(0), &inputs).expect("early result");
        let values = read_safetensors(&outcome.model.path).expect("read").tensors[0]
            .data
            .clone();
        assert_eq!(values, [3.25, 32.5]);
        assert!(early.take(&key(0), &inputs).is_none(), "taken once");
    }

    #[test]
    fn another_round_or_input_set_discards_it_and_its_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let early = Early::default();
        for (round, changed) in [(1, false), (0, true)] {
            let (agg, inputs) = aggregation(d.path());
            early.start(key(0), inputs.clone(), Vec::new(), agg);
            let mut asked = inputs.clone();
            if changed {
                asked[1].1 = "another digest".into();
            }
            assert!(early.take(&key(round), &asked).is_none());
        }
        only_inputs_remain(d.path());
    }

    /// Waits until the discarded runs' outputs are deleted and only the inputs a, b remain.
    fn only_inputs_remain(dir: &Path) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = std::fs::read_dir(dir).expect("dir").count();
            if left == 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{left} files left");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn a_refused_update_discards_the_early_run_that_read_it() {
        let d = tempfile::tempdir().expect("tempdir");
        let early = Early::default();
        let (agg, inputs) = aggregation(d.path());
        let arrived = Arrived {
            digest: "digest".into(),
            weight: 3.0,
            file: Arc::new(File::open(d.path().join("b")).expect("open")),
            path: d.path().join("b"),
        };
        let task = "000001/1/0/0/b".to_string();
        let guard = early.arrived(&task, arrived);
        early.start(key(0), inputs.clone(), vec![task], agg);
        drop(guard);
        assert!(early.take(&key(0), &inputs).is_none());
        only_inputs_remain(d.path());
    }

    #[test]
    fn an_arrived_update_is_known_until_its_guard_drops() {
        let d = tempfile::tempdir().expect("tempdir");
        let u = update(d.path(), "a", &[1.0], 1.0);
        let early = Early::default();
        let arrived = Arrived {
            digest: "d".into(),
            weight: 1.0,
            file: Arc::new(File::open(&u.path).expect("open")),
            path: u.path.clone(),
        };
        let guard = early.arrived("job/1/0/0/a", arrived);
        assert_eq!(
            early.arrived_for("job/1/0/0/a").map(|a| a.digest),
            Some("d".to_string())
        );
        drop(guard);
        assert!(early.arrived_for("job/1/0/0/a").is_none());
    }
}
