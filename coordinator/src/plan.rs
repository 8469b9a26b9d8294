//! Job plans: a TOML list of stages (train, fedavg, finetune, stats, evaluate) that later
//! stages build on by name. Parsed strictly, with every default filled in, so the stored
//! canonical form (and its hash) says exactly what the job will do.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Train,
    Fedavg,
    Finetune,
    Stats,
    Evaluate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    #[default]
    Fedavg,
    Fedprox,
    Fedadam,
    Fedyogi,
}

/// Settings every stage inherits unless it sets its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default = "d_epochs")]
    pub epochs: u32,
    #[serde(default = "d_batch")]
    pub batch_size: u32,
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    /// "" = each site's own `[augment]` config.
    #[serde(default)]
    pub augment: String,
    #[serde(default = "d_timeout")]
    pub round_timeout_s: f64,
    #[serde(default = "d_grace")]
    pub grace_s: f64,
    #[serde(default)]
    pub retries: u32,
}

fn d_epochs() -> u32 {
    2
}
fn d_batch() -> u32 {
    8
}
fn d_lr() -> f64 {
    1e-3
}
fn d_timeout() -> f64 {
    24.0 * 3600.0
}
fn d_grace() -> f64 {
    60.0
}

impl Default for Defaults {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("defaults parse"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    pub kind: StageKind,
    pub sites: Vec<String>,
    /// A stage whose output model this one starts from (train, fedavg, finetune).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<String>,
    /// Federated rounds (fedavg).
    #[serde(default = "one")]
    pub rounds: u32,
    #[serde(default)]
    pub strategy: StrategyKind,
    /// FedProx proximal weight.
    #[serde(default = "d_mu")]
    pub mu: f64,
    /// FedAdam/FedYogi server learning rate, betas and tau (Reddi et al., 2021).
    #[serde(default = "d_server_lr")]
    pub server_lr: f64,
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    #[serde(default = "d_tau")]
    pub tau: f64,
    /// Parameters each site keeps to itself (FedBN), e.g. "norm".
    #[serde(default)]
    pub local: String,
    /// Sites whose update a round needs; default: all of `sites`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sites: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_timeout_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Trainable block set (finetune; train defaults to "all").
    #[serde(default = "d_all")]
    pub trainable: String,
    /// Fraction of the site's training subjects to use.
    #[serde(default = "d_fraction")]
    pub train_fraction: f64,
    /// Models to evaluate: names of earlier model-producing stages. A name with `{site}` is
    /// a per-site template ("ft-{site}": each site evaluates the model fine-tuned for it);
    /// sites without such a stage skip it.
    #[serde(default)]
    pub models: Vec<String>,
    /// Histogram matching at evaluation: "STATS_STAGE" or "STATS_STAGE:SITE".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hist_ref: Option<String>,
    /// Seed offset for this stage's training (the job seed is added).
    #[serde(default)]
    pub seed: u64,
}

/// Stands for the evaluating site in an evaluate stage's `models`.
pub const SITE_TEMPLATE: &str = "{site}";

fn one() -> u32 {
    1
}
fn d_mu() -> f64 {
    0.01
}
fn d_server_lr() -> f64 {
    0.1
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.99
}
fn d_tau() -> f64 {
    1e-3
}
fn d_all() -> String {
    "all".into()
}
fn d_fraction() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// U-Net preset every site builds: tiny | cpu | paper.
    #[serde(default = "d_model")]
    pub model: String,
    /// How many times `coordinator simulate` runs the job (seeds seed, seed+1, …) so that
    /// `coordinator report` can give mean ± SD over runs. A coordinator runs one job per
    /// submission whatever this says.
    #[serde(default = "one")]
    pub repeats: u32,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(rename = "stage")]
    pub stages: Vec<Stage>,
    /// Plots `coordinator report` draws from this plan's results.
    #[serde(default, rename = "figure", skip_serializing_if = "Vec::is_empty")]
    pub figures: Vec<Figure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FigureKind {
    /// LV Dice per test center, one bar per model (the paper's Figs. 6, 7, 9, 11).
    Bars,
    /// LV Dice against a swept setting, one line per test center (Figs. 8, 10).
    Sweep,
    /// Mean validation Dice of the sites per round of federated stages.
    Rounds,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Figure {
    pub name: String,
    pub kind: FigureKind,
    #[serde(default)]
    pub title: String,
    /// Evaluated models as the results name them ("model" or "stage/model"; a `{site}`
    /// template stays one entry); for `rounds`, fedavg stages.
    pub models: Vec<String>,
    /// Sweep: the axis label and one x value per model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xs: Vec<f64>,
}

fn d_seed() -> u64 {
    1
}
fn d_model() -> String {
    "cpu".into()
}

impl Stage {
    pub fn produces_model(&self) -> bool {
        matches!(
            self.kind,
            StageKind::Train | StageKind::Fedavg | StageKind::Finetune
        )
    }
    pub fn min_sites(&self) -> usize {
        self.min_sites.unwrap_or(self.sites.len())
    }
    pub fn rounds(&self) -> u32 {
        if self.kind == StageKind::Fedavg {
            self.rounds
        } else {
            1
        }
    }
    /// The models `site` evaluates, as (entry of `models`, stage name): templates resolved
    /// to the site, entries naming no stage of `stages` left out.
    pub fn models_at<'a>(&'a self, site: &str, stages: &[Stage]) -> Vec<(&'a str, String)> {
        self.models
            .iter()
            .map(|m| (m.as_str(), m.replace(SITE_TEMPLATE, site)))
            .filter(|(_, name)| stages.iter().any(|s| &s.name == name))
            .collect()
    }
    /// (stats stage, site) of `hist_ref`.
    pub fn hist_ref_parts(&self) -> Option<(&str, Option<&str>)> {
        let r = self.hist_ref.as_deref()?;
        Some(match r.split_once(':') {
            Some((stage, site)) => (stage, Some(site)),
            None => (r, None),
        })
    }
}

