//! The inbound trace policy at a trust boundary: with "new trace + link", a flood of requests
//! carrying a sampled `traceparent` never continues the caller's trace nor lets the caller
//! decide sampling.

use std::sync::Arc;
use std::time::Duration;

use jobpilot_api::{AppState, Auth, HttpTracing};
use jobpilot_queue::{Broker, EmbeddedBackend, QueueSettings, RunStore};
use jobpilot_telemetry::config::InboundPolicy;
use jobpilot_telemetry::names;
use jobpilot_telemetry::testing::SpanCapture;

const REQUESTS: usize = 10_000;
const CONCURRENCY: usize = 16;
const INBOUND_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

async fn flood(inbound: InboundPolicy, capture: &SpanCapture, requests: usize) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(EmbeddedBackend::create(dir.path(), QueueSettings::default()).unwrap());
    let auth = Auth::new(b"trust-boundary-secret-trust-boundary");
    let state = AppState::builder(
        auth.clone(),
        backend.clone() as Arc<dyn Broker>,
        backend as Arc<dyn RunStore>,
    )
    .with_http_tracing(HttpTracing {
        tracer: capture.tracer(names::SCOPE_HTTP),
        excluded_paths: vec![],
        inbound,
        metrics: jobpilot_telemetry::Metrics::noop(),
        inbound_baggage: false,
    })
    .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(jobpilot_api::serve(
        listener,
        jobpilot_api::app(state),
        std::future::pending(),
    ));
    let token = auth
        .issue("mallory", None, Duration::from_secs(600))
        .unwrap();
    let client = reqwest::Client::new();
    let per_task = requests / CONCURRENCY;
    let mut tasks = Vec::new();
    for t in 0..CONCURRENCY {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..per_task {
                // Sampled flag set, parent ids varying, tracestate and baggage attached.
                let parent = format!("{:016x}", (t * per_task + i + 1) as u64);
                let res = client
                    .get(format!("{base}/api/v1/agents"))
                    .bearer_auth(&token)
                    .header("traceparent", format!("00-{INBOUND_TRACE}-{parent}-01"))
                    .header("tracestate", "vendor=attacker")
                    .header("baggage", "user_id=admin")
                    .send()
                    .await
                    .unwrap();
                if res.status() == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sampled_inbound_traceparents_never_continue_a_trace() {
    // New traces are sampled locally: every request is recorded, in a trace of its own.
    let capture = SpanCapture::parent_based(true);
    let ok = flood(InboundPolicy::NewTraceWithLink, &capture, REQUESTS).await;
    assert_eq!(ok, REQUESTS);
    let spans = capture.spans();
    assert_eq!(spans.len(), REQUESTS);
    let mut trace_ids = std::collections::HashSet::new();
    for s in &spans {
        assert_ne!(s.trace_id, INBOUND_TRACE);
        assert_eq!(s.parent_span_id, None);
        assert_eq!(s.links.len(), 1);
        assert_eq!(s.links[0].0, INBOUND_TRACE);
        assert!(
            s.attr(names::USER_ID)
                .is_some_and(|u| *u == "mallory".to_owned().into())
        );
        trace_ids.insert(s.trace_id.clone());
    }
    assert_eq!(
        trace_ids.len(),
        REQUESTS,
        "each request starts its own trace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_cannot_force_sampling_across_the_boundary() {
    // Locally, new traces are not sampled; the inbound "sampled" flag must not override that.
    let capture = SpanCapture::parent_based(false);
    let ok = flood(InboundPolicy::NewTraceWithLink, &capture, 1_024).await;
    assert_eq!(ok, 1_024);
    assert!(
        capture.spans().is_empty(),
        "{} spans were sampled",
        capture.spans().len()
    );

    // The same flood under the "continue" policy does follow the caller: the check above can fail.
    let trusting = SpanCapture::parent_based(false);
    flood(InboundPolicy::Continue, &trusting, 160).await;
    let spans = trusting.spans();
    assert_eq!(spans.len(), 160);
    assert!(spans.iter().all(|s| s.trace_id == INBOUND_TRACE));
}
