//! What the metrics cost the code that records them, per HTTP request and per agent run,
//! with metrics on (Prometheus reader and a push reader, as `OTEL_METRICS_EXPORTER=otlp,prometheus`)
//! and off (`none`).
//!
//! - `http_request`: the active-request guard and one `http.server.request.duration` record,
//!   as the trace layer does for each request.
//! - `agent_run`: what the worker, runner and LLM client record for one three-step run with one
//!   chat: consumed, queue wait, three steps, one chat with tokens, the attempt and the
//!   processing time.
//!
//! Run: `cargo bench -p jobpilot-telemetry --bench metrics_cost`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use jobpilot_telemetry::metrics::{HttpRequest, RunOutcome};
use jobpilot_telemetry::{Metrics, Telemetry, TelemetryConfig, names};

fn telemetry(metrics: &str) -> Telemetry {
    let config = TelemetryConfig::from_lookup(|k| match k {
        "OTEL_TRACES_EXPORTER" => Some("none".into()),
        "OTEL_METRICS_EXPORTER" => Some(metrics.into()),
        // A collector that is not there: the push never happens within a run of the bench.
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT" => Some("http://127.0.0.1:9".into()),
        "OTEL_METRIC_EXPORT_INTERVAL" => Some("3600000".into()),
        _ => None,
    })
    .expect("a valid configuration");
    Telemetry::init(&config, names::SERVICE_API).expect("telemetry starts")
}

fn one_request(metrics: &Metrics, status: u16) {
    let active = metrics.http_request_started("GET", "http");
    metrics.record_http_request(
        &HttpRequest {
            method: "GET",
            route: "/api/v1/runs/{run_id}",
            scheme: "http",
            status,
            error_type: None,
        },
        black_box(Duration::from_micros(420)),
    );
    drop(active);
}

fn one_run(metrics: &Metrics, queue: &jobpilot_telemetry::metrics::QueueMetrics) {
    let llm_elapsed = black_box(Duration::from_millis(3));
    queue.consumed(1);
    queue.waited(black_box(Duration::from_millis(2)));
    for step in ["parse_resume", "check_sections", "suggest"] {
        metrics.record_step(
            "resume_review",
            step,
            true,
            black_box(Duration::from_micros(80)),
        );
    }
    metrics.record_run_attempt("resume_review", RunOutcome::Succeeded, llm_elapsed);
    queue.processed(llm_elapsed, None);
}

fn metrics_cost(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _entered = runtime.enter();
    for (label, kinds) in [("on", "otlp,prometheus"), ("off", "none")] {
        let telemetry = telemetry(kinds);
        let metrics = telemetry.metrics();
        let queue = metrics.queue("redis", "jobpilot:runs");
        let llm = metrics.llm("openai", "gpt-4o-mini", false);
        let mut group = c.benchmark_group(format!("metrics_{label}"));
        group.bench_function("http_request", |b| b.iter(|| one_request(&metrics, 200)));
        group.bench_function("agent_run", |b| {
            b.iter(|| {
                one_run(&metrics, &queue);
                llm.operation(Duration::from_millis(3), None);
                llm.tokens(Some(420), Some(90));
            })
        });
        group.finish();
        if let Some(text) = telemetry.prometheus() {
            let encoded = text.encode();
            eprintln!("metrics_{label}: one scrape is {} bytes", encoded.len());
        }
        runtime.block_on(async {
            let _ = telemetry.shutdown(Duration::from_millis(200)).await;
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = metrics_cost
}
criterion_main!(benches);
