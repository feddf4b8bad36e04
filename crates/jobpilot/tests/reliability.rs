//! Reliability with real processes (spec §6): Redis stopped and restarted, a worker killed
//! mid-run, a run that crashes its worker every time, and graceful shutdown of `worker`,
//! `api` and `serve` — including a grace period too short for the run in flight and a
//! collector that never answers.
//!
//! Each test prints what it measured as `FIGURE name=value` lines on stderr (run with
//! `--nocapture` to see them); the assertions only use generous "does not hang" bounds.
//! The tests run one at a time: each starts several processes, and on a small machine two
//! of them side by side would starve each other's heartbeats.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use jobpilot_telemetry::names;
use jobpilot_telemetry::testing::{CapturedSpan, OtlpReceiver, ReceiverMode};
use serde_json::{Value, json};
use support::*;

/// One reliability test at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A resume whose review makes exactly one LLM call (in the `suggest` step).
fn resume() -> Value {
    json!({"resume": "Experience: Rust engineer at Acme, 2019-2024\nSkills: Docker, Kubernetes"})
}

/// The environment of a process on the shared test Redis under a fresh key prefix.
fn on_redis(redis: &str, prefix: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env = base_env(&[
        ("REDIS_URL", redis),
        ("JOBPILOT_REDIS_PREFIX", prefix),
        ("OTEL_TRACES_EXPORTER", "none"),
    ]);
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

/// The variables pointing the agents at `llm`, with no client-side retries (a retry would
/// blur the per-run request counts).
fn llm_env(llm: &TracedLlm) -> [(&str, &str); 3] {
    [
        ("JOBPILOT_LLM_BASE_URL", llm.base_url.as_str()),
        ("JOBPILOT_LLM_MODEL", "test-model"),
        ("JOBPILOT_LLM_MAX_RETRIES", "0"),
    ]
}

fn with_listen(mut env: BTreeMap<String, String>, listen: &str) -> BTreeMap<String, String> {
    env.insert("JOBPILOT_LISTEN".into(), listen.into());
    env
}

fn listen_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// How many spans named `name` in each trace ended with `success=true`.
fn successes_per_trace(spans: &[CapturedSpan], name: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for span in spans {
        if span.name == name && span.bool_attr(names::SUCCESS) == Some(true) {
            *counts.entry(span.trace_id.clone()).or_insert(0) += 1;
        }
    }
    counts
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

/// How long Redis stays down. The spec's scenario is 30 s; 6 s exercises the same paths
/// (enqueue failing fast, readiness reporting it, reconnection, results held until the store
/// is back) while keeping the suite short. What matters is that the outage is shorter than
/// the visibility timeout, as 30 s is shorter than the 120 s default: a longer outage lets
/// the broker hand runs in progress to a second worker once it is back.
const OUTAGE: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_accepted_around_a_redis_outage_all_succeed_exactly_once() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let receiver = OtlpReceiver::start().await.unwrap();
    // Slow enough that the runs taken before the outage are still with the LLM when Redis
    // goes away, and finish during it.
    let llm = TracedLlm::start(Duration::from_millis(1500)).await;
    let mut extra = vec![
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("JOBPILOT_VISIBILITY_TIMEOUT_SECS", "20"),
        ("JOBPILOT_WORKER_CONCURRENCY", "4"),
    ];
    let endpoint = receiver.endpoint();
    extra.push(("OTEL_EXPORTER_ENDPOINT", &endpoint));
    extra.extend(llm_env(&llm));
    let env = on_redis(&redis.url(), "jobpilot", &extra);
    let listen = listen_addr();
    let api = Jobpilot::start(&["api"], &with_listen(env.clone(), &listen));
    let worker = Jobpilot::start(&["worker"], &env);
    let base = api.base.clone().unwrap();

    let mut runs: Vec<(String, String)> = Vec::new();
    for _ in 0..6 {
        runs.push(submit(&base, "olivia", "resume_review", resume()).await);
    }
    let in_flight = llm.wait_for_total(4, Duration::from_secs(20)).await;
    assert!(
        in_flight >= 4,
        "runs never reached the LLM: {}",
        worker.stderr()
    );

    redis.stop();
    let down_at = Instant::now();
    let mut slowest_503 = Duration::ZERO;
    for _ in 0..3 {
        let (status, body, took) = try_submit(&base, "olivia", "resume_review", resume()).await;
        assert_eq!(status, 503, "enqueue while Redis is down: {body}");
        assert!(body["trace_id"].is_string(), "{body}");
        assert!(took < Duration::from_secs(5), "503 took {took:?}");
        slowest_503 = slowest_503.max(took);
    }
    let asked = Instant::now();
    let (status, ready) = get_json(&api.url("/ready"), None).await;
    let ready_took = asked.elapsed();
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["reasons"].as_array().is_some_and(|r| !r.is_empty()),
        "/ready names a reason: {ready}"
    );
    assert!(
        ready_took < Duration::from_secs(5),
        "/ready took {ready_took:?}"
    );
    eprintln!(
        "FIGURE redis_down_enqueue_503_max_ms={}",
        millis(slowest_503)
    );
    eprintln!("FIGURE redis_down_ready_503_ms={}", millis(ready_took));

    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    redis.restart();
    let up_at = Instant::now();
    eprintln!(
        "FIGURE redis_outage_ms={}",
        millis(up_at.duration_since(down_at))
    );
    loop {
        let (status, _) = get_json(&api.url("/ready"), None).await;
        if status == 200 {
            break;
        }
        assert!(
            up_at.elapsed() < Duration::from_secs(20),
            "the API did not reconnect to Redis: {}",
            api.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "FIGURE redis_restart_to_api_ready_ms={}",
        millis(up_at.elapsed())
    );

    for _ in 0..6 {
        runs.push(submit(&base, "olivia", "resume_review", resume()).await);
    }
    for (run_id, trace_id) in &runs {
        let run = wait_finished(&base, "olivia", run_id, Duration::from_secs(60)).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["trace_id"], trace_id.as_str());
    }
    eprintln!(
        "FIGURE redis_restart_to_all_runs_succeeded_ms={}",
        millis(up_at.elapsed())
    );

    // The runs that were with the LLM when Redis went away finished during the outage; the
    // worker kept their results until it could store them instead of running them again.
    let held = worker
        .stderr()
        .matches("stored the outcome after the store came back")
        .count();
    eprintln!("FIGURE redis_outage_results_held_until_restart={held}");
    assert!(held >= 1, "{}", worker.stderr());

    let traces: Vec<&String> = runs.iter().map(|(_, t)| t).collect();
    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            let done = successes_per_trace(spans, "invoke_agent resume_review");
            traces.iter().all(|t| done.contains_key(*t))
        })
        .await;
    let completions = successes_per_trace(&spans, "invoke_agent resume_review");
    let mut completed_twice = 0;
    let mut executed_twice = 0;
    for trace in &traces {
        let completed = completions.get(*trace).copied().unwrap_or(0);
        assert!(
            completed >= 1,
            "run of trace {trace} has no completed agent span"
        );
        if completed > 1 {
            completed_twice += 1;
        }
        if llm.calls_of(trace).len() > 1 {
            executed_twice += 1;
        }
    }
    eprintln!("FIGURE redis_outage_runs={}", runs.len());
    eprintln!("FIGURE redis_outage_runs_completed_twice={completed_twice}");
    eprintln!("FIGURE redis_outage_runs_sent_to_the_llm_twice={executed_twice}");
    assert_eq!(completed_twice, 0, "a run ran to completion twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_no_run_and_its_runs_are_redelivered() {
    const RUNS: usize = 200;
    let _serial = SERIAL.lock().await;
    let receiver = OtlpReceiver::start().await.unwrap();
    let llm = TracedLlm::start(Duration::from_millis(100)).await;
    let prefix = unique_prefix("killed-worker");
    let endpoint = receiver.endpoint();
    let mut extra = vec![
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_ENDPOINT", endpoint.as_str()),
        ("JOBPILOT_VISIBILITY_TIMEOUT_SECS", "3"),
        ("JOBPILOT_WORKER_CONCURRENCY", "4"),
    ];
    extra.extend(llm_env(&llm));
    let env = on_redis(&redis_url(), &prefix, &extra);
    let listen = listen_addr();
    let api = Jobpilot::start(&["api"], &with_listen(env.clone(), &listen));
    let mut doomed = Jobpilot::start(&["worker"], &env);
    let _survivor = Jobpilot::start(&["worker"], &env);
    let base = api.base.clone().unwrap();

    let mut runs: Vec<(String, String)> = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        runs.push(submit(&base, "pat", "resume_review", resume()).await);
    }
    // Kill once the runs are flowing: both workers busy, most runs still queued.
    let flowing = llm.wait_for_total(RUNS / 5, Duration::from_secs(30)).await;
    assert!(
        flowing >= RUNS / 5,
        "runs are not flowing: {}",
        doomed.stderr()
    );
    doomed.kill();
    let killed_at = Instant::now();

    let mut records = Vec::with_capacity(RUNS);
    for (run_id, _) in &runs {
        let run = wait_finished(&base, "pat", run_id, Duration::from_secs(60)).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        records.push(run);
    }
    eprintln!(
        "FIGURE worker_kill_to_all_runs_succeeded_ms={}",
        millis(killed_at.elapsed())
    );

    // The runs the killed worker held come back as attempt 2 once their visibility timeout
    // runs out; measured from the kill to their first LLM request after it.
    let mut latencies: Vec<Duration> = Vec::new();
    for run in records.iter().filter(|r| r["attempts"].as_u64() >= Some(2)) {
        let trace = run["trace_id"].as_str().unwrap();
        let again = llm
            .calls_of(trace)
            .into_iter()
            .filter(|c| c.arrived > killed_at)
            .map(|c| c.arrived.duration_since(killed_at))
            .min();
        if let Some(latency) = again {
            latencies.push(latency);
        }
    }
    latencies.sort();
    eprintln!("FIGURE worker_kill_runs={RUNS}");
    eprintln!("FIGURE worker_kill_redelivered_runs={}", latencies.len());
    assert!(
        !latencies.is_empty(),
        "the killed worker held no run: nothing was redelivered"
    );
    eprintln!(
        "FIGURE worker_kill_redelivery_latency_ms_min={} median={} max={}",
        millis(latencies[0]),
        millis(latencies[latencies.len() / 2]),
        millis(latencies[latencies.len() - 1])
    );

    // Each redelivered run shows its second attempt as its own successful consumer span.
    let redelivered: Vec<&str> = records
        .iter()
        .filter(|r| r["attempts"].as_u64() >= Some(2))
        .map(|r| r["trace_id"].as_str().unwrap())
        .collect();
    let retried_ok = |spans: &[CapturedSpan], trace: &str| {
        spans.iter().any(|s| {
            s.trace_id == trace
                && s.name == "process agent_runs"
                && s.bool_attr(names::SUCCESS) == Some(true)
                && s.i64_attr(names::MESSAGING_DELIVERY_ATTEMPT) >= Some(2)
        })
    };
    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            redelivered.iter().all(|t| retried_ok(spans, t))
        })
        .await;
    for trace in &redelivered {
        assert!(
            retried_ok(&spans, trace),
            "no successful attempt-2 consumer span in trace {trace}"
        );
    }
    // The survivor exports every 100 ms; let its last batch land before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spans = receiver.spans();

    // Duplicates: a run whose consumer span succeeded more than once was delivered again
    // after it had finished (acknowledged as a duplicate, not run again); a run answered by
    // the LLM twice was executed twice. Spans the killed worker had not exported yet died
    // with it, so the first count is a lower bound, and some runs it completed have no
    // consumer span at all.
    let processed = successes_per_trace(&spans, "process agent_runs");
    let traces: Vec<&str> = runs.iter().map(|(_, t)| t.as_str()).collect();
    let without_span = traces
        .iter()
        .filter(|t| !processed.contains_key(**t))
        .count();
    let delivered_twice = processed.values().filter(|n| **n > 1).count();
    let answered_twice = traces
        .iter()
        .filter(|t| {
            llm.calls_of(t)
                .iter()
                .filter(|c| c.answered.is_some())
                .count()
                > 1
        })
        .count();
    eprintln!("FIGURE worker_kill_runs_with_two_successful_consumer_spans={delivered_twice}");
    eprintln!("FIGURE worker_kill_runs_answered_by_the_llm_twice={answered_twice}");
    eprintln!("FIGURE worker_kill_runs_whose_spans_died_with_the_worker={without_span}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_crashes_its_worker_every_time_is_dead_lettered_after_max_attempts() {
    const MAX_ATTEMPTS: usize = 3;
    let _serial = SERIAL.lock().await;
    let llm = TracedLlm::start(Duration::ZERO).await;
    let poison_trace = new_trace_id();
    // Its LLM request never gets an answer: the test plays the crash by killing the worker
    // as soon as the request arrives.
    llm.hold(&poison_trace);
    let prefix = unique_prefix("poison");
    let mut extra = vec![
        ("JOBPILOT_VISIBILITY_TIMEOUT_SECS", "2"),
        ("JOBPILOT_MAX_ATTEMPTS", "3"),
        // One run at a time, so each crash takes down the poison run alone. (With more,
        // runs sharing the worker with it lose an attempt on every crash too.)
        ("JOBPILOT_WORKER_CONCURRENCY", "1"),
    ];
    extra.extend(llm_env(&llm));
    let env = on_redis(&redis_url(), &prefix, &extra);
    let listen = listen_addr();
    let api = Jobpilot::start(&["api"], &with_listen(env.clone(), &listen));
    let base = api.base.clone().unwrap();
    let mut worker = Jobpilot::start(&["worker"], &env);
    let mut starts = 1;

    let poison = submit_in_trace(&base, "quinn", "resume_review", resume(), &poison_trace).await;
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(submit(&base, "quinn", "resume_review", resume()).await.0);
    }

    let started = Instant::now();
    let mut crashes = 0;
    let poisoned = loop {
        if llm.calls_of(&poison_trace).len() > crashes {
            worker.kill();
            crashes += 1;
            worker = Jobpilot::start(&["worker"], &env);
            starts += 1;
            assert!(
                starts <= MAX_ATTEMPTS + 1,
                "the worker was restarted {starts} times: the poison run is not given up on"
            );
            continue;
        }
        let (_, run) = get_json(
            &format!("{base}/api/v1/runs/{poison}"),
            Some(&token("quinn")),
        )
        .await;
        if run["status"] == "succeeded" || run["status"] == "failed" {
            break run;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "the poison run never ended: {run}\n{}",
            worker.stderr()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    eprintln!("FIGURE poison_crashes={crashes}");
    eprintln!("FIGURE poison_worker_starts={starts}");
    eprintln!(
        "FIGURE poison_time_to_dead_letter_ms={}",
        millis(started.elapsed())
    );
    assert_eq!(poisoned["status"], "failed", "{poisoned}");
    assert_eq!(poisoned["dead_lettered"], true, "{poisoned}");
    assert_eq!(poisoned["attempts"], MAX_ATTEMPTS, "{poisoned}");
    assert!(
        poisoned["error"].as_str().unwrap().contains("3 attempts"),
        "{poisoned}"
    );
    assert_eq!(crashes, MAX_ATTEMPTS);
    assert_eq!(llm.calls_of(&poison_trace).len(), MAX_ATTEMPTS);

    let (status, queue) =
        get_json(&api.url("/api/v1/admin/queue"), Some(&admin_token("ops"))).await;
    assert_eq!(status, 200, "{queue}");
    assert_eq!(queue["dead_lettered"], 1, "{queue}");
    assert_eq!(
        queue["dead_letters"][0]["run_id"],
        poison.as_str(),
        "{queue}"
    );

    for run_id in &others {
        let run = wait_finished(&base, "quinn", run_id, Duration::from_secs(30)).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["attempts"], 1, "{run}");
    }
}

