//! Metrics end to end: every instrument of [`Metrics`] travels over real OTLP to an in-process
//! receiver (directly, for exact values, and through a real collector, for names, units,
//! attributes and buckets), and the Prometheus text holds the same series.

mod support;

use std::time::Duration;

use jobpilot_telemetry::metrics::{
    DURATION_BUCKETS, GEN_AI_DURATION_BUCKETS, GEN_AI_TOKEN_BUCKETS, HttpActive, HttpRequest,
    LONG_DURATION_BUCKETS, RunOutcome, UNMATCHED_ROUTE,
};
use jobpilot_telemetry::testing::{CapturedMetric, OtlpReceiver, PointValue};
use jobpilot_telemetry::{Metrics, SpanKind, Telemetry, TraceCx, names};
use support::{Rotel, config};

const PATIENCE: Duration = Duration::from_secs(20);

/// Every metric name the process can emit, with its unit.
const INSTRUMENTS: &[(&str, &str)] = &[
    (names::METRIC_HTTP_SERVER_DURATION, "s"),
    (names::METRIC_HTTP_SERVER_ACTIVE, "{request}"),
    (names::METRIC_MESSAGING_PROCESS_DURATION, "s"),
    (names::METRIC_MESSAGING_SENT, "{message}"),
    (names::METRIC_MESSAGING_CONSUMED, "{message}"),
    (names::METRIC_QUEUE_WAIT, "s"),
    (names::METRIC_QUEUE_DEPTH, "{message}"),
    (names::METRIC_QUEUE_IN_FLIGHT, "{message}"),
    (names::METRIC_QUEUE_DEAD_LETTERED, "{message}"),
    (names::METRIC_RUN_DURATION, "s"),
    (names::METRIC_STEP_DURATION, "s"),
    (names::METRIC_RUNS_FINISHED, "{run}"),
    (names::METRIC_RUN_RETRIES, "{retry}"),
    (names::METRIC_GEN_AI_DURATION, "s"),
    (names::METRIC_GEN_AI_TOKENS, "{token}"),
    (names::METRIC_SPANS_EXPORTED, "{span}"),
    (names::METRIC_SPANS_DROPPED, "{span}"),
    (names::METRIC_EXPORTS_FAILED, "{request}"),
];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Records a known set of measurements on every instrument; returns a request still active.
fn record_known_figures(telemetry: &Telemetry, metrics: &Metrics) -> HttpActive {
    let ok = HttpRequest {
        method: "GET",
        route: "/api/v1/runs/{run_id}",
        scheme: "http",
        status: 200,
        error_type: None,
    };
    let active = metrics.http_request_started("GET", "http");
    metrics.record_http_request(&ok, ms(100));
    metrics.record_http_request(&ok, ms(300));
    drop(active);
    let still_active = metrics.http_request_started("POST", "http");
    metrics.record_http_request(
        &HttpRequest {
            method: "POST",
            route: UNMATCHED_ROUTE,
            scheme: "http",
            status: 503,
            error_type: Some("503"),
        },
        ms(20),
    );

    let queue = metrics.queue("redis", "jobpilot:runs");
    queue.sent(None);
    queue.sent(None);
    queue.sent(Some("queue_unavailable"));
    queue.consumed(3);
    queue.processed(ms(500), None);
    queue.processed(ms(250), Some("timeout"));
    queue.waited(ms(40));

    metrics.record_run_attempt("job_match", RunOutcome::Succeeded, ms(400));
    metrics.record_run_attempt("job_match", RunOutcome::Retried, ms(200));
    metrics.record_run_attempt("job_match", RunOutcome::Failed, ms(100));
    metrics.record_run_attempt("cover_letter", RunOutcome::DeadLettered, ms(50));
    metrics.record_step("job_match", "parse_resume", true, ms(10));
    metrics.record_step("job_match", "parse_resume", false, ms(30));

    let llm = metrics.llm("jobpilot.offline", "offline", true);
    llm.operation(ms(80), None);
    llm.tokens(Some(120), Some(30));

    metrics.queue_gauges("redis", "jobpilot:runs").set(7, 2, 1);

    let span = telemetry.tracer(names::SCOPE_HTTP).start(
        &TraceCx::root(),
        "counted",
        SpanKind::Internal,
        vec![],
    );
    span.finish(true);
    still_active
}

