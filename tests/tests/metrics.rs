//! The coordinator's Prometheus metrics and health checks while a two-site federated job
//! runs: /metrics and /healthz over plain HTTP (the round counter advances with the job,
//! bytes move both ways, both sites count as connected) and the standard gRPC health service
//! on the mutual-TLS port.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use fedseg_coordinator::pki::Role;
use fedseg_tests::Fed;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// grpc.health.v1 Check over mutual TLS with `site`'s certificate (as a probe would).
fn grpc_health(fed: &Fed, site: &str, service: &str) -> Result<ServingStatus, tonic::Status> {
    let ep = fed.endpoint_for(Role::Site, site);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut client = HealthClient::new(ep.channel().await.expect("channel"));
        let reply = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?;
        Ok(ServingStatus::try_from(reply.into_inner().status).unwrap_or(ServingStatus::Unknown))
    })
}

fn get_once(port: u16, path: &str) -> std::io::Result<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))?;
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// One scrape. The request goes out in several writes (`write!` writes piece by piece), as
/// some clients do: the server must read the whole head before it answers (it once answered
/// after the first segment and closed, which reset the connection under the client).
fn get(port: u16, path: &str) -> (String, String) {
    get_once(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

/// The value of the sample whose name and labels start with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_follow_a_running_job() {
    let mut fed = Fed::new(&["emidec", "mscmr"], 4, "");
    let port = fed.enable_http();
    // The emidec agent serves its own metrics; [federation] is the last section of site.toml.
    let agent_port = fed.other_free_port(&[port]);
    let site_toml = fed.site_config("emidec");
    let mut text = std::fs::read_to_string(&site_toml).expect("site.toml");
    text.push_str(&format!("http_listen = \"127.0.0.1:{agent_port}\"\n"));
    std::fs::write(&site_toml, text).expect("site.toml");
    // Logs as JSON lines, as a log collector would take them.
    fed.env.push(("FEDSEG_LOG_FORMAT".into(), "json".into()));
    fed.start_all();
    // The agent binds its listener as it starts; nothing waits for that the way
    // start_coordinator waits for the coordinator's "listening" line.
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "agent metrics never listened\n{}",
            fed.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = get(port, "/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let job = fed.submit(
        r#"
name = "metrics"
model = "tiny"
[defaults]
epochs = 1
batch_size = 4
augment = "none"
[[stage]]
name = "fed"
kind = "fedavg"
sites = ["emidec", "mscmr"]
rounds = 3
"#,
    );
    let rounds = format!("fedseg_rounds_closed_total{{job=\"{job}\",stage=\"fed\"}}");
    let mut seen = Vec::new();
    let mut health_checked = false;
    let mut agent_states = std::collections::BTreeSet::new();
    let mut agent_throughput: f64 = 0.0;
    let start = Instant::now();
    loop {
        let (status, m) = get(port, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let n = sample(&m, &rounds).unwrap_or(0.0);
        if seen.last() != Some(&n) {
            seen.push(n);
        }
        if seen.len() == 2 && !health_checked {
            health_checked = true;
            // Mid-job, over mutual TLS: the whole server and each service answer SERVING.
            for service in ["", "fedseg.v1.Site", "fedseg.v1.Admin"] {
                let s = grpc_health(&fed, "emidec", service);
                assert_eq!(
                    s.as_ref().ok(),
                    Some(&ServingStatus::Serving),
                    "service {service:?}: {s:?}"
                );
            }
            let unknown = grpc_health(&fed, "emidec", "no.such.Service");
            assert_eq!(unknown.err().map(|e| e.code()), Some(tonic::Code::NotFound));
        }
        let (status, a) = get(agent_port, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        for st in ["idle", "downloading", "training", "uploading"] {
            if sample(&a, &format!("fedseg_agent_task_state{{state=\"{st}\"}}")) == Some(1.0) {
                agent_states.insert(st);
            }
        }
        agent_throughput =
            agent_throughput.max(sample(&a, "fedseg_agent_train_slices_per_second").unwrap_or(0.0));
        if n >= 3.0 || start.elapsed() > Duration::from_secs(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Scraped while it ran: the count went up round by round, never down.
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&3.0), "{seen:?}\n{}", fed.logs());
    assert!(seen.len() >= 3, "saw the count advance only as {seen:?}");
    assert!(health_checked, "gRPC health was not checked mid-job");

    let done = fed.wait_job(&job, Duration::from_secs(60));
    assert_eq!(format!("{:?}", done.job.state), "Done");
    let (_, m) = get(port, "/metrics");
    assert_eq!(sample(&m, "fedseg_sites_connected"), Some(2.0), "{m}");
    assert_eq!(sample(&m, "fedseg_jobs{state=\"done\"}"), Some(1.0), "{m}");
    assert!(
        sample(&m, "fedseg_bytes_received_total").unwrap_or(0.0) > 10_000.0,
        "{m}"
    );
    assert!(
        sample(&m, "fedseg_bytes_sent_total").unwrap_or(0.0) > 10_000.0,
        "{m}"
    );
    let stage = format!("fedseg_stage_state{{job=\"{job}\",stage=\"fed\",state=\"done\"}}");
    assert_eq!(sample(&m, &stage), Some(1.0), "{m}");
    let aggregate =
        format!("fedseg_round_phase_seconds{{job=\"{job}\",stage=\"fed\",phase=\"aggregate\"}}");
    assert!(sample(&m, &aggregate).is_some(), "{m}");
    assert_eq!(get(port, "/nothing").0, "HTTP/1.1 404 Not Found");

    // The agent: seen training with a throughput, three results delivered, still connected.
    assert!(agent_states.contains("training"), "{agent_states:?}");
    assert!(agent_throughput > 0.0, "no training throughput reported");
    let (status, a) = get(agent_port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(sample(&a, "fedseg_agent_connected"), Some(1.0), "{a}");
    assert_eq!(
        sample(&a, "fedseg_agent_tasks_total{result=\"delivered\"}"),
        Some(3.0),
        "{a}"
    );
    assert_eq!(
        sample(&a, "fedseg_agent_tasks_total{result=\"failed\"}"),
        Some(0.0)
    );
    for name in ["coordinator", "emidec"] {
        let log = fed.log(name);
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
            .collect();
        assert!(lines.len() > 3, "{name}: {log}");
        for l in &lines {
            assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
        }
        let joined = lines.iter().any(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("joined") || m.contains("listening"))
        });
        assert!(joined, "{name}: {log}");
    }
    let (status, body) = get(agent_port, "/healthz");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok: connected\n")
    );
}
