//! Every file in deploy/ checked where no Docker engine or cluster runs: configs parse with
//! the code's own types, the compose topology is the simulation's (a coordinator and
//! synthetic centers that point at it), manifests are YAML of the expected kinds, and the
//! certificate script issues real bundles.

use std::path::{Path, PathBuf};
use std::process::Command;

use fedseg_coordinator::config::CoordinatorConfig;
use fedseg_coordinator::simulate::KNOWN_SITES;
use fedseg_site::data::SiteConfig;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(rel: &str) -> String {
    let p = deploy().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn yaml(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn site_config(text: &str, what: &str) -> SiteConfig {
    let cfg: SiteConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    cfg.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
    cfg
}

fn coordinator_config(text: &str, what: &str) -> CoordinatorConfig {
    let cfg: CoordinatorConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    cfg.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
    cfg
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_runs_the_simulation_topology() {
    let docs = yaml("compose/docker-compose.yml");
    let services = &docs[0]["services"];
    let names: Vec<&str> = services
        .as_hash()
        .expect("services")
        .keys()
        .filter_map(|k| k.as_str())
        .collect();
    let sites: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("site-"))
        .collect();
    assert_eq!(sites, ["emidec", "mscmr", "vh"], "{names:?}");
    for n in ["pki", "data", "coordinator", "admin"] {
        assert!(names.contains(&n), "{n} missing: {names:?}");
    }

    let coord = coordinator_config(
        &read("compose/coordinator.toml"),
        "compose/coordinator.toml",
    );
    let port = coord.listen.rsplit(':').next().expect("port");
    let metrics = coord.http_listen.as_deref().expect("http_listen");
    let metrics_port = metrics.rsplit(':').next().expect("port");
    assert_eq!(
        strings(&services["coordinator"]["ports"]),
        [
            format!("{port}:{port}"),
            format!("127.0.0.1:{metrics_port}:{metrics_port}")
        ]
    );
    assert_eq!(
        strings(&services["coordinator"]["command"]),
        ["serve", "--config", "/etc/fedseg/coordinator.toml"]
    );

    // The one-shot services make certificates and data for exactly these sites.
    let pki = strings(&services["pki"]["command"]);
    assert_eq!(&pki[2..], sites.as_slice(), "{pki:?}");
    assert!(pki[1].split(',').any(|h| h == "coordinator"), "{pki:?}");
    let data = strings(&services["data"]["command"]);
    let centers = data
        .iter()
        .skip_while(|a| *a != "--centers")
        .nth(1)
        .expect("--centers");
    assert_eq!(centers.split(',').collect::<Vec<_>>(), sites);

    for site in &sites {
        assert!(
            KNOWN_SITES.contains(site),
            "{site} is not a simulated center"
        );
        let svc = &services[format!("site-{site}").as_str()];
        let mounts = strings(&svc["volumes"]);
        let config_mount = format!("./sites/{site}.toml:/etc/fedseg/site.toml:ro");
        assert!(mounts.contains(&config_mount), "{site}: {mounts:?}");
        let cfg = site_config(&read(&format!("compose/sites/{site}.toml")), site);
        assert_eq!(cfg.site.name, *site);
        assert_eq!(cfg.data.root, PathBuf::from(format!("/data/{site}")));
        let fed = cfg.federation.expect("[federation]");
        assert_eq!(fed.coordinator, format!("https://coordinator:{port}"));
        assert_eq!(
            fed.cert,
            PathBuf::from(format!("/etc/fedseg/pki/sites/{site}/{site}.crt"))
        );
    }
    // The admin service's plan names the same sites.
    let plan = std::fs::read_to_string(deploy().join("../plans/three-sites.toml")).expect("plan");
    let plan = fedseg_coordinator::plan::Plan::parse(&plan).expect("plan parses");
    for s in plan.stages.iter().flat_map(|s| &s.sites) {
        assert!(sites.contains(&s.as_str()), "plan site {s}");
    }
}

fn kinds(docs: &[Yaml]) -> Vec<String> {
    docs.iter()
        .map(|d| {
            assert!(d["apiVersion"].as_str().is_some(), "apiVersion: {d:?}");
            assert!(d["metadata"]["name"].as_str().is_some(), "name: {d:?}");
            d["kind"].as_str().expect("kind").to_string()
        })
        .collect()
}

fn find<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn kubernetes_manifests_have_the_expected_kinds_and_valid_configs() {
    let docs = yaml("k8s/coordinator.yaml");
    assert_eq!(kinds(&docs), ["ConfigMap", "StatefulSet", "Service"]);
    coordinator_config(
        find(&docs, "ConfigMap")["data"]["coordinator.toml"]
            .as_str()
            .expect("coordinator.toml"),
        "k8s ConfigMap",
    );
    let sts = &find(&docs, "StatefulSet")["spec"];
    assert_eq!(sts["replicas"].as_i64(), Some(1), "sled has one writer");
    assert!(sts["volumeClaimTemplates"][0]["metadata"]["name"].as_str() == Some("state"));
    let c = &sts["template"]["spec"]["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["path"].as_str(),
            Some("/healthz"),
            "{probe}"
        );
    }
    let cfg = coordinator_config(
        find(&docs, "ConfigMap")["data"]["coordinator.toml"]
            .as_str()
            .expect("coordinator.toml"),
        "k8s ConfigMap",
    );
    assert_eq!(cfg.http_listen.as_deref(), Some("0.0.0.0:9464"));
    assert_eq!(
        sts["template"]["spec"]["volumes"][1]["secret"]["secretName"].as_str(),
        Some("fedseg-coordinator-pki")
    );
    let svc = &find(&docs, "Service")["spec"];
    assert_eq!(svc["ports"][0]["port"].as_i64(), Some(7443));

    let docs = yaml("k8s/site-agent-gpu.yaml");
    assert_eq!(kinds(&docs), ["ConfigMap", "Deployment"]);
    let cfg = site_config(
        find(&docs, "ConfigMap")["data"]["site.toml"]
            .as_str()
            .expect("site.toml"),
        "k8s site ConfigMap",
    );
    assert!(cfg.federation.is_some());
    let spec = &find(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"].as_i64(),
        Some(1)
    );
}

#[test]
fn the_systemd_unit_runs_the_agent_on_the_example_config() {
    let unit = read("systemd/fedseg-site-agent.service");
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(unit.contains(section), "{section}");
    }
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert_eq!(
        exec,
        "/usr/local/bin/site-agent run --config /etc/fedseg/site.toml"
    );
    let cfg = site_config(&read("systemd/site.toml"), "systemd/site.toml");
    assert!(cfg.federation.is_some());
}

