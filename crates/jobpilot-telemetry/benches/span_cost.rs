//! What one span costs the process, every thread counted: start with 4 attributes, end, and
//! export.
//!
//! Each configuration ends `SPANS` spans (default 200,000) from the main thread through
//! jobpilot's `Tracer` into the batch export pipeline, then flushes the pipeline, and divides
//! the CPU time the whole process used meanwhile by the number of spans: user + system time
//! of every thread, summed from `/proc/self/task/*/schedstat` (nanoseconds; the same time as
//! `getrusage(RUSAGE_SELF)`, which the workspace's `unsafe_code = "forbid"` keeps out of
//! reach), so the runtime thread where the export task encodes the batches is counted. The
//! CPU time of the thread that ended the spans (`/proc/thread-self/schedstat`) is reported
//! next to it: that is all a timing of the caller, such as a criterion loop, can see. Their
//! difference is the export side.
//!
//! Configurations (the exporter at the end of the pipeline):
//! - `otlp_encode`: encodes every batch as an OTLP `ExportTraceServiceRequest` with the encoder
//!   of the gRPC exporter, then drops the bytes: everything but the network.
//! - `proto_then_prost`: the records made into the SDK's `SpanData`, then the encoding of
//!   `opentelemetry-otlp` (copy of the batch, conversion to `opentelemetry-proto` structs,
//!   prost): the path of the OTLP HTTP exporter, for comparison.
//! - `discard`: drops the batches (the pipeline alone).
//! - `disabled`: telemetry off (`OTEL_SDK_DISABLED=true`); nothing is exported.
//!
//! Spans are ended in bursts of 1,024; when more than 16,384 wait in the queue the caller
//! sleeps (which costs no CPU) so that none is dropped. Each configuration runs `ROUNDS` times
//! (default 5) after one warm-up round; the table shows medians.
//!
//! Run: `cargo bench -p jobpilot-telemetry --bench span_cost` (`SPANS=`, `ROUNDS=` to change).

use std::hint::black_box;
use std::time::{Duration, Instant};

use jobpilot_telemetry::config::BatchConfig;
use jobpilot_telemetry::otlp_encode::TraceRequestEncoder;
use jobpilot_telemetry::pipeline::{self, BatchExporter, PipelineHandle};
use jobpilot_telemetry::span::DEFAULT_MAX_VALUE_LEN;
use jobpilot_telemetry::{
    Recorder, SpanKind, SpanRecord, Telemetry, TelemetryConfig, TraceCx, Tracer, names,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SpanData};
use prost::Message as _;

/// Accepts every batch and forgets it.
#[derive(Debug)]
struct Discard;

impl BatchExporter for Discard {
    async fn export(&self, batch: Vec<SpanRecord>) -> OTelSdkResult {
        drop(black_box(batch));
        Ok(())
    }
}

/// Encodes every batch as jobpilot's gRPC exporter does, then drops the bytes.
#[derive(Debug)]
struct OtlpEncode(TraceRequestEncoder);

impl BatchExporter for OtlpEncode {
    async fn export(&self, batch: Vec<SpanRecord>) -> OTelSdkResult {
        black_box(self.0.encode_to_vec(&batch));
        Ok(())
    }
}

/// Encodes every batch as `opentelemetry-otlp`'s gRPC exporter does before sending it.
#[derive(Debug)]
struct ProtoThenProst(ResourceAttributesWithSchema);

impl BatchExporter for ProtoThenProst {
    async fn export(&self, batch: Vec<SpanRecord>) -> OTelSdkResult {
        let batch: Vec<SpanData> = batch.into_iter().map(SpanRecord::into_span_data).collect();
        let copy = batch.clone(); // the exporter keeps the batch for retries and converts a copy
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(copy, &self.0),
        };
        black_box(request.encode_to_vec());
        drop(batch);
        Ok(())
    }
}

/// Builds a recorder whose spans go through a pipeline to one of the exporters above.
type MakePipeline = Box<dyn Fn() -> (Recorder, PipelineHandle)>;

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

