//! The operator's JSON API with real processes, on both backends (`serve` on its embedded
//! store; `api` and `worker` sharing a real Redis): listing with every filter and paging,
//! retry in the same trace, cancel of a queued and of a running run, statistics from known
//! runs, and the event stream across an `api` and a `worker` process.

mod support;

use std::time::{Duration, Instant};

use jobpilot_telemetry::names;
use jobpilot_telemetry::testing::OtlpReceiver;
use serde_json::{Value, json};
use support::*;

/// The store a deployment runs on.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    Redis,
}

/// The processes of one deployment (kept alive while it is used).
struct Deployment {
    base: String,
    _processes: Vec<Jobpilot>,
    _data: Option<tempfile::TempDir>,
}

/// `serve`, or an `api` and a `worker` on Redis, with `extra` settings for both.
fn deploy(backend: Backend, extra: &[(&str, &str)]) -> Deployment {
    match backend {
        Backend::Embedded => {
            let (serve, data) = serve(extra);
            Deployment {
                base: serve.base.clone().unwrap(),
                _processes: vec![serve],
                _data: Some(data),
            }
        }
        Backend::Redis => {
            let prefix = unique_prefix("operator");
            let listen = format!("127.0.0.1:{}", free_port());
            let url = redis_url();
            let mut shared = vec![
                ("REDIS_URL", url.as_str()),
                ("JOBPILOT_REDIS_PREFIX", prefix.as_str()),
            ];
            shared.extend_from_slice(extra);
            let mut api_env = shared.clone();
            api_env.push(("JOBPILOT_LISTEN", &listen));
            let api = Jobpilot::start(&["api"], &base_env(&api_env));
            let worker = Jobpilot::start(&["worker"], &base_env(&shared));
            Deployment {
                base: api.base.clone().unwrap(),
                _processes: vec![api, worker],
                _data: None,
            }
        }
    }
}

fn resume_review() -> Value {
    json!({"resume": "Summary: backend engineer\nExperience: Rust, Python\nSkills: Docker"})
}

/// An input whose first step finds no words: the run fails for good.
fn failing() -> Value {
    json!({"resume": "!!!"})
}

