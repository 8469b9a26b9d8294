//! The agent's connection loop: dial, join, heartbeat on its own timer, pull tasks, run them
//! one at a time, deliver results; after any network loss or coordinator restart, reconnect
//! with backoff and pick up where it stood. A result that could not be delivered waits on
//! disk and is sent on the next connection instead of being recomputed.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedseg_proto::MAX_MESSAGE_BYTES;
use fedseg_proto::client::{ConnectError, FederationEndpoint, error_chain};
use fedseg_proto::pb::{self, site_client::SiteClient, upload_part::Part};
use fedseg_proto::transfer::{IncomingFile, TransferError, digest_file, send_file};
use fedseg_proto::upload::upload_update;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::metrics::AgentMetrics;
use super::work::{Outcome, Workbench};
use crate::data::{Part as SplitPart, SiteConfig};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("site.toml has no [federation] section: nothing to join")]
    NoFederation,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("coordinator: {}", .0.message())]
    Rpc(#[from] tonic::Status),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("{0}")]
    Local(String),
}

type Client = SiteClient<Channel>;

struct Agent {
    endpoint: FederationEndpoint,
    bench: Arc<Workbench>,
    status: Arc<Mutex<pb::HeartbeatRequest>>,
    metrics: Arc<AgentMetrics>,
}

