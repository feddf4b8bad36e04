//! What a user reads in a failed run is a public message with a stable code; the internal
//! detail (the LLM's address, the provider's words, a key fragment) stays in spans and logs.

mod support;

use std::time::Duration;

use jobpilot_telemetry::testing::OtlpReceiver;
use serde_json::json;
use support::*;

/// An LLM endpoint on loopback that refuses every request as an OpenAI-style 401.
async fn refusing_llm() -> (String, u16) {
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {
                "message": "Incorrect API key provided: sk-live-****WXYZ. Find your key at https://llm.example/keys",
                "type": "invalid_request_error",
                "code": "invalid_api_key"
            }})),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://127.0.0.1:{port}/v1"), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_401_leaves_no_host_port_or_key_fragment_in_the_run_error() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let (base_url, port) = refusing_llm().await;
    let (mut serve, _data) = serve(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("JOBPILOT_LLM_BASE_URL", &base_url),
        ("JOBPILOT_LLM_MODEL", "test-model"),
        ("JOBPILOT_LLM_API_KEY", "sk-live-0000WXYZ"),
        ("JOBPILOT_LLM_MAX_RETRIES", "0"),
    ]);
    let base = serve.base.clone().unwrap();
    let (run_id, trace_id) = submit(
        &base,
        "alice",
        "cover_letter",
        json!({"resume": "Experience: Rust engineer with Kubernetes",
               "job": "Rust developer\nRequirements: Rust", "company": "Acme"}),
    )
    .await;
    let run = wait_finished(&base, "alice", &run_id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(error.starts_with("llm_unavailable: "), "{error}");
    for internal in [
        "127.0.0.1",
        &port.to_string(),
        "WXYZ",
        "sk-",
        "Incorrect API key",
        "401",
    ] {
        assert!(!error.contains(internal), "{internal:?} in {error:?}");
    }
    assert_eq!(serve.terminate(Duration::from_secs(15)), Some(0));

    // The detail is where operators look: on the trace's spans.
    let spans = of_trace(&receiver.spans(), &trace_id);
    let detail = format!("{spans:?}");
    assert!(detail.contains("http_401"), "the error type is on a span");
}
