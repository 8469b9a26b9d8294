//! `coordinator simulate`: a whole federation on this machine, the same code as a real one.
//! Synthetic centers (made once), a federation PKI (made once), this coordinator serving on a
//! loopback port with mutual TLS, one `site-agent run` process per site, the plan submitted
//! through the admin API and followed until it ends, then the results written to files.

mod progress;
mod workdir;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::admin;
use crate::config::CoordinatorConfig;
use crate::plan::{Plan, StageKind};
use crate::records::JobState;
use crate::report::files::write_report;
use crate::report::runs::{Experiment, Run};
use crate::report::{JobStatus, JobSummary, Results};
use fedseg_proto::pb::admin_client::AdminClient;
use tonic::transport::Channel;
pub use workdir::{KNOWN_SITES, Workdir, members};

/// The plan the README's first command runs: the paper's Table 5 in one job.
pub const DEFAULT_PLAN: &str = include_str!("../../../plans/simulate.toml");

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Folder for data, PKI, coordinator state, logs and results (kept between runs).
    #[arg(long, default_value = "work/simulate")]
    pub workdir: PathBuf,
    /// Job plan; default: the built-in Table 5 plan (plans/simulate.toml).
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// U-Net size, overriding the plan's: tiny (tests, CI), cpu, paper (GPU).
    #[arg(long, value_parser = ["tiny", "cpu", "paper"])]
    pub model: Option<String>,
    /// Subjects per synthetic center (only when the data is first made).
    #[arg(long, default_value_t = 10)]
    pub subjects: usize,
    /// Epochs of every training stage, overriding the plan.
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Rounds of every federated stage, overriding the plan.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// The job's seed, overriding the plan's.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Runs of the plan (seeds seed, seed+1, …), overriding the plan's `repeats`.
    #[arg(long)]
    pub repeats: Option<u32>,
    /// The site-agent binary; default: beside this one, else on PATH.
    #[arg(long)]
    pub site_agent: Option<PathBuf>,
    /// Progress on stderr, and one JSON document (jobs, table, files) on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    /// One job per repeat of the plan (fewer if one failed).
    pub jobs: Vec<JobSummary>,
    pub seconds: f64,
    /// LV Dice per model and test center over the jobs that completed.
    pub experiment: Experiment,
    pub files: Vec<PathBuf>,
    pub logs: PathBuf,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        !self.jobs.is_empty() && self.jobs.iter().all(|j| j.state == JobState::Done)
    }
}

/// The plan to run, with the command line's overrides applied.
pub fn load_plan(opts: &Options) -> Result<Plan> {
    let (text, origin) = match &opts.plan {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (DEFAULT_PLAN.to_string(), "the default plan".to_string()),
    };
    let mut plan = Plan::parse(&text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    if let Some(m) = &opts.model {
        plan.model = m.clone();
    }
    if let Some(s) = opts.seed {
        plan.seed = s;
    }
    if let Some(r) = opts.repeats {
        plan.repeats = r;
    }
    for s in &mut plan.stages {
        if let Some(e) = opts.epochs
            && s.produces_model()
        {
            s.epochs = Some(e);
        }
        if let Some(r) = opts.rounds
            && s.kind == StageKind::Fedavg
        {
            s.rounds = r;
        }
    }
    let text = toml::to_string(&plan)?;
    Plan::parse(&text).map_err(|e| anyhow::anyhow!("{origin} with overrides: {e}"))
}

/// `site-agent` beside this binary (how cargo and the containers lay them out), else on PATH.
fn find_site_agent(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--site-agent {}: no such file", p.display());
    }
    let name = format!("site-agent{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(&name)));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(&name))
                .collect::<Vec<_>>()
        })
        .and_then(|c| c.into_iter().find(|p| p.is_file()))
    {
        return Ok(p);
    }
    bail!(
        "the site-agent binary is neither beside this coordinator nor on PATH; build both with \
         `cargo build --release -p coordinator -p site-agent` or pass --site-agent PATH"
    )
}

struct Agent {
    site: String,
    log: PathBuf,
    child: Child,
}

/// Says so if an agent process has ended: a simulation without one of its sites would only
/// wait for a deadline.
fn check_agents(agents: &mut [Agent]) -> Result<()> {
    for a in agents {
        if let Some(status) = a.child.try_wait()? {
            bail!(
                "the site agent of {} exited ({status}); its log is {}",
                a.site,
                a.log.display()
            );
        }
    }
    Ok(())
}

