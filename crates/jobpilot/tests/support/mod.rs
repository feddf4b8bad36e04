//! Spawning the real `jobpilot` binary, a Redis server and a fake LLM endpoint for
//! end-to-end tests. Every process is stopped when its handle drops.
#![allow(dead_code)]

pub mod browser;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jobpilot_telemetry::testing::CapturedSpan;
use serde_json::Value;

pub const SECRET: &str = "end-to-end-secret-end-to-end-secret";

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `command` (arguments and environment already set) with stderr captured, expecting it to
/// stop by itself within `within`; returns (exit code, stderr). A process still running then is
/// killed and the test fails.
pub fn run_to_exit(command: &mut Command, within: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let mut child = command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{command:?} kept running: {}", stderr());
}

/// The Redis URL tests share, with a unique key prefix per test.
pub fn redis_url() -> String {
    std::env::var("JOBPILOT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix nobody else uses.
pub fn unique_prefix(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "jp-e2e-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running `jobpilot` process.
pub struct Jobpilot {
    pub child: Child,
    pub base: Option<String>,
    pub stderr_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Jobpilot {
    /// Starts `jobpilot <args>` with exactly `env` (plus PATH and HOME); for `serve` and `api`
    /// waits until `/health` answers.
    pub fn start(args: &[&str], env: &BTreeMap<String, String>) -> Jobpilot {
        let dir = tempfile::tempdir().unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobpilot"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().unwrap();
        let base = env.get("JOBPILOT_LISTEN").map(|a| format!("http://{a}"));
        let mut jp = Jobpilot {
            child,
            base,
            stderr_path,
            _dir: dir,
        };
        if let Some(base) = jp.base.clone() {
            jp.wait_healthy(&base);
        }
        jp
    }

    fn wait_healthy(&mut self, base: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("jobpilot exited early ({status}): {}", self.stderr());
            }
            if let Some(addr) = base.strip_prefix("http://") {
                let addr: SocketAddr = addr.parse().unwrap();
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("jobpilot did not start listening: {}", self.stderr());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base.as_deref().unwrap(), path)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Jobpilot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `jobpilot serve` on a free port with a data directory of its own (dropped with the returned
/// guard) and the `extra` settings.
pub fn serve(extra: &[(&str, &str)]) -> (Jobpilot, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut env = vec![
        ("JOBPILOT_LISTEN", listen.as_str()),
        ("JOBPILOT_DATA_DIR", dir.path().to_str().unwrap()),
    ];
    env.extend_from_slice(extra);
    (Jobpilot::start(&["serve", "--init"], &base_env(&env)), dir)
}

/// The environment every jobpilot process of a test gets.
pub fn base_env(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("JOBPILOT_JWT_SECRET", SECRET),
        ("JOBPILOT_LOG", "info"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // Tests submit many runs as one user at once; the quota tests turn these back on.
        ("JOBPILOT_RUNS_PER_USER_PER_SEC", "0"),
        ("JOBPILOT_MAX_QUEUED_RUNS_PER_USER", "0"),
        ("JOBPILOT_MAX_QUEUE_DEPTH", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

pub fn token(user: &str) -> String {
    jobpilot_api::Auth::new(SECRET.as_bytes())
        .issue(user, None, Duration::from_secs(600))
        .unwrap()
}

pub fn admin_token(user: &str) -> String {
    jobpilot_api::Auth::new(SECRET.as_bytes())
        .issue(user, Some("admin"), Duration::from_secs(600))
        .unwrap()
}

/// Posts a run and returns (run_id, trace_id).
pub async fn submit(base: &str, user: &str, agent: &str, input: Value) -> (String, String) {
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v1/agents/{agent}/runs"))
        .bearer_auth(token(user))
        .json(&serde_json::json!({ "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        202,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let body: Value = res.json().await.unwrap();
    (
        body["run_id"].as_str().unwrap().to_owned(),
        body["trace_id"].as_str().unwrap().to_owned(),
    )
}

/// Polls the run until it is `succeeded`, `failed` or `cancelled` (bounded).
pub async fn wait_finished(base: &str, user: &str, run_id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(res) = reqwest::Client::new()
            .get(format!("{base}/api/v1/runs/{run_id}"))
            .bearer_auth(token(user))
            .send()
            .await
        {
            if res.status() == 200 {
                last = res.json().await.unwrap();
                if ["succeeded", "failed", "cancelled"]
                    .contains(&last["status"].as_str().unwrap_or(""))
                {
                    return last;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {run_id} did not finish: {last}");
}

/// The spans of one trace.
pub fn of_trace(spans: &[CapturedSpan], trace_id: &str) -> Vec<CapturedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect()
}

/// The single span named `name` (panics listing the names otherwise).
pub fn one<'a>(spans: &'a [CapturedSpan], name: &str) -> &'a CapturedSpan {
    let found: Vec<&CapturedSpan> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {name:?} among {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

/// What the fake LLM endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmBehaviour {
    /// 503 for the first `n` requests, then 200.
    FailFirst(usize),
    /// Always 503.
    AlwaysFail,
    /// Wait this long, then 200.
    Slow(Duration),
}

/// A chat-completions answer (42 prompt tokens, 7 completion tokens).
fn completion(n: usize, model: &str, content: &str) -> Value {
    serde_json::json!({
        "id": format!("chatcmpl-{n}"),
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}
    })
}

/// Serves a fake LLM endpoint on loopback; returns its OpenAI-style base URL.
async fn serve_llm(app: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/v1"), task)
}

/// An OpenAI-compatible chat-completions endpoint on loopback that records request headers.
pub struct FakeLlm {
    pub base_url: String,
    pub requests: Arc<std::sync::Mutex<Vec<axum::http::HeaderMap>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    pub async fn start(behaviour: LlmBehaviour) -> FakeLlm {
        use axum::routing::post;
        let requests: Arc<std::sync::Mutex<Vec<axum::http::HeaderMap>>> = Arc::default();
        let seen = requests.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            post(
                move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
                    let seen = seen.clone();
                    async move {
                        let n = {
                            let mut r = seen.lock().unwrap();
                            r.push(headers);
                            r.len()
                        };
                        let fail = match behaviour {
                            LlmBehaviour::FailFirst(k) => n <= k,
                            LlmBehaviour::AlwaysFail => true,
                            LlmBehaviour::Slow(d) => {
                                tokio::time::sleep(d).await;
                                false
                            }
                        };
                        if fail {
                            return (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                axum::Json(serde_json::json!({"error": {"message": "overloaded"}})),
                            );
                        }
                        let model = body["model"].as_str().unwrap_or("test-model");
                        (
                            axum::http::StatusCode::OK,
                            axum::Json(completion(n, model, "A well-written paragraph.")),
                        )
                    }
                },
            ),
        );
        let (base_url, task) = serve_llm(app).await;
        FakeLlm {
            base_url,
            requests,
            _task: task,
        }
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// A `redis-server` of the test's own, on a free loopback port, with an append-only file
/// fsynced on every write in a private directory, so it can be stopped and started again
/// without losing data. The shared test Redis is never touched. Killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts the server and waits (bounded) until it answers PING.
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: nothing is flushed beyond what the append-only file already
    /// holds) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().unwrap().to_owned();
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--dir",
                &dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                log.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the reliability tests");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until PING answers PONG (not `-LOADING` while the append-only file is replayed).
    fn wait_ready(&mut self) {
        use std::io::{Read, Write};
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(self.dir.path().join("redis.log"));
                panic!(
                    "redis-server exited ({status}): {}",
                    log.unwrap_or_default()
                );
            }
            if let Ok(mut conn) =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            {
                let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                let mut reply = [0_u8; 16];
                if conn.write_all(b"PING\r\n").is_ok()
                    && matches!(conn.read(&mut reply), Ok(n) if reply[..n].starts_with(b"+PONG"))
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh random-looking trace id (32 hex digits), for runs whose trace the test picks.
pub fn new_trace_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, Ordering::Relaxed) as u128;
    let mixed = nanos ^ (u128::from(std::process::id()) << 64) ^ (n << 96) ^ (n + 1);
    format!("{mixed:032x}")
}

/// Posts a run in the trace `trace_id` (sent as the inbound `traceparent`, which the API
/// continues by default) and returns its run id. Knowing the trace id before the run exists
/// lets a test recognise the run's LLM requests from the first one.
pub async fn submit_in_trace(
    base: &str,
    user: &str,
    agent: &str,
    input: Value,
    trace_id: &str,
) -> String {
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v1/agents/{agent}/runs"))
        .bearer_auth(token(user))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({ "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        202,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["trace_id"], trace_id,
        "the API did not continue the trace"
    );
    body["run_id"].as_str().unwrap().to_owned()
}

/// Posts a run without asserting the answer: (status, body, how long the answer took).
pub async fn try_submit(
    base: &str,
    user: &str,
    agent: &str,
    input: Value,
) -> (u16, Value, Duration) {
    let started = Instant::now();
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v1/agents/{agent}/runs"))
        .bearer_auth(token(user))
        .json(&serde_json::json!({ "input": input }))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

/// GETs `url` (with a bearer token when given): (status, JSON body or null).
pub async fn get_json(url: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// One chat-completions request as [`TracedLlm`] saw it.
#[derive(Clone, Debug)]
pub struct LlmCall {
    /// The trace id of the request's `traceparent` (empty without one).
    pub trace_id: String,
    /// When the request arrived.
    pub arrived: Instant,
    /// When the answer was sent; `None` while held, or when the caller went away first.
    pub answered: Option<Instant>,
}

#[derive(Default)]
struct TracedLlmState {
    calls: std::sync::Mutex<Vec<LlmCall>>,
    held: std::sync::Mutex<std::collections::HashSet<String>>,
    changed: tokio::sync::Notify,
}

/// An OpenAI-compatible chat-completions endpoint on loopback that tells runs apart by the
/// trace id in each request's `traceparent` (each run is its own trace): it records every
/// request per trace, answers after a fixed delay, and holds the requests of the traces it is
/// told to hold (a run that never gets its answer, e.g. one that "crashes its worker") until
/// they are released.
pub struct TracedLlm {
    pub base_url: String,
    state: Arc<TracedLlmState>,
    _task: tokio::task::JoinHandle<()>,
}

impl TracedLlm {
    /// Starts the endpoint; every answer comes after `delay`.
    pub async fn start(delay: Duration) -> TracedLlm {
        use axum::routing::post;
        let state = Arc::new(TracedLlmState::default());
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            post(move |headers: axum::http::HeaderMap| {
                let state = shared.clone();
                async move {
                    let trace_id = headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|tp| tp.split('-').nth(1))
                        .unwrap_or_default()
                        .to_owned();
                    let index = {
                        let mut calls = state.calls.lock().unwrap();
                        calls.push(LlmCall {
                            trace_id: trace_id.clone(),
                            arrived: Instant::now(),
                            answered: None,
                        });
                        calls.len() - 1
                    };
                    state.changed.notify_waiters();
                    loop {
                        let released = state.changed.notified();
                        if !state.held.lock().unwrap().contains(&trace_id) {
                            break;
                        }
                        released.await;
                    }
                    tokio::time::sleep(delay).await;
                    state.calls.lock().unwrap()[index].answered = Some(Instant::now());
                    axum::Json(completion(index, "test-model", "Quantify your results."))
                }
            }),
        );
        let (base_url, task) = serve_llm(app).await;
        TracedLlm {
            base_url,
            state,
            _task: task,
        }
    }

    /// From now on, requests in `trace_id` get no answer until [`TracedLlm::release`].
    pub fn hold(&self, trace_id: &str) {
        self.state.held.lock().unwrap().insert(trace_id.to_owned());
    }

    /// Answers the held requests of `trace_id` and stops holding new ones.
    pub fn release(&self, trace_id: &str) {
        self.state.held.lock().unwrap().remove(trace_id);
        self.state.changed.notify_waiters();
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<LlmCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The requests of one trace.
    pub fn calls_of(&self, trace_id: &str) -> Vec<LlmCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.trace_id == trace_id)
            .collect()
    }

    /// Waits until the trace has at least `n` requests (bounded); returns how many it has.
    pub async fn wait_for_calls(&self, trace_id: &str, n: usize, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.state.changed.notified();
            let seen = self.calls_of(trace_id).len();
            if seen >= n || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.calls_of(trace_id).len();
            }
        }
    }

    /// Waits until at least `n` requests arrived in all (bounded); returns how many did.
    pub async fn wait_for_total(&self, n: usize, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.state.changed.notified();
            let seen = self.calls().len();
            if seen >= n || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.calls().len();
            }
        }
    }
}

impl Jobpilot {
    /// Sends SIGTERM without waiting, so several processes can be asked to stop at once.
    pub fn send_sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits (bounded, without blocking the async runtime) for the process to exit; its exit
    /// code, or `None` if it is still running after `within` (or was killed by a signal).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}
