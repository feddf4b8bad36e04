//! Helpers shared by the integration tests: envelopes, settings, and a Redis
//! backend whose keys are unique to one test and deleted afterwards.
//!
//! Not every test binary uses every helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use jobpilot_queue::{QueueSettings, RedisBackend, RunRecord, TaskEnvelope};

/// Redis used by the tests (`JOBPILOT_TEST_REDIS_URL`, default local).
pub fn redis_url() -> String {
    std::env::var("JOBPILOT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Settings with a short visibility timeout so redelivery tests stay fast.
pub fn short_visibility() -> QueueSettings {
    QueueSettings {
        visibility_timeout: Duration::from_millis(300),
        ..QueueSettings::default()
    }
}

/// Settings with a visibility timeout long enough to tell a `retry_later`
/// delay apart from a visibility-timeout redelivery.
pub fn long_visibility() -> QueueSettings {
    QueueSettings {
        visibility_timeout: Duration::from_secs(2),
        ..QueueSettings::default()
    }
}

/// A task for run `run_id` carrying a trace context and structured input.
pub fn task(run_id: &str) -> TaskEnvelope {
    let mut trace_context = BTreeMap::new();
    trace_context.insert(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    trace_context.insert("baggage".to_owned(), "tenant=acme".to_owned());
    TaskEnvelope::for_run(
        run_id,
        "echo",
        "user-1",
        serde_json::json!({ "prompt": format!("hello {run_id}"), "list": [], "n": 1.5 }),
        trace_context,
    )
}

/// A queued run record for `run_id`.
pub fn run(run_id: &str) -> RunRecord {
    RunRecord::queued(
        run_id,
        "echo",
        "user-1",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        1_000,
    )
}

/// Deletes every key under `prefix` when dropped, even if the test panicked.
pub struct RedisKeys {
    pub prefix: String,
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

/// A Redis backend under a prefix unique to `test`, plus the guard that
/// removes its keys.
pub async fn redis_backend(test: &str, settings: QueueSettings) -> (RedisBackend, RedisKeys) {
    let prefix = format!("jobpilot-test:{test}:{}", uuid::Uuid::new_v4().simple());
    let keys = RedisKeys {
        prefix: prefix.clone(),
    };
    let backend = RedisBackend::connect(&redis_url(), &prefix, settings)
        .await
        .expect("test redis must be reachable (set JOBPILOT_TEST_REDIS_URL)");
    (backend, keys)
}

/// Rounds of the retention loops: long enough to span several retention periods.
pub const RETENTION_ROUNDS: usize = 10;
/// Runs submitted per round.
pub const RUNS_PER_ROUND: usize = 20;
/// Shortest duration of one round.
pub const ROUND: Duration = Duration::from_millis(500);

/// Settings for the retention loops: runs expire one second after they finish.
pub fn short_retention() -> QueueSettings {
    QueueSettings {
        run_retention: Duration::from_secs(1),
        visibility_timeout: Duration::from_secs(30),
        ..QueueSettings::default()
    }
}

/// One round of the retention loops: accepts [`RUNS_PER_ROUND`] runs, takes their tasks,
/// finishes nine in ten with a 2 KB result and dead-letters the tenth, then waits out the
/// rest of [`ROUND`].
pub async fn submission_round<B>(backend: &B, round: usize)
where
    B: jobpilot_queue::Broker + jobpilot_queue::RunStore,
{
    use jobpilot_queue::RunOutcome;
    let started = std::time::Instant::now();
    for i in 0..RUNS_PER_ROUND {
        let id = format!("run-{round}-{i}");
        backend.accept(&run(&id), &task(&id)).await.unwrap();
    }
    let mut done = 0;
    while done < RUNS_PER_ROUND {
        let batch = backend
            .receive("w", RUNS_PER_ROUND, Duration::from_secs(3))
            .await
            .unwrap();
        assert!(!batch.is_empty(), "tasks went missing");
        for delivery in batch {
            let id = delivery.envelope.run_id.clone();
            if done % 10 == 9 {
                backend.dead_letter(&delivery, "gave up").await.unwrap();
            } else {
                let result = serde_json::json!({"text": "r".repeat(2_000)});
                backend
                    .finish(
                        &id,
                        RunOutcome::Succeeded(result),
                        jobpilot_queue::unix_now_ms(),
                    )
                    .await
                    .unwrap();
                backend.ack(&delivery).await.unwrap();
            }
            done += 1;
        }
    }
    // Every run of the round finished, so none is left in the user's count.
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 0);
    if let Some(rest) = ROUND.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
}

/// Asserts that the samples taken after each round stay flat once the first retention periods
/// are over: none after warm-up exceeds 1.5 times the largest of rounds 3–5 plus `slack` (what
/// one round more or less of retained runs accounts for).
pub fn assert_flat(what: &str, samples: &[u64], slack: u64) {
    let warm = samples[2..5].iter().copied().max().unwrap();
    let late = samples[5..].iter().copied().max().unwrap();
    assert!(
        late * 2 <= warm * 3 + slack * 2,
        "{what} kept growing: {samples:?} (warm {warm}, later up to {late})"
    );
}

/// Runs each listed behaviour (an `async fn` of the test file taking the backend) against
/// both backends with the given settings: `embedded::<name>` and `redis::<name>`.
#[allow(unused_macros)]
macro_rules! conformance {
    ($($behaviour:ident => $settings:expr),* $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let dir = tempfile::tempdir().unwrap();
                    let backend =
                        jobpilot_queue::EmbeddedBackend::create(dir.path(), $settings).unwrap();
                    super::$behaviour(&backend).await;
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let (backend, _keys) =
                        common::redis_backend(stringify!($behaviour), $settings).await;
                    super::$behaviour(&backend).await;
                }
            )*
        }
    };
}
