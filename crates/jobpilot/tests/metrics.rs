//! Metrics from real processes: an API and a worker on Redis push OTLP metrics to an in-process
//! receiver, where the counts and sums after known requests and runs (one failing, one retried,
//! one dead-lettered) match exactly; both serve `/metrics` that `promtool check metrics` accepts;
//! no series carries a user or run id; and a worker's dropped spans show on its admin listener.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use jobpilot_telemetry::names;
use jobpilot_telemetry::testing::{CapturedMetric, OtlpReceiver};
use serde_json::{Value, json};
use support::*;

const PATIENCE: Duration = Duration::from_secs(30);

fn on_redis(prefix: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let redis = redis_url();
    let mut env = base_env(&[
        ("REDIS_URL", redis.as_str()),
        ("JOBPILOT_REDIS_PREFIX", prefix),
        ("JOBPILOT_WORKER_CONCURRENCY", "1"),
        ("JOBPILOT_MAX_ATTEMPTS", "2"),
        ("JOBPILOT_LLM_MAX_RETRIES", "0"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
    ]);
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

fn listen_on(mut env: BTreeMap<String, String>, addr: &str) -> BTreeMap<String, String> {
    env.insert("JOBPILOT_LISTEN".into(), addr.to_owned());
    env
}

fn resume() -> Value {
    json!({"resume": "Summary: backend engineer\nExperience: Rust, Python\nSkills: Docker"})
}

/// The latest metric `name` from `service`.
fn latest(receiver: &OtlpReceiver, service: &str, name: &str) -> Option<CapturedMetric> {
    receiver
        .metrics()
        .into_iter()
        .rev()
        .find(|m| m.name == name && m.service_name.as_deref() == Some(service))
}

fn total(m: &CapturedMetric, attrs: &[(&str, &str)]) -> f64 {
    m.points_with(attrs).iter().map(|p| p.number()).sum()
}

/// Waits until the latest `name` from `service` satisfies `done`.
async fn wait_metric(
    receiver: &OtlpReceiver,
    service: &str,
    name: &str,
    mut done: impl FnMut(&CapturedMetric) -> bool,
) -> CapturedMetric {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(m) = latest(receiver, service, name) {
            if done(&m) || Instant::now() >= deadline {
                return m;
            }
        } else if Instant::now() >= deadline {
            panic!("{name} never arrived from {service}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `promtool check metrics` on `text`: the exposition format is valid (lint problems such as
/// missing help are reported but are not format errors).
fn promtool_accepts(text: &str, what: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (./scripts/test.sh installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report.contains("error while linting") && !report.contains("text format parsing error"),
        "promtool rejects the {what} metrics: {report}\n{text}"
    );
}

async fn get_text(url: &str, bearer: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

fn assert_no_ids(text: &str, what: &str) {
    assert!(
        !text.contains("user_id") && !text.contains("run_id=") && !text.contains("alice"),
        "{what} metrics carry an id:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_worker_count_known_requests_and_runs_exactly() {
    let receiver = OtlpReceiver::start().await.unwrap();
    // Three failures, then answers: the run after the failing one is dead-lettered (two
    // attempts), the next one retried once, the last one succeeds at once.
    let llm = FakeLlm::start(LlmBehaviour::FailFirst(3)).await;
    let prefix = unique_prefix("metrics");
    let endpoint = receiver.endpoint();
    let admin = format!("127.0.0.1:{}", free_port());
    let env = on_redis(
        &prefix,
        &[
            ("OTEL_EXPORTER_ENDPOINT", endpoint.as_str()),
            ("JOBPILOT_LLM_BASE_URL", llm.base_url.as_str()),
            ("JOBPILOT_LLM_MODEL", "test-model"),
        ],
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let api = Jobpilot::start(&["api"], &listen_on(env.clone(), &listen));
    let worker = Jobpilot::start(&["worker", "--admin-listen", &admin], &env);
    let base = api.base.clone().unwrap();

    let (failing, _) = submit(&base, "alice", "resume_review", json!({"resume": "!!!"})).await;
    let run = wait_finished(&base, "alice", &failing, PATIENCE).await;
    assert_eq!(run["status"], "failed", "{run}");
    let mut dead = None;
    for expected in ["dead-lettered", "retried", "succeeded"] {
        let (id, _) = submit(&base, "alice", "resume_review", resume()).await;
        let run = wait_finished(&base, "alice", &id, PATIENCE).await;
        let wanted = if expected == "dead-lettered" {
            "failed"
        } else {
            "succeeded"
        };
        assert_eq!(run["status"], wanted, "the {expected} run: {run}");
        if expected == "dead-lettered" {
            dead = Some(id);
        }
    }
    assert!(dead.is_some());
    for path in ["/health", "/health", "/nope", "/also/nope"] {
        let _ = reqwest::get(format!("{base}{path}")).await.unwrap();
    }

    // Worker figures.
    let w = names::SERVICE_WORKER;
    let finished = wait_metric(&receiver, w, names::METRIC_RUNS_FINISHED, |m| {
        total(m, &[]) >= 4.0
    })
    .await;
    for (outcome, n) in [("succeeded", 2.0), ("failed", 1.0), ("dead_lettered", 1.0)] {
        assert_eq!(
            total(
                &finished,
                &[
                    (names::METRIC_OUTCOME, outcome),
                    (names::AGENT_TYPE, "resume_review")
                ]
            ),
            n,
            "{outcome}: {finished:#?}"
        );
    }
    let retries = latest(&receiver, w, names::METRIC_RUN_RETRIES).unwrap();
    assert_eq!(total(&retries, &[]), 2.0, "{retries:#?}");
    let attempts = latest(&receiver, w, names::METRIC_RUN_DURATION).unwrap();
    assert_eq!(total(&attempts, &[]), 6.0, "{attempts:#?}");
    let process = latest(&receiver, w, names::METRIC_MESSAGING_PROCESS_DURATION).unwrap();
    assert_eq!(total(&process, &[]), 6.0);
    assert_eq!(
        total(&process, &[(names::ERROR_TYPE, "retry_scheduled")]),
        2.0
    );
    assert_eq!(
        total(&process, &[(names::ERROR_TYPE, "dead_lettered")]),
        1.0
    );
    assert_eq!(total(&process, &[(names::ERROR_TYPE, "run_failed")]), 1.0);
    let consumed = latest(&receiver, w, names::METRIC_MESSAGING_CONSUMED).unwrap();
    assert_eq!(total(&consumed, &[]), 6.0);
    let wait = latest(&receiver, w, names::METRIC_QUEUE_WAIT).unwrap();
    assert_eq!(total(&wait, &[]), 4.0, "one wait per run: {wait:#?}");
    let steps = latest(&receiver, w, names::METRIC_STEP_DURATION).unwrap();
    let suggest = |success: bool| -> f64 {
        steps
            .points
            .iter()
            .filter(|p| {
                p.str_attr(names::STEP_NAME) == Some("suggest")
                    && p.attributes.get(names::SUCCESS)
                        == Some(&jobpilot_telemetry::AttrValue::Bool(success))
            })
            .map(|p| p.number())
            .sum()
    };
    assert_eq!((suggest(true), suggest(false)), (2.0, 3.0), "{steps:#?}");
    let chat = latest(&receiver, w, names::METRIC_GEN_AI_DURATION).unwrap();
    assert_eq!(
        total(&chat, &[(names::GEN_AI_REQUEST_MODEL, "test-model")]),
        5.0
    );
    assert_eq!(
        total(&chat, &[(names::GEN_AI_PROVIDER_NAME, "openai")]),
        5.0,
        "{chat:#?}"
    );
    let tokens = latest(&receiver, w, names::METRIC_GEN_AI_TOKENS).unwrap();
    let input = tokens.points_with(&[(names::GEN_AI_TOKEN_TYPE, "input")]);
    assert_eq!(input.len(), 1);
    assert_eq!(input[0].sum(), 84.0, "two answers of 42 prompt tokens");
    assert_eq!(
        input[0].attributes.get(names::METRIC_TOKENS_ESTIMATED),
        Some(&jobpilot_telemetry::AttrValue::Bool(false)),
        "billed tokens are not marked as estimates"
    );
    let output = tokens.points_with(&[(names::GEN_AI_TOKEN_TYPE, "output")]);
    assert_eq!(output[0].sum(), 14.0);
    let dead_gauge = wait_metric(&receiver, w, names::METRIC_QUEUE_DEAD_LETTERED, |m| {
        total(m, &[]) >= 1.0
    })
    .await;
    assert_eq!(total(&dead_gauge, &[]), 1.0);

    // API figures.
    let a = names::SERVICE_API;
    let http = wait_metric(&receiver, a, names::METRIC_HTTP_SERVER_DURATION, |m| {
        total(m, &[(names::HTTP_ROUTE, "unmatched")]) >= 2.0
    })
    .await;
    let posts = http.points_with(&[(names::HTTP_ROUTE, "/api/v1/agents/{agent_type}/runs")]);
    assert_eq!(posts.len(), 1, "one series for the four posts: {http:#?}");
    assert_eq!(posts[0].number(), 4.0);
    assert_eq!(posts[0].str_attr(names::HTTP_REQUEST_METHOD), Some("POST"));
    assert_eq!(
        posts[0].attributes.get(names::HTTP_RESPONSE_STATUS_CODE),
        Some(&jobpilot_telemetry::AttrValue::I64(202))
    );
    assert_eq!(total(&http, &[(names::HTTP_ROUTE, "unmatched")]), 2.0);
    assert!(
        http.points_with(&[(names::HTTP_ROUTE, "/health")])
            .is_empty()
    );
    assert!(total(&http, &[(names::HTTP_ROUTE, "/api/v1/runs/{run_id}")]) >= 4.0);
    let sent = latest(&receiver, a, names::METRIC_MESSAGING_SENT).unwrap();
    assert_eq!(total(&sent, &[]), 4.0);

    for m in receiver.metrics() {
        for p in &m.points {
            assert!(
                !p.attributes.contains_key(names::USER_ID)
                    && !p.attributes.contains_key(names::RUN_ID),
                "{} carries an id: {p:?}",
                m.name
            );
        }
    }

    // Prometheus text from both processes.
    let (status, _) = get_text(&format!("{base}/metrics"), Some(&token("alice"))).await;
    assert_eq!(status, 403, "only admins read the API's metrics");
    let (status, api_text) = get_text(&format!("{base}/metrics"), Some(&admin_token("ops"))).await;
    assert_eq!(status, 200, "{api_text}");
    promtool_accepts(&api_text, "API");
    assert_no_ids(&api_text, "API");
    for series in [
        "http_server_request_duration_seconds_bucket{",
        "http_route=\"/api/v1/agents/{agent_type}/runs\"",
        "messaging_client_sent_messages_total{",
    ] {
        assert!(api_text.contains(series), "{series} missing:\n{api_text}");
    }
    let (status, worker_text) = get_text(&format!("http://{admin}/metrics"), None).await;
    assert_eq!(status, 200);
    promtool_accepts(&worker_text, "worker");
    assert_no_ids(&worker_text, "worker");
    for series in [
        "jobpilot_runs_finished_total{",
        "outcome=\"dead_lettered\"",
        "jobpilot_run_retries_total{",
        "messaging_process_duration_seconds_bucket{",
        "jobpilot_queue_wait_seconds_count{",
        "jobpilot_step_duration_seconds_bucket{",
        "gen_ai_client_operation_duration_seconds_bucket{",
        "gen_ai_client_token_usage_bucket{",
        "jobpilot_queue_dead_lettered{",
        "jobpilot_telemetry_spans_exported_total",
    ] {
        assert!(
            worker_text.contains(series),
            "{series} missing:\n{worker_text}"
        );
    }
    let (status, ready) = get_text(&format!("http://{admin}/ready"), None).await;
    assert_eq!(status, 200, "{ready}");
    drop((api, worker));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_dropped_spans_show_on_its_admin_listener() {
    let prefix = unique_prefix("dropped");
    let admin = format!("127.0.0.1:{}", free_port());
    // Nothing listens there: every span export fails and its spans are dropped.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let api = Jobpilot::start(
        &["api"],
        &listen_on(
            on_redis(&prefix, &[("OTEL_TRACES_EXPORTER", "none")]),
            &listen,
        ),
    );
    let worker_env = on_redis(
        &prefix,
        &[
            ("OTEL_EXPORTER_ENDPOINT", nowhere.as_str()),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "300"),
            // The API records no spans, so its trace context says "not sampled".
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("JOBPILOT_ADMIN_LISTEN", admin.as_str()),
        ],
    );
    let worker = Jobpilot::start(&["worker"], &worker_env);
    let base = api.base.clone().unwrap();
    let (id, _) = submit(&base, "alice", "resume_review", resume()).await;
    wait_finished(&base, "alice", &id, PATIENCE).await;

    let deadline = Instant::now() + PATIENCE;
    let figures = loop {
        let (status, body) = get_json(&format!("http://{admin}/telemetry"), None).await;
        assert_eq!(status, 200, "{body}");
        if body["stats"]["dropped"].as_u64().unwrap_or(0) > 0 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(figures["exporter"], "otlp-grpc", "{figures}");
    assert!(
        figures["stats"]["dropped"].as_u64().unwrap() > 0,
        "{figures}"
    );
    assert!(
        figures["stats"]["failed_exports"].as_u64().unwrap() > 0,
        "{figures}"
    );
    let (_, text) = get_text(&format!("http://{admin}/metrics"), None).await;
    let dropped = text
        .lines()
        .find(|l| l.starts_with("jobpilot_telemetry_spans_dropped_total"))
        .unwrap_or_else(|| panic!("no dropped-span series:\n{text}"));
    let value: f64 = dropped.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value > 0.0, "{dropped}");
    let (status, _) = get_text(&format!("http://{admin}/health"), None).await;
    assert_eq!(status, 200);
    drop((api, worker));
}
