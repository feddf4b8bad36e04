//! `OTEL_PROPAGATORS` at every place trace context enters or leaves jobpilot: for each setting
//! and each inbound format (W3C, B3 single, B3 multi), the headers on the response, the fields
//! of the stored task, and the headers of the outbound LLM request.
//!
//! The API and the worker run in this process on a shared embedded store, wired as `main`
//! wires them, so the test can take the stored task off the queue, look at it, and hand it to
//! the worker ("execute one task") before the LLM sees the call.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jobpilot_agents::{AgentRunner, LlmClient, LlmConfig};
use jobpilot_api::{AppState, Auth, HttpTracing};
use jobpilot_queue::{Broker, EmbeddedBackend, QueueSettings};
use jobpilot_telemetry::config::{InboundPolicy, Propagators};
use jobpilot_telemetry::{Tracer, names};
use jobpilot_worker::{Worker, WorkerConfig};
use support::{FakeLlm, LlmBehaviour, SECRET, token};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

#[derive(Clone, Copy, Debug)]
enum Inbound {
    W3c,
    B3Single,
    B3Multi,
}

impl Inbound {
    fn headers(self) -> Vec<(&'static str, String)> {
        let baggage = ("baggage", "tenant=acme".to_owned());
        match self {
            Inbound::W3c => vec![
                ("traceparent", format!("00-{TRACE}-{SPAN}-01")),
                ("tracestate", "vendor=opaque".to_owned()),
                baggage,
            ],
            Inbound::B3Single => vec![("b3", format!("{TRACE}-{SPAN}-1")), baggage],
            Inbound::B3Multi => vec![
                ("x-b3-traceid", TRACE.to_owned()),
                ("x-b3-spanid", SPAN.to_owned()),
                ("x-b3-sampled", "1".to_owned()),
                baggage,
            ],
        }
    }

    /// Whether `propagators` can read this format.
    fn readable_by(self, p: Propagators) -> bool {
        match self {
            Inbound::W3c => p.tracecontext,
            Inbound::B3Single | Inbound::B3Multi => p.b3 || p.b3multi,
        }
    }
}

/// What one request left behind at the three places.
struct Observed {
    response: BTreeMap<String, String>,
    task: BTreeMap<String, String>,
    llm: BTreeMap<String, String>,
}

fn header_map(headers: &axum::http::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect()
}

/// The trace id a set of headers or task fields carries, in whichever format.
fn trace_id_in(fields: &BTreeMap<String, String>) -> Option<String> {
    if let Some(tp) = fields.get("traceparent") {
        return tp.split('-').nth(1).map(str::to_owned);
    }
    if let Some(b3) = fields.get("b3") {
        return b3.split('-').next().map(str::to_owned);
    }
    fields.get("x-b3-traceid").cloned()
}

async fn observe(propagators: Propagators, inbound: Inbound) -> Observed {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(EmbeddedBackend::create(dir.path(), QueueSettings::default()).unwrap());
    let tracer = |scope| Tracer::always_on(scope).with_propagators(propagators);
    let state = AppState::builder(
        Auth::new(SECRET.as_bytes()),
        backend.clone(),
        backend.clone(),
    )
    .with_http_tracing(HttpTracing {
        tracer: tracer(names::SCOPE_HTTP),
        excluded_paths: vec![],
        inbound: InboundPolicy::Continue,
        // What this test follows is the propagators; the edge's baggage policy is let through.
        inbound_baggage: true,
        metrics: jobpilot_telemetry::Metrics::noop(),
    })
    .with_queue_tracer(tracer(names::SCOPE_QUEUE))
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

    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/agents/resume_review/runs"))
        .bearer_auth(token("ada"))
        .json(&serde_json::json!({"input": {"resume": "Summary: backend engineer\nExperience: Rust, Python\nSkills: Docker"}}));
    for (name, value) in inbound.headers() {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 202);
    let response = header_map(response.headers());

    let mut deliveries = backend
        .receive("test", 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1, "the run was queued");
    let delivery = deliveries.remove(0);
    let task = delivery.envelope.trace_context.clone();

    let llm = FakeLlm::start(LlmBehaviour::FailFirst(0)).await;
    let client = LlmClient::new(
        LlmConfig::openai_compatible(&llm.base_url, "test-model"),
        tracer(names::SCOPE_LLM),
    )
    .unwrap();
    let worker = Worker::new(
        backend.clone(),
        backend.clone(),
        Arc::new(AgentRunner::new(tracer(names::SCOPE_AGENTS), client)),
        tracer(names::SCOPE_QUEUE),
        WorkerConfig::default(),
    );
    worker.process(delivery).await;
    let calls = llm.requests.lock().unwrap().clone();
    assert!(!calls.is_empty(), "the run called the LLM");
    let llm_headers = header_map(&calls[0]);

    let _ = stop.send(());
    let _ = server.await;
    Observed {
        response,
        task,
        llm: llm_headers,
    }
}

