//! What the coordinator stores in sled, as serde records: jobs with their stages, rounds and
//! per-site tasks; model versions; sites. A job is one record, rewritten whole on each change,
//! so every state transition is a single atomic sled write.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::{Plan, StageKind};

pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageState {
    Pending,
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Assigned,
    Done,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub plan_toml: String,
    pub plan_hash: String,
    pub plan: Plan,
    pub state: JobState,
    pub reason: Option<String>,
    pub submitted_by: String,
    pub created: f64,
    pub finished: Option<f64>,
    pub stage: usize,
    pub stages: Vec<StageRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub kind: StageKind,
    pub state: StageState,
    pub reason: Option<String>,
    pub started: Option<f64>,
    pub finished: Option<f64>,
    pub rounds: Vec<RoundRecord>,
    /// The model version this stage produced (model stages).
    pub output: Option<String>,
    /// Histogram references by site (stats stages).
    #[serde(default)]
    pub references: BTreeMap<String, Vec<f32>>,
    /// Per-subject Dice by model version and site (evaluate stages).
    #[serde(default)]
    pub evaluations: Vec<Evaluation>,
    /// Server optimiser state (FedAdam/FedYogi): blob digests of the first and second moments.
    #[serde(default)]
    pub server_state: Option<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundRecord {
    pub index: u32,
    pub attempt: u32,
    pub opened: f64,
    pub deadline: f64,
    /// When `min_sites` updates had arrived: the grace period runs from here.
    pub quorum_at: Option<f64>,
    pub closed: Option<f64>,
    /// The model this round's sites started from.
    pub init: Option<String>,
    pub tasks: BTreeMap<String, TaskRecord>,
    pub aggregate_s: Option<f64>,
    pub output: Option<String>,
    /// Updates refused in this round, with the site and reason.
    #[serde(default)]
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejection {
    pub site: String,
    pub reason: String,
    pub at: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub state: TaskState,
    pub update: Option<UpdateRecord>,
    pub error: Option<String>,
    pub finished: Option<f64>,
    /// Seconds the site reported for its part (download, train, evaluate...).
    #[serde(default)]
    pub download_s: f64,
    #[serde(default)]
    pub work_s: f64,
    #[serde(default)]
    pub upload_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateRecord {
    pub digest: String,
    pub size: u64,
    pub sample_count: u64,
    pub train_loss: f32,
    pub val_dice: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    pub site: String,
    pub model: String,
    pub version: String,
    pub subjects: Vec<SubjectDice>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubjectDice {
    pub subject: String,
    pub blood_pool: f64,
    pub myocardium: f64,
    pub lv: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelVersion {
    pub id: String,
    pub digest: String,
    pub size: u64,
    pub job: String,
    pub stage: String,
    pub round: u32,
    pub created: f64,
    /// Parameter names kept local at the sites (FedBN): absent from this file.
    #[serde(default)]
    pub local: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SiteRecord {
    pub name: String,
    pub first_joined: f64,
    pub last_joined: f64,
    pub agent_version: String,
    pub device: String,
    pub train_subjects: u64,
    pub train_slices: u64,
}

impl StageRecord {
    pub fn new(name: &str, kind: StageKind) -> Self {
        Self {
            name: name.to_string(),
            kind,
            state: StageState::Pending,
            reason: None,
            started: None,
            finished: None,
            rounds: Vec::new(),
            output: None,
            references: BTreeMap::new(),
            evaluations: Vec::new(),
            server_state: None,
        }
    }
}

/// Task ids carry where the task belongs: "<job>/<stage index>/<round>/<attempt>/<site>".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskId {
    pub job: String,
    pub stage: usize,
    pub round: u32,
    pub attempt: u32,
    pub site: String,
}

impl TaskId {
    pub fn parse(s: &str) -> Option<TaskId> {
        let mut it = s.split('/');
        let id = TaskId {
            job: it.next()?.to_string(),
            stage: it.next()?.parse().ok()?,
            round: it.next()?.parse().ok()?,
            attempt: it.next()?.parse().ok()?,
            site: it.next()?.to_string(),
        };
        it.next().is_none().then_some(id)
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}/{}",
            self.job, self.stage, self.round, self.attempt, self.site
        )
    }
}
