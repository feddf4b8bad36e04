//! The LLM client against a real OpenAI-compatible HTTP server on `127.0.0.1:0`: what it sends,
//! what it records in spans, how it retries, and that the API key never reaches telemetry.

mod support;

use std::time::{Duration, Instant};

use jobpilot_agents::{ChatMessage, LlmClient, LlmConfig, LlmError};
use jobpilot_telemetry::testing::{CapturedSpan, CapturedStatus, SpanCapture};
use jobpilot_telemetry::{AttrValue, SpanKind, names};
use serde_json::json;
use support::{Reply, completion, spawn_llm_server};

const API_KEY: &str = "sk-test-4f9a2c-very-secret";

fn messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are terse."),
        ChatMessage::user("Say hello to Ada."),
    ]
}

fn config(base_url: &str) -> LlmConfig {
    LlmConfig::openai_compatible(base_url, "test-model").with_api_key(API_KEY)
}

fn one(capture: &SpanCapture, name: &str) -> CapturedSpan {
    let spans = capture.named(name);
    assert_eq!(spans.len(), 1, "expected one {name} span, got {spans:#?}");
    spans.into_iter().next().unwrap()
}

fn error_type(span: &CapturedSpan) -> Option<&str> {
    span.str_attr(names::ERROR_TYPE)
}

#[tokio::test]
async fn a_chat_posts_model_and_messages_to_chat_completions_with_the_bearer_key() {
    let server = spawn_llm_server(vec![Reply::Ok(completion("Hello, Ada."))]).await;
    let capture = SpanCapture::new();
    let client =
        LlmClient::new(config(&server.base_url), capture.tracer(names::SCOPE_LLM)).unwrap();

    let parent = capture.tracer(names::SCOPE_AGENTS).start(
        &Default::default(),
        "step",
        SpanKind::Internal,
        vec![],
    );
    let answer = client.chat(&parent.cx(), &messages()).await.unwrap();

    assert_eq!(answer.content, "Hello, Ada.");
    assert_eq!(answer.id, "chatcmpl-test-1");
    assert_eq!(answer.model, "test-model-2024");
    let received = server.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.body["model"], "test-model");
    assert_eq!(
        request.body["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to Ada."}
        ])
    );
}

#[tokio::test]
async fn the_traceparent_the_server_receives_is_the_post_span() {
    let server = spawn_llm_server(vec![]).await;
    let capture = SpanCapture::new();
    let client =
        LlmClient::new(config(&server.base_url), capture.tracer(names::SCOPE_LLM)).unwrap();
    let parent = capture.tracer(names::SCOPE_AGENTS).start(
        &Default::default(),
        "step",
        SpanKind::Internal,
        vec![],
    );
    client.chat(&parent.cx(), &messages()).await.unwrap();
    parent.end();

    let traceparent = server.received()[0]
        .header("traceparent")
        .expect("traceparent sent")
        .to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let post = one(&capture, "POST");
    let chat = one(&capture, "chat test-model");
    let step = one(&capture, "step");
    assert_eq!(parts[1], post.trace_id);
    assert_eq!(parts[2], post.span_id);
    assert_eq!(
        parts[3], "03",
        "sampled and random flags (a trace started here)"
    );
    // step -> chat -> POST, one trace.
    assert_eq!(post.parent_span_id.as_deref(), Some(chat.span_id.as_str()));
    assert_eq!(chat.parent_span_id.as_deref(), Some(step.span_id.as_str()));
    assert_eq!(chat.trace_id, step.trace_id);
    assert_eq!(post.trace_id, step.trace_id);
}

#[tokio::test]
async fn token_usage_and_response_metadata_are_recorded_on_the_chat_span() {
    let server = spawn_llm_server(vec![]).await;
    let capture = SpanCapture::new();
    let client =
        LlmClient::new(config(&server.base_url), capture.tracer(names::SCOPE_LLM)).unwrap();
    client.chat(&Default::default(), &messages()).await.unwrap();

    let chat = one(&capture, "chat test-model");
    assert_eq!(chat.kind, SpanKind::Client);
    assert_eq!(chat.str_attr(names::GEN_AI_OPERATION_NAME), Some("chat"));
    assert_eq!(chat.str_attr(names::GEN_AI_PROVIDER_NAME), Some("openai"));
    assert_eq!(
        chat.str_attr(names::GEN_AI_REQUEST_MODEL),
        Some("test-model")
    );
    assert_eq!(
        chat.str_attr(names::GEN_AI_RESPONSE_MODEL),
        Some("test-model-2024")
    );
    assert_eq!(
        chat.str_attr(names::GEN_AI_RESPONSE_ID),
        Some("chatcmpl-test-1")
    );
    assert_eq!(chat.i64_attr(names::GEN_AI_USAGE_INPUT_TOKENS), Some(42));
    assert_eq!(chat.i64_attr(names::GEN_AI_USAGE_OUTPUT_TOKENS), Some(7));
    assert_eq!(
        chat.attr(names::GEN_AI_RESPONSE_FINISH_REASONS),
        Some(&AttrValue::StrList(vec!["stop".to_owned()]))
    );
    assert_eq!(chat.status, CapturedStatus::Unset);

    let post = one(&capture, "POST");
    assert_eq!(post.kind, SpanKind::Client);
    assert_eq!(post.str_attr(names::HTTP_REQUEST_METHOD), Some("POST"));
    assert_eq!(post.str_attr(names::SERVER_ADDRESS), Some("127.0.0.1"));
    assert_eq!(
        post.i64_attr(names::SERVER_PORT),
        Some(i64::from(server.port))
    );
    assert_eq!(
        post.str_attr(names::URL_FULL),
        Some(format!("{}/chat/completions", server.base_url).as_str())
    );
    assert_eq!(post.i64_attr(names::HTTP_RESPONSE_STATUS_CODE), Some(200));
}

