//! The gRPC services: the site-facing one (tasks, transfers, reports, heartbeats) and the
//! admin one. Who is calling comes from the verified client certificate only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedseg_proto::pb::{
    self, admin_server::Admin, site_server::Site, upload_part::Part, upload_progress::Step,
};
use fedseg_proto::transfer::{IncomingFile, send_file};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::early::Arrived;
use crate::engine::{EngineError, Federation};
use crate::pki::{Peer, Role, peer_from_der};
use crate::report;
use crate::update_check::StreamCheck;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn peer<T>(req: &Request<T>, role: Role) -> Result<Peer, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let der = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let peer = peer_from_der(der).map_err(Status::unauthenticated)?;
    if peer.role != role {
        tracing::warn!(name = peer.name, ?peer.role, "refused: wrong role for this service");
        return Err(Status::permission_denied(format!(
            "certificate of {} {:?} may not call {:?} services",
            match peer.role {
                Role::Site => "site",
                Role::Admin => "admin",
                Role::Coordinator => "coordinator",
            },
            peer.name,
            role
        )));
    }
    Ok(peer)
}

pub fn status_of(e: EngineError) -> Status {
    match e {
        EngineError::NotFound(m) => Status::not_found(m),
        EngineError::Invalid(m) => Status::invalid_argument(m),
        EngineError::Rejected(m) => Status::failed_precondition(m),
        other => Status::internal(other.to_string()),
    }
}

#[derive(Clone)]
pub struct SiteService {
    pub fed: Arc<Federation>,
    /// Model transfers served at once; the rest wait with only their HTTP/2 window buffered,
    /// so coordinator memory does not grow with the number of sites.
    pub transfers: Arc<tokio::sync::Semaphore>,
}

