//! Sites and the coordinator dying mid-round.

use std::time::Duration;

use fedseg_coordinator::records::{JobState, StageState, TaskState};
use fedseg_coordinator::store::Store;
use fedseg_tests::Fed;

const SITES: [&str; 3] = ["emidec", "mscmr", "vh"];
const FAST: &str = "heartbeat_s = 1\nheartbeat_timeout_s = 3";

fn plan(min_sites: usize, rounds: u32, epochs: u32, timeout_s: u32) -> String {
    format!(
        "name = \"crash\"\nmodel = \"tiny\"\nseed = 11\n[defaults]\nepochs = {epochs}\naugment = \"none\"\nround_timeout_s = {timeout_s}\ngrace_s = 120\n\n[[stage]]\nname = \"fed\"\nkind = \"fedavg\"\nsites = [\"emidec\", \"mscmr\", \"vh\"]\nmin_sites = {min_sites}\nrounds = {rounds}\n"
    )
}

fn final_model(fed: &Fed, job: &str) -> Vec<String> {
    let store = Store::open(&fed.state_dir().join("db")).expect("sled");
    let record = store.job(job).expect("read").expect("job");
    record.stages[0]
        .rounds
        .iter()
        .map(|r| {
            let v = r.output.clone().expect("round output");
            store.model(&v).expect("read").expect("model").digest
        })
        .collect()
}

/// SIGKILLs the vh agent once its heartbeats say it is training.
fn kill_vh_mid_training(fed: &mut Fed, job: &str) {
    fed.wait_until(job, Duration::from_secs(120), |s| {
        s.sites
            .get("vh")
            .and_then(|v| v["state"].as_str())
            .is_some_and(|st| st == "training")
    });
    fed.kill_agent("vh");
}

#[test]
fn a_site_killed_mid_round_does_not_stall_a_quorum_round() {
    let mut fed = Fed::new(&SITES, 5, FAST);
    fed.start_all();
    let job = fed.submit(&plan(2, 1, 8, 600));
    // Kill vh once it is working on its task.
    kill_vh_mid_training(&mut fed, &job);
    let status = fed.wait_job(&job, Duration::from_secs(300));
    assert_eq!(
        status.job.state,
        JobState::Done,
        "{}\n{}",
        status.render(),
        fed.logs()
    );
    let round = &status.stages[0].rounds[0];
    let done: Vec<&str> = round
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::Done)
        .map(|t| t.site.as_str())
        .collect();
    assert_eq!(done, ["emidec", "mscmr"], "{}", status.render());
}

#[test]
fn without_quorum_the_stage_fails_at_its_deadline_with_the_reason() {
    let mut fed = Fed::new(&SITES, 5, FAST);
    fed.start_all();
    let job = fed.submit(&plan(3, 1, 8, 60));
    kill_vh_mid_training(&mut fed, &job);
    let status = fed.wait_job(&job, Duration::from_secs(120));
    assert_eq!(status.job.state, JobState::Failed, "{}", status.render());
    assert_eq!(status.stages[0].state, StageState::Failed);
    let reason = status.job.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("2 of the 3 sites needed reported")
            && reason.contains("no result from vh")
            && reason.contains("deadline"),
        "{reason}"
    );
}

#[test]
fn a_coordinator_killed_mid_round_resumes_to_the_same_model() {
    // Reference: the same plan, uninterrupted.
    let mut reference = Fed::new(&SITES, 4, FAST);
    reference.start_all();
    let job = reference.submit(&plan(3, 2, 2, 600));
    let status = reference.wait_job(&job, Duration::from_secs(300));
    assert_eq!(
        status.job.state,
        JobState::Done,
        "{}\n{}",
        status.render(),
        reference.logs()
    );
    reference.coordinator.take();
    let expected = final_model(&reference, &job);
    drop(reference);

    let mut fed = Fed::new(&SITES, 4, FAST);
    fed.start_all();
    let job = fed.submit(&plan(3, 2, 2, 600));
    // SIGKILL while round 2 is open.
    fed.wait_until(&job, Duration::from_secs(300), |s| {
        s.stages[0].rounds.len() == 2
    });
    fed.coordinator.as_mut().expect("running").kill();
    std::thread::sleep(Duration::from_secs(2));
    fed.start_coordinator();
    let status = fed.wait_job(&job, Duration::from_secs(300));
    assert_eq!(
        status.job.state,
        JobState::Done,
        "{}\n{}",
        status.render(),
        fed.logs()
    );
    fed.coordinator.take();
    assert_eq!(
        final_model(&fed, &job),
        expected,
        "resumed run differs from the uninterrupted one"
    );
    assert!(
        fed.log("coordinator").contains("resuming job"),
        "{}",
        fed.log("coordinator")
    );
}

#[test]
fn a_job_whose_stored_plan_changed_is_not_resumed() {
    let mut fed = Fed::new(&["emidec", "mscmr"], 3, FAST);
    fed.start_coordinator();
    let plan = "name = \"p\"\nmodel = \"tiny\"\n[[stage]]\nname = \"fed\"\nkind = \"fedavg\"\nsites = [\"emidec\", \"mscmr\"]\nrounds = 2\n";
    let job = fed.submit(plan);
    fed.coordinator.as_mut().expect("running").kill();
    {
        let store = Store::open(&fed.state_dir().join("db")).expect("sled");
        let mut record = store.job(&job).expect("read").expect("job");
        record.plan_toml = record.plan_toml.replace("rounds = 2", "rounds = 5");
        store.put_job(&record).expect("write");
    }
    fed.start_coordinator();
    let status = fed.status(&job);
    assert_eq!(status.job.state, JobState::Failed, "{}", status.render());
    assert!(
        status
            .job
            .reason
            .unwrap_or_default()
            .contains("plan changed")
    );
}
