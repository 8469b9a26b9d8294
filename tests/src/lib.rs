//! A federation on loopback for tests and benchmarks: synthetic sites, a PKI, the coordinator
//! binary and one site-agent binary per site as child processes, and helpers to drive the
//! admin API or to act as a (possibly misbehaving) site.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fedseg_coordinator::pki::{self, PkiLayout, Role};
use fedseg_coordinator::report::{JobStatus, Results};
use fedseg_proto::client::FederationEndpoint;
use fedseg_site::data::SiteConfig;
use fedseg_site::synth::{Modality, SynthOptions, synthesize};

/// The two binaries. `cargo test --workspace` builds both (each package has integration
/// tests); run alone, this builds them with the same workspace-wide feature set, so the
/// nested build reuses what is compiled instead of rebuilding burn with other features.
pub fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        // Benchmarks measure release builds: FEDSEG_BIN_DIR=target/release.
        let dir = std::env::var_os("FEDSEG_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("debug"));
        let bins = (dir.join("coordinator"), dir.join("site-agent"));
        // A binary older than its code would test yesterday's program: rebuild.
        let stale = |bin: &Path, crate_dir: &str| {
            let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
            built.is_none_or(|t| newest_source(&[crate_dir, "proto/src", "proto/proto"]) > Some(t))
        };
        let stale = stale(&bins.0, "coordinator/src") || stale(&bins.1, "site-agent/src");
        if stale && std::env::var_os("FEDSEG_BIN_DIR").is_none() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["test", "--workspace", "--no-run", "--quiet"])
                .status()
                .expect("running cargo");
            assert!(status.success(), "building the binaries failed");
        }
        bins
    })
}

/// When a file under these folders (relative to the workspace) last changed.
fn newest_source(dirs: &[&str]) -> Option<std::time::SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, newest);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                *newest = (*newest).max(Some(t));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest = None;
    for dir in dirs {
        walk(&root.join(dir), &mut newest);
    }
    newest
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Kills the child when dropped, so a failing test leaves no processes behind.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Fed {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub sites: Vec<String>,
    pub coordinator: Option<Proc>,
    pub agents: Vec<Proc>,
    pub extra_config: String,
    /// Environment given to the coordinator and agent processes (e.g. the log format).
    pub env: Vec<(String, String)>,
}

impl Fed {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn pki(&self) -> PkiLayout {
        PkiLayout::new(self.root().join("pki"))
    }
    pub fn admin_toml(&self) -> PathBuf {
        self.root().join("pki/admins/ops/admin.toml")
    }
    pub fn site_config(&self, site: &str) -> PathBuf {
        self.root().join("data").join(site).join("site.toml")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }

    /// Synthesises `sites` (center names) with `subjects` each, prepared small (64 px, 3 mm)
    /// for the tiny U-Net, and issues the PKI. Nothing runs yet.
    pub fn new(sites: &[&str], subjects: usize, extra_config: &str) -> Fed {
        let fed = Fed::bare(sites, extra_config);
        synthesize(&SynthOptions {
            out: fed.root().join("data"),
            centers: sites.iter().map(|s| s.to_string()).collect(),
            subjects,
            seed: 3,
            modality: Modality::Lge,
        })
        .expect("synth");
        let endpoint = format!("https://localhost:{}", fed.port);
        let layout = fed.pki();
        for site in sites {
            let b = layout.bundle(Role::Site, site);
            let path = fed.site_config(site);
            let mut cfg = SiteConfig::load(&path).expect("site.toml");
            cfg.preprocess.size = 64;
            cfg.preprocess.spacing_mm = 3.0;
            cfg.train.batch_size = 4;
            let mut text = cfg.to_toml();
            text.push_str(&format!(
                "\n[federation]\ncoordinator = \"{endpoint}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nwork_dir = \"work\"\n",
                b.join("ca.crt").display(),
                b.join(format!("{site}.crt")).display(),
                b.join(format!("{site}.key")).display()
            ));
            std::fs::write(&path, text).expect("site.toml");
        }
        fed
    }