async fn request(method: &str, url: &str, bearer: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn list(base: &str, bearer: &str, query: &str) -> (u16, Value) {
    request("GET", &format!("{base}/api/v1/runs?{query}"), bearer).await
}

fn ids(page: &Value) -> Vec<String> {
    page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn listing_filters_and_pages(backend: Backend) {
    let deployment = deploy(backend, &[]);
    let base = &deployment.base;
    let alice = token("alice");
    let mut mine = Vec::new();
    for _ in 0..3 {
        let (run_id, _) = submit(base, "alice", "resume_review", resume_review()).await;
        mine.push(run_id);
    }
    let (bad, _) = submit(base, "alice", "resume_review", failing()).await;
    let (bobs, _) = submit(base, "bob", "resume_review", resume_review()).await;
    for run_id in mine.iter().chain([&bad]) {
        wait_finished(base, "alice", run_id, Duration::from_secs(20)).await;
    }
    wait_finished(base, "bob", &bobs, Duration::from_secs(20)).await;

    // Own runs only, newest first.
    let (status, page) = list(base, &alice, "").await;
    assert_eq!(status, 200, "{page}");
    let newest_first: Vec<String> = [bad.clone()]
        .into_iter()
        .chain(mine.iter().rev().cloned())
        .collect();
    assert_eq!(ids(&page), newest_first);
    assert_eq!(page["next_cursor"], Value::Null);
    // Timelines come with the runs.
    assert_eq!(
        page["runs"][1]["timeline"]["attempts"][0]["outcome"],
        "succeeded"
    );

    // Each filter.
    let (_, failed) = list(base, &alice, "status=failed").await;
    assert_eq!(ids(&failed), [bad.as_str()]);
    let (_, by_error) = list(base, &alice, "error_type=no_words").await;
    assert_eq!(ids(&by_error), [bad.as_str()], "{by_error}");
    let (_, by_agent) = list(base, &alice, "agent_type=job_match").await;
    assert!(ids(&by_agent).is_empty());
    let first_created = page["runs"][3]["created_at_ms"].as_u64().unwrap();
    let last_created = page["runs"][0]["created_at_ms"].as_u64().unwrap();
    let (_, window) = list(
        base,
        &alice,
        &format!("since={}&until={last_created}", first_created + 1),
    )
    .await;
    assert!(
        !ids(&window).contains(&mine[0]) && !ids(&window).contains(&bad),
        "{window}"
    );
    let (_, slow) = list(base, &alice, "min_duration_ms=600000").await;
    assert!(ids(&slow).is_empty());
    let (_, finished) = list(base, &alice, "min_duration_ms=0").await;
    assert_eq!(ids(&finished).len(), 4);

    // Paging, with a run arriving between two pages.
    let (_, first) = list(base, &alice, "limit=2").await;
    assert_eq!(ids(&first), newest_first[..2]);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (newer, _) = submit(base, "alice", "resume_review", resume_review()).await;
    let (_, second) = list(base, &alice, &format!("limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&second), newest_first[2..]);
    let (_, again) = list(base, &alice, "limit=1").await;
    assert_eq!(ids(&again), [newer]);

    // Admins see everyone, or one user.
    let admin = admin_token("ops");
    let (_, all) = list(base, &admin, "limit=200").await;
    assert!(ids(&all).contains(&bobs));
    let (_, bob_only) = list(base, &admin, "user_id=bob").await;
    assert_eq!(ids(&bob_only), [bobs.as_str()]);

    // Bad input: named.
    let (status, body) = list(base, &alice, "colour=red").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("colour")),
        "{body}"
    );
    let (status, body) = list(base, &alice, "status=sleeping").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("status")),
        "{body}"
    );
    let (status, body) = list(base, &alice, "limit=500").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("limit")),
        "{body}"
    );
    let (status, body) = list(base, &alice, "since=yesterday").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("since")),
        "{body}"
    );
    let (status, body) = list(base, &alice, "cursor=garbage").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["trace_id"].is_string(), "{body}");
    let (status, _) = list(base, &alice, "user_id=bob").await;
    assert_eq!(status, 403);
}

async fn retry_continues_the_trace(backend: Backend) {
    let receiver = OtlpReceiver::start().await.unwrap();
    let endpoint = receiver.endpoint();
    let deployment = deploy(backend, &[("OTEL_EXPORTER_ENDPOINT", &endpoint)]);
    let base = &deployment.base;
    let alice = token("alice");
    let (run_id, trace_id) = submit(base, "alice", "resume_review", failing()).await;
    let run = wait_finished(base, "alice", &run_id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "failed");

    // Someone else's run is not found; a succeeded run cannot be retried.
    let (status, _) = request(
        "POST",
        &format!("{base}/api/v1/runs/{run_id}/retry"),
        &token("bob"),
    )
    .await;
    assert_eq!(status, 404);
    let (ok_id, _) = submit(base, "alice", "resume_review", resume_review()).await;
    wait_finished(base, "alice", &ok_id, Duration::from_secs(20)).await;
    let (status, body) =
        request("POST", &format!("{base}/api/v1/runs/{ok_id}/retry"), &alice).await;
    assert_eq!(status, 409, "{body}");

    let (status, queued) = request(
        "POST",
        &format!("{base}/api/v1/runs/{run_id}/retry"),
        &alice,
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["status"], "queued");
    // It fails again (same input), as attempt 2 of the same run.
    let deadline = Instant::now() + Duration::from_secs(20);
    let run = loop {
        let (_, run) = request("GET", &format!("{base}/api/v1/runs/{run_id}"), &alice).await;
        if run["status"] == "failed" && run["attempts"] == 2 {
            break run;
        }
        assert!(Instant::now() < deadline, "the retry did not finish: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let attempts = run["timeline"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run}");
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[1]["steps"][0]["error.type"], "no_words");
    assert!(run["timeline"]["retried_at_ms"].is_u64());

    // The span tree: two consumer spans in the run's trace, both children of (and linked to)
    // the one producer span.
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = of_trace(&receiver.spans(), &trace_id);
        if spans
            .iter()
            .filter(|s| s.name == "process agent_runs")
            .count()
            == 2
        {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans of the retry did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let producer = one(&spans, "send agent_runs");
    let mut consumers: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "process agent_runs")
        .collect();
    consumers.sort_by_key(|s| s.i64_attr(names::MESSAGING_DELIVERY_ATTEMPT));
    for (consumer, attempt) in consumers.iter().zip([1, 2]) {
        assert_eq!(
            consumer.parent_span_id.as_deref(),
            Some(producer.span_id.as_str())
        );
        assert_eq!(
            consumer.links,
            vec![(producer.trace_id.clone(), producer.span_id.clone())]
        );
        assert_eq!(
            consumer.i64_attr(names::MESSAGING_DELIVERY_ATTEMPT),
            Some(attempt)
        );
    }
}

