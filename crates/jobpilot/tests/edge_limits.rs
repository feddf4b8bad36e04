//! The limits of the edge, on real sockets against the real binary: stalled connections (idle,
//! slow headers, half-sent bodies) are closed within the configured timeouts while `/health`
//! keeps answering, hundreds of idle connections do not starve it, and run quotas answer 429 /
//! 503 with `Retry-After` without losing a run they accepted.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr_of(base: &str) -> String {
    base.strip_prefix("http://").unwrap().to_owned()
}

/// Waits until the server closes `stream` (EOF or reset); returns how long that took.
async fn time_to_close(mut stream: TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let deadline = started + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue, // an error answer before the close
            Err(_) => return None,
        }
    }
}

async fn health(base: &str) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    matches!(client.get(format!("{base}/health")).send().await, Ok(r) if r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_within_the_timeouts_while_health_answers() {
    let (mut serve, _data) = serve(&[
        ("JOBPILOT_HEADER_READ_TIMEOUT_SECS", "1"),
        ("JOBPILOT_BODY_READ_TIMEOUT_SECS", "1"),
        ("JOBPILOT_REQUEST_TIMEOUT_SECS", "5"),
    ]);
    let base = serve.base.clone().unwrap();
    let addr = addr_of(&base);
    let token = token("slow");

    let idle = TcpStream::connect(&addr).await.unwrap();
    let mut slow_headers = TcpStream::connect(&addr).await.unwrap();
    slow_headers
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut half_body = TcpStream::connect(&addr).await.unwrap();
    half_body
        .write_all(
            format!(
                "POST /api/v1/agents/resume_review/runs HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
                 Content-Length: 1000\r\n\r\n{{\"input\": {{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // A kept-alive connection that answered one request and then says nothing.
    let mut kept_alive = TcpStream::connect(&addr).await.unwrap();
    kept_alive
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 512];
    let n = kept_alive.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));

    let within = Duration::from_secs(8);
    let (idle, slow_headers, half_body, kept_alive, healthy) = tokio::join!(
        time_to_close(idle, within),
        time_to_close(slow_headers, within),
        time_to_close(half_body, within),
        time_to_close(kept_alive, within),
        async {
            let mut answered = 0;
            for _ in 0..10 {
                answered += usize::from(health(&base).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answered
        }
    );
    eprintln!(
        "closed after: idle {idle:?}, slow headers {slow_headers:?}, half-sent body \
         {half_body:?}, kept-alive idle {kept_alive:?}"
    );
    let limit = Duration::from_millis(2500);
    for (what, closed) in [
        ("idle", idle),
        ("slow headers", slow_headers),
        ("half-sent body", half_body),
        ("kept-alive idle", kept_alive),
    ] {
        let closed = closed.unwrap_or_else(|| panic!("the {what} connection stayed open"));
        assert!(
            closed <= limit,
            "the {what} connection closed after {closed:?}"
        );
    }
    assert_eq!(healthy, 10, "/health answered while connections stalled");
    assert_eq!(serve.terminate(Duration::from_secs(15)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_keeps_answering_while_500_idle_connections_are_open() {
    let (mut serve, _data) = serve(&[("JOBPILOT_MAX_CONNECTIONS", "600")]);
    let base = serve.base.clone().unwrap();
    let addr = addr_of(&base);
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut answered = 0;
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            answered += usize::from(r.status() == 200);
        }
    }
    let took = started.elapsed();
    eprintln!(
        "200 /health requests with 500 idle connections open: {answered} answered in {took:?}"
    );
    assert_eq!(answered, 200);
    drop(idle);
    assert_eq!(serve.terminate(Duration::from_secs(15)), Some(0));
}

/// Posts a run as `user`: (status, Retry-After, body).
async fn post_run(base: &str, user: &str) -> (u16, Option<u64>, Value) {
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v1/agents/resume_review/runs"))
        .bearer_auth(token(user))
        .json(&json!({"input": {"resume": "Rust engineer, five years of Kubernetes and Go"}}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry_after, res.json().await.unwrap_or(Value::Null))
}

fn accepted(answers: &[(u16, Option<u64>, Value)]) -> Vec<String> {
    answers
        .iter()
        .filter(|(s, _, _)| *s == 202)
        .map(|(_, _, b)| b["run_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_answer_429_and_503_with_retry_after_and_no_accepted_run_is_lost() {
    let prefix = unique_prefix("quota");
    let listen = format!("127.0.0.1:{}", free_port());
    let redis = redis_url();
    let shared = [
        ("REDIS_URL", redis.as_str()),
        ("JOBPILOT_REDIS_PREFIX", prefix.as_str()),
        ("OTEL_TRACES_EXPORTER", "none"),
    ];
    let mut api_env = shared.to_vec();
    api_env.extend([
        ("JOBPILOT_LISTEN", listen.as_str()),
        ("JOBPILOT_RUNS_PER_USER_PER_SEC", "1"),
        ("JOBPILOT_RUNS_BURST_PER_USER", "3"),
        ("JOBPILOT_MAX_QUEUED_RUNS_PER_USER", "4"),
        ("JOBPILOT_MAX_QUEUE_DEPTH", "6"),
    ]);
    // The API alone: nothing is taken from the queue until the worker starts below.
    let api = Jobpilot::start(&["api"], &base_env(&api_env));
    let base = api.base.clone().unwrap();

    // The rate: a burst of 3, then 429 with Retry-After.
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(post_run(&base, "ann").await);
    }
    assert_eq!(accepted(&answers).len(), 3, "{answers:?}");
    for (status, retry_after, body) in &answers[3..] {
        assert_eq!(*status, 429, "{body}");
        assert!(retry_after.is_some_and(|s| s >= 1), "{body}");
        assert_eq!(body["error"]["code"], "too_many_requests");
        assert!(body["trace_id"].is_string(), "{body}");
    }
    // The per-user cap on unfinished runs: one more after the rate refills, then 429.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    answers.push(post_run(&base, "ann").await);
    assert_eq!(answers.last().unwrap().0, 202, "{answers:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, retry_after, body) = post_run(&base, "ann").await;
    assert_eq!(status, 429, "{body}");
    assert!(retry_after.is_some(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unfinished")
    );

    // The global queue depth: 4 queued; two more users fill it to 6, then 503.
    answers.push(post_run(&base, "bob").await);
    answers.push(post_run(&base, "cyd").await);
    let (status, retry_after, body) = post_run(&base, "dan").await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some(), "{body}");
    assert_eq!(body["error"]["code"], "overloaded");

    // Every accepted run finishes once a worker runs, and then the user may submit again.
    let runs = accepted(&answers);
    assert_eq!(runs.len(), 6, "{answers:?}");
    let _worker = Jobpilot::start(&["worker"], &base_env(&shared));
    for (run, user) in runs.iter().zip(["ann", "ann", "ann", "ann", "bob", "cyd"]) {
        let finished = wait_finished(&base, user, run, Duration::from_secs(30)).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
    }
    // The runs may finish within the second after ann's last request; wait for the rate to
    // refill so that what is checked here is the unfinished-run cap.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = post_run(&base, "ann").await;
    assert_eq!(status, 202, "the finished runs no longer count: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_the_request_timeout_gets_a_json_408() {
    let (mut serve, _data) = serve(&[
        ("JOBPILOT_BODY_READ_TIMEOUT_SECS", "0"),
        ("JOBPILOT_REQUEST_TIMEOUT_SECS", "1"),
    ]);
    let base = serve.base.clone().unwrap();
    let mut stream = TcpStream::connect(addr_of(&base)).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(
            format!(
                "POST /api/v1/agents/resume_review/runs HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
                 Content-Length: 1000\r\n\r\n{{",
                token("slow")
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    assert!(read.is_ok(), "the connection stayed open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    assert!(answer.contains("\"trace_id\""), "{answer}");
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    assert_eq!(serve.terminate(Duration::from_secs(15)), Some(0));
}