#[tokio::test]
async fn a_503_then_200_is_retried_and_traced_as_two_post_spans() {
    let server = spawn_llm_server(vec![
        Reply::Status(503, json!({"error": {"message": "overloaded"}})),
        Reply::Ok(completion("second time lucky")),
    ])
    .await;
    let capture = SpanCapture::new();
    let client = LlmClient::new(
        config(&server.base_url).with_max_retries(2),
        capture.tracer(names::SCOPE_LLM),
    )
    .unwrap();

    let answer = client.chat(&Default::default(), &messages()).await.unwrap();

    assert_eq!(answer.content, "second time lucky");
    assert_eq!(server.received().len(), 2);
    let chat = one(&capture, "chat test-model");
    assert_eq!(
        chat.status,
        CapturedStatus::Unset,
        "the call succeeded in the end"
    );
    let posts = capture.named("POST");
    assert_eq!(posts.len(), 2);
    for post in &posts {
        assert_eq!(post.parent_span_id.as_deref(), Some(chat.span_id.as_str()));
    }
    // Spans are captured as they end, so the first attempt comes first.
    assert_eq!(
        posts[0].i64_attr(names::HTTP_RESPONSE_STATUS_CODE),
        Some(503)
    );
    assert!(matches!(posts[0].status, CapturedStatus::Error(_)));
    assert_eq!(error_type(&posts[0]), Some("503"));
    assert_eq!(
        posts[1].i64_attr(names::HTTP_RESPONSE_STATUS_CODE),
        Some(200)
    );
    assert_eq!(posts[1].status, CapturedStatus::Unset);
    // Each attempt carried its own span as traceparent.
    let sent: Vec<String> = server
        .received()
        .iter()
        .map(|r| {
            r.header("traceparent")
                .unwrap()
                .split('-')
                .nth(2)
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(sent, [posts[0].span_id.clone(), posts[1].span_id.clone()]);
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let server = spawn_llm_server(vec![Reply::Status(
        400,
        json!({"error": {"message": "unknown model test-model"}}),
    )])
    .await;
    let capture = SpanCapture::new();
    let client = LlmClient::new(
        config(&server.base_url).with_max_retries(2),
        capture.tracer(names::SCOPE_LLM),
    )
    .unwrap();

    let error = client
        .chat(&Default::default(), &messages())
        .await
        .unwrap_err();

    assert!(
        matches!(error, LlmError::Status { status: 400, .. }),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert_eq!(error.error_type(), "http_400");
    assert!(
        error.to_string().contains("unknown model test-model"),
        "{error}"
    );
    assert_eq!(server.received().len(), 1);
    assert_eq!(capture.named("POST").len(), 1);
    let chat = one(&capture, "chat test-model");
    assert!(matches!(chat.status, CapturedStatus::Error(_)));
    assert_eq!(error_type(&chat), Some("http_400"));
    assert!(chat.events.iter().any(|e| e.name == names::EXCEPTION_EVENT));
}

#[tokio::test]
async fn a_hanging_server_times_out_with_a_transient_error_per_attempt() {
    let server = spawn_llm_server(vec![Reply::Hang, Reply::Hang]).await;
    let capture = SpanCapture::new();
    let client = LlmClient::new(
        config(&server.base_url)
            .with_timeout(Duration::from_millis(300))
            .with_max_retries(1),
        capture.tracer(names::SCOPE_LLM),
    )
    .unwrap();

    let started = Instant::now();
    let error = client
        .chat(&Default::default(), &messages())
        .await
        .unwrap_err();

    assert!(
        matches!(
            error,
            LlmError::Timeout {
                timeout_ms: 300,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert_eq!(error.error_type(), "timeout");
    // Two attempts of 300 ms and one 200 ms backoff, not the default 30 s timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let posts = capture.named("POST");
    assert_eq!(posts.len(), 2);
    for post in &posts {
        assert_eq!(error_type(post), Some("timeout"));
        assert_eq!(post.i64_attr(names::HTTP_RESPONSE_STATUS_CODE), None);
    }
    assert_eq!(
        error_type(&one(&capture, "chat test-model")),
        Some("timeout")
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_transient_connect_error() {
    // Bind then release a port, so nothing listens on it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let capture = SpanCapture::new();
    let client = LlmClient::new(
        config(&format!("http://127.0.0.1:{port}/v1")).with_max_retries(0),
        capture.tracer(names::SCOPE_LLM),
    )
    .unwrap();

    let error = client
        .chat(&Default::default(), &messages())
        .await
        .unwrap_err();

    assert!(matches!(error, LlmError::Connect { .. }), "{error:?}");
    assert!(error.is_transient());
    assert_eq!(error_type(&one(&capture, "POST")), Some("connect"));
}

#[tokio::test]
async fn a_malformed_completion_is_permanent_and_not_retried() {
    let server = spawn_llm_server(vec![Reply::Ok(json!({"unexpected": true}))]).await;
    let capture = SpanCapture::new();
    let client =
        LlmClient::new(config(&server.base_url), capture.tracer(names::SCOPE_LLM)).unwrap();

    let error = client
        .chat(&Default::default(), &messages())
        .await
        .unwrap_err();

    assert_eq!(error.error_type(), "bad_response");
    assert!(!error.is_transient());
    assert_eq!(server.received().len(), 1);
    // HTTP worked; the failure belongs to the chat span.
    assert_eq!(one(&capture, "POST").status, CapturedStatus::Unset);
    assert_eq!(
        error_type(&one(&capture, "chat test-model")),
        Some("bad_response")
    );
}

#[tokio::test]
async fn the_api_key_never_appears_in_any_span_even_with_content_capture() {
    let server = spawn_llm_server(vec![
        Reply::Status(503, json!({"error": {"message": "busy"}})),
        Reply::Ok(completion("Hello, Ada.")),
    ])
    .await;
    let capture = SpanCapture::new();
    let client = LlmClient::new(
        config(&server.base_url).with_capture_content(true),
        capture.tracer(names::SCOPE_LLM),
    )
    .unwrap();
    client.chat(&Default::default(), &messages()).await.unwrap();

    let spans = capture.spans();
    assert_eq!(spans.len(), 3, "chat and two POST spans");
    let chat = one(&capture, "chat test-model");
    // Capture is on, so the prompt is there; the key still is not.
    assert!(
        chat.str_attr(names::GEN_AI_INPUT_MESSAGES)
            .unwrap()
            .contains("Say hello to Ada.")
    );
    assert!(
        chat.str_attr(names::GEN_AI_OUTPUT_MESSAGES)
            .unwrap()
            .contains("Hello, Ada.")
    );
    let leaks = |value: &AttrValue| format!("{value:?}").contains("4f9a2c");
    for span in &spans {
        for (key, value) in &span.attributes {
            assert!(!leaks(value), "{} carries the key in {key}", span.name);
        }
        for event in &span.events {
            for (key, value) in &event.attributes {
                assert!(
                    !leaks(value),
                    "{} event carries the key in {key}",
                    span.name
                );
            }
        }
        if let CapturedStatus::Error(message) = &span.status {
            assert!(
                !message.contains("4f9a2c"),
                "{} status carries the key",
                span.name
            );
        }
    }
}

#[tokio::test]
async fn prompts_are_not_recorded_unless_content_capture_is_on() {
    let server = spawn_llm_server(vec![]).await;
    let capture = SpanCapture::new();
    let client =
        LlmClient::new(config(&server.base_url), capture.tracer(names::SCOPE_LLM)).unwrap();
    client.chat(&Default::default(), &messages()).await.unwrap();

    let chat = one(&capture, "chat test-model");
    assert_eq!(chat.attr(names::GEN_AI_INPUT_MESSAGES), None);
    assert_eq!(chat.attr(names::GEN_AI_OUTPUT_MESSAGES), None);
    for span in capture.spans() {
        for value in span.attributes.values() {
            assert!(
                !format!("{value:?}").contains("Ada"),
                "{} records the prompt",
                span.name
            );
        }
    }
}

#[tokio::test]
async fn the_offline_provider_answers_with_a_chat_span_and_no_http() {
    let capture = SpanCapture::new();
    let client = LlmClient::new(LlmConfig::offline(), capture.tracer(names::SCOPE_LLM)).unwrap();

    let answer = client.chat(&Default::default(), &messages()).await.unwrap();

    assert_eq!(answer.model, "offline");
    assert!(!answer.content.is_empty());
    assert_eq!(capture.spans().len(), 1, "no POST span offline");
    let chat = one(&capture, "chat offline");
    assert_eq!(chat.kind, SpanKind::Client);
    assert_eq!(
        chat.str_attr(names::GEN_AI_PROVIDER_NAME),
        Some("jobpilot.offline")
    );
    assert_eq!(chat.str_attr(names::GEN_AI_REQUEST_MODEL), Some("offline"));
    assert_eq!(chat.str_attr(names::GEN_AI_RESPONSE_MODEL), Some("offline"));
    // 3 + 4 words at 4 tokens per 3 words, rounded up per message: 4 + 6.
    assert_eq!(chat.i64_attr(names::GEN_AI_USAGE_INPUT_TOKENS), Some(10));
    assert!(chat.i64_attr(names::GEN_AI_USAGE_OUTPUT_TOKENS).unwrap() > 0);
}