    /// A PKI (CA, coordinator, admin "ops", one certificate per site) and no data: for tests
    /// and benchmarks whose sites are driven by the test itself.
    pub fn bare(sites: &[&str], extra_config: &str) -> Fed {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let layout = PkiLayout::new(dir.path().join("pki"));
        pki::init(&layout, "test", &["localhost".into(), "127.0.0.1".into()]).expect("pki init");
        let from = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
        let endpoint = format!("https://localhost:{port}");
        let admin = pki::issue(&layout, Role::Admin, "ops", from, 30).expect("admin cert");
        std::fs::write(
            admin.dir.join("admin.toml"),
            format!("coordinator = \"{endpoint}\"\nca = \"ca.crt\"\ncert = \"ops.crt\"\nkey = \"ops.key\"\n"),
        )
        .expect("admin.toml");
        for site in sites {
            pki::issue(&layout, Role::Site, site, from, 30).expect("site cert");
        }
        Fed {
            dir,
            port,
            sites: sites.iter().map(|s| s.to_string()).collect(),
            coordinator: None,
            agents: Vec::new(),
            extra_config: extra_config.to_string(),
            env: Vec::new(),
        }
    }

    /// A free port other than the gRPC port and `taken`.
    pub fn other_free_port(&self, taken: &[u16]) -> u16 {
        loop {
            let p = free_port();
            if p != self.port && !taken.contains(&p) {
                return p;
            }
        }
    }

    /// Turns on the coordinator's plain-HTTP listener (status page, /metrics, /healthz) on a
    /// free port, with 1 s heartbeats so live state moves quickly; returns the port.
    pub fn enable_http(&mut self) -> u16 {
        let port = self.other_free_port(&[]);
        self.extra_config.push_str(&format!(
            "\nhttp_listen = \"127.0.0.1:{port}\"\nheartbeat_s = 1\n"
        ));
        port
    }