fn point_count(m: &CapturedMetric, attrs: &[(&str, &str)]) -> f64 {
    m.points_with(attrs).iter().map(|p| p.number()).sum()
}

fn bounds_of(m: &CapturedMetric) -> Vec<f64> {
    match &m.points.first().expect("a data point").value {
        PointValue::Histogram { bounds, .. } => bounds.clone(),
        other => panic!("{} is not a histogram: {other:?}", m.name),
    }
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: expected {expected}, got {actual}"
    );
}

fn assert_no_id_attributes(metrics: &[CapturedMetric]) {
    for m in metrics {
        for p in &m.points {
            for key in p.attributes.keys() {
                assert!(
                    key != names::USER_ID && key != names::RUN_ID,
                    "{} carries {key}",
                    m.name
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instrument_arrives_with_exact_values_at_an_otlp_receiver() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let endpoint = receiver.endpoint();
    let telemetry = Telemetry::init(
        &config(&[
            ("OTEL_EXPORTER_ENDPOINT", &endpoint),
            ("OTEL_METRICS_EXPORTER", "otlp,prometheus"),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
            // Only the final push at shutdown counts; no periodic push in between.
            ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ]),
        names::SERVICE_WORKER,
    )
    .unwrap();
    let metrics = telemetry.metrics();
    assert!(metrics.is_recording());
    let _active = record_known_figures(&telemetry, &metrics);
    telemetry.pipeline().unwrap().flush(PATIENCE).await.unwrap();
    telemetry.shutdown(PATIENCE).await.unwrap();

    let all = receiver
        .wait_for_metrics(PATIENCE, |m| {
            INSTRUMENTS
                .iter()
                .all(|(n, _)| m.iter().any(|x| x.name == *n))
        })
        .await;
    for (name, unit) in INSTRUMENTS {
        let m = receiver
            .latest_metric(name)
            .unwrap_or_else(|| panic!("{name} did not arrive; got {all:#?}"));
        assert_eq!(&m.unit, unit, "unit of {name}");
        assert_eq!(m.service_name.as_deref(), Some(names::SERVICE_WORKER));
    }
    assert_no_id_attributes(&all);
    let get = |name: &str| receiver.latest_metric(name).unwrap();

    let http = get(names::METRIC_HTTP_SERVER_DURATION);
    let ok = http.points_with(&[(names::HTTP_ROUTE, "/api/v1/runs/{run_id}")]);
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].number(), 2.0);
    assert_close(ok[0].sum(), 0.4, "sum of the two GET requests");
    assert_eq!(ok[0].str_attr(names::HTTP_REQUEST_METHOD), Some("GET"));
    assert_eq!(ok[0].str_attr(names::URL_SCHEME), Some("http"));
    let failed = http.points_with(&[(names::HTTP_ROUTE, UNMATCHED_ROUTE)]);
    assert_eq!(failed[0].str_attr(names::ERROR_TYPE), Some("503"));
    assert_eq!(
        failed[0].attributes.get(names::HTTP_RESPONSE_STATUS_CODE),
        Some(&jobpilot_telemetry::AttrValue::I64(503))
    );
    assert_eq!(bounds_of(&http), DURATION_BUCKETS);

    let active = get(names::METRIC_HTTP_SERVER_ACTIVE);
    assert_eq!(
        point_count(&active, &[(names::HTTP_REQUEST_METHOD, "GET")]),
        0.0
    );
    assert_eq!(
        point_count(&active, &[(names::HTTP_REQUEST_METHOD, "POST")]),
        1.0
    );

    let sent = get(names::METRIC_MESSAGING_SENT);
    assert_eq!(point_count(&sent, &[]), 3.0);
    assert_eq!(
        point_count(&sent, &[(names::ERROR_TYPE, "queue_unavailable")]),
        1.0
    );
    assert_eq!(
        point_count(
            &sent,
            &[(names::MESSAGING_DESTINATION_NAME, "jobpilot:runs")]
        ),
        3.0
    );
    assert_eq!(
        point_count(&get(names::METRIC_MESSAGING_CONSUMED), &[]),
        3.0
    );
    let process = get(names::METRIC_MESSAGING_PROCESS_DURATION);
    assert_eq!(point_count(&process, &[]), 2.0);
    assert_close(
        process.points.iter().map(|p| p.sum()).sum(),
        0.75,
        "process sum",
    );
    assert_eq!(bounds_of(&process), LONG_DURATION_BUCKETS);
    assert_close(
        get(names::METRIC_QUEUE_WAIT).points[0].sum(),
        0.04,
        "queue wait",
    );

    let finished = get(names::METRIC_RUNS_FINISHED);
    for (outcome, n) in [("succeeded", 1.0), ("failed", 1.0), ("dead_lettered", 1.0)] {
        assert_eq!(
            point_count(&finished, &[(names::METRIC_OUTCOME, outcome)]),
            n,
            "{outcome}"
        );
    }
    assert_eq!(
        point_count(&finished, &[(names::METRIC_OUTCOME, "retried")]),
        0.0
    );
    assert_eq!(
        point_count(
            &get(names::METRIC_RUN_RETRIES),
            &[(names::AGENT_TYPE, "job_match")]
        ),
        1.0
    );
    let runs = get(names::METRIC_RUN_DURATION);
    assert_eq!(point_count(&runs, &[(names::AGENT_TYPE, "job_match")]), 3.0);
    assert_close(
        runs.points.iter().map(|p| p.sum()).sum(),
        0.75,
        "run duration sum",
    );
    let steps = get(names::METRIC_STEP_DURATION);
    assert_eq!(
        point_count(&steps, &[(names::STEP_NAME, "parse_resume")]),
        2.0
    );
    assert_eq!(steps.points.len(), 2, "one series per success value");

    let llm = get(names::METRIC_GEN_AI_DURATION);
    assert_eq!(bounds_of(&llm), GEN_AI_DURATION_BUCKETS);
    assert_close(llm.points[0].sum(), 0.08, "chat duration");
    let tokens = get(names::METRIC_GEN_AI_TOKENS);
    assert_eq!(bounds_of(&tokens), GEN_AI_TOKEN_BUCKETS);
    let input = tokens.points_with(&[(names::GEN_AI_TOKEN_TYPE, "input")]);
    assert_close(input[0].sum(), 120.0, "input tokens");
    assert_eq!(
        input[0].attributes.get(names::METRIC_TOKENS_ESTIMATED),
        Some(&jobpilot_telemetry::AttrValue::Bool(true))
    );

    assert_eq!(get(names::METRIC_QUEUE_DEPTH).points[0].number(), 7.0);
    assert_eq!(get(names::METRIC_QUEUE_IN_FLIGHT).points[0].number(), 2.0);
    assert_eq!(
        get(names::METRIC_QUEUE_DEAD_LETTERED).points[0].number(),
        1.0
    );
    assert_eq!(get(names::METRIC_SPANS_EXPORTED).points[0].number(), 1.0);
    assert_eq!(get(names::METRIC_SPANS_DROPPED).points[0].number(), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instrument_passes_through_a_real_collector_with_units_and_buckets() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let rotel = Rotel::start(&receiver.endpoint());
    let endpoint = format!("http://{}", rotel.http);
    let telemetry = Telemetry::init(
        &config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ]),
        names::SERVICE_API,
    )
    .unwrap();
    let metrics = telemetry.metrics();
    let _active = record_known_figures(&telemetry, &metrics);
    telemetry.pipeline().unwrap().flush(PATIENCE).await.unwrap();
    telemetry.shutdown(PATIENCE).await.unwrap();

    let all = receiver
        .wait_for_metrics(PATIENCE, |m| {
            INSTRUMENTS
                .iter()
                .all(|(n, _)| m.iter().any(|x| x.name == *n))
        })
        .await;
    for (name, unit) in INSTRUMENTS {
        let m = all
            .iter()
            .rev()
            .find(|m| m.name == *name)
            .unwrap_or_else(|| panic!("{name} did not pass rotel:\n{}", rotel.output()));
        assert_eq!(&m.unit, unit, "unit of {name}");
    }
    assert_no_id_attributes(&all);
    let http = receiver
        .latest_metric(names::METRIC_HTTP_SERVER_DURATION)
        .unwrap();
    assert_eq!(bounds_of(&http), DURATION_BUCKETS);
    let point = &http.points_with(&[(names::HTTP_ROUTE, "/api/v1/runs/{run_id}")])[0];
    for key in [
        names::HTTP_REQUEST_METHOD,
        names::HTTP_ROUTE,
        names::HTTP_RESPONSE_STATUS_CODE,
        names::URL_SCHEME,
    ] {
        assert!(
            point.attributes.contains_key(key),
            "{key} missing: {point:?}"
        );
    }
    let tokens = receiver.latest_metric(names::METRIC_GEN_AI_TOKENS).unwrap();
    assert_eq!(bounds_of(&tokens), GEN_AI_TOKEN_BUCKETS);
    let steps = receiver.latest_metric(names::METRIC_STEP_DURATION).unwrap();
    assert!(steps.points[0].attributes.contains_key(names::SUCCESS));
}

/// Telemetry whose metrics are served as Prometheus text only, and no traces.
fn prometheus_only() -> Telemetry {
    Telemetry::init(
        &config(&[
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]),
        names::SERVICE_API,
    )
    .unwrap()
}

#[tokio::test]
async fn the_prometheus_text_holds_every_series_and_no_ids() {
    let telemetry = prometheus_only();
    let _active = record_known_figures(&telemetry, &telemetry.metrics());
    let text = telemetry.prometheus().expect("prometheus is on").encode();
    for series in [
        "http_server_request_duration_seconds_bucket{",
        "http_server_request_duration_seconds_count{",
        "http_server_active_requests{",
        "messaging_client_sent_messages_total{",
        "jobpilot_queue_wait_seconds_sum{",
        "jobpilot_queue_depth{",
        "jobpilot_runs_finished_total{",
        "jobpilot_step_duration_seconds_bucket{",
        "gen_ai_client_token_usage_bucket{",
        "le=\"0.005\"",
        "http_route=\"/api/v1/runs/{run_id}\"",
        "outcome=\"dead_lettered\"",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    assert!(
        !text.contains("user_id") && !text.contains("run_id="),
        "{text}"
    );
    telemetry.shutdown(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn handles_that_record_nothing_export_no_series() {
    let telemetry = prometheus_only();
    let metrics = telemetry.metrics();
    // An API makes a queue handle and never consumes; a worker never sends; a retry is no
    // finished run.
    let queue = metrics.queue("redis", "jobpilot:runs");
    let _llm = metrics.llm("openai", "gpt-4o-mini", false);
    queue.sent(None);
    metrics.record_run_attempt("job_match", RunOutcome::Retried, ms(200));
    let text = telemetry.prometheus().expect("prometheus is on").encode();
    assert!(
        text.contains("messaging_client_sent_messages_total{"),
        "{text}"
    );
    assert!(
        text.contains("jobpilot_run_duration_seconds_count{"),
        "{text}"
    );
    for absent in [
        "messaging_client_consumed_messages",
        "messaging_process_duration",
        "jobpilot_queue_wait",
        "gen_ai_client",
        "jobpilot_runs_finished",
    ] {
        assert!(
            !text.contains(absent),
            "{absent} was never recorded:\n{text}"
        );
    }
    telemetry.shutdown(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn metrics_off_records_nothing_and_serves_no_text() {
    let telemetry = Telemetry::init(
        &config(&[
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]),
        names::SERVICE_API,
    )
    .unwrap();
    assert!(!telemetry.metrics().is_recording());
    assert!(telemetry.prometheus().is_none());
    telemetry.shutdown(PATIENCE).await.unwrap();
}