pub async fn run(opts: Options) -> Result<Outcome> {
    let started = Instant::now();
    let say = |line: &str| {
        if opts.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let plan = load_plan(&opts)?;
    let mut sites: Vec<String> = Vec::new();
    for s in plan.stages.iter().flat_map(|s| &s.sites) {
        if !sites.contains(s) {
            sites.push(s.clone());
        }
    }
    let site_agent = find_site_agent(opts.site_agent.as_deref())?;
    let dir = Workdir::new(&opts.workdir)?;
    say(&format!(
        "simulating plan {:?} (model {}) with {} sites in {}",
        plan.name,
        plan.model,
        sites.len(),
        dir.root.display()
    ));
    let made = dir.ensure_data(&site_agent, &sites, opts.subjects)?;
    if made.is_empty() {
        say(&format!(
            "  data: reusing {} (delete it to synthesise again)",
            dir.data().display()
        ));
    } else {
        say(&format!(
            "  data: synthesised {} with {} subjects each in {}",
            made.join(", "),
            opts.subjects,
            dir.data().display()
        ));
    }
    dir.ensure_pki(&sites)?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let http = status_page_listener().await?;
    let http_addr = http.local_addr()?;
    let config = CoordinatorConfig {
        listen: addr.to_string(),
        http_listen: Some(http_addr.to_string()),
        state_dir: dir.state(),
        pki_dir: dir.root.join("pki"),
        heartbeat_s: 1,
        ..CoordinatorConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::serve_bound(
        config,
        listener,
        Some(http),
        async {
            let _ = stop_rx.await;
        },
    ));
    say(&format!(
        "  coordinator: {endpoint} (mutual TLS), state in {}",
        dir.state().display()
    ));
    say(&format!(
        "  status page: http://{http_addr}/ (metrics /metrics, health /healthz)"
    ));

    let mut agents = Vec::new();
    for s in &sites {
        let config = dir.configure_site(s, &endpoint, &plan.model)?;
        let log = dir.log(s);
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&site_agent)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", site_agent.display()))?;
        agents.push(Agent {
            site: s.clone(),
            log,
            child,
        });
    }
    say(&format!(
        "  site agents: {} (logs in {})",
        sites.join(", "),
        dir.root.join("logs").display()
    ));

    let result = follow(&opts, &dir, &endpoint, &plan, &sites, &mut agents, say).await;
    for a in &mut agents {
        let _ = a.child.kill().await;
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Err(e))) => tracing::warn!("coordinator: {e:#}"),
        Ok(Err(e)) => tracing::warn!("coordinator task: {e}"),
        _ => {}
    }
    let (jobs, experiment, files) = result?;
    Ok(Outcome {
        jobs,
        seconds: started.elapsed().as_secs_f64(),
        experiment,
        files,
        logs: dir.root.join("logs"),
    })
}

type Followed = (Vec<JobSummary>, Experiment, Vec<PathBuf>);