    pub fn write_coordinator_config(&self) -> PathBuf {
        let path = self.root().join("coordinator.toml");
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:{}\"\nstate_dir = \"state\"\npki_dir = \"pki\"\n{}\n",
                self.port, self.extra_config
            ),
        )
        .expect("coordinator.toml");
        path
    }

    /// Starts the coordinator and waits for its "listening on" line.
    pub fn start_coordinator(&mut self) {
        let config = self.write_coordinator_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join("coordinator.log"))
            .expect("log");
        let mut child = Command::new(&binaries().0)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start coordinator");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        assert!(
            line.starts_with("listening on"),
            "coordinator said {line:?}; log: {}",
            self.log("coordinator")
        );
        self.coordinator = Some(Proc {
            child,
            name: "coordinator".into(),
        });
    }

    pub fn start_agent(&mut self, site: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join(format!("{site}.log")))
            .expect("log");
        let child = Command::new(&binaries().1)
            .args(["run", "--config"])
            .arg(self.site_config(site))
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        self.agents.push(Proc {
            child,
            name: site.to_string(),
        });
    }

    pub fn start_all(&mut self) {
        self.start_coordinator();
        for s in self.sites.clone() {
            self.start_agent(&s);
        }
    }

    pub fn kill_agent(&mut self, site: &str) {
        if let Some(a) = self.agents.iter_mut().find(|a| a.name == site) {
            a.kill();
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn endpoint_for(&self, role: Role, name: &str) -> FederationEndpoint {
        let dir = self.pki().bundle(role, name);
        FederationEndpoint {
            coordinator: format!("https://localhost:{}", self.port),
            server_name: None,
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// Runs `coordinator` with the admin bundle; returns stdout, panics with stderr on failure.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(&binaries().0)
            .arg("--admin")
            .arg(self.admin_toml())
            .args(args)
            .output()
            .expect("run coordinator CLI");
        assert!(
            out.status.success(),
            "coordinator {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn submit(&self, plan: &str) -> String {
        let path = self.root().join(format!("plan-{}.toml", free_port()));
        std::fs::write(&path, plan).expect("plan");
        self.admin(&["job", "submit", path.to_str().unwrap_or_default()])
            .trim()
            .to_string()
    }

    pub fn status(&self, job: &str) -> JobStatus {
        serde_json::from_str(&self.admin(&["job", "status", job, "--json"])).expect("status JSON")
    }

    pub fn results(&self, job: &str) -> Results {
        serde_json::from_str(&self.admin(&["job", "results", job, "--format", "json"]))
            .expect("results JSON")
    }

    /// Polls until the job leaves "running" or `timeout` passes; returns the last status.
    pub fn wait_job(&self, job: &str, timeout: Duration) -> JobStatus {
        let start = Instant::now();
        loop {
            let s = self.status(job);
            if format!("{:?}", s.job.state) != "Running" || start.elapsed() > timeout {
                return s;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Polls until `pred` holds on the job status.
    pub fn wait_until(
        &self,
        job: &str,
        timeout: Duration,
        pred: impl Fn(&JobStatus) -> bool,
    ) -> JobStatus {
        let start = Instant::now();
        loop {
            let s = self.status(job);
            if pred(&s) || start.elapsed() > timeout {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn logs(&self) -> String {
        let mut s = format!("--- coordinator\n{}", tail(&self.log("coordinator")));
        for site in &self.sites {
            s.push_str(&format!("--- {site}\n{}", tail(&self.log(site))));
        }
        s
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n") + "\n"
}

/// A site driven by the test instead of an agent: it can send anything, well-formed or not.
pub struct FakeSite {
    pub client: fedseg_proto::pb::site_client::SiteClient<tonic::transport::Channel>,
}

/// How to bend an upload.
#[derive(Default, Clone)]
pub struct UploadFaults {
    /// Announce this size instead of the real one.
    pub announce: Option<u64>,
    /// Send this digest instead of the real one.
    pub digest: Option<String>,
    /// Append extra bytes after the file.
    pub extra: usize,
    /// Stop after this many bytes and send no trailer.
    pub stop_after: Option<usize>,
}

impl FakeSite {
    pub async fn connect(ep: &FederationEndpoint) -> FakeSite {
        let ch = ep.channel().await.expect("channel");
        FakeSite {
            client: fedseg_proto::pb::site_client::SiteClient::new(ch)
                .max_decoding_message_size(fedseg_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(fedseg_proto::MAX_MESSAGE_BYTES),
        }
    }

    /// Joins and waits for the first task.
    pub async fn next_task(&mut self) -> fedseg_proto::pb::Task {
        use fedseg_proto::pb;
        self.client
            .join(pb::JoinRequest::default())
            .await
            .expect("join");
        let mut stream = self
            .client
            .tasks(pb::TasksRequest {})
            .await
            .expect("tasks")
            .into_inner();
        tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a task within 30 s")
            .expect("stream")
            .expect("a task")
    }

    pub async fn upload(
        &mut self,
        task_id: &str,
        bytes: impl Into<std::sync::Arc<Vec<u8>>>,
        samples: u64,
        faults: UploadFaults,
    ) -> Result<String, tonic::Status> {
        use fedseg_proto::pb::{self, upload_part::Part};
        let bytes: std::sync::Arc<Vec<u8>> = bytes.into();
        let digest = faults
            .digest
            .clone()
            .unwrap_or_else(|| fedseg_proto::transfer::digest_hex(bytes.as_slice()));
        let header = pb::UploadHeader {
            task_id: task_id.to_string(),
            size: faults.announce.unwrap_or(bytes.len() as u64),
            sample_count: samples,
            ..Default::default()
        };
        // The body is the bytes, then `extra` zeros, cut at `stop_after`; chunks are made as
        // they are sent, as an agent reads its file, so a large model is not held twice.
        let total = bytes.len() + faults.extra;
        let body = faults.stop_after.unwrap_or(total).min(total);
        let chunk = fedseg_proto::CHUNK_BYTES;
        let chunks = (0..body.div_ceil(chunk)).map(move |i| {
            let (from, to) = (i * chunk, ((i + 1) * chunk).min(body));
            let mut c = bytes[from.min(bytes.len())..to.min(bytes.len())].to_vec();
            c.resize(to - from, 0);
            pb::UploadPart {
                part: Some(Part::Chunk(c.into())),
            }
        });
        let trailer = faults.stop_after.is_none().then_some(pb::UploadPart {
            part: Some(Part::Trailer(pb::UploadTrailer { digest })),
        });
        let body = chunks.chain(trailer);
        fedseg_proto::upload::upload_update(&mut self.client, header, tokio_stream::iter(body))
            .await
            .map(|r| r.digest)
    }
}

/// A safetensors file's bytes.
pub fn safetensors_bytes(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.safetensors");
    let named: Vec<fedseg_proto::safetensors::NamedTensor> = tensors
        .iter()
        .map(|(n, s, d)| fedseg_proto::safetensors::NamedTensor {
            name: n.to_string(),
            shape: s.clone(),
            data: d.clone(),
        })
        .collect();
    fedseg_proto::safetensors::write_safetensors(&path, &named, &Default::default())
        .expect("write");
    std::fs::read(&path).expect("read")
}
