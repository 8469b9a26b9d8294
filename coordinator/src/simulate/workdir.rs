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
        for s in sites {
            if !KNOWN_SITES.contains(&s.as_str()) {
                bail!(
                    "site {s:?}: the simulation can synthesise only {} (the plan names it)",
                    KNOWN_SITES.join(", ")
                );
            }
        }
        let missing: Vec<String> = sites
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
        Ok(missing)
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
