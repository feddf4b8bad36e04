//! The API on a real socket with the embedded backend, every finished span captured in memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jobpilot_api::{AppState, Auth, HttpTracing};
use jobpilot_queue::{Broker, EmbeddedBackend, QueueSettings, RedisBackend, RunStore};
use jobpilot_telemetry::config::InboundPolicy;
use jobpilot_telemetry::testing::{CapturedSpan, CapturedStatus, SpanCapture};
use jobpilot_telemetry::{AttrValue, SpanKind, names};
use serde_json::{Value, json};

const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

struct TestApp {
    base: String,
    capture: SpanCapture,
    auth: Auth,
    _dir: tempfile::TempDir,
}

impl TestApp {
    fn token(&self, user: &str) -> String {
        self.auth
            .issue(user, None, Duration::from_secs(300))
            .unwrap()
    }

    fn admin_token(&self, user: &str) -> String {
        self.auth
            .issue(user, Some("admin"), Duration::from_secs(300))
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn server_spans(&self) -> Vec<CapturedSpan> {
        self.capture
            .spans()
            .into_iter()
            .filter(|s| s.kind == SpanKind::Server)
            .collect()
    }
}

async fn spawn_app_with(
    inbound: InboundPolicy,
    backend: Option<(Arc<dyn Broker>, Arc<dyn RunStore>)>,
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = backend.unwrap_or_else(|| {
        let embedded =
            Arc::new(EmbeddedBackend::create(dir.path(), QueueSettings::default()).unwrap());
        (
            embedded.clone() as Arc<dyn Broker>,
            embedded as Arc<dyn RunStore>,
        )
    });
    let capture = SpanCapture::new();
    let auth = Auth::new(SECRET);
    let state = AppState::builder(auth.clone(), broker, store)
        .with_http_tracing(HttpTracing {
            tracer: capture.tracer(names::SCOPE_HTTP),
            excluded_paths: vec![
                "/health".into(),
                "/ready".into(),
                "/docs".into(),
                "/openapi.json".into(),
            ],
            inbound,
            metrics: jobpilot_telemetry::Metrics::noop(),
            inbound_baggage: false,
        })
        .with_queue_tracer(capture.tracer(names::SCOPE_QUEUE))
        .with_max_body_bytes(16 * 1024)
        .with_dependency_timeout(Duration::from_millis(1500))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(jobpilot_api::serve(
        listener,
        jobpilot_api::app(state),
        std::future::pending(),
    ));
    TestApp {
        base: format!("http://{addr}"),
        capture,
        auth,
        _dir: dir,
    }
}

async fn spawn_app() -> TestApp {
    spawn_app_with(InboundPolicy::Continue, None).await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn job_match_input() -> Value {
    json!({"input": {"resume": "Rust engineer with 6 years of Kubernetes and PostgreSQL", "job": "Senior Rust developer. Requirements: Rust, Kubernetes"}})
}

#[tokio::test]
async fn server_span_has_http_semantic_conventions_user_id_and_a_response_traceparent() {
    let app = spawn_app().await;
    let res = client()
        .get(app.url("/api/v1/agents?page=1&token=hunter2"))
        .bearer_auth(app.token("alice"))
        .header("user-agent", "jobpilot-test/1.0")
        .header("cookie", "session=cookie-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let traceparent = res.headers()["traceparent"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["agents"].as_array().unwrap().len(), 3);

    let spans = app.server_spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let s = &spans[0];
    assert_eq!(s.name, "GET /api/v1/agents");
    assert_eq!(s.str_attr(names::HTTP_REQUEST_METHOD), Some("GET"));
    assert_eq!(s.str_attr(names::HTTP_ROUTE), Some("/api/v1/agents"));
    assert_eq!(s.str_attr(names::URL_PATH), Some("/api/v1/agents"));
    assert_eq!(s.str_attr(names::URL_SCHEME), Some("http"));
    assert_eq!(s.str_attr(names::URL_QUERY), Some("page=1&token=REDACTED"));
    assert_eq!(s.i64_attr(names::HTTP_RESPONSE_STATUS_CODE), Some(200));
    assert_eq!(s.str_attr(names::CLIENT_ADDRESS), Some("127.0.0.1"));
    assert_eq!(
        s.str_attr(names::USER_AGENT_ORIGINAL),
        Some("jobpilot-test/1.0")
    );
    assert_eq!(s.str_attr(names::SERVER_ADDRESS), Some("127.0.0.1"));
    assert!(s.i64_attr(names::SERVER_PORT).is_some());
    assert_eq!(s.str_attr(names::USER_ID), Some("alice"));
    assert_eq!(s.status, CapturedStatus::Unset);
    assert!(traceparent.contains(&s.trace_id) && traceparent.contains(&s.span_id));

    let everything = format!("{spans:?}");
    for secret in ["hunter2", "cookie-secret", "Bearer", &app.token("alice")] {
        assert!(!everything.contains(secret), "{secret} leaked into a span");
    }
}

#[tokio::test]
async fn an_inbound_traceparent_is_continued() {
    let app = spawn_app().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = client()
        .get(app.url("/api/v1/agents"))
        .bearer_auth(app.token("alice"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let s = &app.server_spans()[0];
    assert_eq!(s.trace_id, trace_id);
    assert_eq!(s.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
}

#[tokio::test]
async fn a_malformed_traceparent_starts_a_new_trace() {
    let app = spawn_app().await;
    let res = client()
        .get(app.url("/api/v1/agents"))
        .bearer_auth(app.token("alice"))
        .header(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let s = &app.server_spans()[0];
    assert_ne!(s.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(s.parent_span_id, None);
}

#[tokio::test]
async fn the_new_trace_policy_links_to_the_caller_instead_of_continuing() {
    let app = spawn_app_with(InboundPolicy::NewTraceWithLink, None).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    client()
        .get(app.url("/api/v1/agents"))
        .bearer_auth(app.token("alice"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    let s = &app.server_spans()[0];
    assert_ne!(s.trace_id, trace_id);
    assert_eq!(s.parent_span_id, None);
    assert_eq!(
        s.links,
        vec![(trace_id.to_owned(), "00f067aa0ba902b7".to_owned())]
    );
}

#[tokio::test]
async fn health_readiness_and_docs_are_not_traced() {
    let app = spawn_app().await;
    for path in [
        "/health",
        "/ready",
        "/docs",
        "/docs/swagger-ui.css",
        "/openapi.json",
    ] {
        let res = client().get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    assert!(app.capture.spans().is_empty(), "{:#?}", app.capture.spans());
}

#[tokio::test]
async fn the_openapi_document_lists_every_endpoint() {
    let app = spawn_app().await;
    let doc: Value = client()
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/v1/agents",
        "/api/v1/agents/job_match/runs",
        "/api/v1/agents/resume_review/runs",
        "/api/v1/agents/cover_letter/runs",
        "/api/v1/runs/{run_id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
}

async fn error_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn missing_or_invalid_tokens_get_401_json_with_the_trace_id() {
    let app = spawn_app().await;
    for auth in [None, Some("Bearer not-a-token"), Some("Basic abc")] {
        let mut req = client().get(app.url("/api/v1/agents"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (status, body) = error_of(req.send().await.unwrap()).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let trace_id = body["trace_id"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32);
    }
    let spans = app.server_spans();
    assert!(
        spans.iter().all(|s| s.status == CapturedStatus::Unset),
        "4xx leaves the status unset"
    );
    assert!(spans.iter().all(|s| s.attr(names::USER_ID).is_none()));
}

#[tokio::test]
async fn bad_run_requests_get_the_right_4xx_naming_the_problem() {
    let app = spawn_app().await;
    let token = app.token("alice");
    let post = |path: &str, body: String, content_type: &str| {
        client()
            .post(app.url(path))
            .bearer_auth(&token)
            .header("content-type", content_type.to_owned())
            .body(body)
    };
    let json_ct = "application/json";
    let (status, body) = error_of(
        post(
            "/api/v1/agents/astrology/runs",
            job_match_input().to_string(),
            json_ct,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("astrology")
    );

    let (status, body) = error_of(
        post(
            "/api/v1/agents/job_match/runs",
            r#"{"input": {"resume": "x"}}"#.into(),
            json_ct,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "input.job");

    let (status, body) = error_of(
        post(
            "/api/v1/agents/job_match/runs",
            r#"{"input": {"resume": 5, "job": "j"}}"#.into(),
            json_ct,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "input.resume");

    let (status, body) = error_of(
        post("/api/v1/agents/job_match/runs", "{not json".into(), json_ct)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let (status, _) = error_of(
        post(
            "/api/v1/agents/job_match/runs",
            job_match_input().to_string(),
            "text/plain",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 415);

    let huge = json!({"input": {"resume": "a ".repeat(20_000), "job": "j"}}).to_string();
    let (status, body) = error_of(
        post("/api/v1/agents/job_match/runs", huge, json_ct)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413, "{body}");

    let (status, body) = error_of(
        post(
            "/api/v1/agents/job_match/runs",
            r#"{"input": {}, "extra": 1}"#.into(),
            json_ct,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "extra");
}

#[tokio::test]
async fn a_run_is_accepted_in_the_request_trace_and_only_its_owner_can_read_it() {
    let app = spawn_app().await;
    let res = client()
        .post(app.url("/api/v1/agents/job_match/runs"))
        .bearer_auth(app.token("alice"))
        .json(&job_match_input())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let accepted: Value = res.json().await.unwrap();
    assert_eq!(accepted["status"], "queued");
    let run_id = accepted["run_id"].as_str().unwrap();
    let trace_id = accepted["trace_id"].as_str().unwrap();

    let server = app
        .server_spans()
        .into_iter()
        .find(|s| s.name == "POST /api/v1/agents/{agent_type}/runs")
        .unwrap();
    assert_eq!(server.trace_id, trace_id);
    assert_eq!(server.i64_attr(names::HTTP_RESPONSE_STATUS_CODE), Some(202));
    let producer = app.capture.named("send agent_runs").pop().unwrap();
    assert_eq!(producer.kind, SpanKind::Producer);
    assert_eq!(producer.trace_id, trace_id);
    assert_eq!(
        producer.parent_span_id.as_deref(),
        Some(server.span_id.as_str())
    );
    assert_eq!(producer.str_attr(names::MESSAGING_MESSAGE_ID), Some(run_id));
    assert_eq!(
        producer.str_attr(names::MESSAGING_OPERATION_TYPE),
        Some("send")
    );
    assert_eq!(producer.bool_attr(names::SUCCESS), Some(true));

    let own: Value = client()
        .get(app.url(&format!("/api/v1/runs/{run_id}")))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["status"], "queued");
    assert_eq!(own["trace_id"], trace_id);
    assert_eq!(own["agent_type"], "job_match");

    let res = client()
        .get(app.url(&format!("/api/v1/runs/{run_id}")))
        .bearer_auth(app.token("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn admin_views_need_the_admin_role() {
    let app = spawn_app().await;
    for path in ["/api/v1/admin/queue", "/api/v1/admin/telemetry"] {
        let res = client()
            .get(app.url(path))
            .bearer_auth(app.token("alice"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{path}");
        let res = client()
            .get(app.url(path))
            .bearer_auth(app.admin_token("ops"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    client()
        .post(app.url("/api/v1/agents/resume_review/runs"))
        .bearer_auth(app.token("alice"))
        .json(&json!({"input": {"resume": "Experience: Rust"}}))
        .send()
        .await
        .unwrap();
    let queue: Value = client()
        .get(app.url("/api/v1/admin/queue"))
        .bearer_auth(app.admin_token("ops"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(queue["depth"], 1, "{queue}");
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let (status, body) = error_of(client().get(app.url("/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert!(body["trace_id"].is_string());
    let (status, _) = error_of(
        client()
            .delete(app.url("/api/v1/agents"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
}

/// A redis-server of the test's own, so it can be stopped.
struct OwnRedis {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnRedis {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_stopped_broker_gives_a_fast_503_with_an_error_span_and_ready_says_why() {
    let mut redis = OwnRedis::start();
    let backend = Arc::new(
        RedisBackend::connect(&redis.url, "apitest", QueueSettings::default())
            .await
            .unwrap(),
    );
    let app = spawn_app_with(
        InboundPolicy::Continue,
        Some((
            backend.clone() as Arc<dyn Broker>,
            backend as Arc<dyn RunStore>,
        )),
    )
    .await;
    let _ = redis.child.kill();
    let _ = redis.child.wait();

    let started = std::time::Instant::now();
    let res = client()
        .post(app.url("/api/v1/agents/job_match/runs"))
        .bearer_auth(app.token("alice"))
        .json(&job_match_input())
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let (status, body) = error_of(res).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["trace_id"].is_string());
    assert!(elapsed < Duration::from_secs(10), "503 took {elapsed:?}");
    let server = app.server_spans().pop().unwrap();
    assert!(matches!(server.status, CapturedStatus::Error(_)));
    assert_eq!(
        server.attr(names::ERROR_TYPE),
        Some(&AttrValue::Str("503".into()))
    );

    let ready = client().get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(!ready["reasons"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn every_rejection_has_the_json_shape_with_a_trace_id_and_clipped_echoes() {
    let app = spawn_app().await;
    let token = app.token("alice");
    let huge = "k".repeat(200 * 1024);
    let mut big_key = serde_json::Map::new();
    big_key.insert(huge.clone(), json!(1));
    big_key.insert("input".into(), json!({}));
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "a %FF path segment",
            client()
                .get(app.url("/api/v1/runs/%FF"))
                .bearer_auth(&token),
            400,
        ),
        (
            "a %FF agent type",
            client()
                .post(app.url("/api/v1/agents/%FF%FE/runs"))
                .bearer_auth(&token)
                .json(&job_match_input()),
            400,
        ),
        (
            "another method",
            client()
                .delete(app.url("/api/v1/agents"))
                .bearer_auth(&token),
            405,
        ),
        (
            "a body over the limit",
            client()
                .post(app.url("/api/v1/agents/job_match/runs"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(vec![b' '; 64 * 1024]),
            413,
        ),
        (
            "a huge unknown agent type",
            client()
                .post(app.url(&format!("/api/v1/agents/{}/runs", "a".repeat(20_000))))
                .bearer_auth(&token)
                .json(&job_match_input()),
            404,
        ),
        (
            "a huge unknown body key",
            client()
                .post(app.url("/api/v1/agents/job_match/runs"))
                .bearer_auth(&token)
                .json(&Value::Object(big_key))
                .timeout(Duration::from_secs(10)),
            413,
        ),
    ];
    for (what, request, expected) in cases {
        let res = request.send().await.unwrap();
        let (status, body) = error_of(res).await;
        assert_eq!(status, expected, "{what}: {body}");
        assert!(body["trace_id"].is_string(), "{what}: {body}");
        assert!(body["error"]["code"].is_string(), "{what}: {body}");
        assert!(
            body.to_string().len() < 1024,
            "{what}: {} bytes",
            body.to_string().len()
        );
    }
}

#[tokio::test]
async fn an_unknown_body_key_is_quoted_clipped() {
    let app = spawn_app().await;
    let key = "x".repeat(10_000);
    let res = client()
        .post(app.url("/api/v1/agents/job_match/runs"))
        .bearer_auth(app.token("alice"))
        .json(&json!({"input": {}, key.clone(): 1}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(res).await;
    assert_eq!(status, 422, "{body}");
    let field = body["error"]["field"].as_str().unwrap();
    assert!(field.chars().count() <= 65, "{field}");
    assert!(body.to_string().len() < 1024);
}
