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
        let backend = EmbeddedBackend::create(dir.path(), short_visibility()).unwrap();
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
        let backend = EmbeddedBackend::create(dir.path(), settings.clone()).unwrap();
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
    let _first = EmbeddedBackend::create(dir.path(), short_visibility()).unwrap();
    let err = EmbeddedBackend::open(dir.path(), short_visibility()).unwrap_err();
    assert!(matches!(err, QueueError::Locked { .. }), "{err}");
    let expected = dir.path().join("jobpilot.redb");
    assert!(
        err.to_string().contains(&expected.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn create_makes_a_missing_directory_and_the_file_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let backend = EmbeddedBackend::create(&nested, short_visibility()).unwrap();
    assert_eq!(backend.path(), nested.join("jobpilot.redb"));
    Broker::ping(&backend).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&nested), 0o700, "directory");
    assert_eq!(mode(backend.path()), 0o600, "file");
}

#[tokio::test]
async fn opening_a_missing_store_is_refused_naming_the_path_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let err = EmbeddedBackend::open(dir.path(), short_visibility()).unwrap_err();
    let expected = dir.path().join("jobpilot.redb");
    assert!(
        matches!(err, QueueError::StoreMissing { ref path } if *path == expected),
        "{err}"
    );
    assert!(
        err.to_string().contains(&expected.display().to_string()),
        "{err}"
    );
    assert!(!expected.exists(), "open must not create a store");
    // A directory that is not there at all is refused the same way.
    let err = EmbeddedBackend::open(&dir.path().join("typo"), short_visibility()).unwrap_err();
    assert!(matches!(err, QueueError::StoreMissing { .. }), "{err}");
}

#[tokio::test]
async fn opening_an_empty_store_file_is_refused_and_the_file_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let backend = EmbeddedBackend::create(dir.path(), short_visibility()).unwrap();
        backend.insert(&run("run-1")).await.unwrap();
        backend.path().to_owned()
    };
    std::fs::File::create(&path).unwrap(); // truncates to 0 bytes
    let err = EmbeddedBackend::open(dir.path(), short_visibility()).unwrap_err();
    assert!(matches!(err, QueueError::StoreEmpty { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    // Creating a store on purpose may reuse the empty file: there is nothing in it to lose.
    let backend = EmbeddedBackend::create(dir.path(), short_visibility()).unwrap();
    assert!(backend.get("run-1").await.unwrap().is_none());
}

#[tokio::test]
async fn a_damaged_page_is_reported_as_corruption_and_fails_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..300).map(|i| format!("run-{i:04}")).collect();
    let path = {
        let backend = EmbeddedBackend::create(dir.path(), short_visibility()).unwrap();
        for id in &ids {
            let mut record = run(id);
            record.error = Some("x".repeat(2_000));
            backend.insert(&record).await.unwrap();
        }
        backend.path().to_owned()
    };
    // Overwrite the middle of the file, where the runs' pages are.
    {
        use std::io::{Seek, SeekFrom, Write};
        let len = std::fs::metadata(&path).unwrap().len();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(len / 2)).unwrap();
        file.write_all(&vec![0xA5; 64 * 1024]).unwrap();
    }
    let backend = match EmbeddedBackend::open(dir.path(), short_visibility()) {
        Err(err) => {
            assert!(err.is_corrupt(), "open reports corruption, not {err}");
            eprintln!("FIGURE damaged_page detected_at=open");
            return;
        }
        Ok(backend) => backend,
    };
    let mut corrupt = 0;
    for id in &ids {
        match backend.get(id).await {
            Ok(_) => {}
            Err(err) => {
                assert!(err.is_corrupt(), "a damaged page is corruption, not {err}");
                corrupt += 1;
            }
        }
    }
    assert!(corrupt > 0, "no read noticed the damaged page");
    let err = Broker::ping(&backend).await.unwrap_err();
    assert!(err.is_corrupt(), "readiness reports the corruption: {err}");
    eprintln!("FIGURE damaged_page detected_at=read runs_unreadable={corrupt}");
}

#[tokio::test]
async fn zero_visibility_timeout_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let settings = jobpilot_queue::QueueSettings {
        visibility_timeout: Duration::ZERO,
        ..Default::default()
    };
    let err = EmbeddedBackend::create(dir.path(), settings).unwrap_err();
    assert!(matches!(err, QueueError::InvalidConfig(_)), "{err}");
}

#[tokio::test]
async fn undecodable_stored_task_is_dead_lettered_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let backend = EmbeddedBackend::create(dir.path(), short_visibility()).unwrap();
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
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_submission_loop_with_a_short_retention_keeps_the_file_flat() {
    use common::{
        RETENTION_ROUNDS, RUNS_PER_ROUND, assert_flat, short_retention, submission_round,
    };
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::create(dir.path(), short_retention()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cleaner = tokio::spawn({
        let backend = backend.clone();
        async move {
            backend
                .run_retention_until(async {
                    let _ = stopped.await;
                })
                .await;
        }
    });
    let mut sizes = Vec::new();
    let mut runs = Vec::new();
    for round in 0..RETENTION_ROUNDS {
        submission_round(&backend, round).await;
        sizes.push(std::fs::metadata(backend.path()).unwrap().len());
        runs.push(backend.counts().await.unwrap().runs);
    }
    let _ = stop.send(());
    cleaner.await.unwrap();
    let counts = backend.counts().await.unwrap();
    let submitted = (RETENTION_ROUNDS * RUNS_PER_ROUND) as u64;
    assert!(counts.runs * 3 < submitted, "{counts:?} of {submitted}");
    assert_eq!(counts.finished_index, counts.runs);
    assert_eq!(counts.tasks, 0);
    assert_flat("runs stored", &runs, 2 * RUNS_PER_ROUND as u64);
    assert_flat("file size", &sizes, 0);
    let steady_runs = runs[5..].iter().sum::<u64>() / (runs.len() as u64 - 5);
    let steady_bytes = sizes[5..].iter().sum::<u64>() / (sizes.len() as u64 - 5);
    eprintln!(
        "FIGURE embedded_retention submitted={submitted} runs_retained_per_round={runs:?} file_bytes_per_round={sizes:?} bytes_per_retained_run={}",
        steady_bytes / steady_runs.max(1)
    );
}
