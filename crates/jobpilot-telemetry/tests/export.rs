//! Export end to end: spans made through `Telemetry` travel over real OTLP (gRPC, HTTP, through a
//! real collector) to an in-process receiver, and the pipeline's counters tell the truth when the
//! backend is down, hanging or slow.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use jobpilot_telemetry::http_receiver::OtlpHttpReceiver;
use jobpilot_telemetry::testing::{CapturedSpan, OtlpReceiver, ReceiverMode};
use jobpilot_telemetry::{AttrValue, SpanKind, Telemetry, TraceCx, Tracer, names};
use support::{Rotel, config, free_port};

/// Long enough for any export on a loaded 2-core machine; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

async fn receiver() -> OtlpReceiver {
    OtlpReceiver::start()
        .await
        .expect("start the in-process OTLP receiver")
}

fn start(vars: &[(&str, &str)]) -> Telemetry {
    Telemetry::init(&config(vars), names::SERVICE_API).expect("telemetry starts")
}

async fn flush(telemetry: &Telemetry) {
    telemetry
        .pipeline()
        .expect("an OTLP configuration has an export pipeline")
        .flush(PATIENCE)
        .await
        .expect("flush finishes");
}

fn named<'a>(spans: &'a [CapturedSpan], name: &str) -> Vec<&'a CapturedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn count_named(spans: &[CapturedSpan], name: &str) -> usize {
    spans.iter().filter(|s| s.name == name).count()
}

/// Ends `n` root INTERNAL spans named `name`, each with its number in `seq`.
fn end_numbered(tracer: &Tracer, name: &'static str, n: usize) {
    for i in 0..n {
        tracer
            .start(
                &TraceCx::root(),
                name,
                SpanKind::Internal,
                vec![("seq", i.into())],
            )
            .end();
    }
}

