//! Behaviour only the Redis backend has: fast failure when Redis is down,
//! the documented key layout, poison stream entries, a lost consumer group and
//! a lost script cache.

mod common;

use std::time::{Duration, Instant};

use common::{redis_backend, redis_url, run, short_visibility, task};
use jobpilot_queue::{
    AttemptOutcome, AttemptRecord, Broker, QueueError, QueueSettings, RedisBackend, RunOutcome,
    RunStatus, RunStore,
};

const PATIENCE: Duration = Duration::from_secs(3);

async fn raw_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn unreachable_redis_is_reported_unavailable_within_three_seconds() {
    let started = Instant::now();
    let err = RedisBackend::connect(
        "redis://127.0.0.1:1",
        "jobpilot-test:down",
        short_visibility(),
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_unavailable(), "{err}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn unparsable_url_is_invalid_config() {
    let err = RedisBackend::connect("not a url", "jobpilot-test:bad", short_visibility())
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::InvalidConfig(_)), "{err}");
}

#[tokio::test]
async fn keys_follow_the_documented_layout() {
    let (backend, keys) = redis_backend("layout", short_visibility()).await;
    backend.enqueue(&task("run-1")).await.unwrap();
    backend.insert(&run("run-1")).await.unwrap();
    let mut conn = raw_connection().await;

    let stream = format!("{}:stream:agent_runs", keys.prefix);
    assert_eq!(backend.stream_key(), stream);
    let length: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(length, 1);
    let stored: Option<String> = redis::cmd("GET")
        .arg(format!("{}:run:run-1", keys.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored.unwrap()).unwrap();
    assert_eq!(stored["status"], "queued");

    // Acknowledged entries leave the stream entirely.
    let delivery = backend.receive("w", 1, PATIENCE).await.unwrap();
    backend.ack(&delivery[0]).await.unwrap();
    let length: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(length, 0);
}

#[tokio::test]
async fn an_accepted_runs_stream_entry_carries_the_record_as_stored() {
    let (backend, keys) = redis_backend("entry-record", short_visibility()).await;
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    let mut conn = raw_connection().await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{}:stream:agent_runs", keys.prefix))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let in_entry: String = entries.ids[0].get("run").expect("a run field");
    let stored: String = redis::cmd("GET")
        .arg(format!("{}:run:run-1", keys.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        in_entry, stored,
        "the worker's start swaps against these bytes"
    );

    // The start swaps against the entry's record and stores the same as a start that read it.
    backend.receive("w", 1, PATIENCE).await.unwrap();
    let started = backend
        .start_attempt("run-1", AttemptRecord::started(1, "w", 2_000, 2_001))
        .await
        .unwrap();
    assert_eq!(started.status, RunStatus::Running);
    assert_eq!(backend.get("run-1").await.unwrap(), Some(started));
}

/// The stored bytes of run `run_id`.
async fn stored(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    run_id: &str,
) -> String {
    redis::cmd("GET")
        .arg(format!("{prefix}:run:{run_id}"))
        .query_async(conn)
        .await
        .unwrap()
}

/// Stores `raw` as run `run_id`, as another writer would, past the backend.
async fn store(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    run_id: &str,
    raw: &str,
) {
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:run:{run_id}"))
        .arg(raw)
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn each_write_of_a_record_moves_its_stored_revision_up_by_one() {
    let (backend, keys) = redis_backend("revision", short_visibility()).await;
    let mut conn = raw_connection().await;
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    assert!(
        stored(&mut conn, &keys.prefix, "run-1")
            .await
            .starts_with(r#"{"rev":1,"run_id":"run-1","#)
    );

    let delivery = backend.receive("w", 1, PATIENCE).await.unwrap().remove(0);
    let started = backend
        .start_attempt("run-1", AttemptRecord::started(1, "w", 2_000, 2_001))
        .await
        .unwrap();
    let raw = stored(&mut conn, &keys.prefix, "run-1").await;
    assert!(raw.starts_with(r#"{"rev":2,"run_id":"#), "{raw}");
    // The revision is the store's own: the record reads back without it.
    assert_eq!(backend.get("run-1").await.unwrap(), Some(started.clone()));

    let mut ended = started.timeline.attempts[0].clone();
    ended.finished_at_ms = Some(2_100);
    ended.outcome = AttemptOutcome::Succeeded;
    backend
        .finish_attempt_and_ack(
            "run-1",
            ended,
            Some(RunOutcome::Succeeded(serde_json::json!({"fit": 1}))),
            &task("run-1"),
            &delivery,
        )
        .await
        .unwrap();
    let raw = stored(&mut conn, &keys.prefix, "run-1").await;
    assert!(raw.starts_with(r#"{"rev":3,"run_id":"#), "{raw}");
    let done = backend.get("run-1").await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_record_stored_without_a_revision_is_changed_and_gets_one() {
    let (backend, keys) = redis_backend("no-revision", short_visibility()).await;
    let mut conn = raw_connection().await;
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    // As an earlier version stored it: the plain JSON, no revision.
    let plain = serde_json::to_string(&run("run-1")).unwrap();
    store(&mut conn, &keys.prefix, "run-1", &plain).await;
    assert_eq!(backend.get("run-1").await.unwrap(), Some(run("run-1")));

    let cancelled = backend.cancel_run("run-1", 5_000).await.unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    let raw = stored(&mut conn, &keys.prefix, "run-1").await;
    assert!(raw.starts_with(r#"{"rev":1,"run_id":"#), "{raw}");
    assert_eq!(backend.get("run-1").await.unwrap(), Some(cancelled));
}

#[tokio::test]
async fn a_swap_against_a_replaced_revision_reads_the_record_again() {
    let (backend, keys) = redis_backend("stale-revision", short_visibility()).await;
    let mut conn = raw_connection().await;
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    // The delivery carries the record as accepted (revision 1), which the start would
    // swap against; another writer replaces it first with the next revision and another
    // attempt count.
    backend.receive("w", 1, PATIENCE).await.unwrap();
    let raw = stored(&mut conn, &keys.prefix, "run-1").await;
    let replaced = raw.replacen(r#"{"rev":1,"#, r#"{"rev":2,"#, 1).replacen(
        r#""attempts":0"#,
        r#""attempts":7"#,
        1,
    );
    assert_ne!(replaced, raw);
    store(&mut conn, &keys.prefix, "run-1", &replaced).await;

    let started = backend
        .start_attempt("run-1", AttemptRecord::started(1, "w", 2_000, 2_001))
        .await
        .unwrap();
    // Built on the record as replaced, not as delivered.
    assert_eq!(started.attempts, 7);
    let raw = stored(&mut conn, &keys.prefix, "run-1").await;
    assert!(raw.starts_with(r#"{"rev":3,"run_id":"#), "{raw}");
}

#[tokio::test]
async fn accept_that_cannot_count_the_run_writes_neither_record_nor_task() {
    let (backend, keys) = redis_backend("accept-count", short_visibility()).await;
    let mut conn = raw_connection().await;
    // A key of the wrong type makes the count fail inside the accept script.
    let _: () = redis::cmd("SET")
        .arg(format!("{}:unfinished", keys.prefix))
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = backend
        .accept(&run("run-1"), &task("run-1"))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(backend.get("run-1").await.unwrap().is_none(), "record left");
    let length: u64 = redis::cmd("XLEN")
        .arg(backend.stream_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(length, 0, "task left");
}

#[tokio::test]
async fn poison_stream_entries_are_dead_lettered_instead_of_delivered() {
    let (backend, _keys) = redis_backend("poison", short_visibility()).await;
    backend.insert(&run("run-bad")).await.unwrap();
    let mut conn = raw_connection().await;
    let _: String = redis::cmd("XADD")
        .arg(backend.stream_key())
        .arg("*")
        .arg("task")
        .arg(r#"{"run_id":"run-bad","agent_type":"echo"}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(backend.stream_key())
        .arg("*")
        .arg("something")
        .arg("else")
        .query_async(&mut conn)
        .await
        .unwrap();
    backend.enqueue(&task("run-good")).await.unwrap();

    let mut delivered = Vec::new();
    while delivered.is_empty() {
        delivered = backend.receive("w", 5, PATIENCE).await.unwrap();
    }
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].envelope.run_id, "run-good");

    let dead = backend.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().any(|d| d.run_id == "run-bad"));
    assert!(
        dead.iter()
            .all(|d| d.reason.contains("could not be decoded"))
    );
    let stats = backend.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight, stats.dead_lettered),
        (0, 1, 2)
    );

    // Its run is finished, not left queued for ever, with a reason fit for its owner.
    let bad = backend.get("run-bad").await.unwrap().unwrap();
    assert_eq!(bad.status, jobpilot_queue::RunStatus::Failed);
    assert!(bad.dead_lettered);
    assert_eq!(
        bad.error.as_deref(),
        Some(jobpilot_queue::UNREADABLE_TASK_ERROR)
    );
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 0);
}

#[tokio::test]
async fn lost_consumer_group_is_recreated_without_losing_tasks() {
    let (backend, _keys) = redis_backend("lost-group", short_visibility()).await;
    backend.enqueue(&task("run-1")).await.unwrap();
    let mut conn = raw_connection().await;
    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(backend.stream_key())
        .arg("jobpilot")
        .query_async(&mut conn)
        .await
        .unwrap();

    let batch = backend.receive("w", 1, PATIENCE).await.unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].envelope.run_id, "run-1");
    backend.ack(&batch[0]).await.unwrap();
}

#[tokio::test]
async fn retry_delay_longer_than_visibility_is_capped_at_the_visibility_timeout() {
    let settings = QueueSettings {
        visibility_timeout: Duration::from_millis(400),
        ..QueueSettings::default()
    };
    let (backend, _keys) = redis_backend("retry-cap", settings).await;
    backend.enqueue(&task("run-1")).await.unwrap();
    let first = backend.receive("w", 1, PATIENCE).await.unwrap();
    let parked = Instant::now();
    backend
        .retry_later(&first[0], Duration::from_secs(3600))
        .await
        .unwrap();
    let again = backend.receive("w", 1, PATIENCE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    assert!(parked.elapsed() >= Duration::from_millis(350));
    RunStore::ping(&backend).await.unwrap();
}

/// A throwaway `redis-server` without persistence on a free port, killed on
/// drop. Lets a test stop and restart Redis without touching the shared one.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// `None` when no `redis-server` binary is installed.
    fn start_on(port: u16) -> Option<Self> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = Self {
            port,
            child: Some(child),
        };
        server.wait_until_ready();
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_until_ready(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("private redis on port {} did not start", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reports_a_stopped_redis_fast_and_recovers_after_restart() {
    let port = free_port();
    let Some(mut server) = PrivateRedis::start_on(port) else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    let backend = RedisBackend::connect(&server.url(), "jobpilot-test:restart", short_visibility())
        .await
        .unwrap();
    backend.enqueue(&task("run-1")).await.unwrap();
    let batch = backend.receive("w", 1, PATIENCE).await.unwrap();
    backend.ack(&batch[0]).await.unwrap();

    server.stop();
    let started = Instant::now();
    let err = backend.enqueue(&task("run-2")).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let err = backend
        .receive("w", 1, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    // Same port, empty data set: the stream and the group are both gone.
    let _server = PrivateRedis::start_on(port).expect("redis-server restarts");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match backend.enqueue(&task("run-3")).await {
            Ok(()) => break,
            Err(err) if Instant::now() < deadline => {
                eprintln!("still reconnecting: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("did not recover: {err}"),
        }
    }
    let batch = loop {
        match backend.receive("w", 1, PATIENCE).await {
            Ok(batch) => break batch,
            Err(err) if Instant::now() < deadline => {
                eprintln!("still reconnecting: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("did not recover: {err}"),
        }
    };
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].envelope.run_id, "run-3");
    assert_eq!(batch[0].attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_submission_loop_with_a_short_retention_keeps_keys_and_memory_flat() {
    use common::{
        RETENTION_ROUNDS, RUNS_PER_ROUND, assert_flat, short_retention, submission_round,
    };
    let (backend, keys) = redis_backend("retention-loop", short_retention()).await;
    let mut conn = raw_connection().await;
    let mut key_counts = Vec::new();
    let mut memory = Vec::new();
    let mut run_key_bytes = 0_u64;
    for round in 0..RETENTION_ROUNDS {
        submission_round(&backend, round).await;
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", keys.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut bytes = 0_u64;
        for key in &found {
            let used: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            bytes += used.unwrap_or(0);
            if key.contains(":run:") {
                run_key_bytes = run_key_bytes.max(used.unwrap_or(0));
            }
        }
        key_counts.push(found.len() as u64);
        memory.push(bytes);
    }
    let submitted = (RETENTION_ROUNDS * RUNS_PER_ROUND) as u64;
    assert!(
        *key_counts.last().unwrap() * 3 < submitted,
        "{key_counts:?} of {submitted}"
    );
    assert_flat("keys", &key_counts, 2 * RUNS_PER_ROUND as u64);
    assert_flat(
        "memory of the keys",
        &memory,
        2 * RUNS_PER_ROUND as u64 * run_key_bytes,
    );
    // Every finished run key carries an expiry.
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:run:*", keys.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in &found {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        // -2: it expired since it was listed; -1 would be a key without an expiry.
        assert!(ttl >= 0 || ttl == -2, "{key} has no expiry ({ttl})");
    }
    let dead: u64 = redis::cmd("LLEN")
        .arg(format!("{}:dead", keys.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(dead * 10 < submitted, "{dead} dead letters kept");
    eprintln!(
        "FIGURE redis_retention submitted={submitted} keys_per_round={key_counts:?} key_bytes_per_round={memory:?} bytes_per_finished_run_key={run_key_bytes}"
    );
}

#[tokio::test]
async fn scripts_are_loaded_again_after_redis_forgets_them() {
    let (backend, _keys) = redis_backend("script-flush", short_visibility()).await;
    // What a Redis restart does to the script cache (other tests sharing this Redis
    // reload theirs the same way).
    let mut conn = raw_connection().await;
    let _: String = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    let delivery = backend.receive("w", 1, PATIENCE).await.unwrap();
    backend.ack(&delivery[0]).await.unwrap();
    assert_eq!(backend.stats().await.unwrap().depth, 0);
    assert!(backend.get("run-1").await.unwrap().is_some());
}
