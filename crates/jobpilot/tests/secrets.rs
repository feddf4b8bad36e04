//! No secret leaves jobpilot: credentials, sensitive query values, the LLM API key and resume
//! content never appear in an exported span, a log line or a Sentry event, and control
//! characters in requests cannot forge a log line.

mod support;

use std::time::Duration;

use jobpilot_telemetry::testing::{FakeSentry, OtlpReceiver};
use serde_json::json;
use support::*;

/// Everything the stand-in Sentry server received, as one text.
fn sentry_text(sentry: &FakeSentry) -> String {
    sentry.envelopes().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_spans_logs_or_sentry() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let sentry = FakeSentry::start().await;
    let llm = FakeLlm::start(LlmBehaviour::FailFirst(0)).await;
    let llm_key = "sk-live-LLMKEY-0000-secret";
    let (mut serve, _data) = serve(&[
        ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ("SENTRY_DSN", sentry.dsn()),
        ("JOBPILOT_LOG", "debug"),
        ("JOBPILOT_LLM_BASE_URL", &llm.base_url),
        ("JOBPILOT_LLM_MODEL", "test-model"),
        ("JOBPILOT_LLM_API_KEY", llm_key),
    ]);
    let token = token("alice");
    let email = "jane.doe.private@example.com";
    let resume_phrase = "Confidential-Resume-Phrase";
    let secrets = [
        token.as_str(),
        "QTOKEN-123",
        "QSIG-456",
        "QPASS-789",
        "COOKIE-SECRET-1",
        "XAPIKEY-SECRET-2",
        llm_key,
        email,
        resume_phrase,
    ];
    let client = reqwest::Client::new();
    let with_secrets = |req: reqwest::RequestBuilder| {
        req.bearer_auth(&token)
            .header("cookie", "session=COOKIE-SECRET-1")
            .header("x-api-key", "XAPIKEY-SECRET-2")
            .header("tracestate", "vendor=inbound-state")
            .header("baggage", "tenant=inbound-baggage")
    };
    let res =
        with_secrets(client.get(
            serve.url("/api/v1/agents?token=QTOKEN-123&sig=QSIG-456&password=QPASS-789&page=2"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // A run that reaches the LLM, and one that fails (a Sentry event).
    let resume =
        format!("{resume_phrase}. Contact: {email}\nExperience: Rust engineer, Kubernetes");
    let mut runs = Vec::new();
    for (agent, input) in [
        (
            "job_match",
            json!({"resume": resume, "job": "Rust developer\nRequirements: Rust"}),
        ),
        ("resume_review", json!({"resume": "!!! ???"})),
    ] {
        let res = with_secrets(client.post(serve.url(&format!(
            "/api/v1/agents/{agent}/runs?access_token=QTOKEN-123"
        ))))
        .json(&json!({ "input": input }))
        .send()
        .await
        .unwrap();
        assert_eq!(res.status(), 202);
        let body: serde_json::Value = res.json().await.unwrap();
        runs.push(body["run_id"].as_str().unwrap().to_owned());
    }
    for run in &runs {
        wait_finished(
            &serve.base.clone().unwrap(),
            "alice",
            run,
            Duration::from_secs(30),
        )
        .await;
    }

    // Control characters in the path cannot forge a log line.
    let res = client
        .get(serve.url("/api/v1/runs/x%0D%0AFORGED%20line%1B%5B31m"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    assert_eq!(serve.terminate(Duration::from_secs(15)), Some(0));

    let spans = receiver.spans();
    assert!(spans.len() >= 10, "spans were exported: {}", spans.len());
    let exported = format!("{spans:?}");
    let logs = serve.stderr();
    let events = sentry_text(&sentry);
    assert!(
        events.contains("trace_id"),
        "a Sentry event was sent: {events}"
    );
    for secret in secrets {
        assert!(
            !exported.contains(secret),
            "{secret} is in an exported span"
        );
        assert!(!logs.contains(secret), "{secret} is in the logs");
        assert!(!events.contains(secret), "{secret} is in a Sentry event");
    }
    assert!(
        exported.contains("token=REDACTED"),
        "query values are redacted, not dropped"
    );
    assert!(!logs.lines().any(|l| l.starts_with("FORGED")), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "no raw escape sequence in the logs"
    );

    // The LLM endpoint got our traceparent, not the caller's tracestate or baggage, and the key
    // only in its Authorization header.
    let llm_requests = llm.requests.lock().unwrap().clone();
    assert!(!llm_requests.is_empty());
    for h in &llm_requests {
        assert!(h.get("traceparent").is_some());
        assert!(h.get("tracestate").is_none(), "{h:?}");
        assert!(h.get("baggage").is_none(), "{h:?}");
        assert_eq!(h["authorization"], format!("Bearer {llm_key}").as_str());
    }
}