#[tonic::async_trait]
impl Site for SiteService {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        let peer = peer(&req, Role::Site)?;
        self.fed
            .join(&peer.name, req.get_ref())
            .map_err(status_of)?;
        Ok(Response::new(pb::JoinReply {
            site: peer.name,
            heartbeat_s: self.fed.config.heartbeat_s,
        }))
    }

    type TasksStream = BoxStream<pb::Task>;

    async fn tasks(
        &self,
        req: Request<pb::TasksRequest>,
    ) -> Result<Response<Self::TasksStream>, Status> {
        let site = peer(&req, Role::Site)?.name;
        let fed = self.fed.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut changes = fed.subscribe();
            let mut last_sent = String::new();
            loop {
                fed.touch(&site, None);
                match fed.task_for(&site) {
                    Ok(Some(task)) if task.task_id != last_sent => {
                        last_sent = task.task_id.clone();
                        tracing::info!(site, task = task.task_id, "task sent");
                        if tx.send(Ok(task)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => last_sent.clear(),
                    Err(e) => {
                        let _ = tx.send(Err(status_of(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let site = peer(&req, Role::Site)?.name;
        let hb = req.into_inner();
        self.fed.touch(&site, Some(&hb));
        Ok(Response::new(pb::HeartbeatReply {
            cancel_task: self.fed.task_cancelled(&hb.task_id),
        }))
    }

    type DownloadModelStream = BoxStream<pb::Chunk>;

    async fn download_model(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let site = peer(&req, Role::Site)?.name;
        let version = req.into_inner().version;
        let m = self
            .fed
            .store
            .model(&version)
            .map_err(|e| status_of(e.into()))?
            .ok_or_else(|| Status::not_found(format!("no model version {version}")))?;
        tracing::info!(site, version, bytes = m.size, "model download");
        let permit = self.transfer_permit().await?;
        Ok(Response::new(stream_blob(
            self.fed.blobs.path(&m.digest),
            Some(permit),
            Some(Arc::clone(&self.fed)),
        )))
    }

    type UploadUpdateStream = BoxStream<pb::UploadProgress>;

    async fn upload_update(
        &self,
        req: Request<Streaming<pb::UploadPart>>,
    ) -> Result<Response<Self::UploadUpdateStream>, Status> {
        let site = peer(&req, Role::Site)?.name;
        // The conversation runs beside the reply stream: `ready` must reach the site while
        // its chunks have yet to come.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let service = self.clone();
        tokio::spawn(async move {
            let answer = match service.receive_update(site, req.into_inner(), &tx).await {
                Ok(reply) => Ok(pb::UploadProgress {
                    step: Some(Step::Done(reply)),
                }),
                Err(e) => {
                    service.fed.counters.rejected(e.message());
                    Err(e)
                }
            };
            let _ = tx.send(answer).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportReply>, Status> {
        let site = peer(&req, Role::Site)?.name;
        self.fed
            .accept_report(&site, req.into_inner())
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ReportReply {}))
    }
}

impl SiteService {
    /// A place among the model transfers served at once (`max_concurrent_transfers`).
    async fn transfer_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.transfers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("shutting down"))
    }

    /// Header checks, then a place among the transfers served at once, then `ready` and the
    /// body: a site waiting for its place has sent nothing that the coordinator must buffer.
    async fn receive_update(
        &self,
        site: String,
        mut stream: Streaming<pb::UploadPart>,
        progress: &tokio::sync::mpsc::Sender<Result<pb::UploadProgress, Status>>,
    ) -> Result<pb::UploadReply, Status> {
        let header = match stream.next().await {
            Some(Ok(pb::UploadPart {
                part: Some(Part::Header(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("an upload starts with its header")),
        };
        if header.size > self.fed.config.max_model_bytes {
            return Err(Status::resource_exhausted(format!(
                "update of {} bytes exceeds the coordinator's limit of {} bytes",
                header.size, self.fed.config.max_model_bytes
            )));
        }
        self.fed
            .check_upload(&header.task_id, &site)
            .map_err(status_of)?;
        let _permit = self.transfer_permit().await?;
        let ready = pb::UploadProgress {
            step: Some(Step::Ready(pb::UploadReady {})),
        };
        if progress.send(Ok(ready)).await.is_err() {
            return Err(Status::cancelled(format!(
                "{site} left before its upload began"
            )));
        }
        let started = Instant::now();
        // Held in memory for the aggregation if the budget has room; then the file, read
        // only after a restart, is written past the page cache.
        let mut holding = self.fed.held.reserve(header.size);
        let mut file = IncomingFile::create(
            &self.fed.blobs.incoming_dir(),
            header.size,
            holding.is_some(),
        )
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let mut check = StreamCheck::new(header.size);
        let mut trailer = None;
        while let Some(part) = stream.next().await {
            // A broken stream drops `file`, which deletes the partial upload.
            match part?.part {
                Some(Part::Chunk(bytes)) if trailer.is_none() => {
                    self.fed.counters.received(bytes.len());
                    check.feed(&bytes);
                    if let Some(problem) = check.problem() {
                        // Refused at the first bad byte; the rest is not waited for.
                        let e = self
                            .fed
                            .reject_update(&site, &header.task_id, problem)
                            .await;
                        return Err(status_of(e.unwrap_or_else(|e| e)));
                    }
                    if let Some(h) = holding.as_mut() {
                        h.push(&bytes);
                    }
                    file.write(bytes)
                        .await
                        .map_err(|e| Status::invalid_argument(format!("upload from {site}: {e}")))?
                }
                Some(Part::Trailer(t)) if trailer.is_none() => trailer = Some(t),
                _ => return Err(Status::invalid_argument("upload parts out of order")),
            }
        }
        let trailer = trailer.ok_or_else(|| {
            Status::invalid_argument(format!(
                "truncated upload: stream ended after {} of {} bytes with no trailer",
                file.received(),
                header.size
            ))
        })?;
        // Unique per upload: two sites may well send identical bytes.
        static RECEIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = RECEIVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .fed
            .blobs
            .incoming_dir()
            .join(format!("upload-{n}.recv"));
        let verified = file
            .verify(header.size, Some(&trailer.digest))
            .map_err(|e| Status::invalid_argument(format!("upload from {site}: {e}")))?;
        let digest = verified.digest.clone();
        if let Some(h) = holding {
            h.keep(&digest);
        }
        let arrived = Arrived {
            digest: verified.digest,
            weight: header.sample_count as f64,
            file: Arc::new(verified.reader),
            path: verified.path,
        };
        // Held until the update is accepted or refused: the round may aggregate early.
        let arrived = self.fed.update_arrived(&site, &header, arrived).await;
        if let Err(e) = file.persist(&tmp).await {
            self.fed.held.release(&digest);
            return Err(Status::invalid_argument(format!("upload from {site}: {e}")));
        }
        let upload_s = started.elapsed().as_secs_f64();
        let accepted = self
            .fed
            .accept_update(
                &site,
                &header,
                tmp.clone(),
                &digest,
                upload_s,
                check.finish(),
            )
            .await;
        match accepted {
            Ok(()) => arrived.accepted(),
            // Refused updates are not kept (an accepted one was moved into the blob store).
            Err(_) => {
                self.fed.held.release(&digest);
                drop(tokio::fs::remove_file(&tmp).await)
            }
        }
        accepted.map_err(status_of)?;
        Ok(pb::UploadReply { digest })
    }
}

/// A blob as a stream of chunks; `counted` adds what is sent to the metrics (site
/// downloads, not admin exports).
fn stream_blob(
    path: std::path::PathBuf,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    counted: Option<Arc<Federation>>,
) -> BoxStream<pb::Chunk> {
    // Two chunks queued per download: memory per site stays a few MiB.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let err_tx = tx.clone();
        if let Err(e) = send_file(&path, tx, |data| pb::Chunk { data: data.into() }).await {
            let _ = err_tx.send(Err(Status::internal(e.to_string()))).await;
        }
        drop(permit);
    });
    let chunks = tokio_stream::wrappers::ReceiverStream::new(rx);
    Box::pin(chunks.map(move |c| {
        if let (Some(fed), Ok(c)) = (&counted, &c) {
            fed.counters.sent(c.data.len());
        }
        c
    }))
}

pub struct AdminService {
    pub fed: Arc<Federation>,
}

fn json_reply<T: serde::Serialize>(v: &T) -> Result<Response<pb::JsonReply>, Status> {
    serde_json::to_string(v)
        .map(|json| Response::new(pb::JsonReply { json }))
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn submit_plan(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let admin = peer(&req, Role::Admin)?.name;
        let job_id = self
            .fed
            .submit(&req.get_ref().plan_toml, &admin)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::SubmitReply { job_id }))
    }

    async fn list_jobs(&self, req: Request<pb::Empty>) -> Result<Response<pb::JsonReply>, Status> {
        peer(&req, Role::Admin)?;
        let jobs = self.fed.store.jobs().map_err(|e| status_of(e.into()))?;
        json_reply(&jobs.iter().map(report::JobSummary::of).collect::<Vec<_>>())
    }

    async fn job_status(
        &self,
        req: Request<pb::JobRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        peer(&req, Role::Admin)?;
        let job = self.fed.job(&req.get_ref().job_id).map_err(status_of)?;
        json_reply(&report::JobStatus::of(&job, self.fed.live_sites()))
    }

    async fn job_results(
        &self,
        req: Request<pb::JobRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        peer(&req, Role::Admin)?;
        let job = self.fed.job(&req.get_ref().job_id).map_err(status_of)?;
        json_reply(&report::Results::of(&job))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::JobRequest>,
    ) -> Result<Response<pb::JsonReply>, Status> {
        let admin = peer(&req, Role::Admin)?.name;
        let job = self
            .fed
            .cancel(&req.get_ref().job_id, &admin)
            .await
            .map_err(status_of)?;
        json_reply(&report::JobSummary::of(&job))
    }

    async fn list_sites(&self, req: Request<pb::Empty>) -> Result<Response<pb::JsonReply>, Status> {
        peer(&req, Role::Admin)?;
        json_reply(&self.fed.site_rows().map_err(status_of)?)
    }

    type ExportModelStream = BoxStream<pb::Chunk>;

    async fn export_model(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::ExportModelStream>, Status> {
        let admin = peer(&req, Role::Admin)?.name;
        let m = self
            .fed
            .resolve_model(&req.get_ref().version)
            .map_err(status_of)?;
        self.fed
            .store
            .audit(&admin, "model export", &m.id)
            .map_err(|e| status_of(e.into()))?;
        let mut reply = Response::new(stream_blob(self.fed.blobs.path(&m.digest), None, None));
        if let Ok(v) = m.digest.parse() {
            reply.metadata_mut().insert("x-digest", v);
        }
        if let Ok(v) = m.id.parse() {
            reply.metadata_mut().insert("x-version", v);
        }
        Ok(reply)
    }
}
