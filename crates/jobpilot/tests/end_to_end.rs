//! End to end, with real processes: `jobpilot api` and `jobpilot worker` sharing a real Redis,
//! `jobpilot serve` on the embedded store, every span exported over OTLP gRPC to an in-process
//! receiver. Each test asserts the trace an operator would open.

mod support;

use std::time::Duration;

use jobpilot_telemetry::testing::{CapturedSpan, CapturedStatus, OtlpReceiver};
use jobpilot_telemetry::{AttrValue, SpanKind, names};
use serde_json::{Value, json};
use support::*;

fn inputs() -> Vec<(&'static str, Value, &'static [&'static str])> {
    vec![
        (
            "job_match",
            json!({"resume": "Experience: Rust engineer, 6 years of Kubernetes, PostgreSQL and AWS.\nEducation: BSc Computer Science",
                   "job": "Senior Rust Developer\nRequirements: Rust, Kubernetes, AWS\nNice to have: Kafka"}),
            &["parse_resume", "parse_job", "score", "explain"],
        ),
        (
            "resume_review",
            json!({"resume": "Summary: backend engineer\nExperience: Rust, Python\nSkills: Docker"}),
            &["parse_resume", "check_sections", "suggest"],
        ),
        (
            "cover_letter",
            json!({"resume": "Experience: Rust engineer with Kubernetes", "job": "Rust developer\nRequirements: Rust", "company": "Acme"}),
            &["parse_resume", "parse_job", "outline", "draft"],
        ),
    ]
}

/// Asserts the span tree of one successful run (spec §5.1) and returns the step spans.
fn assert_run_trace(
    spans: &[CapturedSpan],
    agent: &str,
    steps: &[&str],
    run_id: &str,
    user: &str,
    worker_service: &str,
) {
    let server = one(spans, "POST /api/v1/agents/{agent_type}/runs");
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(server.service_name.as_deref(), Some("jobpilot-api"));
    assert_eq!(server.str_attr(names::USER_ID), Some(user));

    let producer = one(spans, "send agent_runs");
    assert_eq!(producer.kind, SpanKind::Producer);
    assert_eq!(
        producer.parent_span_id.as_deref(),
        Some(server.span_id.as_str())
    );

    let consumer = one(spans, "process agent_runs");
    assert_eq!(consumer.kind, SpanKind::Consumer);
    assert_eq!(consumer.service_name.as_deref(), Some(worker_service));
    assert_eq!(
        consumer.parent_span_id.as_deref(),
        Some(producer.span_id.as_str())
    );
    assert_eq!(
        consumer.links,
        vec![(producer.trace_id.clone(), producer.span_id.clone())]
    );
    assert_eq!(
        consumer.i64_attr(names::MESSAGING_DELIVERY_ATTEMPT),
        Some(1)
    );
    assert_eq!(consumer.str_attr(names::MESSAGING_MESSAGE_ID), Some(run_id));

    let invoke = one(spans, &format!("invoke_agent {agent}"));
    assert_eq!(
        invoke.parent_span_id.as_deref(),
        Some(consumer.span_id.as_str())
    );
    assert_eq!(
        invoke.str_attr(names::GEN_AI_OPERATION_NAME),
        Some("invoke_agent")
    );
    assert_eq!(invoke.str_attr(names::GEN_AI_AGENT_NAME), Some(agent));

    let mut step_spans: Vec<&CapturedSpan> = Vec::new();
    for step in steps {
        let s = one(spans, &format!("agent.{agent}.{step}"));
        assert_eq!(s.kind, SpanKind::Internal);
        assert_eq!(
            s.parent_span_id.as_deref(),
            Some(invoke.span_id.as_str()),
            "{step}"
        );
        assert_eq!(s.str_attr(names::STEP_NAME), Some(*step));
        step_spans.push(s);
    }
    for s in step_spans.iter().copied().chain([invoke]) {
        assert_eq!(s.str_attr(names::USER_ID), Some(user), "{}", s.name);
        assert_eq!(s.str_attr(names::AGENT_TYPE), Some(agent), "{}", s.name);
        assert_eq!(s.str_attr(names::RUN_ID), Some(run_id), "{}", s.name);
        assert_eq!(s.bool_attr(names::SUCCESS), Some(true), "{}", s.name);
        assert!(
            matches!(s.attr(names::DURATION_MS), Some(AttrValue::F64(d)) if *d >= 0.0),
            "{}",
            s.name
        );
        assert_eq!(s.status, CapturedStatus::Unset, "{}", s.name);
    }
    let chats: Vec<&CapturedSpan> = spans
        .iter()
        .filter(|s| s.name.starts_with("chat "))
        .collect();
    assert!(!chats.is_empty(), "prose steps call the LLM");
    for chat in chats {
        assert_eq!(chat.kind, SpanKind::Client);
        assert!(
            step_spans
                .iter()
                .any(|s| Some(s.span_id.as_str()) == chat.parent_span_id.as_deref()),
            "a chat span is the child of a step"
        );
        assert!(chat.i64_attr(names::GEN_AI_USAGE_INPUT_TOKENS).is_some());
    }
    let trace_id = &server.trace_id;
    assert!(spans.iter().all(|s| &s.trace_id == trace_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_run_is_one_trace_across_api_and_worker_processes() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let prefix = unique_prefix("trace");
    let listen = format!("127.0.0.1:{}", free_port());
    let shared = [
        ("REDIS_URL", redis_url()),
        ("JOBPILOT_REDIS_PREFIX", prefix.clone()),
        ("OTEL_EXPORTER_ENDPOINT", receiver.endpoint()),
    ];
    let shared: Vec<(&str, &str)> = shared.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut api_env = shared.clone();
    api_env.push(("JOBPILOT_LISTEN", &listen));
    let api = Jobpilot::start(&["api"], &base_env(&api_env));
    let _worker = Jobpilot::start(&["worker"], &base_env(&shared));
    let base = api.base.clone().unwrap();

    run_every_agent(&base, &receiver, "jobpilot-worker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_run_is_one_trace_in_the_embedded_single_process_mode() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let (serve, _data) = serve(&[("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint())]);
    // One process plays both roles, under the API's service name.
    run_every_agent(&serve.base.clone().unwrap(), &receiver, "jobpilot-api").await;
}

/// Runs each agent type once and checks its trace and result.
async fn run_every_agent(base: &str, receiver: &OtlpReceiver, worker_service: &str) {
    for (agent, input, steps) in inputs() {
        let (run_id, trace_id) = submit(base, "alice", agent, input).await;
        let run = wait_finished(base, "alice", &run_id, Duration::from_secs(30)).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["trace_id"], trace_id.as_str());
        assert_eq!(run["attempts"], 1);
        // server, producer, consumer, invoke_agent, the steps and at least one chat span.
        let expected = 4 + steps.len() + 1;
        let spans = receiver
            .wait_for(Duration::from_secs(20), |spans| {
                of_trace(spans, &trace_id).len() >= expected
                    && of_trace(spans, &trace_id)
                        .iter()
                        .any(|s| s.kind == SpanKind::Server)
            })
            .await;
        let spans = of_trace(&spans, &trace_id);
        assert_run_trace(&spans, agent, steps, &run_id, "alice", worker_service);
        let result = &run["result"];
        match agent {
            "job_match" => {
                let score = result["score"].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&score), "{result}");
                assert!(
                    result["matched_skills"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|s| s == "rust"),
                    "{result}"
                );
            }
            "resume_review" => assert!(result["sections_found"].is_array(), "{result}"),
            _ => assert!(
                result["letter"].as_str().unwrap().contains("Acme"),
                "{result}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_without_words_fails_its_step_permanently_with_an_error_span() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let (serve, _data) = serve(&[("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint())]);
    let base = serve.base.clone().unwrap();
    let (run_id, trace_id) = submit(&base, "bob", "resume_review", json!({"resume": "!!!"})).await;
    let run = wait_finished(&base, "bob", &run_id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["attempts"], 1, "a permanent error is not retried");
    assert!(run["error"].as_str().unwrap().contains("no words"), "{run}");

    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            of_trace(spans, &trace_id)
                .iter()
                .any(|s| s.name == "process agent_runs")
        })
        .await;
    let spans = of_trace(&spans, &trace_id);
    let step = one(&spans, "agent.resume_review.parse_resume");
    assert!(matches!(&step.status, CapturedStatus::Error(m) if m.contains("no words")));
    assert!(step.str_attr(names::ERROR_TYPE).is_some());
    assert_eq!(step.bool_attr(names::SUCCESS), Some(false));
    let exception = step
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("exception event");
    assert!(exception.attributes.contains_key("exception.message"));
    assert!(matches!(
        one(&spans, "invoke_agent resume_review").status,
        CapturedStatus::Error(_)
    ));
    assert!(matches!(
        one(&spans, "process agent_runs").status,
        CapturedStatus::Error(_)
    ));
    assert!(
        spans
            .iter()
            .all(|s| s.name != "agent.resume_review.check_sections")
    );
    // In `serve` one process plays both roles: everything is jobpilot-api.
    assert!(
        spans
            .iter()
            .all(|s| s.service_name.as_deref() == Some("jobpilot-api"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_llm_failure_is_retried_and_the_trace_shows_both_http_attempts() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let llm = FakeLlm::start(LlmBehaviour::FailFirst(1)).await;
    let (serve, _data) = serve(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("JOBPILOT_LLM_BASE_URL", &llm.base_url),
        ("JOBPILOT_LLM_MODEL", "test-model"),
        ("JOBPILOT_LLM_API_KEY", "sk-test-secret-key"),
    ]);
    let base = serve.base.clone().unwrap();
    let (run_id, trace_id) = submit(
        &base,
        "carol",
        "resume_review",
        json!({"resume": "Experience: Rust\nSkills: Docker"}),
    )
    .await;
    let run = wait_finished(&base, "carol", &run_id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            of_trace(spans, &trace_id)
                .iter()
                .filter(|s| s.name == "POST")
                .count()
                >= 2
                && of_trace(spans, &trace_id)
                    .iter()
                    .any(|s| s.name == "process agent_runs")
        })
        .await;
    let spans = of_trace(&spans, &trace_id);
    let chat = one(&spans, "chat test-model");
    assert_eq!(
        chat.str_attr(names::GEN_AI_REQUEST_MODEL),
        Some("test-model")
    );
    assert_eq!(chat.i64_attr(names::GEN_AI_USAGE_INPUT_TOKENS), Some(42));
    assert_eq!(chat.i64_attr(names::GEN_AI_USAGE_OUTPUT_TOKENS), Some(7));
    let mut posts: Vec<&CapturedSpan> = spans.iter().filter(|s| s.name == "POST").collect();
    posts.sort_by_key(|s| s.i64_attr(names::HTTP_RESPONSE_STATUS_CODE));
    assert_eq!(posts.len(), 2);
    assert_eq!(
        posts[0].i64_attr(names::HTTP_RESPONSE_STATUS_CODE),
        Some(200)
    );
    assert_eq!(
        posts[1].i64_attr(names::HTTP_RESPONSE_STATUS_CODE),
        Some(503)
    );
    for post in &posts {
        assert_eq!(post.kind, SpanKind::Client);
        assert_eq!(post.parent_span_id.as_deref(), Some(chat.span_id.as_str()));
    }
    // The LLM endpoint received the trace context of the HTTP spans, and nothing else of ours.
    let headers = llm.requests.lock().unwrap().clone();
    assert_eq!(headers.len(), 2);
    for h in &headers {
        let tp = h["traceparent"].to_str().unwrap();
        assert!(tp.contains(&trace_id), "{tp}");
        assert!(posts.iter().any(|p| tp.contains(&p.span_id)), "{tp}");
        assert!(h.get("tracestate").is_none() && h.get("baggage").is_none());
    }
    let everything = format!("{spans:?}{}", serve.stderr());
    assert!(
        !everything.contains("sk-test-secret-key"),
        "the API key leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_keeps_failing_is_retried_in_the_same_trace_then_dead_lettered() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let llm = FakeLlm::start(LlmBehaviour::AlwaysFail).await;
    let (serve, _data) = serve(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("JOBPILOT_LLM_BASE_URL", &llm.base_url),
        ("JOBPILOT_LLM_MODEL", "test-model"),
        ("JOBPILOT_LLM_MAX_RETRIES", "0"),
        ("JOBPILOT_MAX_ATTEMPTS", "2"),
    ]);
    let base = serve.base.clone().unwrap();
    let (run_id, trace_id) = submit(
        &base,
        "dave",
        "resume_review",
        json!({"resume": "Experience: Rust"}),
    )
    .await;
    let run = wait_finished(&base, "dave", &run_id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["dead_lettered"], true, "{run}");
    assert_eq!(run["attempts"], 2, "{run}");

    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            of_trace(spans, &trace_id)
                .iter()
                .filter(|s| s.name == "process agent_runs")
                .count()
                >= 2
        })
        .await;
    let spans = of_trace(&spans, &trace_id);
    let mut attempts: Vec<i64> = spans
        .iter()
        .filter(|s| s.name == "process agent_runs")
        .map(|s| s.i64_attr(names::MESSAGING_DELIVERY_ATTEMPT).unwrap())
        .collect();
    attempts.sort();
    assert_eq!(attempts, vec![1, 2]);

    let (_, queue) = get_json(&serve.url("/api/v1/admin/queue"), Some(&admin_token("ops"))).await;
    assert_eq!(queue["dead_lettered"], 1, "{queue}");
    assert_eq!(queue["dead_letters"][0]["run_id"], run_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_run_in_flight_at_a_crash_completes_after_restart() {
    let slow = FakeLlm::start(LlmBehaviour::Slow(Duration::from_secs(60))).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut first = Jobpilot::start(
        &["serve", "--init"],
        &base_env(&[
            ("JOBPILOT_LISTEN", &listen),
            ("JOBPILOT_DATA_DIR", &data),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("JOBPILOT_LLM_BASE_URL", &slow.base_url),
            ("JOBPILOT_LLM_MODEL", "test-model"),
        ]),
    );
    let base = first.base.clone().unwrap();
    let (run_id, _) = submit(
        &base,
        "erin",
        "resume_review",
        json!({"resume": "Experience: Rust"}),
    )
    .await;
    let (queued_id, _) = submit(
        &base,
        "erin",
        "job_match",
        json!({"resume": "Rust", "job": "Rust developer"}),
    )
    .await;
    // Wait until the first run is in the hands of the LLM, then crash.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while slow.request_count() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slow.request_count() > 0, "the run never reached the LLM");
    first.kill();

    let second = Jobpilot::start(
        &["serve"],
        &base_env(&[
            ("JOBPILOT_LISTEN", &listen),
            ("JOBPILOT_DATA_DIR", &data),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]),
    );
    let base = second.base.clone().unwrap();
    let run = wait_finished(&base, "erin", &run_id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["attempts"], 2, "the crashed attempt counts: {run}");
    let other = wait_finished(&base, "erin", &queued_id, Duration::from_secs(30)).await;
    assert_eq!(other["status"], "succeeded", "{other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_spans_of_answered_requests_and_exits_zero() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let (mut serve, _data) = serve(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        // Only the shutdown flush can deliver within the test.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ]);
    for _ in 0..5 {
        let res = reqwest::Client::new()
            .get(serve.url("/api/v1/agents"))
            .bearer_auth(token("frank"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    assert!(receiver.spans().is_empty());
    let code = serve.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", serve.stderr());
    let spans = receiver.spans();
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.name == "GET /api/v1/agents")
            .count(),
        5,
        "{spans:#?}"
    );
}

#[tokio::test]
async fn an_invalid_setting_stops_startup_with_one_line_naming_the_variable() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_jobpilot"))
        .arg("serve")
        .env_clear()
        .env("OTEL_TRACES_SAMPLER", "sometimes")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("OTEL_TRACES_SAMPLER"), "{stderr}");
}

#[tokio::test]
async fn the_token_command_prints_a_token_the_api_accepts() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_jobpilot"))
        .args(["token", "--user", "grace"])
        .env_clear()
        .env("JOBPILOT_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let claims = jobpilot_api::Auth::new(SECRET.as_bytes())
        .verify(token.trim())
        .unwrap();
    assert_eq!(claims.sub, "grace");
}