async fn follow(
    opts: &Options,
    dir: &Workdir,
    endpoint: &str,
    plan: &Plan,
    sites: &[String],
    agents: &mut [Agent],
    say: impl Fn(&str),
) -> Result<Followed> {
    let started = Instant::now();
    let mut admin = admin::connect_to(&dir.admin_endpoint(endpoint)).await?;

    // A simulation interrupted earlier left its job running in the state folder: it would
    // compete with this one for the sites.
    let jobs: Vec<JobSummary> =
        serde_json::from_str(&admin::json_request(&mut admin, "jobs", None).await?)?;
    for j in jobs.iter().filter(|j| j.state == JobState::Running) {
        admin::json_request(&mut admin, "cancel", Some(j.id.clone())).await?;
        say(&format!("  cancelled job {} left by an earlier run", j.id));
    }

    // Agents load their data before joining; wait for all, so the first round has them.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        check_agents(agents)?;
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&admin::json_request(&mut admin, "sites", None).await?)?;
        let connected: Vec<&str> = rows
            .iter()
            .filter(|r| r["connected"].as_bool() == Some(true))
            .filter_map(|r| r["site"]["name"].as_str())
            .collect();
        if sites.iter().all(|s| connected.contains(&s.as_str())) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "sites not connected after 300 s: {}; see their logs in {}",
                sites
                    .iter()
                    .filter(|s| !connected.contains(&s.as_str()))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                dir.root.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    say(&format!(
        "  all {} sites joined after {:.1} s",
        sites.len(),
        started.elapsed().as_secs_f64()
    ));

    let mut summaries = Vec::new();
    let mut runs = Vec::new();
    let mut files = Vec::new();
    for k in 0..plan.repeats {
        // Repeats differ only in their seed: the paper's "five runs of each model".
        let mut p = plan.clone();
        p.seed = plan.seed + u64::from(k);
        p.repeats = 1;
        let plan_toml = toml::to_string(&p)?;
        let job = admin::submit_text(&mut admin, plan_toml.clone()).await?;
        say(&format!(
            "job {job} submitted (run {}/{}, seed {})",
            k + 1,
            plan.repeats,
            p.seed
        ));
        let status = watch(&mut admin, &job, agents, started, &say).await?;
        let doc = admin::json_request(&mut admin, "results", Some(job.clone())).await?;
        let results: Results = serde_json::from_str(&doc).context("results document")?;
        files.extend(write_results(dir, &status, &results, &plan_toml, opts)?);
        let state = status.job.state;
        summaries.push(status.job.clone());
        if state != JobState::Done {
            say(&format!(
                "job {job} ended {state:?}{}",
                status
                    .job
                    .reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
            break;
        }
        runs.push(Run::new(status, results).map_err(|e| anyhow::anyhow!(e))?);
    }
    let report_dir = dir.root.join("report").join(&plan.name);
    let (mut experiments, report_files) = write_report(runs, &report_dir)
        .with_context(|| format!("writing the report into {}", report_dir.display()))?;
    files.extend(report_files);
    let experiment = experiments
        .pop()
        .unwrap_or_else(|| Experiment::empty(&plan.name));
    Ok((summaries, experiment, files))
}

/// Follows one job until it ends, printing a line whenever its progress changes.
async fn watch(
    admin: &mut AdminClient<Channel>,
    job: &str,
    agents: &mut [Agent],
    started: Instant,
    say: &impl Fn(&str),
) -> Result<JobStatus> {
    let mut last_key = String::new();
    loop {
        check_agents(agents)?;
        let doc = admin::json_request(admin, "status", Some(job.to_string())).await?;
        let status: JobStatus = serde_json::from_str(&doc).context("status document")?;
        if status.job.state != JobState::Running {
            return Ok(status);
        }
        if let Some((key, line)) = progress::describe(&status)
            && key != last_key
        {
            say(&format!(
                "[{:>6.1} s] {line}",
                started.elapsed().as_secs_f64()
            ));
            last_key = key;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => {
                let _ = admin::json_request(admin, "cancel", Some(job.to_string())).await;
                bail!("interrupted: job {job} cancelled");
            }
        }
    }
}

fn write_results(
    dir: &Workdir,
    status: &JobStatus,
    results: &Results,
    plan_toml: &str,
    opts: &Options,
) -> Result<Vec<PathBuf>> {
    let out = dir.results(&status.job.id);
    std::fs::create_dir_all(&out)?;
    let md = format!(
        "# {} — job {}\n\nLV Dice (mean ± SD over each center's test subjects), one row per \
         test center as in the paper's Table 5; `-` where a model was not evaluated.\n\n{}\n\
         ## Per model\n\n{}\n## Job\n\n```text\n{}```\n\nRun with `coordinator simulate --workdir {}{}`.\n",
        status.job.name,
        status.job.id,
        results.by_center_markdown(),
        results.markdown(),
        status.render(),
        opts.workdir.display(),
        opts.plan
            .as_ref()
            .map(|p| format!(" --plan {}", p.display()))
            .unwrap_or_default(),
    );
    let files = [
        ("results.md", md),
        ("results.csv", results.csv()),
        ("results.json", serde_json::to_string_pretty(results)?),
        ("status.json", serde_json::to_string_pretty(status)?),
        ("plan.toml", plan_toml.to_string()),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}

/// The status page on the port the docs name, or on a free one when another coordinator
/// (another simulation) holds it. Loopback only: the page asks for no certificate.
async fn status_page_listener() -> Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind("127.0.0.1:9464").await {
        Ok(l) => Ok(l),
        Err(_) => Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
    }
}
