//! The simulation's folder: synthetic centers (made once), a federation PKI (made once), and
//! each site's `site.toml` pointed at this run's coordinator.
//!
//! ```text
//! DIR/data/<site>/site.toml   synthetic data in the center's own layout
//! DIR/pki/                    CA, coordinator certificate, sites/<site>/, admins/simulate/
//! DIR/state/                  the coordinator's sled database and model blobs
//! DIR/logs/<site>.log         each agent's log; coordinator.log
//! DIR/results/<job>/          results.md, results.csv, results.json, status.json, plan.toml
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::pki::{self, PkiLayout, Role};

/// The centers `site-agent synth` can make (the paper's Table 1), and `mnms`: a cine-MRI
/// center standing in for the M&Ms dataset the paper pretrained on.
pub const KNOWN_SITES: [&str; 5] = ["emidec", "mscmr", "vh", "stpau", "mnms"];

/// A site named `pool-A-B-…` (A, B: centers) holds the training and validation subjects of
/// those centers in one folder: the centralised baseline federation is compared against,
/// which only a simulation can build.
pub const POOL_PREFIX: &str = "pool-";

/// The centers a site name stands for: itself, or a pool's members.
pub fn members(site: &str) -> Option<Vec<&str>> {
    match site.strip_prefix(POOL_PREFIX) {
        Some(rest) => {
            let parts: Vec<&str> = rest.split('-').collect();
            let ok = parts.len() >= 2
                && parts
                    .iter()
                    .all(|p| KNOWN_SITES.contains(p) && *p != "mnms");
            ok.then_some(parts)
        }
        None => KNOWN_SITES.contains(&site).then(|| vec![site]),
    }
}

/// The admin identity the simulation submits and watches jobs with.
pub const ADMIN: &str = "simulate";

pub struct Workdir {
    pub root: PathBuf,
}

/// In-plane preparation per model preset: the field of view stays 160 mm; the paper model
/// gets the paper's 256 px, the CPU model 96 px so that the default simulation fits in ten
/// minutes on two cores.
fn preprocess_for(model: &str) -> (u32, f64) {
    match model {
        "tiny" => (64, 2.5),
        "paper" => (256, 0.625),
        _ => (96, 160.0 / 96.0),
    }
}

impl Workdir {
    pub fn new(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        for d in ["logs", "results"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        Ok(Self { root })
    }

    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn site_toml(&self, site: &str) -> PathBuf {
        self.data().join(site).join("site.toml")
    }
    pub fn pki(&self) -> PkiLayout {
        PkiLayout::new(self.root.join("pki"))
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }
    pub fn results(&self, job: &str) -> PathBuf {
        self.root.join("results").join(job)
    }

    /// Synthesises every site of `sites` that has no data yet; returns the ones it made.
    pub fn ensure_data(
        &self,
        site_agent: &Path,
        sites: &[String],
        subjects: usize,
    ) -> Result<Vec<String>> {
        let mut centers: Vec<String> = Vec::new();
        for s in sites {
            let Some(m) = members(s) else {
                bail!(
                    "site {s:?}: the simulation can synthesise only {} and pools of the LGE \
                     centers such as pool-emidec-mscmr (the plan names it)",
                    KNOWN_SITES.join(", ")
                );
            };
            for c in m {
                if !centers.iter().any(|x| x == c) {
                    centers.push(c.to_string());
                }
            }
        }
        let missing: Vec<String> = centers
            .iter()
            .filter(|s| !self.site_toml(s).exists())
            .cloned()
            .collect();
        let lge: Vec<&str> = missing
            .iter()
            .map(String::as_str)
            .filter(|s| *s != "mnms")
            .collect();
        if !lge.is_empty() {
            self.synth(site_agent, &self.data(), &lge.join(","), "lge", subjects)?;
        }
        if missing.iter().any(|s| s == "mnms") {
            // Cine images of a Philips-like center, renamed: M&Ms is multi-vendor cine MRI.
            let tmp = self.root.join("data-cine");
            let _ = std::fs::remove_dir_all(&tmp);
            self.synth(site_agent, &tmp, "mscmr", "cine", subjects)?;
            std::fs::rename(tmp.join("mscmr"), self.data().join("mnms"))
                .context("moving the cine center into place")?;
            let _ = std::fs::remove_dir_all(&tmp);
        }
        let mut made = missing;
        for s in sites.iter().filter(|s| s.starts_with(POOL_PREFIX)) {
            if !self.site_toml(s).exists() {
                self.pool(site_agent, s)?;
                made.push(s.clone());
            }
        }
        Ok(made)
    }

    /// Builds `pool-…` from its centers' own splits (asked of `site-agent inspect`): links to
    /// every training and validation subject, never a test subject, in the generic layout,
    /// with one label map covering every center's label values.
    fn pool(&self, site_agent: &Path, site: &str) -> Result<()> {
        let dir = self.data().join(site);
        let tmp = self.data().join(format!(".{site}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        for d in ["images", "labels"] {
            std::fs::create_dir_all(tmp.join(d))?;
        }
        let (mut background, mut blood_pool, mut myocardium) = (vec![], vec![], vec![]);
        let (mut n_train, mut n_val) = (0usize, 0usize);
        for center in members(site).unwrap_or_default() {
            let out = Command::new(site_agent)
                .args(["inspect", "--json", "--config"])
                .arg(self.site_toml(center))
                .output()
                .with_context(|| format!("running {}", site_agent.display()))?;
            let report: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("site-agent inspect of {center}"))?;
            let ids = |part: &str| -> Vec<String> {
                report["split"][part]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (train, val) = (ids("train"), ids("val"));
            if train.is_empty() {
                bail!("pooling {center} into {site}: inspect found no training subjects");
            }
            n_train += train.len();
            n_val += val.len();
            for subject in report["subjects"].as_array().into_iter().flatten() {
                let id = subject["id"].as_str().unwrap_or("");
                if !train.iter().chain(&val).any(|x| x == id) {
                    continue;
                }
                for (key, folder) in [("image", "images"), ("label", "labels")] {
                    let Some(src) = subject[key].as_str() else {
                        bail!("pooling {center}: subject {id} has no {key}");
                    };
                    let ext = if src.ends_with(".nii.gz") {
                        ".nii.gz"
                    } else {
                        ".nii"
                    };
                    let src = self.data().join(center).join(src);
                    let link = tmp.join(folder).join(format!("{center}_{id}{ext}"));
                    std::os::unix::fs::symlink(&src, &link)
                        .with_context(|| format!("linking {}", link.display()))?;
                }
            }
            let map = &report["label_map"];
            for (key, into) in [
                ("background", &mut background),
                ("blood_pool", &mut blood_pool),
                ("myocardium", &mut myocardium),
            ] {
                for v in map[key].as_array().into_iter().flatten() {
                    if let Some(v) = v.as_i64()
                        && !into.contains(&v)
                    {
                        into.push(v);
                    }
                }
            }
        }
        let list = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let config = format!(
            "# The centralised baseline: {members}'s training and validation subjects in one\n\
             # place (links), as only a simulation can have them. Never their test subjects.\n\
             [site]\nname = \"{site}\"\n\n[data]\nroot = \".\"\nlayout = \"generic\"\n\n\
             [labels]\nbackground = [{bg}]\nblood_pool = [{bp}]\nmyocardium = [{myo}]\n\n\
             [split]\nseed = 42\ntest = 0\nval = {n_val}\n\n[augment]\nmode = \"spatial+intensity\"\n\
             probability = 0.2\n",
            members = members(site).unwrap_or_default().join(", "),
            bg = list(&background),
            bp = list(&blood_pool),
            myo = list(&myocardium),
        );
        std::fs::write(tmp.join("site.toml"), config)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).with_context(|| format!("creating {}", dir.display()))?;
        tracing::info!(site, n_train, n_val, "pooled baseline site built");
        Ok(())
    }

    fn synth(
        &self,
        site_agent: &Path,
        out: &Path,
        centers: &str,
        modality: &str,
        subjects: usize,
    ) -> Result<()> {
        let log = std::fs::File::create(self.log("synth"))?;
        let status = Command::new(site_agent)
            .args(["synth", "--out"])
            .arg(out)
            .args(["--centers", centers, "--modality", modality])
            .args(["--subjects", &subjects.to_string()])
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("running {}", site_agent.display()))?;
        if !status.success() {
            bail!(
                "site-agent synth failed ({status}); see {}",
                self.log("synth").display()
            );
        }
        Ok(())
    }

