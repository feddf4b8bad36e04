//! A server for the W3C Trace Context test harness
//! (<https://github.com/w3c/trace-context/tree/main/test>), to check jobpilot's propagation
//! against the specification's own test suite.
//!
//! Usage:
//!
//! ```text
//! cargo build --release -p jobpilot --example w3c_validation_server
//! target/release/examples/w3c_validation_server 127.0.0.1:5000
//! # then, in a checkout of w3c/trace-context:
//! python test/test.py http://127.0.0.1:5000/test
//! ```
//!
//! The harness sends `POST /test` with a JSON list of `{"url": ..., "arguments": ...}`. For each
//! entry, in order, the server reads the trace context of the inbound request, starts a child
//! span under it, and POSTs `arguments` as JSON to `url` with the child's `traceparent` and
//! `tracestate`. It answers 200 once all the calls are done. (The harness itself listens on
//! port 7777 by default, so pick another port for this server.)
//!
//! Spans are recorded but exported nowhere ([`Tracer::always_on`]): they must be real, sampled
//! spans so the outgoing `sampled` flag follows the inbound one, but nobody reads them.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use jobpilot_telemetry::{SpanKind, Tracer, propagation};
use serde_json::Value;

/// What every request handler needs.
#[derive(Clone)]
struct App {
    tracer: Tracer,
    client: reqwest::Client,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5000".to_owned());
    let app = App {
        tracer: Tracer::always_on("w3c-validation-server"),
        client: reqwest::Client::new(),
    };
    let router = Router::new().route("/test", post(test)).with_state(app);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on http://{addr}/test");
    axum::serve(listener, router).await?;
    Ok(())
}

/// Handles one harness request. The body is parsed by hand rather than with `Json` so a missing
/// `Content-Type` does not turn the request away.
async fn test(State(app): State<App>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Ok(Value::Array(calls)) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    for call in calls {
        let Some(url) = call.get("url").and_then(Value::as_str) else {
            return StatusCode::BAD_REQUEST;
        };
        let parent = propagation::extract_headers(&headers);
        let span = app.tracer.start(&parent, "POST", SpanKind::Client, vec![]);
        let mut outbound = HeaderMap::new();
        propagation::inject_headers(&span.cx(), &mut outbound);
        let arguments = call.get("arguments").cloned().unwrap_or(Value::Null);
        let sent = app
            .client
            .post(url)
            .headers(outbound)
            .json(&arguments)
            .send()
            .await;
        if let Err(err) = sent {
            span.fail("http.request", &err.to_string());
        }
        span.end();
    }
    StatusCode::OK
}
