//! Run acceptance is all or nothing: clients that disconnect at every point of a submission
//! leave no run record without a task, on either backend. The API runs on a real socket; the
//! clients are raw TCP connections closed right after (or a moment after) the request is sent.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobpilot_api::{AppState, Auth};
use jobpilot_queue::{
    Broker, EmbeddedBackend, QueueSettings, RedisBackend, RunStatus, RunStore, TaskEnvelope,
};
use tokio::io::AsyncWriteExt;

const SECRET: &[u8] = b"test-secret-test-secret-test-secret";
/// Submissions per backend.
const SUBMISSIONS: usize = 200;

/// Starts the API over `broker`/`store` on a free port; returns its address.
async fn spawn_api(broker: Arc<dyn Broker>, store: Arc<dyn RunStore>) -> SocketAddr {
    let state = AppState::builder(Auth::new(SECRET), broker, store)
        .with_dependency_timeout(Duration::from_secs(2))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(jobpilot_api::serve(
        listener,
        jobpilot_api::app(state),
        std::future::pending(),
    ));
    addr
}

/// One complete run request as bytes.
fn request(addr: SocketAddr) -> Vec<u8> {
    let token = Auth::new(SECRET)
        .issue("dora", None, Duration::from_secs(600))
        .unwrap();
    let body = serde_json::json!({"input": {
        "resume": "Rust engineer with 6 years of Kubernetes",
        "job": "Senior Rust developer. Requirements: Rust, Kubernetes"
    }})
    .to_string();
    format!(
        "POST /api/v1/agents/job_match/runs HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends [`SUBMISSIONS`] requests, each on its own connection that is closed right after the
/// request is written, or up to a few milliseconds later: every stage of the handler, the
/// write included, sees some client go away.
async fn submit_and_disconnect(addr: SocketAddr) {
    let bytes = request(addr);
    for i in 0..SUBMISSIONS {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(&bytes).await.unwrap();
        let pause = Duration::from_micros(250 * (i % 16) as u64);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        drop(conn);
    }
}

/// Waits until `count` stops changing for a while (the handlers still running after their
/// client left have finished), bounded.
async fn settled<F, Fut>(count: F) -> u64
where
    F: Fn() -> Fut,
    Fut: Future<Output = u64>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = count().await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = count().await;
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Takes every task off the queue; the run ids they carry.
async fn drain(broker: &dyn Broker) -> Vec<TaskEnvelope> {
    let mut tasks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let batch = broker
            .receive("drain", 100, Duration::from_millis(200))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        for delivery in batch {
            broker.ack(&delivery).await.unwrap();
            tasks.push(delivery.envelope);
        }
    }
    tasks
}

/// Every task's run exists and is queued, and there are exactly as many runs as tasks.
async fn assert_every_run_has_its_task(store: &dyn RunStore, tasks: &[TaskEnvelope], runs: u64) {
    let ids: HashSet<&str> = tasks.iter().map(|t| t.run_id.as_str()).collect();
    assert_eq!(ids.len(), tasks.len(), "a run got two tasks");
    for id in &ids {
        let run = store.get(id).await.unwrap().expect("a task without a run");
        assert_eq!(run.status, RunStatus::Queued);
    }
    assert_eq!(
        runs,
        tasks.len() as u64,
        "{} run records but {} tasks: some run will never finish",
        runs,
        tasks.len()
    );
    assert!(
        !tasks.is_empty(),
        "no submission got far enough to create a run"
    );
    eprintln!(
        "FIGURE disconnecting_submissions={SUBMISSIONS} runs_created={}",
        tasks.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_disconnect_mid_submission_leave_no_embedded_run_without_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(EmbeddedBackend::create(dir.path(), QueueSettings::default()).unwrap());
    let addr = spawn_api(backend.clone(), backend.clone()).await;

    submit_and_disconnect(addr).await;
    let runs = settled(|| async { backend.counts().await.unwrap().runs }).await;
    let tasks = drain(backend.as_ref()).await;
    assert_every_run_has_its_task(backend.as_ref(), &tasks, runs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_disconnect_mid_submission_leave_no_redis_run_without_its_task() {
    let url = std::env::var("JOBPILOT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("jobpilot-test:disconnect:{}", uuid::Uuid::new_v4().simple());
    let backend = Arc::new(
        RedisBackend::connect(&url, &prefix, QueueSettings::default())
            .await
            .expect("test redis must be reachable (set JOBPILOT_TEST_REDIS_URL)"),
    );
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let addr = spawn_api(backend.clone(), backend.clone()).await;

    submit_and_disconnect(addr).await;
    let run_keys = || {
        let mut conn = conn.clone();
        let pattern = format!("{prefix}:run:*");
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.len() as u64
        }
    };
    let runs = settled(run_keys).await;
    let tasks = drain(backend.as_ref()).await;
    let all: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_every_run_has_its_task(backend.as_ref(), &tasks, runs).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&all)
        .query_async(&mut conn)
        .await
        .unwrap();
}