/// Time on a CPU (user + system) of one thread, from its `schedstat` (nanoseconds).
fn schedstat(path: &std::path::Path) -> Duration {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// CPU time of every thread of this process.
fn process_cpu() -> Duration {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(Result::ok)
        .map(|task| schedstat(&task.path().join("schedstat")))
        .sum()
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    schedstat(std::path::Path::new("/proc/thread-self/schedstat"))
}

struct Measured {
    process_ns: f64,
    caller_ns: f64,
    wall_ns: f64,
}

/// Ends `n` spans and waits until the pipeline (if any) has exported them.
fn measure(
    runtime: &tokio::runtime::Runtime,
    tracer: &Tracer,
    handle: Option<&PipelineHandle>,
    n: usize,
) -> Measured {
    let parent = TraceCx::root();
    let before = handle.map(PipelineHandle::stats);
    let (p0, t0, w0) = (process_cpu(), thread_cpu(), Instant::now());
    let mut done = 0;
    while done < n {
        let burst = 1024.min(n - done);
        for _ in 0..burst {
            one_span(tracer, &parent);
        }
        done += burst;
        if let Some(h) = handle {
            // Keep the queue under its bound, so that the figure is what a span costs and
            // not how a saturated pipeline drops: the producer outruns any exporter.
            while h.stats().queued > BatchConfig::default().max_queue_size / 2 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    if let Some(h) = handle {
        runtime
            .block_on(h.flush(Duration::from_secs(60)))
            .expect("the pipeline flushes");
    }
    let (p1, t1, w1) = (process_cpu(), thread_cpu(), Instant::now());
    if let (Some(h), Some(before)) = (handle, before) {
        let after = h.stats();
        assert_eq!(after.exported - before.exported, n as u64, "{after:?}");
        assert_eq!(after.dropped, 0, "no span may be dropped: {after:?}");
    }
    let per = |d: Duration| d.as_nanos() as f64 / n as f64;
    Measured {
        process_ns: per(p1 - p0),
        caller_ns: per(t1 - t0),
        wall_ns: per(w1 - w0),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run once, small.
    let benching = std::env::args().any(|a| a == "--bench");
    let n = env_usize("SPANS", if benching { 200_000 } else { 2_000 });
    let rounds = env_usize("ROUNDS", if benching { 5 } else { 1 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _entered = runtime.enter();
    let resource = Resource::builder_empty()
        .with_service_name("span-cost")
        .build();

    println!(
        "span start (4 attributes) + end + export, {n} spans per round, median of {rounds} rounds"
    );
    println!();
    println!(
        "| exporter | process CPU ns/span (all threads) | caller thread ns/span | export side ns/span | wall ns/span |"
    );
    println!("|---|---:|---:|---:|---:|");

    let configs: [(&str, Option<MakePipeline>); 4] = [
        (
            "otlp_encode",
            Some(Box::new({
                let r = resource.clone();
                move || with_pipeline(OtlpEncode(TraceRequestEncoder::new(&r)))
            })),
        ),
        (
            "proto_then_prost",
            Some(Box::new({
                let r = resource.clone();
                move || with_pipeline(ProtoThenProst((&r).into()))
            })),
        ),
        ("discard", Some(Box::new(|| with_pipeline(Discard)))),
        ("disabled", None),
    ];
    for (name, make) in configs {
        let (tracer, handle, telemetry) = match make {
            Some(make) => {
                let (recorder, handle) = make();
                let tracer = Tracer::new(&recorder, names::SCOPE_AGENTS, DEFAULT_MAX_VALUE_LEN);
                (tracer, Some(handle), None)
            }
            None => {
                let disabled = TelemetryConfig::from_lookup(|k| {
                    (k == "OTEL_SDK_DISABLED").then(|| "true".to_owned())
                })
                .expect("a valid configuration");
                let telemetry =
                    Telemetry::init(&disabled, names::SERVICE_API).expect("telemetry starts");
                (telemetry.tracer(names::SCOPE_AGENTS), None, Some(telemetry))
            }
        };
        measure(&runtime, &tracer, handle.as_ref(), n.min(50_000)); // warm-up
        let runs: Vec<Measured> = (0..rounds)
            .map(|_| measure(&runtime, &tracer, handle.as_ref(), n))
            .collect();
        let process = median(runs.iter().map(|m| m.process_ns).collect());
        let caller = median(runs.iter().map(|m| m.caller_ns).collect());
        let wall = median(runs.iter().map(|m| m.wall_ns).collect());
        println!(
            "| {name} | {process:.0} | {caller:.0} | {:.0} | {wall:.0} |",
            process - caller
        );
        runtime.block_on(async {
            if let Some(h) = &handle {
                let _ = h.shutdown(Duration::from_secs(5)).await;
            }
            if let Some(t) = telemetry {
                let _ = t.shutdown(Duration::from_secs(5)).await;
            }
        });
    }
    println!();
    println!("export side = process - caller thread: the pipeline's task and the exporter, on the");
    println!("runtime's thread. The process figure also holds the runtime's own wake-ups.");
}

fn with_pipeline<E: BatchExporter>(exporter: E) -> (Recorder, PipelineHandle) {
    let (sink, handle) = pipeline::start(exporter, BatchConfig::default());
    let recorder = Recorder::builder(Sampler::AlwaysOn).with_sink(sink).build();
    (recorder, handle)
}
