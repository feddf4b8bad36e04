//! Error reports reach Sentry, tagged with the trace id, through the real Sentry client and
//! transport, posted to a stand-in Sentry server on loopback.
//!
//! The Sentry client is process-global (`sentry::init` binds it to the process hub), so every
//! Sentry assertion lives in the one test of this file.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use jobpilot_telemetry::sentry::{TRACE_ID_TAG, report_error};
use jobpilot_telemetry::testing::OtlpReceiver;
use jobpilot_telemetry::{SpanKind, Telemetry, TraceCx, names};
use serde_json::Value;
use support::config;

/// One request the stand-in server received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    auth: String,
    encoding: Option<String>,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// A stand-in for sentry.io: answers every POST with 200 and keeps what it got.
struct FakeSentry {
    addr: SocketAddr,
    log: Log,
}

async fn record(State(log): State<Log>, uri: Uri, headers: HeaderMap, body: Bytes) -> &'static str {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    log.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        auth: header("x-sentry-auth").unwrap_or_default(),
        encoding: header("content-encoding"),
        body: body.to_vec(),
    });
    "{}"
}

impl FakeSentry {
    async fn start() -> FakeSentry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in Sentry server");
        let addr = listener.local_addr().expect("local address");
        let log = Log::default();
        let app = Router::new().fallback(record).with_state(log.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSentry { addr, log }
    }

    fn dsn(&self) -> String {
        format!("http://publickey@{}/1", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }
}

/// The events of every envelope received: the JSON lines of a body that carry a `message`.
fn events(received: &[Received]) -> Vec<Value> {
    let mut events = Vec::new();
    for request in received {
        assert_eq!(
            request.encoding, None,
            "envelopes are sent uncompressed by this transport"
        );
        let body = String::from_utf8(request.body.clone()).expect("an envelope is UTF-8 text");
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(item) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if item.get("message").is_some() {
                events.push(item);
            }
        }
    }
    events
}

fn event_with_message<'a>(events: &'a [Value], message: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["message"] == message)
        .unwrap_or_else(|| panic!("no event with message {message:?} in {events:#?}"))
}

fn trace_tag(event: &Value) -> Option<&str> {
    event["tags"][TRACE_ID_TAG].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reach_sentry_tagged_with_the_trace_id_of_their_context() {
    let sentry = FakeSentry::start().await;
    let receiver = OtlpReceiver::start()
        .await
        .expect("start the OTLP receiver");
    let telemetry = Telemetry::init(
        &config(&[
            ("SENTRY_DSN", &sentry.dsn()),
            ("OTEL_EXPORTER_ENDPOINT", &receiver.endpoint()),
        ]),
        names::SERVICE_API,
    )
    .expect("telemetry starts with Sentry");
    let tracer = telemetry.tracer(names::SCOPE_AGENTS);

    // A failed run reported with its trace id spelled out.
    let run = tracer.start(
        &TraceCx::root(),
        "invoke_agent job_match",
        SpanKind::Internal,
        vec![],
    );
    let run_trace = run.trace_id();
    report_error("boom", Some(&run_trace), &[("run_id", "r1")]);

    // Reports with no trace id, from code running under a current context: synchronous code
    // under `enter`, async code under `instrument`.
    let entered = tracer.start(&TraceCx::root(), "entered", SpanKind::Internal, vec![]);
    let entered_trace = entered.trace_id();
    {
        let _current = entered.cx().enter();
        report_error("inside enter", None, &[]);
    }
    let instrumented = tracer.start(&TraceCx::root(), "instrumented", SpanKind::Internal, vec![]);
    let instrumented_trace = instrumented.trace_id();
    instrumented
        .cx()
        .instrument(async {
            tokio::task::yield_now().await;
            report_error("inside instrument", None, &[]);
        })
        .await;

    // And one under no trace at all.
    report_error("outside any trace", None, &[]);

    // A panic inside a run's instrumented future, on a task of its own as the worker runs
    // them: Sentry's panic hook reports it under the run's trace.
    let panicking = tracer.start(&TraceCx::root(), "panicking", SpanKind::Internal, vec![]);
    let panicking_trace = panicking.trace_id();
    let panicking_cx = panicking.cx();
    let run_that_panics = async move {
        panicking_cx
            .instrument(async {
                tokio::task::yield_now().await;
                if true {
                    panic!("a step panicked");
                }
            })
            .await
    };
    assert!(
        tokio::spawn(run_that_panics).await.is_err(),
        "the task panicked"
    );
    panicking.end();

    run.end();
    entered.end();
    instrumented.end();
    telemetry
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown flushes OpenTelemetry and Sentry");

    let received = sentry.received();
    assert!(!received.is_empty(), "Sentry received nothing");
    for request in &received {
        assert_eq!(request.path, "/api/1/envelope/", "{request:?}");
        assert!(
            request.auth.contains("sentry_key=publickey"),
            "the DSN's key authenticates the request: {:?}",
            request.auth
        );
    }
    let events = events(&received);

    let boom = event_with_message(&events, "boom");
    assert_eq!(trace_tag(boom), Some(run_trace.as_str()));
    assert_eq!(boom["tags"]["run_id"], "r1");
    assert!(
        boom.get("level").is_none_or(|l| l == "error"),
        "an error event (level error is the default, left out): {boom:#}"
    );
    assert_eq!(boom["environment"], "development");
    let envelope_text = String::from_utf8_lossy(&received[0].body).into_owned();
    assert!(
        received
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains(&run_trace)),
        "the raw envelope carries the trace id: {envelope_text}"
    );

    // Sentry's own trace context names the same trace, so its UI links to the spans.
    assert_eq!(
        boom["contexts"]["trace"]["trace_id"],
        run_trace.as_str(),
        "{boom:#}"
    );

    let inside_enter = event_with_message(&events, "inside enter");
    assert_eq!(trace_tag(inside_enter), Some(entered_trace.as_str()));
    assert_eq!(
        inside_enter["contexts"]["trace"]["trace_id"],
        entered_trace.as_str()
    );
    let inside_instrument = event_with_message(&events, "inside instrument");
    assert_eq!(
        trace_tag(inside_instrument),
        Some(instrumented_trace.as_str())
    );
    let panic_event = received
        .iter()
        .flat_map(|r| {
            String::from_utf8_lossy(&r.body)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .find(|item| item.to_string().contains("a step panicked"))
        .expect("the panic reached Sentry");
    assert_eq!(
        trace_tag(&panic_event),
        Some(panicking_trace.as_str()),
        "{panic_event:#}"
    );
    assert_eq!(
        panic_event["contexts"]["trace"]["trace_id"],
        panicking_trace.as_str()
    );
    let outside = event_with_message(&events, "outside any trace");
    assert_eq!(trace_tag(outside), None, "no trace, no tag: {outside:#?}");
}
