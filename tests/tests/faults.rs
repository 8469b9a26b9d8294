//! Bad updates, broken streams and crashes: each is refused or survived with a clear reason,
//! and nothing stored is lost or corrupted.

use std::time::Duration;

use fedseg_coordinator::pki::Role;
use fedseg_coordinator::records::JobState;
use fedseg_tests::{FakeSite, Fed, UploadFaults, safetensors_bytes};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn fedavg_plan(sites: &[&str], min_sites: usize, timeout_s: u32) -> String {
    format!(
        "name = \"faults\"\nmodel = \"tiny\"\n[defaults]\nepochs = 1\nround_timeout_s = {timeout_s}\ngrace_s = 1\n\n[[stage]]\nname = \"fed\"\nkind = \"fedavg\"\nsites = {sites:?}\nmin_sites = {min_sites}\nrounds = 1\n"
    )
}

fn good() -> Vec<u8> {
    safetensors_bytes(&[
        ("a", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
        ("b", vec![3], vec![0.5; 3]),
    ])
}

/// The files in `dir`, once it is empty or `patience` has passed.
async fn files_left_in(dir: &std::path::Path, patience: Duration) -> Vec<std::path::PathBuf> {
    let until = std::time::Instant::now() + patience;
    loop {
        let left: Vec<_> = std::fs::read_dir(dir)
            .expect("incoming")
            .map(|e| e.expect("entry").path())
            .collect();
        if left.is_empty() || std::time::Instant::now() > until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn bad_updates_and_streams_are_refused_with_reasons() {
    let mut fed = Fed::new(&["emidec", "mscmr"], 3, "max_model_bytes = 50000000");
    fed.start_coordinator();
    let job = fed.submit(&fedavg_plan(&["emidec", "mscmr"], 2, 600));
    let incoming = fed.state_dir().join("blobs/incoming");
    rt().block_on(async {
        let mut a = FakeSite::connect(&fed.endpoint_for(Role::Site, "emidec")).await;
        let mut b = FakeSite::connect(&fed.endpoint_for(Role::Site, "mscmr")).await;
        let ta = a.next_task().await;
        let tb = b.next_task().await;
        assert!(tb.task_id.ends_with("/mscmr"), "{}", tb.task_id);
        // The first good update fixes the schema of this from-scratch round.
        a.upload(&ta.task_id, good(), 10, UploadFaults::default())
            .await
            .expect("good update");

        let nan = safetensors_bytes(&[
            ("a", vec![2, 2], vec![1.0, f32::NAN, 3.0, 4.0]),
            ("b", vec![3], vec![0.5; 3]),
        ]);
        let inf = safetensors_bytes(&[
            ("a", vec![2, 2], vec![1.0; 4]),
            ("b", vec![3], vec![f32::INFINITY; 3]),
        ]);
        let renamed = safetensors_bytes(&[
            ("a", vec![2, 2], vec![1.0; 4]),
            ("c", vec![3], vec![0.5; 3]),
        ]);
        let reshaped =
            safetensors_bytes(&[("a", vec![4], vec![1.0; 4]), ("b", vec![3], vec![0.5; 3])]);
        let n = good().len();
        let cases: Vec<(&str, Vec<u8>, UploadFaults, &str)> = vec![
            ("NaN", nan, UploadFaults::default(), "non-finite value NaN"),
            (
                "Inf",
                inf,
                UploadFaults::default(),
                "tensor b: non-finite value inf",
            ),
            (
                "renamed",
                renamed,
                UploadFaults::default(),
                "unexpected tensor c",
            ),
            (
                "reshaped",
                reshaped,
                UploadFaults::default(),
                "tensor a: shape [4], expected [2, 2]",
            ),
            (
                "garbage",
                vec![7u8; 64],
                UploadFaults::default(),
                "not a safetensors file",
            ),
            (
                "digest",
                good(),
                UploadFaults {
                    digest: Some("00".repeat(32)),
                    ..Default::default()
                },
                "digest mismatch",
            ),
            (
                "truncated",
                good(),
                UploadFaults {
                    announce: Some(n as u64 + 8),
                    ..Default::default()
                },
                "truncated stream",
            ),
            (
                "oversized",
                good(),
                UploadFaults {
                    extra: 100,
                    ..Default::default()
                },
                "exceeds its announced size",
            ),
            (
                "no trailer",
                good(),
                UploadFaults {
                    stop_after: Some(n / 2),
                    ..Default::default()
                },
                "no trailer",
            ),
            (
                "too large",
                good(),
                UploadFaults {
                    announce: Some(60_000_000),
                    ..Default::default()
                },
                "exceeds the coordinator's limit",
            ),
        ];
        for (what, bytes, faults, expect) in cases {
            let e = b
                .upload(&tb.task_id, bytes, 10, faults)
                .await
                .expect_err(what);
            assert!(e.message().contains(expect), "{what}: {e:?}");
        }
        // Someone else's task, and a malformed id.
        let e = b
            .upload(&ta.task_id, good(), 10, UploadFaults::default())
            .await
            .expect_err("other site");
        assert!(e.message().contains("belongs to site emidec"), "{e:?}");
        let e = b
            .upload("nonsense", good(), 10, UploadFaults::default())
            .await
            .expect_err("bad id");
        assert!(e.message().contains("malformed task id"), "{e:?}");
        // None of the refused transfers left a file behind. Refused updates that arrived whole
        // also started an early aggregation, whose output is deleted off the reply's path:
        // give that a moment.
        let left = files_left_in(&incoming, Duration::from_secs(10)).await;
        assert!(left.is_empty(), "files left behind: {left:?}");

        // The round still takes the good update, closes, and a late one is stale.
        b.upload(&tb.task_id, good(), 30, UploadFaults::default())
            .await
            .expect("good update");
        let e = b
            .upload(&tb.task_id, good(), 30, UploadFaults::default())
            .await
            .expect_err("duplicate");
        assert!(
            e.message().contains("closed") || e.message().contains("duplicate"),
            "{e:?}"
        );
    });
    let status = fed.wait_job(&job, Duration::from_secs(30));
    assert_eq!(status.job.state, JobState::Done, "{}", status.render());
    let rejected = &status.stages[0].rounds[0].rejected;
    for reason in ["non-finite value NaN", "unexpected tensor c", "shape [4]"] {
        assert!(
            rejected
                .iter()
                .any(|r| r.contains(reason) && r.starts_with("mscmr")),
            "{rejected:?}"
        );
    }
}

#[test]
fn an_upload_cut_off_mid_stream_leaves_nothing_and_can_be_retried() {
    let mut fed = Fed::new(&["emidec"], 3, "");
    fed.start_coordinator();
    let job = fed.submit(&fedavg_plan(&["emidec"], 1, 600));
    let incoming = fed.state_dir().join("blobs/incoming");
    rt().block_on(async {
        let ep = fed.endpoint_for(Role::Site, "emidec");
        let mut site = FakeSite::connect(&ep).await;
        let task = site.next_task().await;
        // 40 MB, of which the connection carries a part before it is torn down.
        let big = safetensors_bytes(&[("w", vec![10_000_000], vec![0.25; 10_000_000])]);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let mut client = FakeSite::connect(&ep).await.client;
        // Raw parts, not `upload::upload_update`: this client sends without waiting for
        // `ready`, as a broken or hostile one might. Aborting the call resets the stream.
        let call = tokio::spawn(async move {
            let mut replies = client
                .upload_update(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            while replies.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        });
        use fedseg_proto::pb::{self, upload_part::Part};
        tx.send(pb::UploadPart {
            part: Some(Part::Header(pb::UploadHeader {
                task_id: task.task_id.clone(),
                size: big.len() as u64,
                sample_count: 5,
                ..Default::default()
            })),
        })
        .await
        .expect("send");
        for c in big.chunks(fedseg_proto::CHUNK_BYTES).take(8) {
            tx.send(pb::UploadPart {
                part: Some(Part::Chunk(c.to_vec().into())),
            })
            .await
            .expect("send");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        call.abort();
        drop(tx);
        let left = files_left_in(&incoming, Duration::from_secs(10)).await;
        assert!(left.is_empty(), "partial upload left behind: {left:?}");
        site.upload(&task.task_id, big, 5, UploadFaults::default())
            .await
            .expect("retry succeeds");
    });
    let status = fed.wait_job(&job, Duration::from_secs(30));
    assert_eq!(status.job.state, JobState::Done, "{}", status.render());
}

#[test]
fn a_model_of_half_a_gigabyte_goes_up_and_down_intact() {
    let mut fed = Fed::new(&["emidec"], 3, "");
    fed.start_coordinator();
    let job = fed.submit(&fedavg_plan(&["emidec"], 1, 600));
    rt().block_on(async {
        let ep = fed.endpoint_for(Role::Site, "emidec");
        let mut site = FakeSite::connect(&ep).await;
        let task = site.next_task().await;
        let n = 131_072_000; // 524 MB of f32
        let data: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 1e-3).collect();
        let bytes = safetensors_bytes(&[("big", vec![n], data)]);
        let size = bytes.len() as u64;
        assert!(size >= 500_000_000);
        let sha = site
            .upload(&task.task_id, bytes, 1, UploadFaults::default())
            .await
            .expect("upload");
        drop(sha);
        let status = fed.wait_job(&job, Duration::from_secs(120));
        assert_eq!(status.job.state, JobState::Done, "{}", status.render());
        // The aggregate of one update is that update; download it in chunks and compare.
        let version = status.stages[0].output.clone().expect("output");
        let mut stream = site
            .client
            .download_model(fedseg_proto::pb::DownloadRequest { version })
            .await
            .expect("download")
            .into_inner();
        let mut got = 0u64;
        let mut largest = 0usize;
        while let Some(c) = stream.message().await.expect("chunk") {
            got += c.data.len() as u64;
            largest = largest.max(c.data.len());
        }
        assert!(largest <= 4 << 20, "a chunk of {largest} bytes");
        assert!(got >= size, "downloaded {got} of {size} bytes");
    });
}
