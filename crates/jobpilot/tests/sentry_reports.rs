//! Errors reach Sentry with the trace id, end to end: the real binary, a local HTTP endpoint
//! standing in for the Sentry DSN, and the two error paths an operator meets most: a run that
//! fails, and a 5xx answer (the broker gone).

mod support;

use std::time::{Duration, Instant};

use jobpilot_telemetry::testing::FakeSentry;
use serde_json::{Value, json};
use support::*;

/// The event items (JSON lines with tags) the stand-in Sentry server received so far.
fn events(sentry: &FakeSentry) -> Vec<Value> {
    sentry
        .envelopes()
        .iter()
        .flat_map(|e| e.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .filter(|v| v.get("tags").is_some())
        .collect()
}

/// Waits (bounded) for an event tagged with `trace_id`.
async fn wait_for_trace(sentry: &FakeSentry, trace_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(e) = events(sentry)
            .into_iter()
            .find(|e| e["tags"]["trace_id"] == trace_id)
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no Sentry event for trace {trace_id}; got {:?}",
            sentry.envelopes()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The event is linked to the trace both by tag and by Sentry's own trace context.
fn assert_linked(event: &Value, trace_id: &str) {
    assert_eq!(event["tags"]["trace_id"], trace_id, "{event}");
    assert_eq!(event["contexts"]["trace"]["trace_id"], trace_id, "{event}");
    // Sentry leaves out the default level, `error`.
    assert!(event.get("level").is_none_or(|l| l == "error"), "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_reaches_sentry_with_its_trace_id() {
    let sentry = FakeSentry::start().await;
    let (serve, _data) = serve(&[
        ("SENTRY_DSN", sentry.dsn()),
        ("OTEL_TRACES_EXPORTER", "none"),
    ]);
    let base = serve.url("");
    let (run_id, trace_id) = submit(&base, "bob", "resume_review", json!({"resume": "!!!"})).await;
    let run = wait_finished(&base, "bob", &run_id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "failed", "{run}");

    let event = wait_for_trace(&sentry, &trace_id).await;
    assert_linked(&event, &trace_id);
    assert_eq!(event["tags"]["run_id"], run_id.as_str(), "{event}");
    assert_eq!(event["tags"]["agent_type"], "resume_review", "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_answer_reaches_sentry_with_the_trace_id_of_the_error_body() {
    let sentry = FakeSentry::start().await;
    let mut redis = RedisServer::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let api = Jobpilot::start(
        &["api"],
        &base_env(&[
            ("JOBPILOT_LISTEN", &listen),
            ("REDIS_URL", &redis.url()),
            ("JOBPILOT_REDIS_PREFIX", &unique_prefix("sentry-5xx")),
            ("SENTRY_DSN", sentry.dsn()),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]),
    );
    redis.stop();
    let (status, body, _) = try_submit(
        &api.url(""),
        "carol",
        "resume_review",
        json!({"resume": "Summary: engineer\nExperience: Rust"}),
    )
    .await;
    assert!((500..600).contains(&status), "{status}: {body}");
    let trace_id = body["trace_id"]
        .as_str()
        .expect("the error body has a trace id");

    let event = wait_for_trace(&sentry, trace_id).await;
    assert_linked(&event, trace_id);
    assert_eq!(
        event["tags"]["http.response.status_code"],
        status.to_string(),
        "{event}"
    );
}
