//! The coordinator's status page, loaded in headless Chromium while a two-site federated job
//! runs and again when it is done: the page's script must have drawn the job, the live round
//! with both sites, the Dice-per-round chart and the cross-site results table. Screenshots
//! are kept in target/test-artefacts/.
//!
//! Needs Debian's `chromium` (or `CHROMIUM=/path`). Without it the test says so and passes,
//! unless `FEDSEG_REQUIRE_BROWSER=1` (set by .ci/run after it installs Chromium).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fedseg_tests::Fed;

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .map(|n| PathBuf::from("/usr/bin").join(n))
        .find(|p| p.exists())
}

fn headless(browser: &PathBuf, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            // Lets the page's fetches finish and its script draw before the DOM is taken.
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(browser: &PathBuf, url: &str, out: &std::path::Path) {
    let target = format!("--screenshot={}", out.display());
    headless(browser, &["--window-size=1400,1100", &target, url]);
}

/// The text between the element with `id` and the end of its table or section.
fn part<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let rest = &dom[start..];
    let end = rest.find("</section>").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn the_status_page_draws_a_running_and_a_finished_job() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("FEDSEG_REQUIRE_BROWSER").is_none(),
            "FEDSEG_REQUIRE_BROWSER is set but no chromium was found"
        );
        eprintln!("SKIPPED: no chromium (apt-get install chromium, or set CHROMIUM)");
        return;
    };
    let artefacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artefacts");
    std::fs::create_dir_all(&artefacts).expect("artefact dir");

    let mut fed = Fed::new(&["emidec", "mscmr"], 4, "");
    let port = fed.enable_http();
    fed.start_all();
    let url = format!("http://127.0.0.1:{port}/");
    let job = fed.submit(
        r#"
name = "status-page"
model = "tiny"
[defaults]
epochs = 2
batch_size = 4
augment = "none"
[[stage]]
name = "fed"
kind = "fedavg"
sites = ["emidec", "mscmr"]
rounds = 3
[[stage]]
name = "eval"
kind = "evaluate"
sites = ["emidec", "mscmr"]
models = ["fed"]
"#,
    );

    // While round 2 or 3 trains: one round has a validation Dice to chart, one is open.
    let s = fed.wait_until(&job, Duration::from_secs(300), |s| {
        s.stages[0].rounds.iter().any(|r| !r.open) && s.stages[0].rounds.iter().any(|r| r.open)
    });
    assert_eq!(format!("{:?}", s.job.state), "Running", "{}", fed.logs());
    let dom = headless(&browser, &["--dump-dom", &url]);
    let jobs = part(&dom, "jobs");
    assert!(
        jobs.contains(&job) && jobs.contains("status-page"),
        "{jobs}"
    );
    assert!(
        jobs.contains(">running<"),
        "the job shows as running: {jobs}"
    );
    let round = part(&dom, "round-title");
    assert!(round.contains("of stage fed (open"), "{round}");
    for site in ["emidec", "mscmr"] {
        assert!(
            round.contains(&format!("<td>{site}</td>")),
            "{site}: {round}"
        );
    }
    let chart = part(&dom, "chart");
    assert!(chart.contains("class=\"series\""), "no chart line: {chart}");
    screenshot(&browser, &url, &artefacts.join("status-page-running.png"));

    let done = fed.wait_job(&job, Duration::from_secs(300));
    assert_eq!(format!("{:?}", done.job.state), "Done", "{}", fed.logs());
    let dom = headless(&browser, &["--dump-dom", &url]);
    assert!(part(&dom, "jobs").contains(">done<"), "{dom}");
    let sites = part(&dom, "sites");
    for site in ["emidec", "mscmr"] {
        assert!(
            sites.contains(&format!("<td>{site}</td><td>yes</td>")),
            "{sites}"
        );
    }
    let stages = part(&dom, "stages");
    assert!(stages.contains("3/3"), "three rounds of three: {stages}");
    // Results: a header with both sites, a row for the model, cells "0.xyz ± 0.xyz (n=…)".
    let results = part(&dom, "results");
    assert!(
        results.contains(">emidec</th>") && results.contains(">mscmr</th>"),
        "{results}"
    );
    assert!(results.contains("<td>eval / fed</td>") || results.contains("<td>fed</td>"));
    assert_eq!(results.matches(" ± ").count(), 2, "{results}");
    let chart = part(&dom, "chart");
    let line = chart
        .split("points=\"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .unwrap_or("");
    assert_eq!(
        line.split_whitespace().count(),
        3,
        "one point per round: {chart}"
    );
    let shot = artefacts.join("status-page-done.png");
    screenshot(&browser, &url, &shot);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{shot:?}"
    );
}
