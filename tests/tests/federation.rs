//! A 3-site federation on loopback (real processes, mutual TLS, sled, tiny U-Nets on
//! synthetic data) through stats → train → fedavg (2 rounds) → finetune → evaluate.

use std::collections::BTreeMap;
use std::time::Duration;

use fedseg_coordinator::records::JobState;
use fedseg_coordinator::store::Store;
use fedseg_proto::safetensors::read_safetensors;
use fedseg_tests::Fed;

const SITES: [&str; 3] = ["emidec", "mscmr", "vh"];

fn plan() -> String {
    r#"
name = "three-site"
model = "tiny"
seed = 7
[defaults]
epochs = 1
batch_size = 4
augment = "none"
round_timeout_s = 600

[[stage]]
name = "hist"
kind = "stats"
sites = ["emidec"]

[[stage]]
name = "single"
kind = "train"
sites = ["emidec"]

[[stage]]
name = "fed"
kind = "fedavg"
sites = ["emidec", "mscmr", "vh"]
from = "single"
rounds = 2

[[stage]]
name = "fedbn"
kind = "fedavg"
strategy = "fedprox"
mu = 0.1
local = "norm"
sites = ["emidec", "mscmr"]
from = "single"
rounds = 2

[[stage]]
name = "ft"
kind = "finetune"
sites = ["vh"]
from = "fed"
trainable = "enc:0-1"
train_fraction = 0.5

[[stage]]
name = "eval"
kind = "evaluate"
sites = ["emidec", "mscmr", "vh"]
models = ["single", "fed", "ft", "fedbn"]
hist_ref = "hist:emidec"
"#
    .to_string()
}

#[test]
fn three_sites_run_a_whole_plan() {
    let mut fed = Fed::new(&SITES, 6, "heartbeat_s = 1\nheartbeat_timeout_s = 5");
    fed.start_all();
    let job = fed.submit(&plan());
    let status = fed.wait_job(&job, Duration::from_secs(600));
    assert_eq!(
        status.job.state,
        JobState::Done,
        "{}\n{}",
        status.render(),
        fed.logs()
    );

    // Every site × model cell of the evaluation table is there.
    let results = fed.results(&job);
    let models: Vec<&str> = results.rows.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(models, ["single", "fed", "ft", "fedbn"]);
    for row in &results.rows {
        for site in SITES {
            let cell = row
                .cells
                .get(site)
                .unwrap_or_else(|| panic!("no {site} cell for {}", row.model));
            assert!(
                cell.n >= 1 && (0.0..=1.0).contains(&cell.lv_mean),
                "{row:?}"
            );
        }
    }
    let text = fed.admin(&["job", "results", &job]);
    assert!(text.contains("eval:ft"), "{text}");
    let csv = fed.admin(&["job", "results", &job, "--format", "csv"]);
    assert_eq!(csv.lines().count(), 1 + 4 * 3, "{csv}");
    let status_text = fed.admin(&["job", "status", &job]);
    assert!(status_text.contains("round 2 closed"), "{status_text}");

    // A model version can be exported over the admin API.
    let exported = fed.root().join("fed.safetensors");
    fed.admin(&[
        "model",
        "export",
        &format!("{job}/fed"),
        exported.to_str().unwrap_or_default(),
    ]);
    let exported = read_safetensors(&exported).expect("exported model");

    // Stop the coordinator to read its sled state directly.
    fed.coordinator.take();
    let store = Store::open(&fed.state_dir().join("db")).expect("sled");
    let record = store.job(&job).expect("read").expect("job");
    let blob = |sha: &str| {
        fed.state_dir()
            .join("blobs")
            .join(format!("{sha}.safetensors"))
    };

    // The FedAvg model equals the sample-weighted mean of the stored site updates.
    let fed_stage = &record.stages[2];
    let round = fed_stage.rounds.last().expect("round");
    let mut updates = Vec::new();
    for (site, task) in &round.tasks {
        let u = task
            .update
            .as_ref()
            .unwrap_or_else(|| panic!("{site} has no update"));
        updates.push((
            u.sample_count as f64,
            read_safetensors(&blob(&u.digest)).expect("update").tensors,
        ));
    }
    assert_eq!(updates.len(), 3);
    let total: f64 = updates.iter().map(|u| u.0).sum();
    let version = store
        .model(fed_stage.output.as_deref().expect("output"))
        .expect("read")
        .expect("model");
    let aggregate = read_safetensors(&blob(&version.digest))
        .expect("aggregate")
        .tensors;
    assert_eq!(
        aggregate, exported.tensors,
        "export differs from the stored model"
    );
    for t in &aggregate {
        for (i, v) in t.data.iter().enumerate() {
            let mut acc = 0.0f64;
            for (w, tensors) in &updates {
                let x = tensors
                    .iter()
                    .find(|u| u.name == t.name)
                    .expect("same names")
                    .data[i];
                acc += w * f64::from(x);
            }
            assert_eq!(*v, (acc / total) as f32, "{}[{i}]", t.name);
        }
    }

    // Fine-tuning changed encoder blocks 0-1 only.
    let ft = store
        .model(record.stages[4].output.as_deref().expect("ft output"))
        .expect("read")
        .expect("ft");
    let tuned: BTreeMap<String, Vec<f32>> = read_safetensors(&blob(&ft.digest))
        .expect("ft model")
        .tensors
        .into_iter()
        .map(|t| (t.name, t.data))
        .collect();
    let mut changed = 0;
    for t in &aggregate {
        let trainable = t.name.starts_with("enc.0.") || t.name.starts_with("enc.1.");
        let same = tuned.get(&t.name) == Some(&t.data);
        if trainable {
            changed += usize::from(!same);
        } else {
            assert!(
                same,
                "frozen tensor {} changed in fine-tuning: {:?} vs {:?} (init {}, tuned {})",
                t.name,
                &t.data[..3],
                tuned.get(&t.name).map(|d| d[..3].to_vec()),
                record.stages[4].rounds[0].init.clone().unwrap_or_default(),
                ft.id
            );
        }
    }
    assert!(changed > 0, "fine-tuning changed nothing");

    // FedBN with FedProx: instance-norm parameters never left the sites; each site kept its own.
    let bn = store
        .model(record.stages[3].output.as_deref().expect("fedbn output"))
        .expect("read")
        .expect("fedbn");
    let shared = read_safetensors(&blob(&bn.digest))
        .expect("fedbn model")
        .tensors;
    assert!(
        !shared.is_empty() && shared.iter().all(|t| !t.name.contains("norm")),
        "norm tensors were shared"
    );
    assert!(shared.len() < aggregate.len());
    let mut locals = Vec::new();
    for site in ["emidec", "mscmr"] {
        let path = fed
            .root()
            .join("data")
            .join(site)
            .join(format!("work/local/{job}.fedbn.safetensors"));
        let local = read_safetensors(&path)
            .unwrap_or_else(|e| panic!("{site} local parameters: {e}"))
            .tensors;
        assert!(!local.is_empty() && local.iter().all(|t| t.name.contains("norm")));
        locals.push(local);
    }
    assert_ne!(
        locals[0], locals[1],
        "the sites' local norm parameters should differ"
    );
    for round in &record.stages[3].rounds {
        for task in round.tasks.values() {
            assert!(task.update.is_some());
        }
    }
}
