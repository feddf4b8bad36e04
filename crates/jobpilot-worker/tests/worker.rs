//! The worker against the embedded backend and a real (fake) LLM endpoint on loopback:
//! heartbeats keep a slow run with its worker, and shutdown hands an unfinished run back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jobpilot_agents::{AgentRunner, LlmClient, LlmConfig};
use jobpilot_queue::{
    Broker, EmbeddedBackend, QueueSettings, RunRecord, RunStatus, RunStore, TaskEnvelope,
};
use jobpilot_telemetry::names;
use jobpilot_telemetry::testing::{CapturedStatus, SpanCapture};
use jobpilot_worker::{Processed, Worker, WorkerConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// An OpenAI-compatible chat-completions endpoint that answers after `delay` and counts the
/// requests it received (answered or not).
struct SlowLlm {
    base_url: String,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLlm {
    async fn start(delay: Duration) -> SlowLlm {
        use axum::routing::post;
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            post(move || {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    axum::Json(json!({
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "model": "test-model",
                        "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "Add numbers to your results."}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SlowLlm {
            base_url: format!("http://{addr}/v1"),
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    async fn wait_for_request(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.requests() == 0 {
            assert!(Instant::now() < deadline, "the run never reached the LLM");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for SlowLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn worker(
    backend: &EmbeddedBackend,
    llm: &SlowLlm,
    capture: &SpanCapture,
    config: WorkerConfig,
) -> Worker {
    let llm_config = LlmConfig {
        timeout: Duration::from_secs(30),
        max_retries: 0,
        ..LlmConfig::openai_compatible(llm.base_url.clone(), "test-model")
    };
    let client = LlmClient::new(llm_config, capture.tracer(names::SCOPE_LLM)).unwrap();
    let runner = AgentRunner::new(capture.tracer(names::SCOPE_AGENTS), client);
    Worker::new(
        Arc::new(backend.clone()),
        Arc::new(backend.clone()),
        Arc::new(runner),
        capture.tracer(names::SCOPE_QUEUE),
        config,
    )
}

/// Stores and enqueues one `resume_review` run (one LLM call, in its last step).
async fn submit(backend: &EmbeddedBackend, run_id: &str) {
    backend
        .insert(&RunRecord::queued(run_id, "resume_review", "user-1", "", 1))
        .await
        .unwrap();
    let task = TaskEnvelope::for_run(
        run_id,
        "resume_review",
        "user-1",
        json!({"resume": "Experience: Rust engineer\nSkills: Docker"}),
        BTreeMap::new(),
    );
    backend.enqueue(&task).await.unwrap();
}

fn settings(visibility_timeout: Duration) -> QueueSettings {
    QueueSettings {
        visibility_timeout,
        ..QueueSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_the_visibility_timeout_runs_once_with_two_workers_polling() {
    // The LLM takes four visibility timeouts; two workers poll the queue all along.
    let visibility = Duration::from_millis(400);
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::create(dir.path(), settings(visibility)).unwrap();
    let llm = SlowLlm::start(visibility * 4).await;
    let capture = SpanCapture::new();
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for name in ["worker-a", "worker-b"] {
        let config = WorkerConfig {
            consumer_name: name.to_owned(),
            receive_wait: Duration::from_millis(100),
            ..WorkerConfig::default()
        };
        let worker = worker(&backend, &llm, &capture, config);
        let stop = stop.clone();
        workers.push(tokio::spawn(async move { worker.run_until(stop).await }));
    }

    submit(&backend, "run-slow").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let run = backend.get("run-slow").await.unwrap().unwrap();
        if run.status.is_terminal() {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not finish: {run:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One more visibility timeout in which a wrongly redelivered copy would reach the LLM.
    tokio::time::sleep(visibility).await;
    stop.cancel();
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(10), worker)
            .await
            .expect("the workers stop")
            .unwrap();
    }

    assert_eq!(llm.requests(), 1, "the run was executed more than once");
    let run = backend.get("run-slow").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_the_visibility_timeout_is_not_taken_by_a_second_worker_meanwhile() {
    let visibility = Duration::from_millis(400);
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::create(dir.path(), settings(visibility)).unwrap();
    let llm = SlowLlm::start(visibility * 4).await;
    let capture = SpanCapture::new();
    let config = |name: &str| WorkerConfig {
        consumer_name: name.to_owned(),
        receive_wait: Duration::from_millis(100),
        ..WorkerConfig::default()
    };
    let first = worker(&backend, &llm, &capture, config("worker-a"));
    let second = worker(&backend, &llm, &capture, config("worker-b"));

    submit(&backend, "run-slow").await;
    let busy = tokio::spawn(async move { first.execute_one(Duration::from_secs(5)).await });
    llm.wait_for_request(Duration::from_secs(5)).await;
    // While the first worker waits for the LLM, the second finds nothing to do.
    let started = Instant::now();
    while started.elapsed() < visibility * 3 {
        let got = second
            .execute_one(Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(
            got,
            None,
            "taken over after {:?} while still running",
            started.elapsed()
        );
    }
    let processed = busy.await.unwrap().unwrap();
    assert_eq!(processed, Some(Processed::Succeeded));
    assert_eq!(backend.get("run-slow").await.unwrap().unwrap().attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_still_going_when_the_grace_period_ends_is_handed_back_at_once() {
    // A visibility timeout far longer than the test: only the hand-back can bring the run
    // back this soon.
    let visibility = Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::create(dir.path(), settings(visibility)).unwrap();
    let hanging = SlowLlm::start(Duration::from_secs(60)).await;
    let capture = SpanCapture::new();
    let stopping = worker(
        &backend,
        &hanging,
        &capture,
        WorkerConfig {
            consumer_name: "worker-a".into(),
            shutdown_grace: Duration::from_millis(200),
            receive_wait: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
    );
    submit(&backend, "run-interrupted").await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { stopping.run_until(shutdown).await }
    });
    hanging.wait_for_request(Duration::from_secs(5)).await;

    let asked = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("run_until returns soon after the grace period")
        .unwrap();
    eprintln!(
        "FIGURE worker_stop_with_unfinished_run_ms={}",
        asked.elapsed().as_millis()
    );

    // The interrupted attempt's span says why it ended.
    let consumer = capture.named("process agent_runs");
    assert_eq!(consumer.len(), 1, "{consumer:#?}");
    assert!(
        matches!(&consumer[0].status, CapturedStatus::Error(m) if m.contains("shut down")),
        "{:?}",
        consumer[0].status
    );
    assert_eq!(
        consumer[0].str_attr(names::ERROR_TYPE),
        Some("worker_shutdown")
    );

    // Another worker takes it at once, as the next attempt, and completes it.
    let fast = SlowLlm::start(Duration::ZERO).await;
    let next = worker(
        &backend,
        &fast,
        &capture,
        WorkerConfig {
            consumer_name: "worker-b".into(),
            ..WorkerConfig::default()
        },
    );
    let taken = Instant::now();
    let processed = next.execute_one(Duration::from_secs(5)).await.unwrap();
    eprintln!(
        "FIGURE handed_back_run_pickup_ms={}",
        taken.elapsed().as_millis()
    );
    assert_eq!(processed, Some(Processed::Succeeded));
    let run = backend.get("run-interrupted").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(
        run.attempts, 2,
        "the interrupted delivery counts as an attempt"
    );
    assert_eq!(backend.stats().await.unwrap().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_finishes_within_the_grace_period_is_not_handed_back() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::create(dir.path(), settings(Duration::from_secs(60))).unwrap();
    let llm = SlowLlm::start(Duration::from_millis(500)).await;
    let capture = SpanCapture::new();
    let stopping = worker(
        &backend,
        &llm,
        &capture,
        WorkerConfig {
            consumer_name: "worker-a".into(),
            shutdown_grace: Duration::from_secs(10),
            receive_wait: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
    );
    submit(&backend, "run-drained").await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { stopping.run_until(shutdown).await }
    });
    llm.wait_for_request(Duration::from_secs(5)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("run_until returns once the run is done")
        .unwrap();

    let run = backend.get("run-drained").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.attempts, 1);
    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (0, 0));
}

/// An LLM endpoint that accepts connections and never answers: each accepted socket is kept
/// open, unread, until the listener is dropped.
struct HungLlm {
    base_url: String,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HungLlm {
    async fn start() -> HungLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        HungLlm {
            base_url: format!("http://{addr}/v1"),
            connections,
            task,
        }
    }
}

impl Drop for HungLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_attempt_is_stopped_at_its_deadline_retried_and_dead_lettered_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::create(dir.path(), settings(Duration::from_secs(60))).unwrap();
    let hung = HungLlm::start().await;
    let capture = SpanCapture::new();
    // The LLM client would wait 30 s; the run deadline is far shorter.
    let llm_config = LlmConfig {
        timeout: Duration::from_secs(30),
        max_retries: 0,
        ..LlmConfig::openai_compatible(hung.base_url.clone(), "test-model")
    };
    let client = LlmClient::new(llm_config, capture.tracer(names::SCOPE_LLM)).unwrap();
    let runner = AgentRunner::new(capture.tracer(names::SCOPE_AGENTS), client);
    let deadline = Duration::from_millis(400);
    let worker = Worker::new(
        Arc::new(backend.clone()),
        Arc::new(backend.clone()),
        Arc::new(runner),
        capture.tracer(names::SCOPE_QUEUE),
        WorkerConfig {
            consumer_name: "worker-a".into(),
            max_attempts: 2,
            retry_base_delay: Duration::from_millis(50),
            run_timeout: deadline,
            ..WorkerConfig::default()
        },
    );
    submit(&backend, "run-hung").await;

    let started = Instant::now();
    let first = worker.execute_one(Duration::from_secs(2)).await.unwrap();
    let took = started.elapsed();
    assert!(
        matches!(&first, Some(Processed::RetryScheduled(msg)) if msg.contains("run deadline")),
        "{first:?}"
    );
    assert!(took >= deadline, "stopped after {took:?}");
    assert!(took < deadline * 5, "stopped after {took:?}");
    let run = backend.get("run-hung").await.unwrap().unwrap();
    assert_eq!((run.status, run.attempts), (RunStatus::Running, 1));

    // The retry hangs too; at the attempt limit the run is dead-lettered, not retried.
    let second = worker.execute_one(Duration::from_secs(2)).await.unwrap();
    assert!(
        matches!(&second, Some(Processed::DeadLettered(msg)) if msg.contains("after 2 attempts")),
        "{second:?}"
    );
    let run = backend.get("run-hung").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.dead_lettered);
    assert_eq!(run.attempts, 2);
    assert_eq!(hung.connections.load(Ordering::SeqCst), 2);
    let stats = backend.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight, stats.dead_lettered),
        (0, 0, 1)
    );
    eprintln!(
        "FIGURE run_deadline_ms={} first_attempt_stopped_after_ms={}",
        deadline.as_millis(),
        took.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_records_each_step_and_llm_call_of_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::create(dir.path(), settings(Duration::from_secs(60))).unwrap();
    let llm = SlowLlm::start(Duration::from_millis(50)).await;
    let capture = SpanCapture::new();
    let config = WorkerConfig {
        consumer_name: "worker-t".into(),
        ..WorkerConfig::default()
    };
    let worker = worker(&backend, &llm, &capture, config);
    submit(&backend, "run-t").await;
    let processed = worker.execute_one(Duration::from_secs(2)).await.unwrap();
    assert_eq!(processed, Some(Processed::Succeeded));

    let run = backend.get("run-t").await.unwrap().unwrap();
    assert_eq!(run.timeline.attempts.len(), 1);
    let attempt = &run.timeline.attempts[0];
    assert_eq!(attempt.worker, "worker-t");
    assert_eq!(attempt.outcome, jobpilot_queue::AttemptOutcome::Succeeded);
    assert!(attempt.finished_at_ms.is_some());
    let names: Vec<&str> = attempt.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["parse_resume", "check_sections", "suggest"]);
    assert!(attempt.steps.iter().all(|s| s.success));
    // Offsets grow and each step starts after the one before ended.
    for pair in attempt.steps.windows(2) {
        assert!(pair[1].start_offset_ms >= pair[0].start_offset_ms + pair[0].duration_ms - 0.01);
    }
    let suggest = &attempt.steps[2];
    assert_eq!(suggest.llm_calls.len(), 1);
    let call = &suggest.llm_calls[0];
    assert_eq!(call.model, "test-model");
    assert_eq!((call.input_tokens, call.output_tokens), (Some(10), Some(5)));
    assert_eq!(call.http_attempts, 1);
    assert!(call.duration_ms >= 50.0, "{call:?}");
    assert!(suggest.duration_ms >= call.duration_ms);
    assert!(attempt.steps[0].llm_calls.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_run_stops_it_during_its_llm_call() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::create(dir.path(), settings(Duration::from_secs(60))).unwrap();
    let llm = SlowLlm::start(Duration::from_secs(30)).await;
    let capture = SpanCapture::new();
    let worker = worker(&backend, &llm, &capture, WorkerConfig::default());
    submit(&backend, "run-c").await;
    let running = {
        let worker = worker.clone();
        tokio::spawn(async move { worker.execute_one(Duration::from_secs(2)).await })
    };
    llm.wait_for_request(Duration::from_secs(5)).await;
    let asked = backend
        .cancel_run("run-c", jobpilot_queue::unix_now_ms())
        .await
        .unwrap();
    assert_eq!(asked.status, RunStatus::Running);

    let started = Instant::now();
    let processed = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the run stops well before the LLM answers")
        .unwrap()
        .unwrap();
    assert_eq!(processed, Some(Processed::Cancelled));
    eprintln!("FIGURE cancel_to_stop_ms={}", started.elapsed().as_millis());

    let run = backend.get("run-c").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(run.error.as_deref().unwrap().starts_with("cancelled: "));
    let attempt = &run.timeline.attempts[0];
    assert_eq!(attempt.outcome, jobpilot_queue::AttemptOutcome::Cancelled);
    let last = attempt.steps.last().unwrap();
    assert_eq!(
        (last.name.as_str(), last.error_type.as_deref()),
        ("suggest", Some("cancelled"))
    );
    assert_eq!(last.llm_calls.len(), 1);
    assert!(!last.llm_calls[0].success);
    // The queue is empty: the cancelled run is acknowledged, not retried.
    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (0, 0));

    // Its spans say it was cancelled: the step, the agent and the consumer span.
    let error_of = |name: &str| capture.named(name).pop().map(|s| s.status);
    let cancelled = |status: Option<CapturedStatus>| matches!(status, Some(CapturedStatus::Error(msg)) if msg.contains("cancel"));
    assert!(cancelled(error_of("agent.resume_review.suggest")));
    assert!(cancelled(error_of("invoke_agent resume_review")));
    let consumer = capture.named("process agent_runs").pop().unwrap();
    assert_eq!(consumer.str_attr(names::ERROR_TYPE), Some("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_while_queued_is_acknowledged_without_running() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::create(dir.path(), settings(Duration::from_secs(60))).unwrap();
    let llm = SlowLlm::start(Duration::ZERO).await;
    let capture = SpanCapture::new();
    let worker = worker(&backend, &llm, &capture, WorkerConfig::default());
    submit(&backend, "run-q").await;
    backend.cancel_run("run-q", 5).await.unwrap();
    let processed = worker.execute_one(Duration::from_secs(2)).await.unwrap();
    assert_eq!(processed, Some(Processed::Cancelled));
    assert_eq!(llm.requests(), 0, "no step ran");
    let run = backend.get("run-q").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.finished_at_ms, Some(5));
    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (0, 0));
    // It can still be queued again, and then it runs.
    backend.retry_run("run-q", 10).await.unwrap();
    let again = worker.execute_one(Duration::from_secs(2)).await.unwrap();
    assert_eq!(again, Some(Processed::Succeeded));
    assert_eq!(llm.requests(), 1);
}