async fn cancel_stops_queued_and_running_runs(backend: Backend) {
    let llm = TracedLlm::start(Duration::ZERO).await;
    let deployment = deploy(
        backend,
        &[
            ("JOBPILOT_LLM_BASE_URL", &llm.base_url),
            ("JOBPILOT_LLM_MODEL", "test-model"),
            ("JOBPILOT_WORKER_CONCURRENCY", "1"),
        ],
    );
    let base = &deployment.base;
    let alice = token("alice");
    // The first run holds the only worker slot in its LLM call; the second waits.
    let trace = new_trace_id();
    llm.hold(&trace);
    let running = submit_in_trace(base, "alice", "resume_review", resume_review(), &trace).await;
    assert_eq!(
        llm.wait_for_calls(&trace, 1, Duration::from_secs(20)).await,
        1
    );
    let (waiting, _) = submit(base, "alice", "resume_review", resume_review()).await;

    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/runs/{waiting}/cancel"),
        &alice,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("cancelled")),
        "{body}"
    );
    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/runs/{waiting}/cancel"),
        &alice,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("cancelled")),
        "idempotent: {body}"
    );

    let asked = Instant::now();
    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/runs/{running}/cancel"),
        &alice,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("running")),
        "{body}"
    );
    assert!(body["timeline"]["cancel_requested_at_ms"].is_u64());
    let run = wait_finished(base, "alice", &running, Duration::from_secs(10)).await;
    eprintln!(
        "FIGURE {backend:?} cancel_to_cancelled_ms={}",
        asked.elapsed().as_millis()
    );
    assert_eq!(run["status"], "cancelled", "{run}");
    let attempt = &run["timeline"]["attempts"][0];
    assert_eq!(attempt["outcome"], "cancelled");
    let last = attempt["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["name"].as_str(), last["error.type"].as_str()),
        (Some("suggest"), Some("cancelled"))
    );
    // Its LLM request was abandoned, never answered.
    assert!(llm.calls_of(&trace).iter().all(|c| c.answered.is_none()));
    llm.release(&trace);

    // The waiting run never started.
    let (_, waited) = request("GET", &format!("{base}/api/v1/runs/{waiting}"), &alice).await;
    assert_eq!(waited["status"], "cancelled");
    assert!(
        waited["timeline"]["attempts"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{waited}"
    );
    let (status, _) = request(
        "POST",
        &format!("{base}/api/v1/runs/{running}/cancel"),
        &token("bob"),
    )
    .await;
    assert_eq!(status, 404);
    // The worker is free again and runs new work; a finished run cannot be cancelled.
    let (next, _) = submit(base, "alice", "resume_review", resume_review()).await;
    let done = wait_finished(base, "alice", &next, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "succeeded");
    let (status, body) =
        request("POST", &format!("{base}/api/v1/runs/{next}/cancel"), &alice).await;
    assert_eq!(status, 409, "{body}");
}