#[test]
fn dockerfiles_build_the_binaries_they_run() {
    for (file, bin) in [
        ("docker/coordinator.Dockerfile", "coordinator"),
        ("docker/site-agent.Dockerfile", "site-agent"),
        ("docker/site-agent-cuda.Dockerfile", "site-agent"),
    ] {
        let text = read(file);
        assert!(text.contains("AS builder"), "{file}: multi-stage");
        assert!(text.contains(&format!("-p {bin}")), "{file}: builds {bin}");
        assert!(
            text.contains(&format!(
                "COPY --from=builder /src/target/release/{bin} /usr/local/bin/{bin}"
            )),
            "{file}: copies {bin}"
        );
        assert!(
            text.contains(&format!("ENTRYPOINT [\"{bin}\"]")),
            "{file}: runs {bin}"
        );
        assert!(text.contains("USER fedseg"), "{file}: not root");
    }
    let cuda = read("docker/site-agent-cuda.Dockerfile");
    assert!(
        cuda.contains("--features cuda"),
        "the CUDA image builds the cuda feature"
    );
    assert!(
        cuda.contains("-runtime-"),
        "the CUDA image runs on a CUDA runtime image (NVRTC compiles the kernels)"
    );
    let gpu_manifest = read("k8s/site-agent-gpu.yaml");
    assert!(
        gpu_manifest.contains("fedseg-site-agent:cuda"),
        "the GPU manifest runs the CUDA image"
    );
}

#[test]
fn the_certificate_script_issues_bundles_and_kubernetes_secrets() {
    let (coordinator, _) = fedseg_tests::binaries();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    let run = || {
        let out = Command::new("sh")
            .arg(deploy().join("scripts/issue-certs.sh"))
            .arg("--k8s")
            .arg(&pki)
            .args(["coordinator,localhost", "emidec", "mscmr"])
            .env("COORDINATOR", coordinator)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run();
    let ca = std::fs::read(pki.join("ca.crt")).expect("ca");
    for s in ["emidec", "mscmr"] {
        assert!(pki.join(format!("sites/{s}/{s}.key")).is_file(), "{s}");
    }
    let admin = std::fs::read_to_string(pki.join("admins/ops/admin.toml")).expect("admin.toml");
    assert!(admin.contains("https://coordinator:7443"), "{admin}");
    // Running it again keeps the CA (and so every certificate already handed out).
    run();
    assert_eq!(std::fs::read(pki.join("ca.crt")).expect("ca"), ca);

    let secrets = YamlLoader::load_from_str(
        &std::fs::read_to_string(pki.join("k8s-secrets.yaml")).expect("secrets"),
    )
    .expect("secrets are YAML");
    let names: Vec<&str> = secrets
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "fedseg-coordinator-pki",
            "fedseg-site-emidec",
            "fedseg-site-mscmr"
        ]
    );
    let coord = secrets[0]["data"].as_hash().expect("data");
    let keys: Vec<&str> = coord.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(keys, ["ca.crt", "coordinator.crt", "coordinator.key"]);
    assert!(
        coord
            .values()
            .all(|v| v.as_str().is_some_and(|s| s.len() > 100))
    );
}