impl Plan {
    pub fn parse(text: &str) -> Result<Plan, String> {
        let mut plan: Plan = toml::from_str(text).map_err(|e| e.to_string())?;
        plan.fill_defaults();
        plan.validate()?;
        Ok(plan)
    }

    fn fill_defaults(&mut self) {
        let d = self.defaults.clone();
        for s in &mut self.stages {
            s.epochs.get_or_insert(d.epochs);
            s.batch_size.get_or_insert(d.batch_size);
            s.learning_rate.get_or_insert(d.learning_rate);
            s.augment.get_or_insert(d.augment.clone());
            s.round_timeout_s.get_or_insert(d.round_timeout_s);
            s.grace_s.get_or_insert(d.grace_s);
            s.retries.get_or_insert(d.retries);
            let n = s.sites.len();
            s.min_sites.get_or_insert(n);
        }
    }

    /// SHA-256 of the canonical (defaults-filled) plan: what the job is bound to.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(canonical))
    }

    pub fn stage(&self, name: &str) -> Option<(usize, &Stage)> {
        self.stages.iter().enumerate().find(|(_, s)| s.name == name)
    }

    fn validate_figures(&self) -> Result<(), String> {
        for f in &self.figures {
            let at = format!("figure {:?}", f.name);
            if f.models.is_empty() {
                return Err(format!("{at}: no models"));
            }
            for m in &f.models {
                let known = match f.kind {
                    FigureKind::Rounds => self
                        .stages
                        .iter()
                        .any(|s| &s.name == m && s.kind == StageKind::Fedavg),
                    FigureKind::Bars | FigureKind::Sweep => {
                        let (stage, model) = match m.split_once('/') {
                            Some((st, mo)) => (Some(st), mo),
                            None => (None, m.as_str()),
                        };
                        self.stages.iter().any(|s| {
                            s.kind == StageKind::Evaluate
                                && stage.is_none_or(|st| st == s.name)
                                && s.models.iter().any(|x| x == model)
                        })
                    }
                };
                if !known {
                    return Err(format!(
                        "{at}: {m:?} is not {}",
                        if f.kind == FigureKind::Rounds {
                            "a fedavg stage"
                        } else {
                            "a model of an evaluate stage"
                        }
                    ));
                }
            }
            if f.kind == FigureKind::Sweep && f.xs.len() != f.models.len() {
                return Err(format!("{at}: a sweep needs one x value per model"));
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        if !["tiny", "cpu", "paper"].contains(&self.model.as_str()) {
            return Err(format!("model {:?}: use tiny, cpu or paper", self.model));
        }
        if self.stages.is_empty() {
            return Err("the plan has no [[stage]]".into());
        }
        if self.repeats == 0 {
            return Err("repeats must be at least 1".into());
        }
        self.validate_figures()?;
        let mut seen = BTreeSet::new();
        for (i, s) in self.stages.iter().enumerate() {
            let at = format!("stage {} ({:?})", i + 1, s.name);
            if s.name.is_empty() || s.name.contains(['/', ':', ' ']) {
                return Err(format!(
                    "{at}: name must be non-empty without '/', ':' or spaces"
                ));
            }
            if !seen.insert(s.name.as_str()) {
                return Err(format!("{at}: a stage of that name comes earlier"));
            }
            if s.sites.is_empty() {
                return Err(format!("{at}: no sites"));
            }
            let distinct: BTreeSet<_> = s.sites.iter().collect();
            if distinct.len() != s.sites.len() {
                return Err(format!("{at}: a site is listed twice"));
            }
            let earlier = |name: &str| self.stages[..i].iter().find(|e| e.name == name);
            if let Some(from) = &s.from {
                match earlier(from) {
                    Some(e) if e.produces_model() => {}
                    Some(_) => return Err(format!("{at}: from {from:?} produces no model")),
                    None => return Err(format!("{at}: from {from:?} is not an earlier stage")),
                }
                if !s.produces_model() {
                    return Err(format!(
                        "{at}: `from` only applies to train, fedavg, finetune"
                    ));
                }
            }
            match s.kind {
                StageKind::Train | StageKind::Finetune if s.sites.len() != 1 => {
                    return Err(format!(
                        "{at}: {:?} runs at exactly one site; make one stage per site",
                        s.kind
                    ));
                }
                StageKind::Finetune if s.from.is_none() => {
                    return Err(format!(
                        "{at}: finetune needs `from`, the model to start from"
                    ));
                }
                StageKind::Fedavg if s.rounds == 0 => {
                    return Err(format!("{at}: rounds must be at least 1"));
                }
                StageKind::Evaluate => {
                    if s.models.is_empty() {
                        return Err(format!("{at}: evaluate needs `models`"));
                    }
                    for m in &s.models {
                        let candidates: Vec<String> = if m.contains(SITE_TEMPLATE) {
                            s.sites
                                .iter()
                                .map(|x| m.replace(SITE_TEMPLATE, x))
                                .collect()
                        } else {
                            vec![m.clone()]
                        };
                        let found: Vec<_> = candidates.iter().filter_map(|c| earlier(c)).collect();
                        if found.is_empty() || found.iter().any(|e| !e.produces_model()) {
                            return Err(format!(
                                "{at}: model {m:?} is not an earlier train/fedavg/finetune stage{}",
                                if m.contains(SITE_TEMPLATE) {
                                    " for any of its sites"
                                } else {
                                    ""
                                }
                            ));
                        }
                    }
                }
                _ => {}
            }
            if let Some((stats, site)) = s.hist_ref_parts() {
                match earlier(stats) {
                    Some(e) if e.kind == StageKind::Stats => {
                        if let Some(site) = site
                            && !e.sites.iter().any(|x| x == site)
                        {
                            return Err(format!(
                                "{at}: hist_ref site {site:?} is not in stage {stats:?}"
                            ));
                        }
                    }
                    _ => {
                        return Err(format!(
                            "{at}: hist_ref {stats:?} is not an earlier stats stage"
                        ));
                    }
                }
            }
            let min = s.min_sites();
            if min == 0 || min > s.sites.len() {
                return Err(format!(
                    "{at}: min_sites {min} must be 1..={}",
                    s.sites.len()
                ));
            }
            if !(s.train_fraction > 0.0 && s.train_fraction <= 1.0) {
                return Err(format!("{at}: train_fraction must be in (0, 1]"));
            }
            if s.epochs == Some(0) || s.batch_size == Some(0) {
                return Err(format!("{at}: epochs and batch_size must be positive"));
            }
            if !(s.mu >= 0.0 && s.server_lr > 0.0 && s.tau > 0.0) {
                return Err(format!(
                    "{at}: mu >= 0, server_lr > 0 and tau > 0 are required"
                ));
            }
            if !(0.0..1.0).contains(&s.beta1) || !(0.0..1.0).contains(&s.beta2) {
                return Err(format!("{at}: beta1 and beta2 must be in [0, 1)"));
            }
            if let Some(a) = &s.augment
                && !["", "none", "spatial", "spatial+intensity"].contains(&a.as_str())
            {
                return Err(format!(
                    "{at}: augment {a:?}: use none, spatial or spatial+intensity"
                ));
            }
            if s.round_timeout_s.is_some_and(|t| t.is_nan() || t <= 0.0) {
                return Err(format!("{at}: round_timeout_s must be positive"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name = "t"
model = "tiny"
[[stage]]
name = "a"
kind = "train"
sites = ["x"]
[[stage]]
name = "b"
kind = "evaluate"
sites = ["x", "y"]
models = ["a"]
"#;

    #[test]
    fn defaults_fill_in_and_the_hash_tracks_meaning() {
        let p = Plan::parse(OK).expect("parse");
        assert_eq!(p.stages[0].epochs, Some(2));
        assert_eq!(p.stages[1].min_sites, Some(2));
        // Same meaning, different text: same hash. Different meaning: different hash.
        let spaced = OK.replace("model = \"tiny\"", "model   =   \"tiny\"\n# comment");
        assert_eq!(Plan::parse(&spaced).expect("parse").hash(), p.hash());
        let other = OK.replace(
            "sites = [\"x\"]\n[[stage]]",
            "sites = [\"x\"]\nepochs = 3\n[[stage]]",
        );
        assert_ne!(Plan::parse(&other).expect("parse").hash(), p.hash());
    }

    #[test]
    fn a_site_template_resolves_per_site() {
        let text = OK
            .replace("name = \"a\"", "name = \"ft-y\"")
            .replace("models = [\"a\"]", "models = [\"ft-{site}\"]");
        let p = Plan::parse(&text).expect("parse");
        let eval = &p.stages[1];
        assert!(eval.models_at("x", &p.stages).is_empty());
        assert_eq!(
            eval.models_at("y", &p.stages),
            vec![("ft-{site}", "ft-y".to_string())]
        );
    }

    #[test]
    fn bad_plans_say_what_is_wrong() {
        let cases = [
            (
                OK.replace("models = [\"a\"]", "models = [\"zzz\"]"),
                "model \"zzz\"",
            ),
            (
                OK.replace(
                    "kind = \"train\"\nsites = [\"x\"]",
                    "kind = \"train\"\nsites = [\"x\", \"y\"]",
                ),
                "exactly one site",
            ),
            (OK.replace("name = \"b\"", "name = \"a\""), "comes earlier"),
            (
                OK.replace("model = \"tiny\"", "model = \"huge\""),
                "tiny, cpu or paper",
            ),
            (
                OK.replace("kind = \"evaluate\"", "kind = \"evaluate\"\nmin_sites = 3"),
                "min_sites 3",
            ),
            (
                OK.replace("kind = \"train\"", "kind = \"train\"\nbogus = 1"),
                "bogus",
            ),
            (
                OK.replace("kind = \"train\"", "kind = \"finetune\""),
                "needs `from`",
            ),
            (
                OK.replace("models = [\"a\"]", "models = [\"ft-{site}\"]"),
                "for any of its sites",
            ),
        ];
        for (text, expect) in cases {
            let e = Plan::parse(&text).expect_err(expect);
            assert!(e.contains(expect), "{expect}: {e}");
        }
    }
}

#[cfg(test)]
mod shipped_plans {
    use super::*;

    /// Every plan in plans/ parses and names only sites the simulation can synthesise.
    #[test]
    fn every_example_plan_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("plans/") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let plan = Plan::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for s in plan.stages.iter().flat_map(|s| &s.sites) {
                assert!(
                    crate::simulate::members(s).is_some(),
                    "{}: site {s}",
                    path.display()
                );
            }
            n += 1;
        }
        assert!(n >= 6, "found {n} plans");
    }
}
