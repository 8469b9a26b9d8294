//! `coordinator`: serve a federation, manage its PKI, and administer jobs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fedseg_coordinator::config::CoordinatorConfig;
use fedseg_coordinator::pki::{self, PkiLayout, Role};
use fedseg_coordinator::report::files::write_report;
use fedseg_coordinator::report::runs::Run;
use fedseg_coordinator::report::{JobStatus, Results};
use fedseg_coordinator::{admin, server, simulate};

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "fedseg coordinator: federated U-Net training across hospitals"
)]
struct Cli {
    /// Admin bundle config for job/sites/model commands (written by `pki issue-admin`).
    #[arg(
        long,
        global = true,
        env = "FEDSEG_ADMIN",
        default_value = "admin.toml"
    )]
    admin: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Create the federation CA and issue certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Submit, follow, and cancel jobs.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Sites that have joined, and whether they are connected.
    Sites {
        #[arg(long)]
        json: bool,
    },
    /// Model versions.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// results.md, results.csv and PNG figures from jobs: each SOURCE is a job ID (asked of
    /// the coordinator with the admin bundle) or a folder holding a job's status.json and
    /// results.json (as `simulate` writes them). Jobs of one plan are repeats: mean ± SD.
    Report {
        #[arg(required = true)]
        sources: Vec<String>,
        #[arg(long, default_value = "report")]
        out: PathBuf,
    },
    /// A whole federation on this machine: synthetic centers, PKI, this coordinator on
    /// loopback and one site-agent process per site; runs a plan and prints its results.
    Simulate(simulate::Options),
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the CA and the coordinator's server certificate.
    Init {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[arg(long, default_value = "fedseg")]
        federation: String,
        /// Names and addresses the coordinator is reached at.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
        hosts: Vec<String>,
    },
    /// Issue a site certificate: a bundle folder to hand to the hospital.
    IssueSite(IssueArgs),
    /// Issue an admin certificate (and an admin.toml for the job commands).
    IssueAdmin(IssueArgs),
}

#[derive(clap::Args)]
struct IssueArgs {
    name: String,
    #[arg(long, default_value = "pki")]
    dir: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: i64,
    /// The coordinator's address, written into the bundle's config snippet.
    #[arg(long, default_value = "https://localhost:7443")]
    endpoint: String,
}

#[derive(Subcommand)]
enum JobCommand {
    Submit {
        plan: PathBuf,
        /// Overrides the plan's seed: submit once per seed to repeat an experiment.
        #[arg(long)]
        seed: Option<u64>,
    },
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    Results {
        id: String,
        #[arg(long, default_value = "text", value_parser = ["text", "markdown", "csv", "json"])]
        format: String,
    },
    Cancel {
        id: String,
    },
    List,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download a model version ("VERSION", "JOB/STAGE" or "JOB/STAGE/ROUND") as safetensors.
    Export { version: String, out: PathBuf },
}

