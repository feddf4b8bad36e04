//! Langfuse-ready export: with the configuration the README gives for Langfuse (OTLP
//! HTTP/protobuf to `…/api/public/otel`, Basic authentication from the public and secret key),
//! a local HTTP endpoint standing in for Langfuse receives the run's spans on Langfuse's path
//! with the right `Authorization`, each LLM call as a generation-shaped span, and the user
//! under `user.id`.
//!
//! The API and the worker run in this process on an embedded store, wired as `main` wires them,
//! with telemetry started from the same variables an operator would set.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jobpilot_agents::{AgentRunner, LlmClient, LlmConfig};
use jobpilot_api::{AppState, Auth, HttpTracing};
use jobpilot_queue::{Broker, EmbeddedBackend, QueueSettings};
use jobpilot_telemetry::http_receiver::OtlpHttpReceiver;
use jobpilot_telemetry::{Telemetry, TelemetryConfig, names};
use jobpilot_worker::{Worker, WorkerConfig};
use support::{FakeLlm, LlmBehaviour, SECRET, token};

/// `base64("pk-lf-1234:sk-lf-5678")`, as the README tells the operator to compute it.
const BASIC: &str = "cGstbGYtMTIzNDpzay1sZi01Njc4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_llm_call_reaches_langfuse_as_a_generation_with_the_user() {
    let langfuse = OtlpHttpReceiver::start().await.unwrap();
    let endpoint = format!("{}/api/public/otel", langfuse.base_url());
    let headers = format!("Authorization=Basic%20{BASIC}");
    let vars: HashMap<&str, &str> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ]
    .into_iter()
    .collect();
    let config = TelemetryConfig::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap();
    let telemetry = Telemetry::init(&config, names::SERVICE_API).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(EmbeddedBackend::create(dir.path(), QueueSettings::default()).unwrap());
    let state = AppState::builder(
        Auth::new(SECRET.as_bytes()),
        backend.clone(),
        backend.clone(),
    )
    .with_http_tracing(HttpTracing {
        tracer: telemetry.tracer(names::SCOPE_HTTP),
        excluded_paths: vec![],
        inbound: config.inbound,
        inbound_baggage: config.inbound_baggage,
        metrics: jobpilot_telemetry::Metrics::noop(),
    })
    .with_queue_tracer(telemetry.tracer(names::SCOPE_QUEUE))
    .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(jobpilot_api::serve(
        listener,
        jobpilot_api::app(state),
        async move {
            let _ = stopped.await;
        },
    ));

    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/agents/cover_letter/runs"))
        .bearer_auth(token("grace"))
        .json(&serde_json::json!({"input": {
            "resume": "Experience: Rust engineer with Kubernetes",
            "job": "Rust developer\nRequirements: Rust",
            "company": "Acme"
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let llm = FakeLlm::start(LlmBehaviour::FailFirst(0)).await;
    let client = LlmClient::new(
        LlmConfig::openai_compatible(&llm.base_url, "test-model"),
        telemetry.tracer(names::SCOPE_LLM),
    )
    .unwrap();
    let worker = Worker::new(
        backend.clone(),
        backend.clone(),
        Arc::new(AgentRunner::new(
            telemetry.tracer(names::SCOPE_AGENTS),
            client,
        )),
        telemetry.tracer(names::SCOPE_QUEUE),
        WorkerConfig::default(),
    );
    let mut deliveries = backend
        .receive("test", 1, Duration::from_secs(5))
        .await
        .unwrap();
    worker.process(deliveries.remove(0)).await;
    let llm_calls = llm.requests.lock().unwrap().len();
    assert!(llm_calls >= 1, "the run called the LLM");

    let _ = stop.send(());
    let _ = server.await;
    let stats = telemetry.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(stats.dropped, 0, "{stats:?}");

    let exports = langfuse.exports();
    assert!(!exports.is_empty(), "nothing reached the endpoint");
    for export in &exports {
        assert_eq!(export.path, "/api/public/otel/v1/traces");
        assert_eq!(
            export.header("authorization"),
            Some(format!("Basic {BASIC}").as_str())
        );
        assert_eq!(
            export.header("content-type"),
            Some("application/x-protobuf")
        );
    }
    let spans: Vec<_> = exports.iter().flat_map(|e| e.spans.clone()).collect();
    let generations: Vec<_> = spans
        .iter()
        .filter(|s| s.str_attr(names::GEN_AI_OPERATION_NAME) == Some(names::OP_CHAT))
        .collect();
    assert_eq!(generations.len(), llm_calls, "one generation per LLM call");
    for g in &generations {
        assert_eq!(g.name, "chat test-model");
        assert_eq!(g.str_attr(names::GEN_AI_REQUEST_MODEL), Some("test-model"));
        assert_eq!(g.i64_attr(names::GEN_AI_USAGE_INPUT_TOKENS), Some(42));
        assert_eq!(g.i64_attr(names::GEN_AI_USAGE_OUTPUT_TOKENS), Some(7));
    }
    let with_user: Vec<_> = spans
        .iter()
        .filter(|s| s.attr(names::USER_ID).is_some())
        .collect();
    assert!(
        with_user.len() >= 3,
        "server, run and step spans carry the user"
    );
    for s in with_user {
        assert_eq!(s.str_attr(names::USER_ID), Some("grace"), "{}", s.name);
        assert_eq!(s.str_attr(names::USER_DOT_ID), Some("grace"), "{}", s.name);
    }
}
