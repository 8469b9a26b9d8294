//! The command-line contract of DESIGN.md for the data path: `synth`, `inspect`, `show`.

use std::path::Path;
use std::process::Command;

fn site_agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_site-agent"))
        .args(args)
        .output()
        .expect("site-agent runs")
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path)
        .map(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
        .unwrap_or(false)
}

#[test]
fn synth_writes_sites_that_inspect_accepts_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = site_agent(&[
        "synth",
        "--out",
        out,
        "--centers",
        "emidec,vh",
        "--subjects",
        "3",
        "--seed",
        "4",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("emidec") && stdout.contains("W1"),
        "{stdout}"
    );
    assert!(is_png(&dir.path().join("domain-shift.png")));

    for center in ["emidec", "vh"] {
        let cfg = dir.path().join(center).join("site.toml");
        let o = site_agent(&["inspect", "--config", cfg.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["can_train"], true);
        assert_eq!(report["subjects"].as_array().unwrap().len(), 3);
        let o = site_agent(&["inspect", "--config", cfg.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&o.stdout).contains("ready to train"));
    }

    let png = dir.path().join("again.png");
    let o = site_agent(&["show", out, "--out", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(is_png(&png));
}

#[test]
fn inspect_exits_non_zero_when_the_site_cannot_train() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = site_agent(&[
        "synth",
        "--out",
        out,
        "--centers",
        "vh",
        "--subjects",
        "3",
        "--no-montage",
    ]);
    assert!(o.status.success());
    std::fs::remove_dir_all(dir.path().join("vh/labels")).unwrap();
    let cfg = dir.path().join("vh/site.toml");
    let o = site_agent(&["inspect", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("CANNOT TRAIN") && stdout.contains("no label file found"),
        "{stdout}"
    );

    let o = site_agent(&["synth", "--out", out, "--centers", "nowhere"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown center"));
}
