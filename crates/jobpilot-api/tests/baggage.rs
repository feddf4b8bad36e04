//! A caller's `baggage` reaches the tasks of its runs only when
//! `JOBPILOT_PROPAGATE_INBOUND_BAGGAGE` is on; jobpilot's own trace context always travels.

use std::sync::Arc;
use std::time::Duration;

use jobpilot_api::{AppState, Auth, HttpTracing};
use jobpilot_queue::{Broker, EmbeddedBackend, QueueSettings, RunStore};
use jobpilot_telemetry::config::InboundPolicy;
use jobpilot_telemetry::names;
use jobpilot_telemetry::testing::SpanCapture;
use serde_json::json;

/// Posts one run carrying inbound `baggage` and returns the trace context of its task.
async fn task_context(inbound_baggage: bool) -> std::collections::BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(EmbeddedBackend::create(dir.path(), QueueSettings::default()).unwrap());
    let auth = Auth::new(b"baggage-test-secret-baggage-test-secret");
    let capture = SpanCapture::new();
    let state = AppState::builder(
        auth.clone(),
        backend.clone() as Arc<dyn Broker>,
        backend.clone() as Arc<dyn RunStore>,
    )
    .with_http_tracing(HttpTracing {
        tracer: capture.tracer(names::SCOPE_HTTP),
        excluded_paths: vec![],
        inbound: InboundPolicy::Continue,
        inbound_baggage,
        metrics: jobpilot_telemetry::Metrics::noop(),
    })
    .with_queue_tracer(capture.tracer(names::SCOPE_QUEUE))
    .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(jobpilot_api::serve(
        listener,
        jobpilot_api::app(state),
        std::future::pending(),
    ));
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v1/agents/resume_review/runs"))
        .bearer_auth(auth.issue("u", None, Duration::from_secs(60)).unwrap())
        .header("baggage", "tenant=acme,plan=gold")
        .json(&json!({"input": {"resume": "Rust engineer with Kubernetes"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let deliveries = backend
        .receive("test", 1, Duration::from_secs(5))
        .await
        .unwrap();
    deliveries[0].envelope.trace_context.clone()
}

#[tokio::test]
async fn inbound_baggage_is_not_stored_in_tasks_by_default() {
    let context = task_context(false).await;
    assert!(context.contains_key("traceparent"), "{context:?}");
    assert!(!context.contains_key("baggage"), "{context:?}");
}

#[tokio::test]
async fn inbound_baggage_travels_with_the_run_when_turned_on() {
    let context = task_context(true).await;
    assert!(context.contains_key("traceparent"), "{context:?}");
    let baggage = context.get("baggage").expect("baggage in the task");
    assert!(baggage.contains("tenant=acme"), "{baggage}");
}
