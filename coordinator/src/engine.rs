//! The job engine: turns plans into rounds of per-site tasks, decides when a round closes
//! (all live sites reported, quorum plus grace, deadline), aggregates, and moves jobs from
//! stage to stage. Every transition is written to sled before anyone is told about it, so a
//! restarted coordinator picks each job up at the round it was in.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use fedseg_proto::pb;
use fedseg_proto::safetensors::SafetensorsHeader;
use serde::Serialize;

use crate::blobs::BlobStore;
use crate::config::CoordinatorConfig;
use crate::early::{Arrived, ArrivedGuard, Early, Inputs, RoundKey};
use crate::held::HeldUpdates;
use crate::plan::{Plan, Stage, StageKind};
use crate::records::*;
use crate::store::{Store, StoreError};
use crate::strategy::{self, Aggregation, UpdateInput};
use crate::tensors::{Schema, schema_of};
use crate::update_check::check_schema;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The update or report is not wanted; the reason goes back to the site and into status.
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Io(String),
}

/// What the coordinator knows about a connected site that is not worth a disk write.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LiveSite {
    #[serde(skip)]
    pub last_seen: Option<Instant>,
    pub seconds_since_seen: f64,
    pub state: String,
    pub task_id: String,
    pub epoch: u32,
    pub epochs: u32,
    pub loss: f32,
    pub val_dice: f32,
    pub slices_per_s: f32,
}

pub struct Federation {
    pub config: CoordinatorConfig,
    pub store: Store,
    pub blobs: BlobStore,
    lock: tokio::sync::Mutex<()>,
    changed: tokio::sync::watch::Sender<u64>,
    live: std::sync::Mutex<HashMap<String, LiveSite>>,
    started: Instant,
    pub counters: crate::http::metrics::Counters,
    early: Early,
    /// Updates kept in memory until their round is aggregated.
    pub held: Arc<HeldUpdates>,
}

/// Decision for an open round.
enum Verdict {
    Wait,
    Close,
    Retry(String),
    Fail(String),
}

impl Federation {
    pub fn open(config: CoordinatorConfig) -> Result<Arc<Self>, EngineError> {
        let store = Store::open(&config.state_dir.join("db"))?;
        let held_budget = config.update_memory_mb.saturating_mul(1 << 20);
        let blobs = BlobStore::open(&config.state_dir.join("blobs"))
            .map_err(|e| EngineError::Io(format!("{}: {e}", config.state_dir.display())))?;
        let fed = Arc::new(Self {
            config,
            store,
            blobs,
            lock: tokio::sync::Mutex::new(()),
            changed: tokio::sync::watch::channel(0).0,
            live: std::sync::Mutex::new(HashMap::new()),
            started: Instant::now(),
            counters: Default::default(),
            early: Early::default(),
            held: HeldUpdates::new(held_budget),
        });
        fed.check_resumable()?;
        Ok(fed)
    }