async fn stats_count_known_runs(backend: Backend) {
    let deployment = deploy(backend, &[]);
    let base = &deployment.base;
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(
            submit(base, "alice", "resume_review", resume_review())
                .await
                .0,
        );
    }
    runs.push(submit(base, "alice", "resume_review", failing()).await.0);
    for run_id in &runs {
        wait_finished(base, "alice", run_id, Duration::from_secs(20)).await;
    }
    let admin = admin_token("ops");
    // Workers on Redis write their counts about once a second: read until all five show.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (stats, agent) = loop {
        let (status, stats) = request(
            "GET",
            &format!("{base}/api/v1/admin/stats?window=5m"),
            &admin,
        )
        .await;
        assert_eq!(status, 200, "{stats}");
        let agent = stats["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agent_type"] == "resume_review")
            .cloned();
        if let Some(agent) = agent
            && agent["runs"] == 5
        {
            break (stats, agent);
        }
        assert!(
            Instant::now() < deadline,
            "the five runs were not counted: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let agent = &agent;
    assert_eq!(
        (agent["runs"].as_u64(), agent["errors"].as_u64()),
        (Some(5), Some(1)),
        "{stats}"
    );
    assert_eq!(agent["error_rate"], 0.2);
    assert!(agent["duration_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(agent["duration_ms"]["p99"].as_f64() >= agent["duration_ms"]["p50"].as_f64());
    let parse = agent["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "parse_resume")
        .unwrap();
    assert_eq!(
        (parse["runs"].as_u64(), parse["errors"].as_u64()),
        (Some(5), Some(1))
    );
    let suggest = agent["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "suggest")
        .unwrap();
    assert_eq!(suggest["runs"], 4);
    assert!(
        suggest["output_tokens"].as_u64().unwrap() > 0,
        "the offline provider's estimates"
    );
    let group = &stats["failure_groups"][0];
    assert_eq!(
        (
            group["step"].as_str(),
            group["error.type"].as_str(),
            group["count"].as_u64()
        ),
        (Some("parse_resume"), Some("no_words"), Some(1)),
        "{stats}"
    );
    assert_eq!(group["example_run_ids"][0], runs[4].as_str());
    assert_eq!(stats["slowest_runs"].as_array().unwrap().len(), 5);
    assert_eq!(stats["depth"], 0);

    // Admins only; windows by name.
    let (status, _) = request(
        "GET",
        &format!("{base}/api/v1/admin/stats"),
        &token("alice"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = request(
        "GET",
        &format!("{base}/api/v1/admin/stats?window=2d"),
        &admin,
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("window"))
    );
}

async fn dead_letters_are_listed_requeued_and_deleted(backend: Backend) {
    // An LLM that is down: with one attempt allowed, the run is dead-lettered at once.
    let deployment = deploy(
        backend,
        &[
            ("JOBPILOT_LLM_BASE_URL", "http://127.0.0.1:9/v1"),
            ("JOBPILOT_LLM_MODEL", "test-model"),
            ("JOBPILOT_LLM_MAX_RETRIES", "0"),
            ("JOBPILOT_MAX_ATTEMPTS", "1"),
        ],
    );
    let base = &deployment.base;
    let admin = admin_token("ops");
    let mut dead = Vec::new();
    for _ in 0..3 {
        let (run_id, _) = submit(base, "alice", "resume_review", resume_review()).await;
        let run = wait_finished(base, "alice", &run_id, Duration::from_secs(20)).await;
        assert_eq!(run["dead_lettered"], true, "{run}");
        dead.push(run_id);
    }
    let (status, first) = request(
        "GET",
        &format!("{base}/api/v1/admin/dead-letters?limit=2"),
        &admin,
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let listed: Vec<&str> = first["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [dead[2].as_str(), dead[1].as_str()]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = request(
        "GET",
        &format!("{base}/api/v1/admin/dead-letters?limit=2&cursor={cursor}"),
        &admin,
    )
    .await;
    assert_eq!(second["dead_letters"][0]["run_id"], dead[0].as_str());
    assert_eq!(second["next_cursor"], Value::Null);

    let (status, _) = request(
        "DELETE",
        &format!("{base}/api/v1/admin/dead-letters/{}", dead[0]),
        &admin,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = request(
        "DELETE",
        &format!("{base}/api/v1/admin/dead-letters/{}", dead[0]),
        &admin,
    )
    .await;
    assert_eq!(status, 404);
    let (status, queued) = request(
        "POST",
        &format!("{base}/api/v1/admin/dead-letters/{}/requeue", dead[1]),
        &admin,
    )
    .await;
    assert_eq!(
        (status, queued["status"].as_str()),
        (202, Some("queued")),
        "{queued}"
    );
    let run = wait_finished(base, "alice", &dead[1], Duration::from_secs(20)).await;
    assert_eq!(run["attempts"], 2, "a new attempt: {run}");
    let (_, queue) = request("GET", &format!("{base}/api/v1/admin/queue"), &admin).await;
    assert_eq!(queue["dead_lettered"], 2, "{queue}");
    let (status, _) = request(
        "GET",
        &format!("{base}/api/v1/admin/dead-letters"),
        &token("alice"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = request(
        "GET",
        &format!("{base}/api/v1/admin/dead-letters?cursor=x"),
        &admin,
    )
    .await;
    assert_eq!(status, 400);
}

/// Reads server-sent events from `res` until `done` says so or `within` passes; returns
/// (event name, data, when it arrived).
async fn read_events(
    mut res: reqwest::Response,
    within: Duration,
    mut done: impl FnMut(&[(String, Value, Instant)]) -> bool,
) -> Vec<(String, Value, Instant)> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buffer = String::new();
    let mut events = Vec::new();
    while !done(&events) {
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .expect("the events arrived in time")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !name.is_empty() {
                events.push((
                    name,
                    serde_json::from_str(&data).unwrap_or(Value::Null),
                    Instant::now(),
                ));
            }
        }
    }
    events
}

async fn events_stream_from_every_process(backend: Backend) {
    let deployment = deploy(backend, &[]);
    let base = &deployment.base;
    let admin = admin_token("ops");
    let res = reqwest::Client::new()
        .get(format!(
            "{base}/api/v1/admin/events?agent_type=resume_review"
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // Another agent type is filtered out.
    submit(
        base,
        "alice",
        "cover_letter",
        json!({"resume": "Experience: Rust", "job": "Rust developer", "company": "Acme"}),
    )
    .await;
    let (run_id, _) = submit(base, "alice", "resume_review", resume_review()).await;
    let events = read_events(res, Duration::from_secs(20), |events| {
        events
            .iter()
            .any(|(name, e, _)| name == "finished" && e["run_id"] == run_id.as_str())
    })
    .await;
    let kinds: Vec<&str> = events
        .iter()
        .filter(|(_, e, _)| e["run_id"] == run_id.as_str())
        .map(|(name, _, _)| name.as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "queued",
            "started",
            "step_finished",
            "step_finished",
            "step_finished",
            "finished"
        ],
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|(_, e, _)| e["agent_type"] == "resume_review")
    );
    let finished = &events.last().unwrap().1;
    assert_eq!(
        (finished["status"].as_str(), finished["success"].as_bool()),
        (Some("succeeded"), Some(true))
    );
    let (_, run) = request("GET", &format!("{base}/api/v1/runs/{run_id}"), &admin).await;
    let seen = events.last().unwrap().2;
    let finished_at = run["finished_at_ms"].as_u64().unwrap();
    let now_ms = jobpilot_queue::unix_now_ms();
    let lag_ms = now_ms.saturating_sub(finished_at) as i128 - seen.elapsed().as_millis() as i128;
    eprintln!("FIGURE {backend:?} finished_to_event_seen_ms={lag_ms}");
    assert!(lag_ms < 1_000, "the event took {lag_ms} ms");

    // Bad filters are named.
    let (status, body) = request(
        "GET",
        &format!("{base}/api/v1/admin/events?colour=red"),
        &admin,
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("colour"))
    );
    let (status, _) = request(
        "GET",
        &format!("{base}/api/v1/admin/events"),
        &token("alice"),
    )
    .await;
    assert_eq!(status, 403);
}

/// Runs each scenario against both backends: `embedded::<name>` and `redis::<name>`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::Embedded).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::Redis).await;
                }
            )*
        }
    };
}

on_both_backends! {
    listing_filters_and_pages,
    retry_continues_the_trace,
    cancel_stops_queued_and_running_runs,
    stats_count_known_runs,
    dead_letters_are_listed_requeued_and_deleted,
    events_stream_from_every_process,
}
