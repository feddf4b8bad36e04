//! Behaviour only the embedded backend has: durability across close/reopen,
//! crash recovery, file locking, and poison rows on disk.

mod common;

use std::time::Duration;

use common::{run, short_visibility, task};
use jobpilot_queue::{
    Broker, EmbeddedBackend, QueueError, RunStatus, RunStore, UNREADABLE_TASK_ERROR,
};

const PATIENCE: Duration = Duration::from_secs(3);

#[tokio::test]
async fn reopening_keeps_queued_tasks_runs_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    {
        let backend = EmbeddedBackend::open(dir.path(), short_visibility()).unwrap();
        backend.insert(&run("run-1")).await.unwrap();
        backend.mark_running("run-1", 1, 2_000).await.unwrap();
        backend.enqueue(&task("run-dead")).await.unwrap();
        let doomed = backend.receive("w", 1, PATIENCE).await.unwrap();
        backend.dead_letter(&doomed[0], "bad input").await.unwrap();
        backend.enqueue(&task("run-1")).await.unwrap();
        backend.enqueue(&task("run-2")).await.unwrap();
    }
    let backend = EmbeddedBackend::open(dir.path(), short_visibility()).unwrap();
    let stats = backend.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight, stats.dead_lettered),
        (2, 0, 1)
    );
    assert_eq!(
        backend.dead_letters(5).await.unwrap()[0].reason,
        "bad input"
    );

    let stored = backend.get("run-1").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Running);

    let batch = backend.receive("w", 5, PATIENCE).await.unwrap();
    let runs: Vec<&str> = batch.iter().map(|d| d.envelope.run_id.as_str()).collect();
    assert_eq!(runs, ["run-1", "run-2"]);
    assert!(batch.iter().all(|d| d.attempt == 1));
    assert_eq!(
        batch[0].envelope,
        task_without_time(&batch[0].envelope, "run-1")
    );
}

/// `task()` stamps the current time; compare everything else.
fn task_without_time(
    got: &jobpilot_queue::TaskEnvelope,
    run_id: &str,
) -> jobpilot_queue::TaskEnvelope {
    let mut expected = task(run_id);
    expected.enqueued_at_ms = got.enqueued_at_ms;
    expected
}

#[tokio::test]
async fn task_in_flight_at_crash_comes_back_with_next_attempt_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    // A long visibility timeout: the redelivery must come from the reopen,
    // not from the timeout running out.
    let settings = jobpilot_queue::QueueSettings {
        visibility_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    {
        let backend = EmbeddedBackend::open(dir.path(), settings.clone()).unwrap();
        backend.enqueue(&task("run-1")).await.unwrap();
        let first = backend.receive("w", 1, PATIENCE).await.unwrap();
        assert_eq!(first[0].attempt, 1);
        // "Crash": the backend goes away without an ack.
    }
    let backend = EmbeddedBackend::open(dir.path(), settings).unwrap();
    let again = backend
        .receive("w", 1, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(again[0].envelope.run_id, "run-1");
    backend.ack(&again[0]).await.unwrap();
    drop(backend);

    let backend = EmbeddedBackend::open(dir.path(), short_visibility()).unwrap();
    assert!(
        backend
            .receive("w", 1, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn second_open_of_the_same_dir_fails_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedBackend::open(dir.path(), short_visibility()).unwrap();
    let err = EmbeddedBackend::open(dir.path(), short_visibility()).unwrap_err();
    assert!(matches!(err, QueueError::Locked { .. }), "{err}");
    let expected = dir.path().join("jobpilot.redb");
    assert!(
        err.to_string().contains(&expected.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn open_creates_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let backend = EmbeddedBackend::open(&nested, short_visibility()).unwrap();
    assert_eq!(backend.path(), nested.join("jobpilot.redb"));
    Broker::ping(&backend).await.unwrap();
}

#[tokio::test]
async fn zero_visibility_timeout_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let settings = jobpilot_queue::QueueSettings {
        visibility_timeout: Duration::ZERO,
        ..Default::default()
    };
    let err = EmbeddedBackend::open(dir.path(), settings).unwrap_err();
    assert!(matches!(err, QueueError::InvalidConfig(_)), "{err}");
}

#[tokio::test]
async fn undecodable_stored_task_is_dead_lettered_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let backend = EmbeddedBackend::open(dir.path(), short_visibility()).unwrap();
        backend.enqueue(&task("run-good")).await.unwrap();
        backend.insert(&run("run-bad")).await.unwrap();
    }
    {
        // Write a garbage row straight into the file, as a torn or foreign
        // write would leave it.
        const TASKS: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("tasks");
        let db = redb::Database::create(dir.path().join("jobpilot.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut tasks = txn.open_table(TASKS).unwrap();
            tasks
                .insert(1_000, br#"{"envelope":{"run_id":"run-bad"}}"#.as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let backend = EmbeddedBackend::open(dir.path(), short_visibility()).unwrap();
    let batch = backend.receive("w", 5, PATIENCE).await.unwrap();
    let runs: Vec<&str> = batch.iter().map(|d| d.envelope.run_id.as_str()).collect();
    assert_eq!(runs, ["run-good"]);

    let dead = backend.dead_letters(5).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].run_id, "run-bad");
    assert!(
        dead[0].reason.contains("could not be decoded"),
        "{}",
        dead[0].reason
    );
    assert_eq!(backend.stats().await.unwrap().dead_lettered, 1);

    // Its run is finished, not left queued for ever, with a reason fit for its owner.
    let bad = backend.get("run-bad").await.unwrap().unwrap();
    assert_eq!(bad.status, RunStatus::Failed);
    assert!(bad.dead_lettered);
    assert_eq!(bad.error.as_deref(), Some(UNREADABLE_TASK_ERROR));
}
