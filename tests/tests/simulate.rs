//! The README's first command, shortened (tiny model, one epoch, one round, six subjects per
//! center): `coordinator simulate` from an empty folder to the Table 5-shaped results, with
//! real processes, real TLS and real files. Then a second run in the same folder, which must
//! reuse the data and PKI and add a second job beside the first.

use std::path::PathBuf;
use std::process::Command;

use fedseg_tests::binaries;

fn simulate(dir: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let (coordinator, _) = binaries();
    let out = Command::new(coordinator)
        .args(["simulate", "--workdir"])
        .arg(dir)
        .args([
            "--model",
            "tiny",
            "--subjects",
            "6",
            "--epochs",
            "1",
            "--rounds",
            "1",
            "--json",
        ])
        .args(extra)
        .output()
        .expect("running coordinator simulate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "simulate failed: {}\n{stderr}",
        out.status
    );
    // Progress goes to stderr: the sites joining, then stages as they run.
    assert!(stderr.contains("all 4 sites joined"), "{stderr}");
    assert!(stderr.contains("/13 "), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON document")
}

fn labels(doc: &serde_json::Value) -> Vec<String> {
    doc["experiment"]["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["label"].as_str().map(str::to_string))
        .collect()
}

fn files(doc: &serde_json::Value) -> Vec<PathBuf> {
    doc["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f.as_str().map(Into::into))
        .collect()
}

#[test]
fn the_default_plan_runs_end_to_end_and_prints_table_5() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sim");
    let doc = simulate(&dir, &[]);
    let jobs = doc["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "{doc:#}");
    assert_eq!(jobs[0]["state"], "done", "{doc:#}");
    let e = &doc["experiment"];
    assert_eq!(
        e["sites"],
        serde_json::json!(["emidec", "mscmr", "vh", "stpau"])
    );
    assert_eq!(
        labels(&doc),
        [
            "no-aug",
            "spatial",
            "eval/spatial+int",
            "hist-match/spatial+int",
            "tl",
            "mc"
        ]
    );
    for col in e["columns"].as_array().expect("columns") {
        let cells = col["cells"].as_object().expect("cells");
        let expected: &[&str] = if col["stage"] == "eval" {
            &["emidec", "mscmr", "vh", "stpau"]
        } else {
            &["mscmr", "vh", "stpau"]
        };
        assert_eq!(cells.len(), expected.len(), "{col:#}");
        for site in expected {
            let c = &cells[*site];
            let dice = c["mean"].as_f64().expect("mean");
            assert!((0.0..=1.0).contains(&dice), "{site}: {c}");
            // One run: the spread is over the center's test subjects.
            assert!(c["n"].as_u64().unwrap_or(0) >= 1, "{site}: {c}");
        }
    }

    let files = files(&doc);
    let named = |end: &str| -> Vec<&PathBuf> {
        files
            .iter()
            .filter(|f| f.to_string_lossy().ends_with(end))
            .collect()
    };
    for f in &files {
        assert!(
            f.metadata().map(|m| m.len() > 0).unwrap_or(false),
            "{f:?} is missing or empty"
        );
    }
    // The job's own results: a `{site}` template evaluates each center's own model.
    let job_results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(named("results.json")[0]).expect("read"))
            .expect("results.json");
    for row in job_results["rows"].as_array().expect("rows") {
        if row["stage"] == "target" {
            for (site, c) in row["cells"].as_object().expect("cells") {
                let version = c["version"].as_str().unwrap_or("");
                assert!(version.contains(&format!("-{site}.")), "{site}: {version}");
            }
        }
    }
    // The report: markdown in Table 5's orientation, the CSV, and the figures as PNG.
    let md: Vec<String> = named("results.md")
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("results.md"))
        .collect();
    assert_eq!(md.len(), 2, "the job's and the report's");
    for m in &md {
        assert!(
            m.contains("| test center | no-aug | spatial | eval/spatial+int | hist-match/spatial+int | tl | mc |"),
            "{m}"
        );
    }
    let pngs = named(".png");
    assert_eq!(pngs.len(), 2, "Dice bars and Dice per round: {files:?}");
    for p in pngs {
        let bytes = std::fs::read(p).expect("png");
        assert!(bytes.starts_with(b"\x89PNG"), "{p:?}");
    }
    for s in ["emidec", "mscmr", "vh", "stpau"] {
        let log = dir.join("logs").join(format!("{s}.log"));
        assert!(log.is_file(), "{log:?}");
    }

    // Again in the same folder, twice over (two seeds): data and PKI are reused, new jobs
    // run beside the first, and the report gives mean ± SD over the two runs.
    let ca_before = std::fs::read(dir.join("pki/ca.crt")).expect("ca");
    let doc2 = simulate(&dir, &["--seed", "5", "--repeats", "2"]);
    let jobs2 = doc2["jobs"].as_array().expect("jobs");
    assert_eq!(jobs2.len(), 2, "{doc2:#}");
    assert!(jobs2.iter().all(|j| j["state"] == "done"), "{doc2:#}");
    assert!(!jobs2.iter().any(|j| j["id"] == jobs[0]["id"]));
    assert_eq!(
        std::fs::read(dir.join("pki/ca.crt")).expect("ca"),
        ca_before
    );
    assert_eq!(doc2["experiment"]["seeds"], serde_json::json!([5, 6]));
    let cell = &doc2["experiment"]["columns"][0]["cells"]["emidec"];
    assert_eq!(cell["n"], 2, "two runs behind each cell: {cell}");
    assert!(
        named("results.md")[0].is_file(),
        "the first job's results stay"
    );
}

/// Exp. 4's centralised baseline: a `pool-…` site built from links to its centers' training
/// and validation subjects — never a test subject — trains and is evaluated like any site.
#[test]
fn a_pooled_site_holds_its_centers_training_data_and_no_test_subject() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sim");
    let plan = tmp.path().join("pooled.toml");
    std::fs::write(
        &plan,
        r#"
name = "pooled"
model = "tiny"
[[stage]]
name = "pooled"
kind = "train"
sites = ["pool-emidec-mscmr"]
epochs = 1
[[stage]]
name = "eval"
kind = "evaluate"
sites = ["emidec", "mscmr"]
models = ["pooled"]
"#,
    )
    .expect("plan");
    let (coordinator, site_agent) = binaries();
    let out = Command::new(coordinator)
        .args(["simulate", "--json", "--subjects", "6", "--workdir"])
        .arg(&dir)
        .arg("--plan")
        .arg(&plan)
        .output()
        .expect("simulate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["jobs"][0]["state"], "done", "{doc:#}");
    assert_eq!(
        doc["experiment"]["sites"],
        serde_json::json!(["emidec", "mscmr"])
    );

    let pool = dir.join("data/pool-emidec-mscmr");
    let mut linked: Vec<String> = std::fs::read_dir(pool.join("images"))
        .expect("images")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    linked.sort();
    let mut expected = Vec::new();
    for center in ["emidec", "mscmr"] {
        let out = Command::new(site_agent)
            .args(["inspect", "--json", "--config"])
            .arg(dir.join("data").join(center).join("site.toml"))
            .output()
            .expect("inspect");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let ids = |part: &str| -> Vec<String> {
            report["split"][part]
                .as_array()
                .expect("split")
                .iter()
                .filter_map(|v| v.as_str().map(|id| format!("{center}_{id}.nii.gz")))
                .collect()
        };
        let test = ids("test");
        assert!(!test.is_empty());
        for t in &test {
            assert!(!linked.contains(t), "test subject {t} was pooled");
        }
        expected.extend(ids("train"));
        expected.extend(ids("val"));
    }
    expected.sort();
    assert_eq!(linked, expected);
}
