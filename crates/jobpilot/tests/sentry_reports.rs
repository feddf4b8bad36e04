//! Errors reach Sentry with the trace id, end to end: the real binary, a local HTTP endpoint
//! standing in for the Sentry DSN, and the two error paths an operator meets most: a run that
//! fails, and a 5xx answer (the broker gone).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// A Sentry ingestion endpoint on loopback that keeps every envelope it receives.
struct FakeSentry {
    dsn: String,
    envelopes: Arc<Mutex<Vec<String>>>,
}

impl FakeSentry {
    async fn start() -> FakeSentry {
        let envelopes: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = envelopes.clone();
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                "{}"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSentry {
            dsn: format!("http://0123456789abcdef@{addr}/1"),
            envelopes,
        }
    }

    /// The event items (JSON lines with tags) received so far.
    fn events(&self) -> Vec<Value> {
        self.envelopes
            .lock()
            .unwrap()
            .iter()
            .flat_map(|e| e.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
            .filter(|v| v.get("tags").is_some())
            .collect()
    }

    /// Waits (bounded) for an event tagged with `trace_id`.
    async fn wait_for_trace(&self, trace_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .find(|e| e["tags"]["trace_id"] == trace_id)
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no Sentry event for trace {trace_id}; got {:?}",
                self.envelopes.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        ("SENTRY_DSN", &sentry.dsn),
        ("OTEL_TRACES_EXPORTER", "none"),
    ]);
    let base = serve.url("");
    let (run_id, trace_id) = submit(&base, "bob", "resume_review", json!({"resume": "!!!"})).await;
    let run = wait_finished(&base, "bob", &run_id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "failed", "{run}");

    let event = sentry.wait_for_trace(&trace_id).await;
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
            ("SENTRY_DSN", &sentry.dsn),
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

    let event = sentry.wait_for_trace(trace_id).await;
    assert_linked(&event, trace_id);
    assert_eq!(
        event["tags"]["http.response.status_code"],
        status.to_string(),
        "{event}"
    );
}