/// The names of the spans in `trace_id`.
fn span_names(spans: &[CapturedSpan], trace_id: &str) -> Vec<String> {
    of_trace(spans, trace_id)
        .into_iter()
        .map(|s| s.name)
        .collect()
}

/// Asserts that a successful run's trace arrived complete: API side and worker side.
fn assert_complete_run_trace(spans: &[CapturedSpan], trace_id: &str) {
    let trace = of_trace(spans, trace_id);
    let names = span_names(spans, trace_id);
    for expected in [
        "POST /api/v1/agents/{agent_type}/runs",
        "send agent_runs",
        "process agent_runs",
        "invoke_agent resume_review",
        "agent.resume_review.suggest",
        "chat test-model",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    assert_eq!(
        one(&trace, "process agent_runs").bool_attr(names::SUCCESS),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_worker_finish_its_run_and_api_and_worker_flush_spans_and_exit_zero() {
    let _serial = SERIAL.lock().await;
    let receiver = OtlpReceiver::start().await.unwrap();
    let llm = TracedLlm::start(Duration::from_secs(2)).await;
    let prefix = unique_prefix("sigterm");
    let endpoint = receiver.endpoint();
    let mut extra = vec![
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_ENDPOINT", endpoint.as_str()),
        // Only the shutdown flush can deliver the spans within the test.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("JOBPILOT_SHUTDOWN_GRACE_SECS", "10"),
    ];
    extra.extend(llm_env(&llm));
    let env = on_redis(&redis_url(), &prefix, &extra);
    let listen = listen_addr();
    let mut api = Jobpilot::start(&["api"], &with_listen(env.clone(), &listen));
    let mut worker = Jobpilot::start(&["worker"], &env);
    let base = api.base.clone().unwrap();

    let (run_id, trace_id) = submit(&base, "rita", "resume_review", resume()).await;
    llm.wait_for_calls(&trace_id, 1, Duration::from_secs(20))
        .await;
    assert!(receiver.spans().is_empty());

    // Both processes are asked to stop while the run waits for the LLM.
    let asked = Instant::now();
    api.send_sigterm();
    worker.send_sigterm();
    let api_code = api.wait_exit(Duration::from_secs(20)).await;
    let api_took = asked.elapsed();
    let worker_code = worker.wait_exit(Duration::from_secs(20)).await;
    let worker_took = asked.elapsed();
    assert_eq!(api_code, Some(0), "{}", api.stderr());
    assert_eq!(worker_code, Some(0), "{}", worker.stderr());
    eprintln!("FIGURE sigterm_api_exit_ms={}", millis(api_took));
    eprintln!(
        "FIGURE sigterm_worker_exit_with_run_in_flight_ms={}",
        millis(worker_took)
    );

    // Both flushed before exiting: the whole trace is there without waiting.
    assert_complete_run_trace(&receiver.spans(), &trace_id);

    // The run finished inside the grace period and was stored.
    let reader = Jobpilot::start(&["api"], &with_listen(env.clone(), &listen_addr()));
    let run = wait_finished(
        &reader.base.clone().unwrap(),
        "rita",
        &run_id,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["attempts"], 1, "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_serve_finish_its_run_flush_its_spans_and_exit_zero() {
    let _serial = SERIAL.lock().await;
    let receiver = OtlpReceiver::start().await.unwrap();
    let llm = TracedLlm::start(Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let endpoint = receiver.endpoint();
    let mut extra = vec![
        ("JOBPILOT_DATA_DIR", data.as_str()),
        ("OTEL_EXPORTER_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("JOBPILOT_SHUTDOWN_GRACE_SECS", "10"),
    ];
    extra.extend(llm_env(&llm));
    let listen = listen_addr();
    extra.push(("JOBPILOT_LISTEN", &listen));
    let mut serve = Jobpilot::start(&["serve", "--init"], &base_env(&extra));
    let base = serve.base.clone().unwrap();

    let (run_id, trace_id) = submit(&base, "sam", "resume_review", resume()).await;
    llm.wait_for_calls(&trace_id, 1, Duration::from_secs(20))
        .await;
    let asked = Instant::now();
    serve.send_sigterm();
    let code = serve.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "{}", serve.stderr());
    eprintln!(
        "FIGURE sigterm_serve_exit_with_run_in_flight_ms={}",
        millis(asked.elapsed())
    );
    assert_complete_run_trace(&receiver.spans(), &trace_id);

    // Reopen the same store: the run was stored as finished, in its first attempt.
    let again = Jobpilot::start(
        &["serve"],
        &base_env(&[
            ("JOBPILOT_DATA_DIR", &data),
            ("JOBPILOT_LISTEN", &listen),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]),
    );
    let run = wait_finished(
        &again.base.clone().unwrap(),
        "sam",
        &run_id,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["attempts"], 1, "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_off_by_a_short_grace_period_is_handed_back_and_completed_after_restart() {
    let _serial = SERIAL.lock().await;
    let llm = TracedLlm::start(Duration::ZERO).await;
    let trace_id = new_trace_id();
    // The first attempt's LLM call outlasts the one-second grace period.
    llm.hold(&trace_id);
    let prefix = unique_prefix("short-grace");
    let mut extra = vec![
        ("JOBPILOT_SHUTDOWN_GRACE_SECS", "1"),
        // Far longer than the test: only the hand-back can bring the run back this soon.
        ("JOBPILOT_VISIBILITY_TIMEOUT_SECS", "120"),
    ];
    extra.extend(llm_env(&llm));
    let env = on_redis(&redis_url(), &prefix, &extra);
    let listen = listen_addr();
    let api = Jobpilot::start(&["api"], &with_listen(env.clone(), &listen));
    let base = api.base.clone().unwrap();
    let mut first = Jobpilot::start(&["worker"], &env);

    let run_id = submit_in_trace(&base, "tess", "resume_review", resume(), &trace_id).await;
    llm.wait_for_calls(&trace_id, 1, Duration::from_secs(20))
        .await;
    let asked = Instant::now();
    first.send_sigterm();
    // Grace (1 s) + the hand-back budget (2 s) + the telemetry flush budget (5 s) + margin.
    let code = first.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", first.stderr());
    eprintln!(
        "FIGURE short_grace_worker_exit_ms={}",
        millis(asked.elapsed())
    );
    assert!(
        first.stderr().contains("run handed back at shutdown"),
        "{}",
        first.stderr()
    );

    llm.release(&trace_id);
    let restarted = Instant::now();
    let _second = Jobpilot::start(&["worker"], &env);
    let run = wait_finished(&base, "tess", &run_id, Duration::from_secs(30)).await;
    eprintln!(
        "FIGURE handed_back_run_done_after_restart_ms={}",
        millis(restarted.elapsed())
    );
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["attempts"], 2, "the interrupted attempt counts: {run}");
    assert_eq!(llm.calls_of(&trace_id).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_in_bounded_time_even_when_the_collector_hangs() {
    let _serial = SERIAL.lock().await;
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.set_mode(ReceiverMode::Hang);
    let llm = TracedLlm::start(Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let endpoint = receiver.endpoint();
    let listen = listen_addr();
    let mut extra = vec![
        ("JOBPILOT_DATA_DIR", data.as_str()),
        ("JOBPILOT_LISTEN", listen.as_str()),
        ("OTEL_EXPORTER_ENDPOINT", endpoint.as_str()),
        ("JOBPILOT_SHUTDOWN_GRACE_SECS", "5"),
    ];
    extra.extend(llm_env(&llm));
    let mut serve = Jobpilot::start(&["serve", "--init"], &base_env(&extra));
    let base = serve.base.clone().unwrap();

    let (run_id, trace_id) = submit(&base, "uma", "resume_review", resume()).await;
    llm.wait_for_calls(&trace_id, 1, Duration::from_secs(20))
        .await;
    let asked = Instant::now();
    serve.send_sigterm();
    // Grace (5 s) + the telemetry flush budget (5 s) + margin.
    let code = serve.wait_exit(Duration::from_secs(15)).await;
    let took = asked.elapsed();
    eprintln!(
        "FIGURE sigterm_exit_with_hanging_collector_ms={}",
        millis(took)
    );
    assert_eq!(code, Some(0), "{}", serve.stderr());
    assert!(
        receiver.requests() > 0,
        "the exporter never tried the collector"
    );

    // The hanging collector did not cost the run.
    let again = Jobpilot::start(
        &["serve"],
        &base_env(&[
            ("JOBPILOT_DATA_DIR", &data),
            ("JOBPILOT_LISTEN", &listen),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]),
    );
    let run = wait_finished(
        &again.base.clone().unwrap(),
        "uma",
        &run_id,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
}
