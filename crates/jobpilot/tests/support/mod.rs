//! Spawning the real `jobpilot` binary, a Redis server and a fake LLM endpoint for
//! end-to-end tests. Every process is stopped when its handle drops.
#![allow(dead_code)]

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

/// The environment every jobpilot process of a test gets.
pub fn base_env(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("JOBPILOT_JWT_SECRET", SECRET),
        ("JOBPILOT_LOG", "info"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
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

/// Polls the run until it is `succeeded` or `failed` (bounded).
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
                if last["status"] == "succeeded" || last["status"] == "failed" {
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
            post(move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
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
                    let model = body["model"].as_str().unwrap_or("test-model").to_owned();
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(serde_json::json!({
                            "id": format!("chatcmpl-{n}"),
                            "object": "chat.completion",
                            "model": model,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "A well-written paragraph."}}],
                            "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}
                        })),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeLlm {
            base_url: format!("http://{addr}/v1"),
            requests,
            _task: task,
        }
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}
