//! The admin side of the CLI: `job`, `sites` and `model` commands talk to a running
//! coordinator over mutual TLS with an admin certificate (bundle from `pki issue-admin`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use fedseg_proto::MAX_MESSAGE_BYTES;
use fedseg_proto::client::FederationEndpoint;
use fedseg_proto::pb::{self, admin_client::AdminClient};
use fedseg_proto::transfer::IncomingFile;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Reads an admin bundle's `admin.toml` (paths relative to it).
pub fn load_endpoint(path: &Path) -> Result<FederationEndpoint> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading admin config {} (made by `coordinator pki issue-admin`)",
            path.display()
        )
    })?;
    let mut ep: FederationEndpoint =
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    ep.resolve(path.parent().unwrap_or(Path::new(".")));
    Ok(ep)
}

pub async fn connect(path: &Path) -> Result<AdminClient<Channel>> {
    connect_to(&load_endpoint(path)?).await
}

pub async fn connect_to(ep: &FederationEndpoint) -> Result<AdminClient<Channel>> {
    let ch = ep.channel().await?;
    Ok(AdminClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("coordinator: {} ({:?})", e.message(), e.code())
}

pub async fn submit(admin: &Path, plan: &Path, seed: Option<u64>) -> Result<String> {
    let mut text =
        std::fs::read_to_string(plan).with_context(|| format!("reading {}", plan.display()))?;
    // Check locally first: a plan error is then reported against the file.
    let mut parsed =
        crate::plan::Plan::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", plan.display()))?;
    if let Some(seed) = seed {
        parsed.seed = seed;
        text = toml::to_string(&parsed)?;
    }
    submit_text(&mut connect(admin).await?, text).await
}

pub async fn submit_text(c: &mut AdminClient<Channel>, plan_toml: String) -> Result<String> {
    let r = c
        .submit_plan(pb::SubmitRequest { plan_toml })
        .await
        .map_err(status)?;
    Ok(r.into_inner().job_id)
}

pub async fn json_call(admin: &Path, what: &str, job: Option<String>) -> Result<String> {
    json_request(&mut connect(admin).await?, what, job).await
}

/// One of the admin calls that answer a JSON document: status, results, cancel, jobs, sites.
pub async fn json_request(
    c: &mut AdminClient<Channel>,
    what: &str,
    job: Option<String>,
) -> Result<String> {
    let req = || pb::JobRequest {
        job_id: job.clone().unwrap_or_default(),
    };
    let reply = match what {
        "status" => c.job_status(req()).await,
        "results" => c.job_results(req()).await,
        "cancel" => c.cancel_job(req()).await,
        "jobs" => c.list_jobs(pb::Empty {}).await,
        "sites" => c.list_sites(pb::Empty {}).await,
        other => bail!("unknown admin call {other}"),
    }
    .map_err(status)?;
    Ok(reply.into_inner().json)
}

/// Downloads a model version into `out` (atomically), checking the digest the coordinator
/// announces.
pub async fn export(admin: &Path, version: &str, out: &Path) -> Result<(String, String, u64)> {
    let mut c = connect(admin).await?;
    let reply = c
        .export_model(pb::DownloadRequest {
            version: version.to_string(),
        })
        .await
        .map_err(status)?;
    let meta = |k: &str| {
        reply
            .metadata()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let sha = meta("x-digest").unwrap_or_default();
    let id = meta("x-version").unwrap_or_else(|| version.to_string());
    let dir: PathBuf = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut file = IncomingFile::create(&dir, u64::MAX, false).await?;
    let mut stream = reply.into_inner();
    while let Some(chunk) = stream.next().await {
        file.write(chunk.map_err(status)?.data).await?;
    }
    let size = file.received();
    let digest = file
        .finish(size, (!sha.is_empty()).then_some(sha.as_str()), out)
        .await?;
    Ok((id, digest, size))
}
