//! Coordinator overhead per federated round, with sites that do no training so everything
//! measured is the federation's own cost: each site downloads the global model, uploads an
//! update of the same size, the coordinator validates and aggregates. Reports (a) round time
//! minus the slowest site's training (zero here), (b) the coordinator's peak RSS, (c) model
//! transfer throughput next to raw loopback TCP on the same machine.
//!
//! `cargo build --release -p coordinator && FEDSEG_BIN_DIR=$PWD/target/release \
//!  cargo bench -p fedseg-tests --bench round_overhead -- [PARAMS_MILLIONS] [SITES...]`
//! (default: 35 M parameters, 4 and 16 sites, 2 rounds each). Without FEDSEG_BIN_DIR it
//! measures the debug-profile coordinator the tests use. FEDSEG_BENCH_STATUS=1 also prints
//! each job's status and the coordinator's log; FEDSEG_BENCH_ROUNDS=N runs N rounds (the first
//! round pays for memory the next ones reuse); FEDSEG_BENCH_CONFIG adds lines to
//! coordinator.toml (e.g. `max_concurrent_transfers = 2`); FEDSEG_BENCH_WORK_S=S makes each
//! site wait S seconds between download and upload, as training would (subtracted from the
//! overhead): the coordinator then sits idle between rounds as it does in real use.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedseg_coordinator::pki::Role;
use fedseg_coordinator::records::JobState;
use fedseg_tests::{FakeSite, Fed, UploadFaults, safetensors_bytes};

fn model_bytes(params: usize) -> Vec<u8> {
    // Paper-size in parameter count; tensors of 1 M values like the U-Net's larger convs.
    let per = 1_000_000;
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = (0..params.div_ceil(per))
        .map(|i| {
            let n = per.min(params - i * per);
            (
                format!("t.{i:03}"),
                vec![n],
                (0..n).map(|j| ((i + j) % 97) as f32 * 1e-3).collect(),
            )
        })
        .collect();
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.clone(), d.clone()))
        .collect();
    safetensors_bytes(&refs)
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    field(11)
        .zip(field(12))
        .map_or(f64::NAN, |(u, s)| (u + s) / 100.0)
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A site that answers every task at once with `model`.
async fn fake_site(
    fed_ep: fedseg_proto::client::FederationEndpoint,
    model: Arc<Vec<u8>>,
    rounds: u32,
    work: Duration,
) {
    let mut site = FakeSite::connect(&fed_ep).await;
    site.client
        .join(fedseg_proto::pb::JoinRequest::default())
        .await
        .expect("join");
    let mut tasks = site
        .client
        .tasks(fedseg_proto::pb::TasksRequest {})
        .await
        .expect("tasks")
        .into_inner();
    let mut done = 0;
    while done < rounds {
        let Some(task) = tasks.message().await.expect("stream") else {
            return;
        };
        if let Some(init) = &task.init {
            let mut s = site
                .client
                .download_model(fedseg_proto::pb::DownloadRequest {
                    version: init.version.clone(),
                })
                .await
                .expect("download")
                .into_inner();
            while s.message().await.expect("chunk").is_some() {}
        }
        tokio::time::sleep(work).await;
        site.upload(
            &task.task_id,
            Arc::clone(&model),
            100,
            UploadFaults::default(),
        )
        .await
        .expect("upload");
        done += 1;
    }
}

fn raw_loopback_mb_s() -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let total = 1usize << 30;
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < total {
            got += s.read(&mut buf).expect("read");
        }
    });
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let buf = vec![1u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..(total >> 20) {
        s.write_all(&buf).expect("write");
    }
    reader.join().expect("reader");
    total as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let params: usize = args
        .first()
        .and_then(|a| a.parse::<usize>().ok())
        .unwrap_or(35)
        * 1_000_000;
    let counts: Vec<usize> = if args.len() > 1 {
        args[1..].iter().filter_map(|a| a.parse().ok()).collect()
    } else {
        vec![4, 16]
    };
    let rounds: u32 = std::env::var("FEDSEG_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let work = Duration::from_secs_f64(
        std::env::var("FEDSEG_BENCH_WORK_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0),
    );
    println!("coordinator: {}", fedseg_tests::binaries().0.display());
    let model = Arc::new(model_bytes(params));
    println!(
        "model: {} parameters, {:.1} MB; {rounds} rounds per run; sites wait {:.1} s before uploading",
        params,
        model.len() as f64 / 1e6,
        work.as_secs_f64()
    );
    println!(
        "raw loopback TCP (one socket, 1 GiB): {:.0} MB/s",
        raw_loopback_mb_s()
    );
    for n in counts {
        let names: Vec<String> = (0..n).map(|i| format!("site{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let extra = std::env::var("FEDSEG_BENCH_CONFIG").unwrap_or_default();
        let mut fed = Fed::bare(
            &refs,
            &format!("heartbeat_s = 2\nheartbeat_timeout_s = 30\n{extra}"),
        );
        fed.start_coordinator();
        let pid = fed.coordinator.as_ref().map(|c| c.child.id()).unwrap_or(0);
        let plan = format!(
            "name = \"bench\"\nmodel = \"paper\"\n[[stage]]\nname = \"init\"\nkind = \"train\"\nsites = [\"site00\"]\n\n[[stage]]\nname = \"fed\"\nkind = \"fedavg\"\nfrom = \"init\"\nsites = {names:?}\nrounds = {rounds}\n"
        );
        let cpu_before = cpu_seconds(pid);
        let own_before = cpu_seconds(std::process::id());
        let job = fed.submit(&plan);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let mut handles = Vec::new();
            for name in &names {
                let rounds = if name == "site00" { rounds + 1 } else { rounds };
                handles.push(tokio::spawn(fake_site(
                    fed.endpoint_for(Role::Site, name),
                    model.clone(),
                    rounds,
                    work,
                )));
            }
            for h in handles {
                h.await.expect("site");
            }
        });
        let status = fed.wait_job(&job, Duration::from_secs(1800));
        assert_eq!(status.job.state, JobState::Done, "{}", status.render());
        if std::env::var_os("FEDSEG_BENCH_STATUS").is_some() {
            println!("{}\n{}", status.render(), fed.log("coordinator"));
        }
        let rss = peak_rss_mib(pid);
        let cpu = cpu_seconds(pid) - cpu_before;
        let own = cpu_seconds(std::process::id()) - own_before;
        for r in &status.stages[1].rounds {
            let slowest_training = r
                .tasks
                .iter()
                .map(|t| t.work_s)
                .fold(work.as_secs_f64(), f64::max);
            let uploads: Vec<f64> = r
                .tasks
                .iter()
                .filter(|t| t.upload_s > 0.0)
                .map(|t| model.len() as f64 / 1e6 / t.upload_s)
                .collect();
            println!(
                "{n:>2} sites, round {}: {:.2} s round, overhead {:.2} s (aggregation {:.2} s); per-site upload {:.0}–{:.0} MB/s while {n} upload at once",
                r.round,
                r.seconds,
                r.seconds - slowest_training,
                r.aggregate_s.unwrap_or(f64::NAN),
                uploads.iter().copied().fold(f64::INFINITY, f64::min),
                uploads.iter().copied().fold(0.0, f64::max),
            );
        }
        println!(
            "{n:>2} sites: coordinator peak RSS {rss:.0} MiB; CPU per round: coordinator {:.1} s, the {n} sites {:.1} s (all on the same cores)",
            cpu / f64::from(rounds + 1),
            own / f64::from(rounds + 1)
        );
    }
}