fn resource_str<'a>(span: &'a CapturedSpan, key: &str) -> Option<&'a str> {
    match span.resource.get(key) {
        Some(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

/// Ends a SERVER span with a child INTERNAL span under it, as one small trace, and returns the
/// trace id.
fn end_small_trace(telemetry: &Telemetry) -> String {
    let tracer = telemetry.tracer(names::SCOPE_HTTP);
    let root = tracer.start(
        &TraceCx::root(),
        "POST /api/v1/agents/{agent_type}/runs",
        SpanKind::Server,
        vec![
            ("http.request.method", "POST".into()),
            ("http.response.status_code", 202_i64.into()),
            (names::USER_ID, "user-42".into()),
        ],
    );
    let step = tracer.start(
        &root.cx(),
        "agent.job_match.parse_resume",
        SpanKind::Internal,
        vec![(names::STEP_NAME, "parse_resume".into())],
    );
    let trace_id = root.trace_id();
    step.finish(true);
    root.end();
    trace_id
}

/// Checks that the two spans of [`end_small_trace`] arrived intact, and returns the root.
fn assert_small_trace_arrived(spans: &[CapturedSpan], trace_id: &str) -> CapturedSpan {
    let roots = named(spans, "POST /api/v1/agents/{agent_type}/runs");
    let steps = named(spans, "agent.job_match.parse_resume");
    assert_eq!(roots.len(), 1, "one server span arrives: {spans:#?}");
    assert_eq!(steps.len(), 1, "one step span arrives: {spans:#?}");
    let (root, step) = (roots[0], steps[0]);

    assert_eq!(root.trace_id, trace_id);
    assert_eq!(step.trace_id, trace_id, "both spans share the trace");
    assert_eq!(root.parent_span_id, None, "the server span is a root");
    assert_eq!(
        step.parent_span_id.as_deref(),
        Some(root.span_id.as_str()),
        "the step is a child of the server span"
    );
    assert_eq!(root.kind, SpanKind::Server);
    assert_eq!(step.kind, SpanKind::Internal);
    assert_eq!(root.scope, names::SCOPE_HTTP);
    assert_eq!(root.str_attr("http.request.method"), Some("POST"));
    assert_eq!(root.i64_attr("http.response.status_code"), Some(202));
    assert_eq!(root.str_attr(names::USER_ID), Some("user-42"));
    assert_eq!(step.str_attr(names::STEP_NAME), Some("parse_resume"));
    assert_eq!(step.bool_attr(names::SUCCESS), Some(true));
    assert!(
        matches!(step.attr(names::DURATION_MS), Some(AttrValue::F64(_))),
        "the step carries its duration: {step:#?}"
    );
    root.clone()
}

// --- OTLP gRPC straight to the receiver ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_exported_over_grpc_arrive_with_names_attributes_and_parents() {
    let receiver = receiver().await;
    let telemetry = start(&[("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint())]);
    assert_eq!(telemetry.exporter_kind(), "otlp-grpc");

    let trace_id = end_small_trace(&telemetry);
    flush(&telemetry).await;
    let spans = receiver.wait_for(PATIENCE, |s| s.len() >= 2).await;

    let root = assert_small_trace_arrived(&spans, &trace_id);
    assert_eq!(
        root.service_name.as_deref(),
        Some(names::SERVICE_API),
        "the default service name is the one the process passes"
    );
    assert_eq!(
        resource_str(&root, "deployment.environment.name"),
        Some("development"),
        "JOBPILOT_ENV defaults to development"
    );
    assert_eq!(
        resource_str(&root, "service.version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(telemetry.stats().exported, 2);
    telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resource_takes_service_name_attributes_and_environment_from_the_configuration() {
    let receiver = receiver().await;
    let telemetry = start(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("OTEL_SERVICE_NAME", "jobpilot-canary"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "team=search,cloud.region=eu%2Dwest-1,service.name=ignored",
        ),
        ("JOBPILOT_ENV", "staging"),
    ]);
    assert_eq!(telemetry.service_name(), "jobpilot-canary");

    let trace_id = end_small_trace(&telemetry);
    flush(&telemetry).await;
    let spans = receiver.wait_for(PATIENCE, |s| s.len() >= 2).await;

    let root = assert_small_trace_arrived(&spans, &trace_id);
    assert_eq!(
        root.service_name.as_deref(),
        Some("jobpilot-canary"),
        "OTEL_SERVICE_NAME wins over the default and over OTEL_RESOURCE_ATTRIBUTES"
    );
    assert_eq!(resource_str(&root, "team"), Some("search"));
    assert_eq!(
        resource_str(&root, "cloud.region"),
        Some("eu-west-1"),
        "resource attribute values are percent-decoded"
    );
    assert_eq!(
        resource_str(&root, "deployment.environment.name"),
        Some("staging")
    );
    telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
}

/// Exports a small trace over gRPC with `compression` (unset when `None`) and returns the
/// `grpc-encoding` of every request the receiver got.
async fn grpc_encodings_with(compression: Option<&str>) -> Vec<Option<String>> {
    let receiver = receiver().await;
    let endpoint = receiver.endpoint();
    let mut vars = vec![("OTEL_EXPORTER_ENDPOINT", endpoint.as_str())];
    if let Some(c) = compression {
        vars.push(("OTEL_EXPORTER_OTLP_COMPRESSION", c));
    }
    let telemetry = start(&vars);
    let trace_id = end_small_trace(&telemetry);
    flush(&telemetry).await;
    let spans = receiver.wait_for(PATIENCE, |s| s.len() >= 2).await;
    assert_small_trace_arrived(&spans, &trace_id);
    let stats = telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
    assert_eq!((stats.exported, stats.dropped), (2, 0));
    receiver.encodings()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exports_are_gzip_on_the_wire_when_configured_and_plain_otherwise() {
    let gzip = grpc_encodings_with(Some("gzip")).await;
    assert!(!gzip.is_empty());
    assert!(
        gzip.iter().all(|e| e.as_deref() == Some("gzip")),
        "{gzip:?}"
    );
    let plain = grpc_encodings_with(None).await;
    assert!(!plain.is_empty());
    assert!(plain.iter().all(Option::is_none), "{plain:?}");
    let none = grpc_encodings_with(Some("none")).await;
    assert!(none.iter().all(Option::is_none), "{none:?}");
}

/// Exports a small trace over HTTP with `protocol` and `compression`; returns what arrived.
async fn http_exports_with(
    protocol: &str,
    compression: Option<&str>,
) -> Vec<jobpilot_telemetry::http_receiver::HttpExport> {
    let receiver = OtlpHttpReceiver::start().await.expect("start the receiver");
    let base = receiver.base_url();
    let mut vars = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        // Only the spans' requests are looked at here: the endpoint would get metrics too.
        ("OTEL_METRICS_EXPORTER", "none"),
    ];
    if let Some(c) = compression {
        vars.push(("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", c));
    }
    let telemetry = start(&vars);
    end_small_trace(&telemetry);
    flush(&telemetry).await;
    let stats = telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
    assert_eq!((stats.exported, stats.dropped), (2, 0), "{stats:?}");
    let exports = receiver.exports();
    assert!(!exports.is_empty());
    for e in &exports {
        assert_eq!(e.path, "/v1/traces");
    }
    exports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_exports_are_gzip_on_the_wire_when_configured_and_plain_otherwise() {
    for protocol in ["http/protobuf", "http/json"] {
        let gzip = http_exports_with(protocol, Some("gzip")).await;
        assert!(
            gzip.iter()
                .all(|e| e.header("content-encoding") == Some("gzip")),
            "{protocol}: {gzip:?}"
        );
        let plain = http_exports_with(protocol, None).await;
        assert!(
            plain.iter().all(|e| e.header("content-encoding").is_none()),
            "{protocol}: {plain:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_sends_otlp_json_bodies() {
    let exports = http_exports_with("http/json", None).await;
    let names: Vec<String> = exports
        .iter()
        .map(|e| {
            assert_eq!(e.header("content-type"), Some("application/json"));
            e.json.as_ref().expect("a JSON body").to_string()
        })
        .collect();
    let body = names.join("\n");
    assert!(body.contains("resourceSpans"), "{body}");
    assert!(
        body.contains("POST /api/v1/agents/{agent_type}/runs"),
        "{body}"
    );
    let protobuf = http_exports_with("http/protobuf", None).await;
    assert_eq!(
        protobuf[0].header("content-type"),
        Some("application/x-protobuf")
    );
    assert_eq!(protobuf.iter().map(|e| e.spans.len()).sum::<usize>(), 2);
}

// --- Through a real collector ----------------------------------------------------------------

/// Starts rotel in front of a receiver, exports a small trace to rotel's `endpoint` with
/// `protocol`, and checks that it comes out the other side.
async fn assert_delivered_through_rotel(endpoint: impl Fn(&Rotel) -> String, protocol: &str) {
    let receiver = receiver().await;
    let rotel = Rotel::start(&receiver.endpoint());
    let telemetry = start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint(&rotel)),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
    ]);

    let trace_id = end_small_trace(&telemetry);
    flush(&telemetry).await;
    let stats = telemetry.stats();
    assert_eq!(
        (stats.exported, stats.dropped),
        (2, 0),
        "the collector accepted both spans (last error: {:?}); rotel said:\n{}",
        stats.last_error,
        rotel.output()
    );
    let spans = receiver.wait_for(PATIENCE, |s| s.len() >= 2).await;
    assert!(
        spans.len() >= 2,
        "rotel forwarded {} spans within {PATIENCE:?}; it said:\n{}",
        spans.len(),
        rotel.output()
    );

    let root = assert_small_trace_arrived(&spans, &trace_id);
    assert_eq!(root.service_name.as_deref(), Some(names::SERVICE_API));
    telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_backend_through_a_real_collector_over_http_protobuf() {
    // A base URL: the HTTP exporter appends /v1/traces itself.
    assert_delivered_through_rotel(|rotel| format!("http://{}", rotel.http), "http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_backend_through_a_real_collector_over_grpc() {
    assert_delivered_through_rotel(|rotel| format!("http://{}", rotel.grpc), "grpc").await;
}

// --- A collector that is down, hanging or slow -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_collector_is_counted_and_export_resumes_by_itself_once_it_accepts() {
    let receiver = receiver().await;
    receiver.set_mode(ReceiverMode::Unavailable);
    let telemetry = start(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]);
    let tracer = telemetry.tracer(names::SCOPE_AGENTS);

    for _ in 0..20 {
        tracer
            .start(&TraceCx::root(), "while-down", SpanKind::Internal, vec![])
            .end();
    }
    flush(&telemetry).await;
    let down = telemetry.stats();
    assert_eq!(down.exported, 0, "the collector accepted nothing: {down:?}");
    assert_eq!(down.dropped, 20, "every refused span is counted: {down:?}");
    assert!(down.failed_exports >= 1, "{down:?}");
    assert!(down.last_error.is_some(), "the error is kept: {down:?}");
    assert_eq!(down.queued, 0);
    assert!(receiver.requests() >= 1, "the exporter did try");

    receiver.set_mode(ReceiverMode::Accept);
    for _ in 0..5 {
        tracer
            .start(
                &TraceCx::root(),
                "after-recovery",
                SpanKind::Internal,
                vec![],
            )
            .end();
    }
    // No flush: the scheduled export alone must deliver them.
    let spans = receiver
        .wait_for(PATIENCE, |s| count_named(s, "after-recovery") == 5)
        .await;
    assert_eq!(count_named(&spans, "after-recovery"), 5);
    assert_eq!(count_named(&spans, "while-down"), 0);

    flush(&telemetry).await;
    let up = telemetry.stats();
    assert_eq!(up.exported, 5, "{up:?}");
    assert_eq!(up.dropped, 20, "nothing more was lost: {up:?}");
    telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_sent_to_a_closed_port_are_counted_as_dropped_with_the_error() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let telemetry = start(&[("OTEL_EXPORTER_ENDPOINT", &endpoint)]);
    let tracer = telemetry.tracer(names::SCOPE_AGENTS);

    for _ in 0..50 {
        tracer
            .start(
                &TraceCx::root(),
                "nobody-listens",
                SpanKind::Internal,
                vec![],
            )
            .end();
    }
    flush(&telemetry).await;

    let stats = telemetry.stats();
    assert_eq!(stats.exported, 0, "{stats:?}");
    assert_eq!(stats.dropped, 50, "{stats:?}");
    assert_eq!(stats.queued, 0, "{stats:?}");
    assert!(stats.failed_exports >= 1, "{stats:?}");
    assert!(stats.last_error.is_some(), "{stats:?}");
    telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_neither_blocks_span_ends_nor_grows_memory_past_the_queue() {
    const ENDED: u64 = 10_000;
    const QUEUE: u64 = 100;
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let telemetry = start(&[
        ("OTEL_EXPORTER_ENDPOINT", &endpoint),
        ("OTEL_BSP_MAX_QUEUE_SIZE", &QUEUE.to_string()),
    ]);
    let tracer = telemetry.tracer(names::SCOPE_AGENTS);

    let began = Instant::now();
    end_numbered(&tracer, "while-dead", ENDED as usize);
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "ending {ENDED} spans took {took:?}: the request path waits on the exporter"
    );

    // The batch size is capped at the queue size, and the default number of exports may be
    // in flight: no more than the queue plus that many batches can be held anywhere;
    // everything else was dropped.
    let stats = telemetry.stats();
    let batch = QUEUE;
    let in_flight = jobpilot_telemetry::config::BatchConfig::default().max_concurrent_exports;
    let held_at_most = QUEUE + in_flight as u64 * batch;
    assert!(stats.queued as u64 <= QUEUE, "{stats:?}");
    assert_eq!(stats.exported, 0, "{stats:?}");
    assert!(
        stats.dropped >= ENDED - held_at_most,
        "only {} of {ENDED} spans were dropped, so more than {held_at_most} are held: {stats:?}",
        stats.dropped
    );

    flush(&telemetry).await;
    let stats = telemetry.stats();
    assert_eq!(
        (stats.exported, stats.dropped, stats.queued),
        (0, ENDED, 0),
        "once flushed, every span is accounted for as dropped: {stats:?}"
    );
    assert!(stats.failed_exports >= 1 && stats.last_error.is_some());
    telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_against_a_hanging_collector_gives_up_within_its_budget() {
    let receiver = receiver().await;
    receiver.set_mode(ReceiverMode::Hang);
    let telemetry = start(&[("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint())]);
    let tracer = telemetry.tracer(names::SCOPE_AGENTS);
    for _ in 0..10 {
        tracer
            .start(
                &TraceCx::root(),
                "never-acknowledged",
                SpanKind::Internal,
                vec![],
            )
            .end();
    }

    let budget = Duration::from_millis(500);
    let began = Instant::now();
    let outcome = tokio::time::timeout(3 * budget, telemetry.shutdown(budget)).await;
    let took = began.elapsed();
    let result = outcome.unwrap_or_else(|_| panic!("shutdown still running after {took:?}"));
    assert!(
        result.is_err(),
        "a shutdown that could not deliver reports it: {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_longer_than_the_otlp_timeout_fail_and_are_counted() {
    let receiver = receiver().await;
    receiver.set_mode(ReceiverMode::Hang);
    let telemetry = start(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "300"),
    ]);
    let tracer = telemetry.tracer(names::SCOPE_AGENTS);
    for _ in 0..10 {
        tracer
            .start(&TraceCx::root(), "too-slow", SpanKind::Internal, vec![])
            .end();
    }

    // Well under the pipeline's own 10 s limit: only the 300 ms OTLP timeout can end the export
    // this soon.
    telemetry
        .pipeline()
        .unwrap()
        .flush(Duration::from_secs(5))
        .await
        .expect("the flush ends once the export times out");
    let stats = telemetry.stats();
    assert_eq!(stats.exported, 0, "{stats:?}");
    assert_eq!(stats.dropped, 10, "{stats:?}");
    assert!(stats.failed_exports >= 1, "{stats:?}");
    assert!(stats.last_error.is_some(), "{stats:?}");
    assert!(
        receiver.requests() >= 1,
        "the export did reach the collector"
    );
    let _ = telemetry.shutdown(Duration::from_secs(1)).await;
}

// --- Nothing lost when it could be delivered -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_every_span_ended_just_before_it() {
    const ENDED: usize = 500;
    let receiver = receiver().await;
    // A schedule delay of a minute and fewer spans than a batch: nothing is sent until shutdown.
    let telemetry = start(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    ]);
    let tracer = telemetry.tracer(names::SCOPE_AGENTS);
    end_numbered(&tracer, "before-shutdown", ENDED);
    assert_eq!(telemetry.stats().queued, ENDED);
    assert!(
        receiver.spans().is_empty(),
        "nothing was sent before shutdown"
    );

    let stats = telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown delivers within its budget");
    assert_eq!(stats.exported, ENDED as u64, "{stats:?}");
    assert_eq!(stats.dropped, 0, "{stats:?}");

    let spans = receiver.spans();
    let seqs: HashSet<i64> = named(&spans, "before-shutdown")
        .iter()
        .filter_map(|s| s.i64_attr("seq"))
        .collect();
    assert_eq!(seqs.len(), ENDED, "every span arrived exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_batches_go_at_once_and_the_rest_waits_for_the_schedule_delay() {
    const BATCH: usize = 100;
    const ENDED: usize = 2 * BATCH + BATCH / 2;
    let receiver = receiver().await;
    let telemetry = start(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100"),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    ]);
    let tracer = telemetry.tracer(names::SCOPE_AGENTS);
    end_numbered(&tracer, "batched", ENDED);

    let spans = receiver.wait_for(PATIENCE, |s| s.len() >= 2 * BATCH).await;
    assert_eq!(spans.len(), 2 * BATCH, "the two full batches arrived");
    // Sending the partial batch right behind the full ones (as a pipeline that drains its
    // queue whenever it wakes would) empties the queue within microseconds, long before the
    // receiver has decoded the second batch.
    assert_eq!(
        telemetry.stats().queued,
        ENDED - 2 * BATCH,
        "the partial batch waits for the schedule delay"
    );
    assert_eq!(receiver.requests(), 2, "one request per full batch");

    flush(&telemetry).await;
    assert_eq!(
        receiver.spans().len(),
        ENDED,
        "a flush sends the partial batch"
    );
    assert_eq!(receiver.requests(), 3);
    let _ = telemetry.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_span_is_lost_under_load_when_the_collector_keeps_up() {
    const BURSTS: usize = 50;
    const PER_BURST: usize = 1_000;
    let receiver = receiver().await;
    // The default batch settings: they are the ones that must hold up under a busy API.
    let telemetry = start(&[("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint())]);
    let tracer = telemetry.tracer(names::SCOPE_HTTP);

    // 50 000 spans at up to 40 000 a second (a burst of 1 000 every 25 ms): a busy API, and a
    // rate the in-process collector keeps up with even in a debug build. A tight loop would be
    // ten times faster than any collector and would only measure the queue size.
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let began = Instant::now();
    for burst in 0..BURSTS {
        tick.tick().await;
        for i in 0..PER_BURST {
            tracer
                .start(
                    &TraceCx::root(),
                    "under-load",
                    SpanKind::Server,
                    vec![
                        ("seq", (burst * PER_BURST + i).into()),
                        ("http.request.method", "GET".into()),
                        ("http.route", "/api/v1/jobs".into()),
                        ("http.response.status_code", 200_i64.into()),
                    ],
                )
                .end();
        }
    }
    let took = began.elapsed();
    assert!(took < Duration::from_secs(60), "the loop took {took:?}");

    flush(&telemetry).await;
    let ended = (BURSTS * PER_BURST) as u64;
    let stats = telemetry.stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert_eq!(stats.exported, ended, "{stats:?}");

    let spans = receiver.spans();
    let seqs: HashSet<i64> = named(&spans, "under-load")
        .iter()
        .filter_map(|s| s.i64_attr("seq"))
        .collect();
    assert_eq!(seqs.len() as u64, ended, "every span arrived exactly once");
    telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
}

// --- Exporter selection and limits -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_follows_the_configuration() {
    // (variables, exporter kind, whether there is an export pipeline)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, bool);
    let cases: &[Case<'_>] = &[
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")],
            "otlp-grpc",
            true,
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
            "otlp-http",
            true,
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_TRACES_EXPORTER", "otlp,console"),
            ],
            "otlp-grpc+console",
            true,
        ),
        (&[], "console", false),
        (&[("OTEL_TRACES_EXPORTER", "none")], "none", false),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_SDK_DISABLED", "true"),
            ],
            "none",
            false,
        ),
    ];
    for (vars, kind, has_pipeline) in cases {
        let telemetry = start(vars);
        assert_eq!(telemetry.exporter_kind(), *kind, "for {vars:?}");
        assert_eq!(
            telemetry.pipeline().is_some(),
            *has_pipeline,
            "for {vars:?}"
        );
        telemetry
            .shutdown(Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("shutdown for {vars:?}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_sdk_starts_spans_that_do_not_record() {
    let receiver = receiver().await;
    let telemetry = start(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("OTEL_SDK_DISABLED", "true"),
    ]);
    let tracer = telemetry.tracer(names::SCOPE_AGENTS);
    assert!(!tracer.is_recording(), "callers may skip their attributes");
    let span = tracer.start(&TraceCx::root(), "off", SpanKind::Internal, vec![]);
    assert!(!span.is_recording());
    span.end();

    // A recording control under the same endpoint, so "nothing arrived" is not a broken receiver.
    let control = start(&[("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint())]);
    assert!(control.tracer(names::SCOPE_AGENTS).is_recording());
    let span = control.tracer(names::SCOPE_AGENTS).start(
        &TraceCx::root(),
        "on",
        SpanKind::Internal,
        vec![],
    );
    assert!(span.is_recording());
    span.end();
    control
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
    telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");

    let names: Vec<String> = receiver.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["on"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_count_and_value_length_limits_hold_on_the_wire() {
    const COUNT_LIMIT: usize = 32;
    const LENGTH_LIMIT: usize = 1001;
    let receiver = receiver().await;
    let telemetry = start(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", &COUNT_LIMIT.to_string()),
        (
            "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
            &LENGTH_LIMIT.to_string(),
        ),
    ]);
    let tracer = telemetry.tracer(names::SCOPE_AGENTS);
    // 1 MiB of a two-byte character: an odd limit falls inside a character.
    let huge = "é".repeat(512 * 1024);
    assert_eq!(huge.len(), 1024 * 1024);

    let mut attrs: Vec<(&'static str, AttrValue)> = vec![("huge.at_start", huge.clone().into())];
    for i in 1..10_000_i64 {
        let key: &'static str = Box::leak(format!("extra.{i}").into_boxed_str());
        attrs.push((key, i.into()));
    }
    tracer
        .start(
            &TraceCx::root(),
            "many-attributes",
            SpanKind::Internal,
            attrs,
        )
        .end();
    let late = tracer.start(&TraceCx::root(), "late-value", SpanKind::Internal, vec![]);
    late.set("huge.set_later", huge.clone());
    // A value shared between spans is cut like any other.
    let shared: std::sync::Arc<str> = huge.as_str().into();
    late.set("huge.shared", shared.clone());
    late.end();

    flush(&telemetry).await;
    let spans = receiver.wait_for(PATIENCE, |s| s.len() >= 2).await;
    let many = named(&spans, "many-attributes");
    let late = named(&spans, "late-value");
    assert_eq!((many.len(), late.len()), (1, 1), "{spans:#?}");

    let many = many[0];
    assert!(
        many.attributes.len() <= COUNT_LIMIT,
        "{} attributes arrived, the limit is {COUNT_LIMIT}",
        many.attributes.len()
    );
    for (span, key) in [
        (many, "huge.at_start"),
        (late[0], "huge.set_later"),
        (late[0], "huge.shared"),
    ] {
        let value = span
            .str_attr(key)
            .unwrap_or_else(|| panic!("{key} is missing: {span:#?}"));
        assert!(
            value.len() <= LENGTH_LIMIT && value.len() >= LENGTH_LIMIT - 1,
            "{key} is {} bytes, the limit is {LENGTH_LIMIT}",
            value.len()
        );
        assert!(huge.starts_with(value), "{key} is a prefix of the original");
    }
    telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_attribute_limit_holds_on_the_wire_apart_from_the_span_limit() {
    let receiver = receiver().await;
    let telemetry = start(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "64"),
        ("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "1"),
    ]);
    let span = telemetry.tracer(names::SCOPE_AGENTS).start(
        &TraceCx::root(),
        "failing",
        SpanKind::Internal,
        vec![("a", 1_i64.into()), ("b", 2_i64.into())],
    );
    // The exception event carries two attributes (type and message).
    span.fail("permanent", "no words");
    span.end();
    flush(&telemetry).await;
    let spans = receiver.wait_for(PATIENCE, |s| !s.is_empty()).await;
    let failing = named(&spans, "failing");
    assert_eq!(failing.len(), 1, "{spans:#?}");
    assert!(
        failing[0].attributes.len() >= 3,
        "the span limit is separate"
    );
    assert_eq!(failing[0].events.len(), 1);
    assert_eq!(
        failing[0].events[0].attributes.len(),
        1,
        "{:?}",
        failing[0].events
    );
    telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown succeeds");
}
