//! `site-agent`: the program a hospital runs. A thin layer over the `fedseg_site` library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use fedseg_site::data::{Part, SiteConfig};

mod commands;
use fedseg_site::synth::{Modality, SynthOptions, synthesize};
use fedseg_site::train::DeviceKind;

#[derive(Parser)]
#[command(
    name = "site-agent",
    version,
    about = "fedseg site agent: a hospital's data, model and training stay here"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModalityArg {
    Lge,
    Cine,
}

#[derive(Clone, Copy, ValueEnum)]
enum PartArg {
    Train,
    Val,
    Test,
}

#[derive(Subcommand)]
enum Command {
    /// Write synthetic multi-center LGE-MRI datasets, one folder per center with its site.toml.
    Synth {
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated centers of the paper's Table 1.
        #[arg(long, value_delimiter = ',', default_value = "emidec,mscmr,vh,stpau")]
        centers: Vec<String>,
        #[arg(long, default_value_t = 20)]
        subjects: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_enum, default_value = "lge")]
        modality: ModalityArg,
        /// Skip the PNG montage of the domain shift.
        #[arg(long)]
        no_montage: bool,
    },
    /// Check a site's data before joining: subjects, geometry, label values, problems.
    Inspect {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Train a single-center model on the site's training split (optionally from a weights file
    /// with only some blocks trainable: the paper's transfer learning, done locally).
    Train {
        #[arg(long)]
        config: PathBuf,
        /// Starting weights (safetensors).
        #[arg(long)]
        init: Option<PathBuf>,
        /// Blocks that train, e.g. `enc:0-4`, `dec:0-1,head`, `all`.
        #[arg(long, default_value = "all")]
        trainable: String,
        #[arg(long)]
        epochs: Option<usize>,
        /// Model size (tiny, cpu, paper); overrides the config's train.model.
        #[arg(long)]
        model: Option<String>,
        /// Best weights by validation Dice.
        #[arg(long)]
        out: PathBuf,
        /// Checkpoint folder (default: OUT.ckpt); a run started again resumes from it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Where to compute: overrides the config's train.device (`cuda` needs the cuda build).
        #[arg(long, value_enum)]
        device: Option<DeviceKind>,
        #[arg(long)]
        json: bool,
    },
    /// Score a weights file on the site's test split: 3D Dice per subject, mean ± std.
    Evaluate {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        weights: PathBuf,
        /// Histogram-match test images to this reference (from `stats`) first.
        #[arg(long)]
        hist_ref: Option<PathBuf>,
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Which split to score.
        #[arg(long, value_enum, default_value = "test")]
        part: PartArg,
        /// Where to compute: overrides the config's train.device (`cuda` needs the cuda build).
        #[arg(long, value_enum)]
        device: Option<DeviceKind>,
        #[arg(long)]
        json: bool,
    },
    /// Segment NIfTI volumes; writes label volumes carrying each input's header.
    Predict {
        #[arg(long)]
        weights: PathBuf,
        /// A NIfTI file or a folder of them.
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long)]
        hist_ref: Option<PathBuf>,
        /// Where to compute: overrides the config's train.device (`cuda` needs the cuda build).
        #[arg(long, value_enum)]
        device: Option<DeviceKind>,
    },
    /// Compute the site's histogram-matching reference (quantiles of its normalised training
    /// intensities) and write it as JSON: a statistic, no image.
    Stats {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Join a federation: dial the coordinator named in `[federation]`, pull tasks, run them on
    /// this site's data, send back weights and scores. Runs until stopped.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Write a PNG montage of sample slices and intensity histograms of several sites.
    Show {
        /// Site configs (site.toml), or folders holding one per center (as `synth` writes).
        #[arg(required = true)]
        sites: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    fedseg_proto::logging::init_stderr();
    fedseg_site::train::heap::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Configs named directly, or the `*/site.toml` files inside folders.
fn site_configs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            if p.join("site.toml").is_file() {
                out.push(p.join("site.toml"));
                continue;
            }
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path().join("site.toml")))
                .filter(|c| c.is_file())
                .collect();
            found.sort();
            anyhow::ensure!(
                !found.is_empty(),
                "{}: no site.toml in it or its subfolders",
                p.display()
            );
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Synth {
            out,
            centers,
            subjects,
            seed,
            modality,
            no_montage,
        } => {
            let opts = SynthOptions {
                out: out.clone(),
                centers,
                subjects,
                seed,
                modality: match modality {
                    ModalityArg::Lge => Modality::Lge,
                    ModalityArg::Cine => Modality::Cine,
                },
            };
            let started = std::time::Instant::now();
            let summaries = synthesize(&opts)?;
            println!(
                "wrote {} centers × {} subjects in {:.1} s",
                summaries.len(),
                subjects,
                started.elapsed().as_secs_f32()
            );
            println!(
                "{:<8} {:>9} {:>6}  {:>21} {:>21} {:>21} {:>6}  config",
                "center", "layout", "scar", "blood rel (within SD)", "myocardium", "scar", "zeros"
            );
            for s in &summaries {
                let f = |t: fedseg_site::synth::TissueStat| {
                    format!("{:.2}±{:.2} ({:.0}%)", t.mean, t.sd, t.sd_within * 100.0)
                };
                println!(
                    "{:<8} {:>9} {:>6}  {:>21} {:>21} {:>21} {:>5.0}%  {}",
                    s.center,
                    s.layout.to_string(),
                    format!("{}/{}", s.with_scar, s.subjects),
                    f(s.blood_pool),
                    f(s.myocardium),
                    f(s.scar),
                    s.zero_fraction * 100.0,
                    s.dir.join("site.toml").display()
                );
            }
            let summary_path = out.join("synth-summary.json");
            std::fs::write(&summary_path, serde_json::to_string_pretty(&summaries)?)
                .with_context(|| format!("writing {}", summary_path.display()))?;
            if !no_montage {
                let configs: Vec<PathBuf> =
                    summaries.iter().map(|s| s.dir.join("site.toml")).collect();
                let png = out.join("domain-shift.png");
                let report = fedseg_site::montage::write_montage(&configs, &png)?;
                println!("{report}");
                println!("montage: {}", png.display());
            }
            Ok(0)
        }
        Command::Inspect { config, json } => {
            let cfg = SiteConfig::load(&config)?;
            let report = fedseg_site::inspect::inspect(&cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(if report.can_train { 0 } else { 2 })
        }
        Command::Train {
            config,
            init,
            trainable,
            epochs,
            model,
            out,
            checkpoint,
            device,
            json,
        } => commands::train(
            config, init, trainable, epochs, model, out, checkpoint, device, json,
        ),
        Command::Evaluate {
            config,
            weights,
            hist_ref,
            csv,
            part,
            device,
            json,
        } => {
            let part = match part {
                PartArg::Train => Part::Train,
                PartArg::Val => Part::Val,
                PartArg::Test => Part::Test,
            };
            commands::evaluate(config, weights, hist_ref, csv, part, device, json)
        }
        Command::Predict {
            weights,
            input,
            output,
            hist_ref,
            device,
        } => commands::predict(weights, input, output, hist_ref, device.unwrap_or_default()),
        Command::Run { config } => {
            let cfg = SiteConfig::load(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                tokio::select! {
                    r = fedseg_site::federation::run(cfg) => r.map_err(anyhow::Error::from),
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            })?;
            Ok(0)
        }
        Command::Stats { config, out } => {
            let cfg = SiteConfig::load(&config)?;
            let site = fedseg_site::data::prepare_site(&cfg, false)?;
            let reference = site.histogram_reference();
            reference
                .save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{}: reference of {} training pixels, median {:.3}, written to {}",
                reference.site,
                reference.pixels,
                reference.at(0.5),
                out.display()
            );
            Ok(0)
        }
        Command::Show { sites, out } => {
            let configs = site_configs(&sites)?;
            let report = fedseg_site::montage::write_montage(&configs, &out)?;
            println!("{report}");
            println!("montage: {}", out.display());
            Ok(0)
        }
    }
}