/// Joins the federation and works until the process is stopped.
pub async fn run(config: SiteConfig) -> Result<(), AgentError> {
    let fed = config.federation.clone().ok_or(AgentError::NoFederation)?;
    for dir in ["models", "tasks", "local"] {
        std::fs::create_dir_all(fed.work_dir.join(dir))
            .map_err(|e| AgentError::Local(format!("{}: {e}", fed.work_dir.display())))?;
    }
    // Unreadable certificate files are a setup error, not a network one: stop at once.
    for p in [&fed.ca, &fed.cert, &fed.key] {
        std::fs::metadata(p).map_err(|e| AgentError::Local(format!("{}: {e}", p.display())))?;
    }
    let status = Arc::new(Mutex::new(pb::HeartbeatRequest {
        state: "idle".into(),
        ..Default::default()
    }));
    let metrics = Arc::new(AgentMetrics {
        status: Arc::clone(&status),
        ..Default::default()
    });
    let _http = match &fed.http_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| AgentError::Local(format!("[federation] http_listen {addr}: {e}")))?;
            tracing::info!(addr = %addr, "metrics /metrics and health /healthz over plain HTTP");
            Some(AbortOnDrop(tokio::spawn(Arc::clone(&metrics).serve(l))))
        }
        None => None,
    };
    let agent = Agent {
        endpoint: fed.endpoint(),
        bench: Arc::new(Workbench::new(config, fed.work_dir.clone())),
        status,
        metrics,
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        let session = agent.session().await;
        agent.metrics.connected.store(false, Ordering::Relaxed);
        match session {
            Ok(()) => tracing::info!("task stream ended; reconnecting"),
            Err(e) => tracing::warn!(
                "{}; reconnecting in {:.1} s",
                describe(&e),
                backoff.as_secs_f32()
            ),
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

fn describe(e: &AgentError) -> String {
    match e {
        AgentError::Rpc(s) => {
            let cause = std::error::Error::source(s)
                .map(|c| format!(": {}", error_chain(c)))
                .unwrap_or_default();
            format!("coordinator: {} ({:?}){cause}", s.message(), s.code())
        }
        other => other.to_string(),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn safe_name(task_id: &str) -> String {
    task_id.replace(['/', '\\'], "_")
}

impl Agent {
    fn set_state(&self, state: &str, task: &str) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.state = state.to_string();
        s.task_id = task.to_string();
        if state == "idle" {
            *s = pb::HeartbeatRequest {
                state: "idle".into(),
                ..Default::default()
            };
        }
    }

    async fn session(&self) -> Result<(), AgentError> {
        let channel = self.endpoint.channel().await?;
        let mut client = SiteClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let bench = self.bench.clone();
        let site = tokio::task::spawn_blocking(move || bench.site(1.0))
            .await
            .map_err(|e| AgentError::Local(e.to_string()))?
            .map_err(AgentError::Local)?;
        let device = format!("{:?}", self.bench.config.train.device).to_lowercase();
        let joined = client
            .join(pb::JoinRequest {
                agent_version: env!("CARGO_PKG_VERSION").into(),
                device,
                train_subjects: site.split.train.len() as u64,
                train_slices: site.slice_count(SplitPart::Train) as u64,
            })
            .await?
            .into_inner();
        tracing::info!(
            site = joined.site,
            coordinator = self.endpoint.coordinator,
            "joined the federation"
        );
        self.metrics.connected.store(true, Ordering::Relaxed);
        self.metrics.sessions.fetch_add(1, Ordering::Relaxed);
        let period = Duration::from_secs(u64::from(joined.heartbeat_s.max(1)));
        let _heartbeat = {
            let mut hb = client.clone();
            let status = self.status.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    let req = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    match hb.heartbeat(req.clone()).await {
                        Ok(r) if r.get_ref().cancel_task && !req.task_id.is_empty() => {
                            tracing::warn!(
                                task = req.task_id,
                                "coordinator no longer wants this task; its result will be dropped"
                            )
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!("heartbeat: {}", e.message()),
                    }
                }
            }))
        };
        let mut tasks = client.tasks(pb::TasksRequest {}).await?.into_inner();
        while let Some(task) = tasks.message().await? {
            self.handle(&mut client, task).await?;
        }
        Ok(())
    }

    async fn handle(&self, client: &mut Client, task: pb::Task) -> Result<(), AgentError> {
        let id = task.task_id.clone();
        let dir = self.bench.work_dir.join("tasks").join(safe_name(&id));
        let outcome = match load_pending(&dir)? {
            Some(o) => {
                tracing::info!(
                    task = id,
                    "delivering a result computed before the connection dropped"
                );
                o
            }
            None => {
                tracing::info!(task = id, "task received");
                let o = self.execute(client, &task, &dir).await?;
                store_pending(&dir, &o)?;
                o
            }
        };
        self.set_state("uploading", &id);
        let failed_here = matches!(&outcome, Outcome::Report(r) if !r.error.is_empty());
        let delivered = self.deliver(client, outcome).await;
        self.set_state("idle", "");
        match delivered {
            Ok(()) => {
                tracing::info!(task = id, "result delivered");
                let counter = if failed_here {
                    &self.metrics.failed
                } else {
                    &self.metrics.delivered
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let _ = std::fs::remove_dir_all(&dir);
                Ok(())
            }
            // The coordinator refused this result for good (stale round, duplicate, invalid):
            // keeping it would only resend it.
            Err(AgentError::Rpc(s))
                if matches!(
                    s.code(),
                    tonic::Code::FailedPrecondition
                        | tonic::Code::InvalidArgument
                        | tonic::Code::ResourceExhausted
                ) =>
            {
                tracing::warn!(task = id, "result refused: {}", s.message());
                self.metrics.refused.fetch_add(1, Ordering::Relaxed);
                let _ = std::fs::remove_dir_all(&dir);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn execute(
        &self,
        client: &mut Client,
        task: &pb::Task,
        dir: &Path,
    ) -> Result<Outcome, AgentError> {
        let id = task.task_id.clone();
        self.set_state("downloading", &id);
        let t0 = Instant::now();
        let init = match &task.init {
            Some(m) => Some(self.download(client, m).await?),
            None => None,
        };
        let mut models = Vec::new();
        if let Some(pb::task::Work::Evaluate(spec)) = &task.work {
            for m in &spec.models {
                models.push((m.version.clone(), self.download(client, m).await?));
            }
        }
        let download_s = t0.elapsed().as_secs_f64();
        let bench = self.bench.clone();
        let metrics = Arc::clone(&self.metrics);
        let task2 = task.clone();
        let dir2 = dir.to_path_buf();
        self.set_state(
            if matches!(task.work, Some(pb::task::Work::Train(_))) {
                "training"
            } else {
                "evaluating"
            },
            &id,
        );
        let epochs = match &task.work {
            Some(pb::task::Work::Train(spec)) => spec.epochs,
            _ => 0,
        };
        let result = tokio::task::spawn_blocking(move || {
            let on_epoch = move |e: &crate::train::EpochStats| metrics.record_epoch(e, epochs);
            match &task2.work {
                Some(pb::task::Work::Train(spec)) => {
                    bench.train(&task2, spec, init.as_deref(), &dir2, &on_epoch)
                }
                Some(pb::task::Work::Evaluate(spec)) => bench.evaluate(&task2, spec, &models),
                Some(pb::task::Work::Stats(_)) => bench.stats(&task2),
                None => Err("task without work".into()),
            }
        })
        .await
        .map_err(|e| AgentError::Local(format!("task {id} panicked: {e}")))?;
        Ok(match result {
            Ok(Outcome::Update { file, header }) => Outcome::Update {
                file,
                header: pb::UploadHeader {
                    download_s,
                    ..header
                },
            },
            Ok(other) => other,
            Err(reason) => {
                tracing::error!(task = id, "task failed here: {reason}");
                Outcome::Report(pb::ReportRequest {
                    task_id: id,
                    report: None,
                    seconds: 0.0,
                    error: reason,
                })
            }
        })
    }

    async fn download(&self, client: &mut Client, m: &pb::ModelRef) -> Result<PathBuf, AgentError> {
        let hex: String = m.digest.chars().filter(char::is_ascii_hexdigit).collect();
        let dest = self
            .bench
            .work_dir
            .join("models")
            .join(format!("{hex}.safetensors"));
        if dest.is_file() {
            return Ok(dest);
        }
        let mut stream = client
            .download_model(pb::DownloadRequest {
                version: m.version.clone(),
            })
            .await?
            .into_inner();
        let mut file =
            IncomingFile::create(&self.bench.work_dir.join("models"), m.size, false).await?;
        while let Some(chunk) = stream.message().await? {
            file.write(chunk.data).await?;
        }
        file.finish(m.size, Some(&m.digest), &dest).await?;
        Ok(dest)
    }

    async fn deliver(&self, client: &mut Client, outcome: Outcome) -> Result<(), AgentError> {
        match outcome {
            Outcome::Report(r) => {
                client.report(r).await?;
                Ok(())
            }
            Outcome::Update { file, header } => {
                let (sha, size) = digest_file(&file).await?;
                let header = pb::UploadHeader { size, ..header };
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                // Reading starts at once; the channel holds what is read until the
                // coordinator says `ready`.
                let sender = tokio::spawn(async move {
                    let sent = send_file(&file, tx.clone(), |data| pb::UploadPart {
                        part: Some(Part::Chunk(data.into())),
                    })
                    .await;
                    if sent.is_ok() {
                        let _ = tx
                            .send(Ok(pb::UploadPart {
                                part: Some(Part::Trailer(pb::UploadTrailer { digest: sha })),
                            }))
                            .await;
                    }
                });
                let parts = tokio_stream::wrappers::ReceiverStream::new(rx)
                    .filter_map(|r: Result<pb::UploadPart, tonic::Status>| r.ok());
                let reply = upload_update(client, header, parts).await;
                sender.abort();
                reply?;
                Ok(())
            }
        }
    }
}

const PENDING_UPLOAD: &str = "upload.pb";
const PENDING_REPORT: &str = "report.pb";

/// Writes what is left to send, so a result survives a lost connection or an agent restart.
fn store_pending(dir: &Path, outcome: &Outcome) -> Result<(), AgentError> {
    let io = |e: std::io::Error| AgentError::Local(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let (name, bytes) = match outcome {
        Outcome::Update { header, .. } => (PENDING_UPLOAD, header.encode_to_vec()),
        Outcome::Report(r) => (PENDING_REPORT, r.encode_to_vec()),
    };
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io)
}

fn load_pending(dir: &Path) -> Result<Option<Outcome>, AgentError> {
    let read = |name: &str| std::fs::read(dir.join(name)).ok();
    let corrupt = |e: prost::DecodeError| AgentError::Local(format!("{}: {e}", dir.display()));
    if let Some(bytes) = read(PENDING_UPLOAD) {
        let file = dir.join("update.safetensors");
        if file.is_file() {
            let header = pb::UploadHeader::decode(bytes.as_slice()).map_err(corrupt)?;
            return Ok(Some(Outcome::Update { file, header }));
        }
    }
    if let Some(bytes) = read(PENDING_REPORT) {
        return Ok(Some(Outcome::Report(
            pb::ReportRequest::decode(bytes.as_slice()).map_err(corrupt)?,
        )));
    }
    Ok(None)
}
