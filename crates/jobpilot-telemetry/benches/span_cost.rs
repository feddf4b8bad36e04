//! What one span costs the code that makes it: start with 4 attributes, then end.
//!
//! - `otlp_pipeline`: through jobpilot's `Tracer` into the batch export pipeline, whose exporter
//!   discards the batches (so the cost measured is ours and the SDK's, not the network's).
//! - `disabled`: with `OTEL_SDK_DISABLED=true`, as a process runs with telemetry off.
//!
//! Run: `cargo bench -p jobpilot-telemetry --features testing --bench span_cost`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use jobpilot_telemetry::config::BatchConfig;
use jobpilot_telemetry::span::DEFAULT_MAX_VALUE_LEN;
use jobpilot_telemetry::{SpanKind, Telemetry, TelemetryConfig, TraceCx, Tracer, names, pipeline};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

/// Accepts every batch and forgets it.
#[derive(Debug)]
struct DiscardExporter;

impl SpanExporter for DiscardExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(black_box(batch));
        Ok(())
    }
}

fn one_span(tracer: &Tracer, parent: &TraceCx) {
    tracer
        .start(
            parent,
            "agent.job_match.parse_resume",
            SpanKind::Internal,
            vec![
                (names::USER_ID, "user-42".into()),
                (names::AGENT_TYPE, "job_match".into()),
                (names::STEP_NAME, "parse_resume".into()),
                (names::RUN_ID, 7_i64.into()),
            ],
        )
        .end();
}

fn span_cost(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _entered = runtime.enter();
    let parent = TraceCx::root();

    let mut group = c.benchmark_group("span_start_4_attrs_end");

    let (processor, handle) = pipeline::start(DiscardExporter, BatchConfig::default());
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .build();
    let tracer = Tracer::new(&provider, names::SCOPE_AGENTS, DEFAULT_MAX_VALUE_LEN);
    group.bench_function("otlp_pipeline", |b| b.iter(|| one_span(&tracer, &parent)));
    let stats = handle.stats();
    eprintln!(
        "otlp_pipeline: exported {}, dropped {}, queued {}",
        stats.exported, stats.dropped, stats.queued
    );

    let disabled =
        TelemetryConfig::from_lookup(|k| (k == "OTEL_SDK_DISABLED").then(|| "true".to_owned()))
            .expect("a valid configuration");
    let telemetry = Telemetry::init(&disabled, names::SERVICE_API).expect("telemetry starts");
    let tracer = telemetry.tracer(names::SCOPE_AGENTS);
    group.bench_function("disabled", |b| b.iter(|| one_span(&tracer, &parent)));

    group.finish();
    runtime.block_on(async {
        let _ = handle.shutdown(Duration::from_secs(5)).await;
        let _ = telemetry.shutdown(Duration::from_secs(5)).await;
    });
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = short();
    targets = span_cost
}
criterion_main!(benches);