    /// A running job resumes only under the plan it was submitted with.
    fn check_resumable(&self) -> Result<(), EngineError> {
        for mut job in self.store.jobs()? {
            if job.state != JobState::Running {
                continue;
            }
            let problem = match Plan::parse(&job.plan_toml) {
                Ok(plan) if plan.hash() == job.plan_hash && plan == job.plan => None,
                Ok(plan) => Some(format!(
                    "the plan changed since the job was submitted (hash {} then, {} now): refusing to resume; resubmit it as a new job",
                    short(&job.plan_hash),
                    short(&plan.hash())
                )),
                Err(e) => Some(format!(
                    "the stored plan no longer parses ({e}): refusing to resume"
                )),
            };
            if let Some(reason) = problem {
                tracing::error!(job = job.id, "{reason}");
                job.state = JobState::Failed;
                job.reason = Some(reason);
                job.finished = Some(now_s());
                self.store.put_job(&job)?;
            } else {
                let stage = job.stages.get(job.stage).map(|s| s.name.clone());
                let round = job
                    .stages
                    .get(job.stage)
                    .and_then(|s| s.rounds.last())
                    .map(|r| r.index + 1);
                tracing::info!(job = job.id, ?stage, ?round, "resuming job");
            }
        }
        Ok(())
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    // ----- sites -----

    pub fn touch(&self, site: &str, hb: Option<&pb::HeartbeatRequest>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let entry = live.entry(site.to_string()).or_default();
        entry.last_seen = Some(Instant::now());
        if let Some(hb) = hb {
            entry.state = hb.state.clone();
            entry.task_id = hb.task_id.clone();
            entry.epoch = hb.epoch;
            entry.epochs = hb.epochs;
            entry.loss = hb.loss;
            entry.val_dice = hb.val_dice;
            entry.slices_per_s = hb.slices_per_s;
        }
    }

    pub fn live_sites(&self) -> BTreeMap<String, LiveSite> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                v.seconds_since_seen = v
                    .last_seen
                    .map_or(f64::INFINITY, |t| t.elapsed().as_secs_f64());
                (k.clone(), v)
            })
            .collect()
    }

    /// A site counts as alive if it was heard from within the heartbeat timeout; right after
    /// a coordinator restart every site gets that long to reconnect.
    pub fn is_alive(&self, site: &str) -> bool {
        let timeout = std::time::Duration::from_secs_f64(self.config.heartbeat_timeout_s);
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(site).and_then(|s| s.last_seen) {
            Some(t) => t.elapsed() < timeout,
            None => self.started.elapsed() < timeout,
        }
    }

    /// Every site that joined: its record, whether it is connected now, its live state.
    pub fn site_rows(&self) -> Result<Vec<serde_json::Value>, EngineError> {
        let live = self.live_sites();
        Ok(self
            .store
            .sites()?
            .iter()
            .map(|s| {
                let l = live.get(&s.name);
                serde_json::json!({
                    "site": s,
                    "connected": self.is_alive(&s.name) && l.is_some(),
                    "live": l,
                })
            })
            .collect())
    }

    pub fn join(&self, site: &str, req: &pb::JoinRequest) -> Result<(), EngineError> {
        let now = now_s();
        let mut rec = self.store.site(site)?.unwrap_or_else(|| SiteRecord {
            name: site.to_string(),
            first_joined: now,
            ..Default::default()
        });
        rec.last_joined = now;
        rec.agent_version = req.agent_version.clone();
        rec.device = req.device.clone();
        rec.train_subjects = req.train_subjects;
        rec.train_slices = req.train_slices;
        self.store.put_site(&rec)?;
        self.store.audit(
            site,
            "join",
            &format!("agent {} on {}", req.agent_version, req.device),
        )?;
        self.touch(site, None);
        self.bump();
        Ok(())
    }

    /// Whether the site should drop the task it is working on.
    pub fn task_cancelled(&self, task_id: &str) -> bool {
        if task_id.is_empty() {
            return false;
        }
        let Some(id) = TaskId::parse(task_id) else {
            return true;
        };
        let Ok(Some(job)) = self.store.job(&id.job) else {
            return true;
        };
        if job.state != JobState::Running {
            return true;
        }
        let open = job
            .stages
            .get(id.stage)
            .and_then(|s| s.rounds.last())
            .filter(|r| r.index == id.round && r.attempt == id.attempt && r.closed.is_none());
        !matches!(open.and_then(|r| r.tasks.get(&id.site)), Some(t) if t.state == TaskState::Assigned)
    }

    // ----- jobs -----

    pub async fn submit(&self, plan_toml: &str, who: &str) -> Result<String, EngineError> {
        let plan =
            Plan::parse(plan_toml).map_err(|e| EngineError::Invalid(format!("plan: {e}")))?;
        let _g = self.lock.lock().await;
        let id = self.store.next_job_id()?;
        let job = JobRecord {
            id: id.clone(),
            plan_toml: plan_toml.to_string(),
            plan_hash: plan.hash(),
            stages: plan
                .stages
                .iter()
                .map(|s| StageRecord::new(&s.name, s.kind))
                .collect(),
            plan,
            state: JobState::Running,
            reason: None,
            submitted_by: who.to_string(),
            created: now_s(),
            finished: None,
            stage: 0,
        };
        self.store.put_job(&job)?;
        self.store.audit(
            who,
            "job submit",
            &format!(
                "job {id} ({}), plan {}",
                job.plan.name,
                short(&job.plan_hash)
            ),
        )?;
        drop(_g);
        self.tick().await?;
        Ok(id)
    }

    pub async fn cancel(&self, id: &str, who: &str) -> Result<JobRecord, EngineError> {
        let _g = self.lock.lock().await;
        let mut job = self
            .store
            .job(id)?
            .ok_or_else(|| EngineError::NotFound(format!("no job {id}")))?;
        if job.state == JobState::Running {
            self.release_current_round(&job);
            job.state = JobState::Cancelled;
            job.reason = Some(format!("cancelled by {who}"));
            job.finished = Some(now_s());
            self.store.put_job(&job)?;
        }
        self.store.audit(who, "job cancel", id)?;
        self.bump();
        Ok(job)
    }

    pub fn job(&self, id: &str) -> Result<JobRecord, EngineError> {
        self.store
            .job(id)?
            .ok_or_else(|| EngineError::NotFound(format!("no job {id}")))
    }

    /// Resolves "VERSION", "JOB/STAGE" (the stage's final model) or "JOB/STAGE/ROUND".
    pub fn resolve_model(&self, spec: &str) -> Result<ModelVersion, EngineError> {
        if let Some(m) = self.store.model(spec)? {
            return Ok(m);
        }
        let parts: Vec<&str> = spec.split('/').collect();
        let version = match parts[..] {
            [job, stage] => {
                let job = self.job(job)?;
                job.stages
                    .iter()
                    .find(|s| s.name == stage)
                    .and_then(|s| s.output.clone())
            }
            [job, stage, round] => {
                let r: u32 = round
                    .parse()
                    .map_err(|_| EngineError::Invalid(format!("round {round:?}")))?;
                Some(version_id(job, stage, r.saturating_sub(1)))
            }
            _ => None,
        };
        version
            .and_then(|v| self.store.model(&v).ok().flatten())
            .ok_or_else(|| EngineError::NotFound(format!("no model version {spec:?}")))
    }

    /// The task the site should work on now, if any: the first open round (in job order)
    /// that still waits for this site.
    pub fn task_for(&self, site: &str) -> Result<Option<pb::Task>, EngineError> {
        for job in self.store.jobs()? {
            if job.state != JobState::Running {
                continue;
            }
            let Some(stage_rec) = job.stages.get(job.stage) else {
                continue;
            };
            let Some(round) = stage_rec.rounds.last() else {
                continue;
            };
            if round.closed.is_some() {
                continue;
            }
            match round.tasks.get(site) {
                Some(t) if t.state == TaskState::Assigned => {}
                _ => continue,
            }
            return self.build_task(&job, job.stage, round, site).map(Some);
        }
        Ok(None)
    }

    fn model_ref(&self, version: &str) -> Result<pb::ModelRef, EngineError> {
        let m = self
            .store
            .model(version)?
            .ok_or_else(|| EngineError::NotFound(format!("model version {version} is missing")))?;
        Ok(pb::ModelRef {
            version: m.id,
            digest: m.digest,
            size: m.size,
        })
    }

    fn build_task(
        &self,
        job: &JobRecord,
        stage_idx: usize,
        round: &RoundRecord,
        site: &str,
    ) -> Result<pb::Task, EngineError> {
        let stage = &job.plan.stages[stage_idx];
        let id = TaskId {
            job: job.id.clone(),
            stage: stage_idx,
            round: round.index,
            attempt: round.attempt,
            site: site.to_string(),
        };
        let init = round
            .init
            .as_deref()
            .map(|v| self.model_ref(v))
            .transpose()?;
        let work = match stage.kind {
            StageKind::Train | StageKind::Finetune | StageKind::Fedavg => {
                let mut spec = pb::TrainSpec {
                    model: job.plan.model.clone(),
                    epochs: stage.epochs.unwrap_or(1),
                    batch_size: stage.batch_size.unwrap_or(8),
                    learning_rate: stage.learning_rate.unwrap_or(1e-3),
                    // Every site of a round shares the seed: a first round from scratch then
                    // starts from the same initial weights everywhere.
                    seed: job.plan.seed
                        + stage.seed
                        + 1000 * stage_idx as u64
                        + u64::from(round.index),
                    trainable: stage.trainable.clone(),
                    local: stage.local.clone(),
                    train_fraction: stage.train_fraction,
                    augment: stage.augment.clone().unwrap_or_default(),
                    prox_mu: 0.0,
                };
                if stage.kind == StageKind::Fedavg {
                    strategy::for_stage(stage).configure(&mut spec);
                }
                pb::task::Work::Train(spec)
            }
            StageKind::Stats => pb::task::Work::Stats(pb::StatsSpec {}),
            StageKind::Evaluate => {
                let mut models = Vec::new();
                for (_, m) in stage.models_at(site, &job.plan.stages) {
                    let version = job
                        .stages
                        .iter()
                        .find(|s| s.name == m)
                        .and_then(|s| s.output.clone())
                        .ok_or_else(|| EngineError::NotFound(format!("stage {m} has no model")))?;
                    models.push(self.model_ref(&version)?);
                }
                let (reference_site, reference_quantiles) = match stage.hist_ref_parts() {
                    Some((stats, want)) => {
                        let rec = job.stages.iter().find(|s| s.name == stats);
                        let found = rec.and_then(|r| match want {
                            Some(w) => r.references.get_key_value(w),
                            None => r.references.iter().next(),
                        });
                        match found {
                            Some((s, q)) => (s.clone(), q.clone()),
                            None => {
                                return Err(EngineError::NotFound(format!(
                                    "stats stage {stats} has no reference"
                                )));
                            }
                        }
                    }
                    None => (String::new(), Vec::new()),
                };
                pb::task::Work::Evaluate(pb::EvaluateSpec {
                    models,
                    reference_quantiles,
                    reference_site,
                })
            }
        };
        Ok(pb::Task {
            task_id: id.to_string(),
            job_id: job.id.clone(),
            stage: stage_idx as u32,
            round: round.index,
            stage_name: stage.name.clone(),
            init,
            work: Some(work),
        })
    }

    /// Looks up the open task `task_id` for `site`, or says why an upload/report for it is
    /// not wanted.
    fn open_task<'a>(
        &self,
        job: &'a mut JobRecord,
        id: &TaskId,
        site: &str,
    ) -> Result<&'a mut RoundRecord, EngineError> {
        if id.site != site {
            return Err(EngineError::Rejected(format!(
                "task {id} belongs to site {}, not to {site}",
                id.site
            )));
        }
        if job.state != JobState::Running {
            return Err(EngineError::Rejected(format!(
                "job {} is {:?}: its rounds are closed, no update is accepted",
                job.id, job.state
            )));
        }
        let current = job.stage;
        let stage = job.stages.get_mut(id.stage).ok_or_else(|| {
            EngineError::Rejected(format!("job {} has no stage {}", id.job, id.stage))
        })?;
        let round = stage
            .rounds
            .last_mut()
            .filter(|r| {
                id.stage == current
                    && r.index == id.round
                    && r.attempt == id.attempt
                    && r.closed.is_none()
            })
            .ok_or_else(|| {
                EngineError::Rejected(format!("task {id}: its round is closed (stale update)"))
            })?;
        match round.tasks.get(site).map(|t| t.state) {
            Some(TaskState::Assigned) => Ok(round),
            Some(TaskState::Done) => Err(EngineError::Rejected(format!(
                "task {id}: duplicate, an update was already accepted"
            ))),
            Some(TaskState::Failed) => Err(EngineError::Rejected(format!(
                "task {id}: already reported as failed"
            ))),
            None => Err(EngineError::Rejected(format!(
                "site {site} has no task in this round"
            ))),
        }
    }

    /// The schema an update for this round must match, if one is known yet: the round's
    /// starting model (less the site-local parameters, for FedBN), or the first update.
    fn expected_schema(
        &self,
        round: &RoundRecord,
        local: bool,
    ) -> Result<Option<Schema>, EngineError> {
        if !local && let Some(init) = &round.init {
            return self.version_schema(init).map(Some);
        }
        let first = round.tasks.values().find_map(|t| t.update.as_ref());
        first.map(|u| self.blob_schema(&u.digest)).transpose()
    }

    /// Tensor names and shapes of a stored blob, from its header alone.
    fn blob_schema(&self, digest: &str) -> Result<Schema, EngineError> {
        let header = fedseg_proto::safetensors::read_header(&self.blobs.path(digest))
            .map_err(|e| EngineError::Io(e.to_string()))?;
        Ok(schema_of(&header))
    }

    fn version_schema(&self, version: &str) -> Result<Schema, EngineError> {
        self.blob_schema(&self.model_ref(version)?.digest)
    }

    /// The task a site names, and its job as stored.
    fn task_job(&self, task_id: &str) -> Result<(TaskId, JobRecord), EngineError> {
        let id = TaskId::parse(task_id)
            .ok_or_else(|| EngineError::Rejected(format!("malformed task id {task_id:?}")))?;
        let job = self
            .store
            .job(&id.job)?
            .ok_or_else(|| EngineError::Rejected(format!("no job {}", id.job)))?;
        Ok((id, job))
    }

    /// Called when an upload's header arrives: is this update wanted at all?
    pub fn check_upload(&self, task_id: &str, site: &str) -> Result<(), EngineError> {
        let (id, mut job) = self.task_job(task_id)?;
        self.open_task(&mut job, &id, site)?;
        if matches!(
            job.plan.stages[id.stage].kind,
            StageKind::Stats | StageKind::Evaluate
        ) {
            return Err(EngineError::Rejected(format!(
                "task {id} expects a report, not a model"
            )));
        }
        Ok(())
    }

    /// A fully received update file (digest checked): validate it against the round and, if
    /// good, adopt it as a blob and mark the task done. A rejection is recorded in the round.
    /// An upload that arrived whole: `checked` is what the stream check found (the header, or
    /// why the bytes are not a model of finite values). The blob is made durable (rename,
    /// directory fsync) outside the engine lock: on a busy disk that fsync waits behind the
    /// other uploads' writeback (0.1-0.3 s measured), and under the lock every site's wait
    /// would queue behind the others'.
    pub async fn accept_update(
        &self,
        site: &str,
        header: &pb::UploadHeader,
        tmp: PathBuf,
        digest: &str,
        upload_s: f64,
        checked: Result<SafetensorsHeader, String>,
    ) -> Result<(), EngineError> {
        let _g = self.lock.lock().await;
        let (id, mut job) = self.task_job(&header.task_id)?;
        let local = !job.plan.stages[id.stage].local.is_empty();
        let round = self.open_task(&mut job, &id, site)?;
        let expected = self.expected_schema(round, local)?;
        // The caller deletes `tmp` whenever this returns an error.
        let reject = |job: &mut JobRecord, reason: String| -> Result<EngineError, EngineError> {
            self.record_rejection(job, &id, site, reason)
        };
        let checked = checked.and_then(|h| match &expected {
            Some(e) => check_schema(&h, e).map(|()| h),
            None => Ok(h),
        });
        let header_ok = match checked {
            Ok(h) => h,
            Err(reason) => {
                return Err(reject(&mut job, format!("update for task {id}: {reason}"))?);
            }
        };
        if header.sample_count == 0 {
            return Err(reject(
                &mut job,
                format!("update for task {id}: sample_count is 0"),
            )?);
        }
        if local && let Some(init) = &round.init {
            // FedBN: the shared part must still be a subset of the starting model.
            let full = self.version_schema(init)?;
            let bad: Vec<String> = schema_of(&header_ok)
                .into_iter()
                .filter(|(n, s)| full.get(n) != Some(s))
                .map(|(n, _)| n)
                .collect();
            if !bad.is_empty() {
                return Err(reject(
                    &mut job,
                    format!(
                        "update for task {id}: tensors not in the model: {}",
                        bad.join(", ")
                    ),
                )?);
            }
        }
        drop(_g);
        // On the blocking pool: the directory fsync waits for the disk (0.1-0.2 s while other
        // uploads' data is being written), and on an async worker it would stall every
        // connection that worker serves.
        let blobs = self.blobs.clone();
        let name = digest.to_string();
        let adopted = tokio::task::spawn_blocking(move || blobs.adopt_shared(&tmp, &name))
            .await
            .map_err(|e| EngineError::Io(format!("adopting an update: {e}")))?
            .map_err(|e| EngineError::Io(e.to_string()))?;
        let _g = self.lock.lock().await;
        // The round may have closed, or a duplicate been accepted, while the lock was free.
        let (id, mut job) = self.task_job(&header.task_id)?;
        if let Err(e) = self.open_task(&mut job, &id, site) {
            drop(adopted);
            self.remove_blob_if_unused(digest);
            return Err(match e {
                EngineError::Rejected(reason) => {
                    self.record_rejection(&mut job, &id, site, reason)?
                }
                other => other,
            });
        }
        let round = self.open_task(&mut job, &id, site)?;
        let task = round
            .tasks
            .get_mut(site)
            .ok_or_else(|| EngineError::Rejected("task vanished".into()))?;
        task.state = TaskState::Done;
        task.finished = Some(now_s());
        task.download_s = header.download_s;
        task.work_s = header.train_s;
        task.upload_s = upload_s;
        task.update = Some(UpdateRecord {
            digest: digest.to_string(),
            size: header.size,
            sample_count: header.sample_count,
            train_loss: header.train_loss,
            val_dice: header.val_dice,
        });
        self.store.put_job(&job)?;
        tracing::info!(site, task = %id, samples = header.sample_count, "update accepted");
        drop(_g);
        self.bump();
        self.tick().await
    }

    /// An upload refused before it arrived whole (its bytes already showed it is no valid
    /// model): the round records why, as for any rejected update.
    pub async fn reject_update(
        &self,
        site: &str,
        task_id: &str,
        reason: &str,
    ) -> Result<EngineError, EngineError> {
        let _g = self.lock.lock().await;
        let (id, mut job) = self.task_job(task_id)?;
        self.open_task(&mut job, &id, site)?;
        self.record_rejection(
            &mut job,
            &id,
            site,
            format!("update for task {id}: {reason}"),
        )
    }

    fn record_rejection(
        &self,
        job: &mut JobRecord,
        id: &TaskId,
        site: &str,
        reason: String,
    ) -> Result<EngineError, EngineError> {
        if let Some(r) = job.stages[id.stage].rounds.last_mut() {
            r.rejected.push(Rejection {
                site: site.to_string(),
                reason: reason.clone(),
                at: now_s(),
            });
        }
        self.store.put_job(job)?;
        tracing::warn!(site, task = %id, "update rejected: {reason}");
        Ok(EngineError::Rejected(reason))
    }

    /// Deletes a blob that no job, model version or transfer in flight refers to: an update
    /// adopted and then refused because its round closed meanwhile. Called under the lock, so
    /// no acceptance can slip in between the check and the removal.
    fn remove_blob_if_unused(&self, digest: &str) {
        if self.blobs.in_flight(digest) {
            return;
        }
        let used_by_job = |j: &JobRecord| {
            j.stages.iter().any(|st| {
                st.server_state
                    .as_ref()
                    .is_some_and(|(m, v)| m == digest || v == digest)
                    || st.rounds.iter().any(|r| {
                        r.tasks
                            .values()
                            .any(|t| t.update.as_ref().is_some_and(|u| u.digest == digest))
                    })
            })
        };
        let used = match (self.store.jobs(), self.store.models()) {
            (Ok(jobs), Ok(models)) => {
                jobs.iter().any(used_by_job) || models.iter().any(|m| m.digest == digest)
            }
            // Unsure: keep it (an orphan blob costs disk space, a lost one a model).
            _ => true,
        };
        if !used {
            let _ = std::fs::remove_file(self.blobs.path(digest));
        }
    }

    pub async fn accept_report(
        &self,
        site: &str,
        report: pb::ReportRequest,
    ) -> Result<(), EngineError> {
        let _g = self.lock.lock().await;
        let (id, mut job) = self.task_job(&report.task_id)?;
        let kind = job.plan.stages.get(id.stage).map(|s| s.kind);
        // Stage name → the `models` entry it answers (a `{site}` template keeps one column).
        let stage_models: BTreeMap<String, String> = job
            .plan
            .stages
            .get(id.stage)
            .map(|s| {
                s.models_at(site, &job.plan.stages)
                    .into_iter()
                    .map(|(entry, name)| (name, entry.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let outputs: BTreeMap<String, String> = job
            .stages
            .iter()
            .filter_map(|s| s.output.clone().map(|o| (o, s.name.clone())))
            .collect();
        self.open_task(&mut job, &id, site)?;
        let stage = &mut job.stages[id.stage];
        let outcome: Result<(), String> = match (&report.report, kind) {
            _ if !report.error.is_empty() => Err(report.error.clone()),
            (Some(pb::report_request::Report::Stats(s)), Some(StageKind::Stats)) => {
                let ok = s.quantiles.len() >= 2
                    && s.quantiles.iter().all(|q| q.is_finite())
                    && s.quantiles.windows(2).all(|w| w[0] <= w[1]);
                if ok {
                    stage
                        .references
                        .insert(site.to_string(), s.quantiles.clone());
                    Ok(())
                } else {
                    return Err(EngineError::Rejected(
                        "statistics: quantiles must be finite and non-decreasing".into(),
                    ));
                }
            }
            (Some(pb::report_request::Report::Evaluation(e)), Some(StageKind::Evaluate)) => {
                if e.models.len() != stage_models.len() {
                    return Err(EngineError::Rejected(format!(
                        "evaluation: {} models reported, {} expected",
                        e.models.len(),
                        stage_models.len()
                    )));
                }
                let mut rows = Vec::new();
                for m in &e.models {
                    let Some(model) = outputs
                        .get(&m.version)
                        .and_then(|stage| stage_models.get(stage))
                    else {
                        return Err(EngineError::Rejected(format!(
                            "evaluation: model {} was not asked for",
                            m.version
                        )));
                    };
                    let finite = m.subjects.iter().all(|s| {
                        [s.blood_pool, s.myocardium, s.lv]
                            .iter()
                            .all(|v| v.is_finite() && (0.0..=1.0).contains(v))
                    });
                    if !finite {
                        return Err(EngineError::Rejected(
                            "evaluation: Dice values must lie in [0, 1]".into(),
                        ));
                    }
                    rows.push(Evaluation {
                        site: site.to_string(),
                        model: model.clone(),
                        version: m.version.clone(),
                        subjects: m
                            .subjects
                            .iter()
                            .map(|s| SubjectDice {
                                subject: s.subject.clone(),
                                blood_pool: s.blood_pool,
                                myocardium: s.myocardium,
                                lv: s.lv,
                            })
                            .collect(),
                    });
                }
                stage.evaluations.retain(|e| e.site != site);
                stage.evaluations.extend(rows);
                Ok(())
            }
            _ => {
                return Err(EngineError::Rejected(format!(
                    "task {id}: report does not fit a {kind:?} stage"
                )));
            }
        };
        let round = stage
            .rounds
            .last_mut()
            .ok_or_else(|| EngineError::Rejected("no round".into()))?;
        if let Some(task) = round.tasks.get_mut(site) {
            task.finished = Some(now_s());
            task.work_s = report.seconds;
            match outcome {
                Ok(()) => task.state = TaskState::Done,
                Err(reason) => {
                    tracing::warn!(site, task = %id, "site reports failure: {reason}");
                    task.state = TaskState::Failed;
                    task.error = Some(reason);
                }
            }
        }
        self.store.put_job(&job)?;
        drop(_g);
        self.bump();
        self.tick().await
    }

    /// Advances every running job as far as it can go now.
    pub async fn tick(&self) -> Result<(), EngineError> {
        let _g = self.lock.lock().await;
        let mut changed = false;
        for mut job in self.store.jobs()? {
            if job.state != JobState::Running {
                continue;
            }
            let before = serde_json::to_vec(&job).unwrap_or_default();
            if let Err(e) = self.advance(&mut job) {
                tracing::error!(job = job.id, "job failed: {e}");
                self.release_current_round(&job);
                job.state = JobState::Failed;
                job.reason = Some(e.to_string());
                job.finished = Some(now_s());
            }
            if serde_json::to_vec(&job).unwrap_or_default() != before {
                self.store.put_job(&job)?;
                changed = true;
            }
        }
        if changed {
            self.bump();
        }
        Ok(())
    }

    fn advance(&self, job: &mut JobRecord) -> Result<(), EngineError> {
        loop {
            if job.state != JobState::Running {
                return Ok(());
            }
            let i = job.stage;
            if i >= job.stages.len() {
                job.state = JobState::Done;
                job.finished = Some(now_s());
                tracing::info!(job = job.id, "job done");
                return Ok(());
            }
            let stage = job.plan.stages[i].clone();
            match job.stages[i].state {
                StageState::Pending => {
                    job.stages[i].state = StageState::Running;
                    job.stages[i].started = Some(now_s());
                    let init = match &stage.from {
                        Some(from) => Some(
                            job.stages
                                .iter()
                                .find(|s| &s.name == from)
                                .and_then(|s| s.output.clone())
                                .ok_or_else(|| {
                                    EngineError::Invalid(format!("stage {from} produced no model"))
                                })?,
                        ),
                        None => None,
                    };
                    open_round(job, i, 0, 0, init);
                    tracing::info!(job = job.id, stage = stage.name, "stage started");
                }
                StageState::Done => job.stage += 1,
                StageState::Failed => {
                    job.state = JobState::Failed;
                    job.finished = Some(now_s());
                    job.reason = Some(format!(
                        "stage {}: {}",
                        stage.name,
                        job.stages[i].reason.clone().unwrap_or_default()
                    ));
                }
                StageState::Running => match self.verdict(job, i, &stage) {
                    Verdict::Wait => return Ok(()),
                    Verdict::Retry(why) => {
                        let r = job.stages[i].rounds.last().cloned();
                        if let Some(r) = r {
                            tracing::warn!(
                                job = job.id,
                                stage = stage.name,
                                "round {} retried: {why}",
                                r.index + 1
                            );
                            let rec = &mut job.stages[i];
                            if let Some(last) = rec.rounds.last_mut() {
                                last.closed = Some(now_s());
                            }
                            let mut next = r.clone();
                            next.attempt += 1;
                            next.opened = now_s();
                            next.deadline = next.opened + stage.round_timeout_s.unwrap_or(3600.0);
                            next.quorum_at = None;
                            next.closed = None;
                            next.rejected.clear();
                            for t in next.tasks.values_mut() {
                                if t.state != TaskState::Done {
                                    *t = new_task();
                                }
                            }
                            rec.rounds.pop();
                            rec.rounds.push(next);
                        }
                    }
                    Verdict::Fail(why) => {
                        if let Some(round) = job.stages[i].rounds.last() {
                            self.release_held(round);
                        }
                        let rec = &mut job.stages[i];
                        rec.state = StageState::Failed;
                        rec.reason = Some(why);
                        rec.finished = Some(now_s());
                        if let Some(last) = rec.rounds.last_mut() {
                            last.closed = Some(now_s());
                        }
                    }
                    Verdict::Close => self.close_round(job, i, &stage)?,
                },
            }
        }
    }

    fn verdict(&self, job: &mut JobRecord, i: usize, stage: &Stage) -> Verdict {
        let Some(round) = job.stages[i].rounds.last_mut() else {
            return Verdict::Fail("no round".into());
        };
        let now = now_s();
        let done: Vec<&String> = round
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Done)
            .map(|(s, _)| s)
            .collect();
        let pending: Vec<&String> = round
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Assigned)
            .map(|(s, _)| s)
            .collect();
        let min = stage.min_sites();
        let why_short = || {
            let failed: Vec<String> = round
                .tasks
                .iter()
                .filter_map(|(s, t)| t.error.as_ref().map(|e| format!("{s}: {e}")))
                .collect();
            let missing: Vec<&String> = pending.clone();
            format!(
                "round {}: {} of the {min} sites needed reported{}{}",
                round.index + 1,
                done.len(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("; no result from {}", join(&missing))
                },
                if failed.is_empty() {
                    String::new()
                } else {
                    format!("; failed: {}", failed.join("; "))
                },
            )
        };
        let retries = stage.retries.unwrap_or(0);
        let give_up = |why: String| {
            if round.attempt < retries {
                Verdict::Retry(why)
            } else {
                Verdict::Fail(why)
            }
        };
        if pending.is_empty() {
            return if done.len() >= min {
                Verdict::Close
            } else {
                give_up(why_short())
            };
        }
        if done.len() >= min {
            let quorum_at = *round.quorum_at.get_or_insert(now);
            let live_pending = pending.iter().any(|s| self.is_alive(s));
            if !live_pending
                || now >= quorum_at + stage.grace_s.unwrap_or(0.0)
                || now >= round.deadline
            {
                return Verdict::Close;
            }
            return Verdict::Wait;
        }
        if now >= round.deadline {
            let why = format!("{} by the deadline", why_short());
            return give_up(why);
        }
        Verdict::Wait
    }

    /// An accepted update as an aggregation input: its blob, weighted by its sample count.
    fn accepted_input(&self, site: &str, u: &UpdateRecord) -> UpdateInput {
        UpdateInput {
            site: site.to_string(),
            path: self.blobs.path(&u.digest),
            weight: u.sample_count as f64,
            open: None,
            held: self.held.get(&u.digest),
        }
    }

    /// The round's updates are read for the last time (or never will be): let go of the
    /// copies held in memory.
    fn release_held(&self, round: &RoundRecord) {
        for u in round.tasks.values().filter_map(|t| t.update.as_ref()) {
            self.held.release(&u.digest);
        }
    }

    /// A job stops (cancelled, failed): its open round will not be aggregated.
    fn release_current_round(&self, job: &JobRecord) {
        if let Some(round) = job.stages.get(job.stage).and_then(|s| s.rounds.last()) {
            self.release_held(round);
        }
    }

    /// The aggregation of a fedavg round over `updates`: strategy, starting model, server
    /// moments and the metadata the new model carries.
    fn aggregation_for(
        &self,
        job_id: &str,
        rec: &StageRecord,
        stage: &Stage,
        round: &RoundRecord,
        updates: Vec<UpdateInput>,
    ) -> Result<Aggregation, EngineError> {
        let strategy = strategy::for_stage(stage);
        let previous = round
            .init
            .as_deref()
            .map(|v| self.model_ref(v))
            .transpose()?
            .map(|m| self.blobs.path(&m.digest));
        let moments = rec
            .server_state
            .as_ref()
            .map(|(m, v)| (self.blobs.path(m), self.blobs.path(v)));
        let mut metadata = BTreeMap::new();
        metadata.insert(
            "fedseg.version".to_string(),
            version_id(job_id, &stage.name, round.index),
        );
        metadata.insert("fedseg.strategy".to_string(), strategy.name().to_string());
        metadata.insert(
            "fedseg.sites".to_string(),
            updates
                .iter()
                .map(|u| u.site.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        Ok(Aggregation {
            strategy,
            updates,
            previous,
            moments,
            out_dir: self.blobs.incoming_dir(),
            metadata,
        })
    }

    /// An update's bytes arrived whole and match their digest; making them durable and
    /// accepting them comes next. Kept (while the guard lives) so that a round whose other
    /// updates are all in can start aggregating now: see `early`.
    pub async fn update_arrived(
        &self,
        site: &str,
        header: &pb::UploadHeader,
        arrived: Arrived,
    ) -> ArrivedGuard<'_> {
        let _g = self.lock.lock().await;
        let guard = self.early.arrived(&header.task_id, arrived);
        if let Err(e) = self.start_early(site, &header.task_id) {
            tracing::debug!(site, "no early aggregation: {e}");
        }
        guard
    }

    /// Starts the round's aggregation if every task of it has an accepted or arrived update.
    fn start_early(&self, site: &str, task_id: &str) -> Result<(), EngineError> {
        let (id, mut job) = self.task_job(task_id)?;
        let round = self.open_task(&mut job, &id, site)?.clone();
        let rec = &job.stages[id.stage];
        let stage = &job.plan.stages[id.stage];
        if stage.kind != StageKind::Fedavg {
            return Ok(());
        }
        let mut updates = Vec::new();
        let mut inputs: Inputs = Vec::new();
        let mut arrived = Vec::new();
        for (s, t) in &round.tasks {
            let (input, digest) = match (&t.update, t.state) {
                (Some(u), _) => (self.accepted_input(s, u), u.digest.clone()),
                (None, TaskState::Failed) => continue,
                (None, _) => {
                    let task = TaskId {
                        site: s.clone(),
                        ..id.clone()
                    };
                    let task = task.to_string();
                    let Some(a) = self.early.arrived_for(&task) else {
                        return Ok(());
                    };
                    arrived.push(task);
                    (
                        UpdateInput {
                            site: s.clone(),
                            path: a.path,
                            weight: a.weight,
                            open: Some(a.file),
                            held: self.held.get(&a.digest),
                        },
                        a.digest,
                    )
                }
            };
            inputs.push((s.clone(), digest, input.weight.to_bits()));
            updates.push(input);
        }
        if updates.is_empty() {
            return Ok(());
        }
        let aggregation = self.aggregation_for(&job.id, rec, stage, &round, updates)?;
        let key = RoundKey {
            job: job.id.clone(),
            stage: id.stage,
            round: round.index,
            attempt: round.attempt,
        };
        self.early.start(key, inputs, arrived, aggregation);
        Ok(())
    }

    fn close_round(&self, job: &mut JobRecord, i: usize, stage: &Stage) -> Result<(), EngineError> {
        let job_id = job.id.clone();
        let rec = &mut job.stages[i];
        let round = rec
            .rounds
            .last()
            .cloned()
            .ok_or_else(|| EngineError::Invalid("no round".into()))?;
        let now = now_s();
        let mut output = None;
        if stage.produces_model() {
            let updates: Vec<UpdateInput> = round
                .tasks
                .iter()
                .filter_map(|(site, t)| t.update.as_ref().map(|u| self.accepted_input(site, u)))
                .collect();
            let id = version_id(&job_id, &stage.name, round.index);
            let t0 = Instant::now();
            let (sha, size) = if stage.kind == StageKind::Fedavg {
                let key = RoundKey {
                    job: job_id.clone(),
                    stage: i,
                    round: round.index,
                    attempt: round.attempt,
                };
                let inputs: Inputs = round
                    .tasks
                    .iter()
                    .filter_map(|(site, t)| {
                        let u = t.update.as_ref()?;
                        Some((
                            site.clone(),
                            u.digest.clone(),
                            (u.sample_count as f64).to_bits(),
                        ))
                    })
                    .collect();
                let aggregation = self.aggregation_for(&job_id, rec, stage, &round, updates)?;
                let outcome =
                    tokio::task::block_in_place(|| match self.early.take(&key, &inputs) {
                        Some(outcome) => {
                            tracing::debug!(job = job_id, "early aggregation used");
                            Ok(outcome)
                        }
                        None => aggregation.run(),
                    })
                    .map_err(|e| {
                        EngineError::Io(format!("aggregating round {}: {e}", round.index + 1))
                    })?;
                let updates = &aggregation.updates;
                let previous = &aggregation.previous;
                let io = |e: std::io::Error| EngineError::Io(e.to_string());
                // The round's inputs were read for the last time (sites downloaded the
                // starting model before uploading): free their cached pages.
                for path in updates.iter().map(|u| &u.path).chain(previous.iter()) {
                    BlobStore::release_cache(path);
                }
                if let Some((m, v)) = outcome.moments {
                    self.blobs.adopt(&m.path, &m.digest).map_err(io)?;
                    self.blobs.adopt(&v.path, &v.digest).map_err(io)?;
                    rec.server_state = Some((m.digest, v.digest));
                }
                let model = outcome.model;
                self.blobs.adopt(&model.path, &model.digest).map_err(io)?;
                (model.digest, model.size)
            } else {
                let u = round
                    .tasks
                    .values()
                    .find_map(|t| t.update.clone())
                    .ok_or_else(|| EngineError::Invalid("no update to keep".into()))?;
                (u.digest, u.size)
            };
            let aggregate_s = t0.elapsed().as_secs_f64();
            self.store.put_model(&ModelVersion {
                id: id.clone(),
                digest: sha,
                size,
                job: job_id.clone(),
                stage: stage.name.clone(),
                round: round.index,
                created: now,
                local: stage.local.clone(),
            })?;
            if let Some(last) = rec.rounds.last_mut() {
                last.aggregate_s = Some(aggregate_s);
                last.output = Some(id.clone());
            }
            output = Some(id);
        }
        if let Some(last) = rec.rounds.last_mut() {
            last.closed = Some(now_s());
        }
        self.release_held(&round);
        self.early.forget(&job_id);
        tracing::info!(
            job = job_id,
            stage = stage.name,
            round = round.index + 1,
            ?output,
            "round closed"
        );
        if round.index + 1 < stage.rounds() {
            open_round(job, i, round.index + 1, 0, output);
        } else {
            let rec = &mut job.stages[i];
            rec.output = output;
            rec.state = StageState::Done;
            rec.finished = Some(now_s());
        }
        Ok(())
    }
}

fn new_task() -> TaskRecord {
    TaskRecord {
        state: TaskState::Assigned,
        update: None,
        error: None,
        finished: None,
        download_s: 0.0,
        work_s: 0.0,
        upload_s: 0.0,
    }
}

fn open_round(job: &mut JobRecord, i: usize, index: u32, attempt: u32, init: Option<String>) {
    let stage = &job.plan.stages[i];
    let now = now_s();
    let round = RoundRecord {
        index,
        attempt,
        opened: now,
        deadline: now + stage.round_timeout_s.unwrap_or(3600.0),
        quorum_at: None,
        closed: None,
        init,
        tasks: stage
            .sites
            .iter()
            .map(|s| (s.clone(), new_task()))
            .collect(),
        aggregate_s: None,
        output: None,
        rejected: Vec::new(),
    };
    job.stages[i].rounds.push(round);
}

pub fn version_id(job: &str, stage: &str, round: u32) -> String {
    format!("{job}.{stage}.r{}", round + 1)
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