    /// Creates the CA (once) and any missing site or admin bundle.
    pub fn ensure_pki(&self, sites: &[String]) -> Result<()> {
        let layout = self.pki();
        if !layout.ca_cert().exists() {
            pki::init(
                &layout,
                "fedseg-simulation",
                &["localhost".into(), "127.0.0.1".into()],
            )?;
        }
        let now = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
        let wanted = sites
            .iter()
            .map(|s| (Role::Site, s.as_str()))
            .chain([(Role::Admin, ADMIN)]);
        for (role, name) in wanted {
            if !layout
                .bundle(role, name)
                .join(format!("{name}.crt"))
                .exists()
            {
                pki::issue(&layout, role, name, now, 365)?;
            }
        }
        Ok(())
    }

    /// Points `site`'s config at this run's coordinator and sets the image size the model
    /// expects; the rest of the hospital's config stays as synthesised.
    pub fn configure_site(&self, site: &str, endpoint: &str, model: &str) -> Result<PathBuf> {
        let path = self.site_toml(site);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut doc: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let (size, spacing) = preprocess_for(model);
        let mut pre = toml::Table::new();
        pre.insert("size".into(), toml::Value::Integer(i64::from(size)));
        pre.insert("spacing_mm".into(), toml::Value::Float(spacing));
        doc.insert("preprocess".into(), toml::Value::Table(pre));
        if let Some(toml::Value::Table(s)) = doc.get_mut("site") {
            s.insert("name".into(), toml::Value::String(site.to_string()));
        }
        let bundle = self.pki().bundle(Role::Site, site);
        let mut fed = toml::Table::new();
        fed.insert("coordinator".into(), toml::Value::String(endpoint.into()));
        fed.insert(
            "server_name".into(),
            toml::Value::String("localhost".into()),
        );
        for (key, file) in [
            ("ca", "ca.crt".to_string()),
            ("cert", format!("{site}.crt")),
            ("key", format!("{site}.key")),
        ] {
            let p = bundle.join(file);
            fed.insert(key.into(), toml::Value::String(p.display().to_string()));
        }
        doc.insert("federation".into(), toml::Value::Table(fed));
        std::fs::write(&path, toml::to_string(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn admin_endpoint(&self, endpoint: &str) -> fedseg_proto::client::FederationEndpoint {
        let bundle = self.pki().bundle(Role::Admin, ADMIN);
        fedseg_proto::client::FederationEndpoint {
            coordinator: endpoint.to_string(),
            server_name: Some("localhost".into()),
            ca: bundle.join("ca.crt"),
            cert: bundle.join(format!("{ADMIN}.crt")),
            key: bundle.join(format!("{ADMIN}.key")),
        }
    }
}
