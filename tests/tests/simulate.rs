//! The README's first command, shortened (tiny model, one epoch, one round, six subjects per
//! center): `coordinator simulate` from an empty folder to the Table 5-shaped results, with
//! real processes, real TLS and real files. Then a second run in the same folder, which must
//! reuse the data and PKI and add a second job beside the first.

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

#[test]
fn the_default_plan_runs_end_to_end_and_prints_table_5() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sim");
    let doc = simulate(&dir, &[]);
    assert_eq!(doc["job"]["state"], "done", "{doc:#}");
    let results = &doc["results"];
    let sites: Vec<&str> = results["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(sites, ["emidec", "mscmr", "vh", "stpau"]);
    let rows = results["rows"].as_array().expect("rows");
    let models: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap_or(""),
                r["model"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        models,
        [
            ("eval", "no-aug"),
            ("eval", "spatial"),
            ("eval", "spatial+int"),
            ("hist-match", "spatial+int"),
            ("target", "tl-{site}"),
            ("target", "mc-{site}"),
        ]
    );
    for row in rows {
        let cells = row["cells"].as_object().expect("cells");
        let expected: &[&str] = if row["stage"] == "eval" {
            &["emidec", "mscmr", "vh", "stpau"]
        } else {
            &["mscmr", "vh", "stpau"]
        };
        assert_eq!(cells.len(), expected.len(), "{row:#}");
        for site in expected {
            let c = &cells[*site];
            let dice = c["lv_mean"].as_f64().expect("lv_mean");
            assert!((0.0..=1.0).contains(&dice), "{site}: {c}");
            assert!(c["n"].as_u64().unwrap_or(0) >= 1, "{site}: {c}");
            // A per-site template evaluates each center's own model.
            if row["stage"] == "target" {
                let version = c["version"].as_str().unwrap_or("");
                assert!(version.contains(&format!("-{site}.")), "{site}: {version}");
            }
        }
    }
    let files: Vec<std::path::PathBuf> = doc["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f.as_str().map(Into::into))
        .collect();
    assert_eq!(files.len(), 5);
    for f in &files {
        assert!(
            f.metadata().map(|m| m.len() > 0).unwrap_or(false),
            "{f:?} is missing or empty"
        );
    }
    let md = std::fs::read_to_string(&files[0]).expect("results.md");
    assert!(md.contains("| test center | no-aug | spatial | eval/spatial+int | hist-match/spatial+int | tl | mc |"), "{md}");
    for s in ["emidec", "mscmr", "vh", "stpau"] {
        let log = dir.join("logs").join(format!("{s}.log"));
        assert!(log.is_file(), "{log:?}");
    }

    // Again in the same folder: data and PKI are reused, a new job runs, the first stays.
    let ca_before = std::fs::read(dir.join("pki/ca.crt")).expect("ca");
    let doc2 = simulate(&dir, &["--seed", "2"]);
    assert_eq!(doc2["job"]["state"], "done", "{doc2:#}");
    assert_ne!(doc2["job"]["id"], doc["job"]["id"]);
    assert_eq!(
        std::fs::read(dir.join("pki/ca.crt")).expect("ca"),
        ca_before
    );
    assert!(files[0].is_file(), "the first job's results stay");
}
