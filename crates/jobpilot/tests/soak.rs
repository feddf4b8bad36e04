//! Sustained load with OTLP export on: API requests and agent runs for a minute through
//! `jobpilot api` + `jobpilot worker` + Redis. No error, no span lost while the collector keeps
//! up, memory flat after warm-up. The figures go to docs/reliability.md.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jobpilot_telemetry::SpanKind;
use jobpilot_telemetry::testing::OtlpReceiver;
use serde_json::json;
use support::*;

const LOAD: Duration = Duration::from_secs(60);
const WARM_UP: Duration = Duration::from_secs(15);
const READERS: usize = 4;
const SUBMITTERS: usize = 2;
/// Upper bound on requests, whatever the speed of the machine.
const MAX_REQUESTS: u64 = 400_000;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute of sustained load; ./scripts/test.sh runs it"]
async fn a_minute_of_load_loses_nothing_and_memory_stays_flat() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let prefix = unique_prefix("soak");
    let listen = format!("127.0.0.1:{}", free_port());
    let redis = redis_url();
    let endpoint = receiver.endpoint();
    let shared = [
        ("REDIS_URL", redis.as_str()),
        ("JOBPILOT_REDIS_PREFIX", prefix.as_str()),
        ("OTEL_EXPORTER_ENDPOINT", endpoint.as_str()),
        ("JOBPILOT_LOG", "warn"),
    ];
    let mut api_env = shared.to_vec();
    api_env.push(("JOBPILOT_LISTEN", &listen));
    let api = Jobpilot::start(&["api"], &base_env(&api_env));
    let worker = Jobpilot::start(&["worker"], &base_env(&shared));
    let base = api.base.clone().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();

    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (client, base, stop, sent, errors) = (
            client.clone(),
            base.clone(),
            stop.clone(),
            sent.clone(),
            errors.clone(),
        );
        readers.push(tokio::spawn(async move {
            let token = token("soak-reader");
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed)
                && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
            {
                let t = Instant::now();
                match client
                    .get(format!("{base}/api/v1/agents"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => latencies.push(t.elapsed()),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut submitters = Vec::new();
    for n in 0..SUBMITTERS {
        let (client, base, stop, errors) =
            (client.clone(), base.clone(), stop.clone(), errors.clone());
        submitters.push(tokio::spawn(async move {
            let token = token("soak-runner");
            let mut runs = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                i += 1;
                let res = client
                    .post(format!("{base}/api/v1/agents/job_match/runs"))
                    .bearer_auth(&token)
                    .json(&json!({"input": {
                        "resume": format!("Experience: Rust engineer {n}-{i}, Kubernetes, AWS"),
                        "job": "Rust developer\nRequirements: Rust, Kubernetes"}}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 202 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        runs.push(body["run_id"].as_str().unwrap().to_owned());
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Runs are heavier than reads: keep them a steady stream, not a flood.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            runs
        }));
    }

    // Sample memory while the load runs.
    let (api_pid, worker_pid) = (api.child.id(), worker.child.id());
    let mut samples: Vec<(Duration, u64, u64)> = Vec::new();
    while started.elapsed() < LOAD {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push((started.elapsed(), rss_kib(api_pid), rss_kib(worker_pid)));
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();

    let mut latencies = Vec::new();
    for r in readers {
        latencies.extend(r.await.unwrap());
    }
    let mut runs = Vec::new();
    for s in submitters {
        runs.extend(s.await.unwrap());
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "requests failed under load"
    );

    // Every run finishes, and succeeds.
    let drain_started = Instant::now();
    for run in &runs {
        let r = wait_finished(&base, "soak-runner", run, Duration::from_secs(120)).await;
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    let runs_done = elapsed + drain_started.elapsed();

    // No span lost: one server span per request, one consumer span per run.
    let reads = latencies.len();
    let expected_runs = runs.len();
    let spans = receiver
        .wait_for(Duration::from_secs(60), |spans| {
            spans
                .iter()
                .filter(|s| s.name == "GET /api/v1/agents")
                .count()
                >= reads
                && spans
                    .iter()
                    .filter(|s| s.kind == SpanKind::Consumer)
                    .count()
                    >= expected_runs
        })
        .await;
    let got_reads = spans
        .iter()
        .filter(|s| s.name == "GET /api/v1/agents")
        .count();
    let got_runs = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Consumer)
        .count();
    assert_eq!(got_reads, reads, "server spans of reads");
    assert_eq!(got_runs, expected_runs, "consumer spans of runs");
    let url = format!("{base}/api/v1/admin/telemetry");
    let (_, stats) = get_json(&url, Some(&admin_token("ops"))).await;
    assert_eq!(stats["stats"]["dropped"], 0, "{stats}");

    // Memory is flat after warm-up: the last sample is within a generous margin of the first
    // sample taken after warm-up.
    let after_warm_up = samples.iter().find(|(t, _, _)| *t >= WARM_UP).unwrap();
    let last = samples.last().unwrap();
    for (name, warm, end) in [
        ("api", after_warm_up.1, last.1),
        ("worker", after_warm_up.2, last.2),
    ] {
        assert!(
            end <= warm + warm / 2 + 20 * 1024,
            "{name} memory grew from {warm} KiB to {end} KiB: {samples:?}"
        );
    }

    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    let peak_api = samples.iter().map(|s| s.1).max().unwrap();
    let peak_worker = samples.iter().map(|s| s.2).max().unwrap();
    eprintln!(
        "FIGURE soak_seconds={:.0} requests={} requests_per_s={:.0} read_p50_ms={:.2} read_p99_ms={:.2} runs={} runs_per_s={:.1} spans_received={} dropped=0 api_peak_rss_mib={:.1} worker_peak_rss_mib={:.1} api_rss_after_warmup_mib={:.1} api_rss_end_mib={:.1}",
        elapsed.as_secs_f64(),
        reads,
        reads as f64 / elapsed.as_secs_f64(),
        p(0.5),
        p(0.99),
        expected_runs,
        expected_runs as f64 / runs_done.as_secs_f64(),
        spans.len(),
        peak_api as f64 / 1024.0,
        peak_worker as f64 / 1024.0,
        after_warm_up.1 as f64 / 1024.0,
        last.1 as f64 / 1024.0,
    );
}
