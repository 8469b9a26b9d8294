//! The PKI commands of the coordinator binary, as an operator types them.

use std::process::Command;

fn coordinator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
}

#[test]
fn pki_init_and_issue_write_bundles_and_config_snippets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let ok = |args: &[&str]| {
        let out = coordinator()
            .args(args)
            .arg("--dir")
            .arg(&pki)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&["pki", "init"]);
    let site = ok(&[
        "pki",
        "issue-site",
        "hospital-a",
        "--endpoint",
        "https://coord.example.org:7443",
    ]);
    assert!(site.contains("fingerprint"), "{site}");
    assert!(site.contains("[federation]"), "{site}");
    let admin = ok(&["pki", "issue-admin", "ops"]);
    assert!(admin.contains("admin"), "{admin}");
    let bundle = pki.join("sites/hospital-a");
    for f in [
        "ca.crt",
        "hospital-a.crt",
        "hospital-a.key",
        "federation.toml",
    ] {
        assert!(bundle.join(f).is_file(), "{f} missing");
    }
    assert!(pki.join("admins/ops/admin.toml").is_file());
    // A second init would orphan every issued certificate: refused.
    let again = coordinator()
        .args(["pki", "init", "--dir"])
        .arg(&pki)
        .output()
        .expect("run");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a federation CA"));
    // A name that would escape the PKI folder is refused.
    let bad = coordinator()
        .args(["pki", "issue-site", "../x", "--dir"])
        .arg(&pki)
        .output()
        .expect("run");
    assert!(!bad.status.success());
}

#[test]
fn admin_commands_without_a_bundle_say_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = coordinator()
        .args(["--admin"])
        .arg(dir.path().join("nope.toml"))
        .args(["job", "status", "1"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope.toml") && err.contains("pki issue-admin"),
        "{err}"
    );
}
