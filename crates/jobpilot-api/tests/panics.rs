//! A handler that panics: the caller gets the JSON 500 with the trace id (not a dropped
//! connection), the server keeps serving, the server span fails with the panic's message, and
//! Sentry (a local endpoint standing in for the DSN) receives the error with the trace id.
//! With telemetry off the caller still gets a trace id to quote.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use jobpilot_api::HttpTracing;
use jobpilot_telemetry::config::InboundPolicy;
use jobpilot_telemetry::testing::{FakeSentry, SpanCapture};
use jobpilot_telemetry::{Telemetry, TelemetryConfig, Tracer, names};
use serde_json::Value;

/// Serves `routes` on an ephemeral local port behind the API's server span middleware (the
/// route recorder inside, the span outside, as the app layers them), traced by `tracer`.
async fn serve_traced(tracer: Tracer, routes: axum::Router) -> SocketAddr {
    let tracing = Arc::new(HttpTracing {
        tracer,
        excluded_paths: vec![],
        inbound: InboundPolicy::Continue,
        inbound_baggage: false,
        metrics: jobpilot_telemetry::Metrics::noop(),
    });
    let router = routes
        .route_layer(axum::middleware::from_fn(
            jobpilot_api::trace_layer::record_route,
        ))
        .layer(axum::middleware::from_fn_with_state(
            tracing,
            jobpilot_api::trace_layer::trace_requests,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_with_the_trace_id_and_reaches_sentry() {
    let sentry = FakeSentry::start().await;
    let vars: HashMap<&str, &str> = [
        ("SENTRY_DSN", sentry.dsn()),
        ("OTEL_TRACES_EXPORTER", "none"),
    ]
    .into_iter()
    .collect();
    let config = TelemetryConfig::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap();
    let telemetry = Telemetry::init(&config, names::SERVICE_API).unwrap();

    let capture = SpanCapture::new();
    let routes = axum::Router::new()
        .route(
            "/boom/{id}",
            get(|| async {
                if true {
                    panic!("the handler broke");
                }
                "unreachable"
            }),
        )
        .route("/fine", get(|| async { "fine" }));
    let addr = serve_traced(capture.tracer(names::SCOPE_HTTP), routes).await;

    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{addr}/boom/42"))
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(response.status(), 500);
    assert!(response.headers().contains_key("traceparent"));
    let body: Value = response.json().await.unwrap();
    let trace_id = body["trace_id"].as_str().expect("a trace id").to_owned();
    assert!(
        !body.to_string().contains("the handler broke"),
        "the panic stays internal: {body}"
    );
    let fine = client
        .get(format!("http://{addr}/fine"))
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200, "the server keeps serving");

    let span = capture
        .spans()
        .into_iter()
        .find(|s| s.trace_id == trace_id)
        .expect("the server span");
    assert_eq!(span.str_attr(names::ERROR_TYPE), Some("panic"));
    assert!(format!("{:?}", span.status).contains("the handler broke"));

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = sentry.envelopes();
        let linked = got
            .iter()
            .filter(|e| e.contains(&format!("\"trace_id\":\"{trace_id}\"")))
            .count();
        // The panic itself (Sentry's panic hook) and the 500 it became, named by its route
        // (one Sentry issue per route, not one per path).
        if linked >= 2 {
            assert!(
                got.iter().any(|e| e.contains("the handler broke")),
                "{got:?}"
            );
            assert!(
                got.iter()
                    .any(|e| e.contains("GET /boom/{id} answered 500")),
                "{got:?}"
            );
            assert!(
                !got.iter().any(|e| e.contains("/boom/42 answered")),
                "{got:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no linked Sentry events: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    telemetry.shutdown(Duration::from_secs(5)).await.ok();
}

#[tokio::test]
async fn with_telemetry_off_an_error_still_carries_a_trace_id_and_a_traceparent() {
    let routes = axum::Router::new().route(
        "/missing",
        get(|| async { jobpilot_api::error::ApiError::not_found("no such thing") }),
    );
    let addr = serve_traced(jobpilot_telemetry::Tracer::noop(), routes).await;

    let response = reqwest::get(format!("http://{addr}/missing"))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let traceparent = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    let trace_id = body["trace_id"].as_str().expect("a trace id");
    assert_eq!(trace_id.len(), 32, "{body}");
    assert_eq!(
        traceparent.split('-').nth(1),
        Some(trace_id),
        "{traceparent} and {body}"
    );
}