fn propagators(list: &str) -> Propagators {
    Propagators::parse("OTEL_PROPAGATORS", list).unwrap()
}

const B3_MULTI_FIELDS: &[&str] = &["x-b3-traceid", "x-b3-spanid", "x-b3-sampled"];

/// Asserts which trace formats `fields` holds, and that they carry `trace_id`.
fn assert_formats(at: &str, fields: &BTreeMap<String, String>, p: Propagators, trace_id: &str) {
    let has = |k: &str| fields.contains_key(k);
    assert_eq!(has("traceparent"), p.tracecontext, "{at}: {fields:?}");
    assert_eq!(has("b3"), p.b3, "{at}: {fields:?}");
    for k in B3_MULTI_FIELDS {
        assert_eq!(has(k), p.b3multi, "{at} {k}: {fields:?}");
    }
    if let Some(tp) = fields.get("traceparent") {
        assert_eq!(tp.split('-').nth(1), Some(trace_id), "{at}: {fields:?}");
    }
    if let Some(b3) = fields.get("b3") {
        assert!(b3.starts_with(trace_id), "{at}: {fields:?}");
    }
    if let Some(t) = fields.get("x-b3-traceid") {
        assert_eq!(t, trace_id, "{at}: {fields:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_propagator_setting_governs_response_task_and_llm_headers_for_each_inbound_format() {
    let settings = [
        "tracecontext,baggage",
        "tracecontext",
        "baggage",
        "b3",
        "b3multi",
        "tracecontext,b3,b3multi,baggage",
        "none",
    ];
    for setting in settings {
        let p = propagators(setting);
        for inbound in [Inbound::W3c, Inbound::B3Single, Inbound::B3Multi] {
            let seen = observe(p, inbound).await;
            let case = format!("{setting} / {inbound:?}");
            if p.is_none() || !(p.tracecontext || p.b3 || p.b3multi) {
                // No trace format: nothing about the trace is read or written anywhere.
                for (at, fields) in [
                    ("response", &seen.response),
                    ("task", &seen.task),
                    ("llm", &seen.llm),
                ] {
                    assert_eq!(trace_id_in(fields), None, "{case} {at}: {fields:?}");
                }
            } else {
                // The task's trace is the inbound one when it could be read, else a new one;
                // the same trace id then shows in the response and on the LLM call.
                let trace_id = trace_id_in(&seen.task).expect("the task carries the trace");
                assert_eq!(
                    trace_id == TRACE,
                    inbound.readable_by(p),
                    "{case}: task {:?}",
                    seen.task
                );
                assert_formats(&format!("{case} response"), &seen.response, p, &trace_id);
                assert_formats(&format!("{case} task"), &seen.task, p, &trace_id);
                assert_formats(&format!("{case} llm"), &seen.llm, p, &trace_id);
            }
            // tracestate travels only with tracecontext, inside jobpilot, when it came in.
            let state_in_task = seen.task.contains_key("tracestate");
            assert_eq!(
                state_in_task,
                p.tracecontext && matches!(inbound, Inbound::W3c),
                "{case}: {:?}",
                seen.task
            );
            // Baggage travels in the task only with `baggage`, and never to the LLM or back
            // to the caller.
            assert_eq!(
                seen.task.get("baggage").map(String::as_str),
                p.baggage.then_some("tenant=acme"),
                "{case}: {:?}",
                seen.task
            );
            for (at, fields) in [("response", &seen.response), ("llm", &seen.llm)] {
                for k in ["baggage", "tracestate"] {
                    assert!(!fields.contains_key(k), "{case} {at}: {fields:?}");
                }
            }
        }
    }
}