fn main() {
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// A job's status and results, from a results folder or from the coordinator.
async fn load_run(admin_toml: &std::path::Path, source: &str) -> Result<Run> {
    let folder = std::path::Path::new(source);
    let (status, results) = if folder.is_dir() {
        let read = |name: &str| {
            let p = folder.join(name);
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        (read("status.json")?, read("results.json")?)
    } else {
        let mut c = admin::connect(admin_toml).await?;
        let id = Some(source.to_string());
        (
            admin::json_request(&mut c, "status", id.clone()).await?,
            admin::json_request(&mut c, "results", id).await?,
        )
    };
    let status: JobStatus =
        serde_json::from_str(&status).with_context(|| format!("{source}: status document"))?;
    let results: Results =
        serde_json::from_str(&results).with_context(|| format!("{source}: results document"))?;
    Run::new(status, results).map_err(|e| anyhow::anyhow!(e))
}

fn issue(role: Role, args: IssueArgs) -> Result<i32> {
    let IssueArgs {
        name,
        dir,
        days,
        endpoint,
    } = args;
    let name = name.as_str();
    let layout = PkiLayout::new(dir);
    let now = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    let b = pki::issue(&layout, role, name, now, days)?;
    let snippet = format!(
        "coordinator = \"{endpoint}\"\nca = \"ca.crt\"\ncert = \"{name}.crt\"\nkey = \"{name}.key\"\n"
    );
    let toml_name = if role == Role::Admin {
        "admin.toml"
    } else {
        "federation.toml"
    };
    std::fs::write(b.dir.join(toml_name), &snippet)?;
    println!(
        "issued {role:?} certificate for {name}: {}",
        b.dir.display()
    );
    println!(
        "  fingerprint (for `revoked` in coordinator.toml): {}",
        b.fingerprint
    );
    println!("  valid until {}", b.not_after);
    if role == Role::Site {
        println!("  give the folder to the site; its site.toml gets:\n[federation]\n{snippet}");
    }
    Ok(0)
}

fn run() -> Result<i32> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let admin = cli.admin.clone();
    match cli.command {
        Command::Serve { config } => {
            init_logging();
            let cfg = CoordinatorConfig::load(&config)?;
            rt.block_on(server::serve(cfg, async {
                let _ = tokio::signal::ctrl_c().await;
            }))?;
            Ok(0)
        }
        Command::Pki { command } => match command {
            PkiCommand::Init {
                dir,
                federation,
                hosts,
            } => {
                pki::init(&PkiLayout::new(&dir), &federation, &hosts)?;
                println!(
                    "federation CA and coordinator certificate written to {}",
                    dir.display()
                );
                Ok(0)
            }
            PkiCommand::IssueSite(args) => issue(Role::Site, args),
            PkiCommand::IssueAdmin(args) => issue(Role::Admin, args),
        },
        Command::Job { command } => rt.block_on(async {
            match command {
                JobCommand::Submit { plan, seed } => {
                    let id = admin::submit(&admin, &plan, seed).await?;
                    println!("{id}");
                }
                JobCommand::Status { id, json } => {
                    let doc = admin::json_call(&admin, "status", Some(id)).await?;
                    if json {
                        println!("{doc}");
                    } else {
                        let s: JobStatus = serde_json::from_str(&doc).context("status document")?;
                        print!("{}", s.render());
                    }
                }
                JobCommand::Results { id, format } => {
                    let doc = admin::json_call(&admin, "results", Some(id)).await?;
                    let r: Results = serde_json::from_str(&doc).context("results document")?;
                    match format.as_str() {
                        "json" => println!("{doc}"),
                        "markdown" => print!("{}", r.markdown()),
                        "csv" => print!("{}", r.csv()),
                        _ => print!("{}", r.render()),
                    }
                }
                JobCommand::Cancel { id } => {
                    println!("{}", admin::json_call(&admin, "cancel", Some(id)).await?)
                }
                JobCommand::List => println!("{}", admin::json_call(&admin, "jobs", None).await?),
            }
            Ok(0)
        }),
        Command::Sites { json } => rt.block_on(async {
            let doc = admin::json_call(&admin, "sites", None).await?;
            if json {
                println!("{doc}");
            } else {
                let rows: Vec<serde_json::Value> = serde_json::from_str(&doc)?;
                for r in rows {
                    println!(
                        "{:<16} {:<10} {:<5} train slices {:>6}  state {}",
                        r["site"]["name"].as_str().unwrap_or("?"),
                        if r["connected"].as_bool() == Some(true) {
                            "connected"
                        } else {
                            "away"
                        },
                        r["site"]["device"].as_str().unwrap_or("?"),
                        r["site"]["train_slices"].as_u64().unwrap_or(0),
                        r["live"]["state"]
                            .as_str()
                            .filter(|s| !s.is_empty())
                            .unwrap_or("joined"),
                    );
                }
            }
            Ok(0)
        }),
        Command::Simulate(opts) => {
            let json = opts.json;
            std::fs::create_dir_all(opts.workdir.join("logs"))?;
            init_file_logging(&opts.workdir.join("logs").join("coordinator.log"))?;
            let outcome = rt.block_on(simulate::run(opts))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                println!();
                for j in &outcome.jobs {
                    println!(
                        "job {} ({}) {:?}{}",
                        j.id,
                        j.name,
                        j.state,
                        j.reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    );
                }
                println!(
                    "\nLV Dice per test center, {} ({:.0} s):\n",
                    outcome.experiment.spread(),
                    outcome.seconds
                );
                print!("{}", outcome.experiment.render());
                println!();
                for f in &outcome.files {
                    println!("  {}", f.display());
                }
                println!("  logs: {}", outcome.logs.display());
            }
            Ok(if outcome.succeeded() { 0 } else { 1 })
        }
        Command::Report { sources, out } => rt.block_on(async {
            let mut runs = Vec::new();
            for src in &sources {
                runs.push(load_run(&admin, src).await?);
            }
            let (experiments, files) = write_report(runs, &out)
                .with_context(|| format!("writing the report into {}", out.display()))?;
            for e in &experiments {
                println!(
                    "{} — jobs {}, LV Dice {}:\n",
                    e.plan,
                    e.jobs.join(", "),
                    e.spread()
                );
                print!("{}", e.render());
                println!();
            }
            for f in &files {
                println!("  {}", f.display());
            }
            Ok(0)
        }),
        Command::Model {
            command: ModelCommand::Export { version, out },
        } => rt.block_on(async {
            let (id, sha, size) = admin::export(&admin, &version, &out).await?;
            println!(
                "model {id} ({size} bytes, digest {sha}) written to {}",
                out.display()
            );
            Ok(0)
        }),
    }
}

/// The simulation's terminal is for progress; the coordinator's own log goes to a file.
fn init_file_logging(path: &std::path::Path) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    fedseg_proto::logging::init(std::sync::Mutex::new(file), false);
    Ok(())
}

fn init_logging() {
    fedseg_proto::logging::init_stderr();
}
