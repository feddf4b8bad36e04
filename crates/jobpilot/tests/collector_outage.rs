//! The collector down, hanging, or back: requests keep their latency, losses are counted and
//! visible to an admin, logged once rather than per span, and export resumes by itself.

mod support;

use std::time::{Duration, Instant};

use jobpilot_telemetry::testing::{OtlpReceiver, ReceiverMode};
use serde_json::Value;
use support::*;

/// Sends `n` authenticated requests one after another; returns their latencies, sorted.
async fn latencies(base: &str, n: usize) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let token = token("ops-check");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let res = client
            .get(format!("{base}/api/v1/agents"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        out.push(started.elapsed());
    }
    out.sort();
    out
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn telemetry_stats(base: &str) -> Value {
    let url = format!("{base}/api/v1/admin/telemetry");
    get_json(&url, Some(&admin_token("ops"))).await.1
}

async fn wait_stats(base: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let stats = telemetry_stats(base).await;
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_costs_requests_nothing_and_export_resumes_when_it_returns() {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let (serve, _data) = serve(&[
        ("OTEL_EXPORTER_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
    ]);
    let base = serve.base.clone().unwrap();

    let down = latencies(&base, 300).await;
    let stats = wait_stats(&base, Duration::from_secs(20), |s| {
        s["stats"]["dropped"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(stats["exporter"], "otlp-grpc");
    assert!(stats["stats"]["dropped"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        stats["stats"]["failed_exports"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(stats["stats"]["last_error"].is_string(), "{stats}");

    // The collector comes back on its port: export resumes without a restart.
    let receiver = OtlpReceiver::start_on(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    let up = latencies(&base, 300).await;
    let spans = receiver
        .wait_for(Duration::from_secs(30), |spans| {
            spans
                .iter()
                .filter(|s| s.name == "GET /api/v1/agents")
                .count()
                >= 50
        })
        .await;
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "GET /api/v1/agents")
            .count()
            >= 50,
        "export did not resume: {} spans",
        spans.len()
    );
    let stats = telemetry_stats(&base).await;
    assert!(
        stats["stats"]["exported"].as_u64().unwrap() >= 50,
        "{stats}"
    );

    eprintln!(
        "FIGURE collector_down_p50_ms={:.2} collector_down_p99_ms={:.2} collector_up_p50_ms={:.2} collector_up_p99_ms={:.2}",
        pct(&down, 0.5),
        pct(&down, 0.99),
        pct(&up, 0.5),
        pct(&up, 0.99)
    );
    let warnings = serve
        .stderr()
        .lines()
        .filter(|l| l.contains("span export is losing spans"))
        .count();
    assert!(
        (1..=3).contains(&warnings),
        "losses are logged once per interval, not per span: {warnings} lines"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_collector_neither_slows_requests_nor_blocks_shutdown() {
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.set_mode(ReceiverMode::Hang);
    let (mut serve, _data) = serve(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ("JOBPILOT_SHUTDOWN_GRACE_SECS", "2"),
    ]);
    let base = serve.base.clone().unwrap();
    let hanging = latencies(&base, 300).await;
    let stats = wait_stats(&base, Duration::from_secs(20), |s| {
        s["stats"]["failed_exports"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert!(
        stats["stats"]["failed_exports"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(receiver.requests() > 0, "the exporter did try");

    let started = Instant::now();
    let code = serve.terminate(Duration::from_secs(20));
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{}", serve.stderr());
    eprintln!(
        "FIGURE collector_hang_p50_ms={:.2} collector_hang_p99_ms={:.2} shutdown_with_hanging_collector_s={:.2}",
        pct(&hanging, 0.5),
        pct(&hanging, 0.99),
        took.as_secs_f64()
    );
}
