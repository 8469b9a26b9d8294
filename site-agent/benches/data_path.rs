//! Benchmark of the data path: time to synthesise 4 centers × N subjects, and slices/s for
//! load + preprocess and for augmentation (paper §2.2 at p = 0.2).
//!
//! `cargo bench -p site-agent --bench data_path [-- SUBJECTS]` (default 20 subjects per center).

use std::time::Instant;

use fedseg_site::augment::{AugmentConfig, augment};
use fedseg_site::data::{SiteConfig, prepare_site};
use fedseg_site::synth::{CENTER_NAMES, Modality, SynthOptions, synthesize};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn main() -> anyhow::Result<()> {
    let subjects: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20);
    let dir = tempfile::tempdir()?;
    let threads = rayon::current_num_threads();
    println!("data path benchmark: {subjects} subjects per center, {threads} threads");

    let t = Instant::now();
    let summaries = synthesize(&SynthOptions {
        out: dir.path().to_path_buf(),
        centers: CENTER_NAMES.iter().map(|s| s.to_string()).collect(),
        subjects,
        seed: 1,
        modality: Modality::Lge,
    })?;
    let synth_s = t.elapsed().as_secs_f64();
    println!(
        "synthesise {} centers × {subjects} subjects: {synth_s:.2} s",
        summaries.len()
    );

    let mut total_slices = 0usize;
    let mut load_s = 0.0;
    let mut sites = Vec::new();
    for s in &summaries {
        let cfg = SiteConfig::load(&s.dir.join("site.toml"))?;
        let t = Instant::now();
        let site = prepare_site(&cfg, true)?;
        let dt = t.elapsed().as_secs_f64();
        let n: usize = site.subjects.iter().map(|s| s.slices.len()).sum();
        println!(
            "  load+preprocess {:<7} {n:>4} slices in {dt:.2} s = {:>7.0} slices/s",
            s.center,
            n as f64 / dt
        );
        total_slices += n;
        load_s += dt;
        sites.push((site, cfg));
    }
    println!(
        "load+preprocess all: {total_slices} slices in {load_s:.2} s = {:.0} slices/s",
        total_slices as f64 / load_s
    );

    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let cfg = AugmentConfig::default();
    let t = Instant::now();
    let mut n = 0;
    for _ in 0..3 {
        for (site, site_cfg) in &sites {
            for subj in &site.subjects {
                let labels = subj
                    .labels
                    .as_ref()
                    .expect("synthetic subjects are labelled");
                for (img, lab) in subj.slices.iter().zip(labels) {
                    let (mut i, mut l) = (img.clone(), lab.clone());
                    augment(
                        &cfg,
                        site_cfg.preprocess.spacing_mm,
                        &mut i,
                        &mut l,
                        &mut rng,
                    );
                    n += 1;
                }
            }
        }
    }
    let aug_s = t.elapsed().as_secs_f64();
    println!(
        "augment (spatial+intensity, p=0.2, 1 thread): {n} slices in {aug_s:.2} s = {:.0} slices/s",
        n as f64 / aug_s
    );
    let per_slice = load_s / total_slices as f64 + aug_s / n as f64;
    println!("load+preprocess+augment: {:.0} slices/s", 1.0 / per_slice);
    Ok(())
}
