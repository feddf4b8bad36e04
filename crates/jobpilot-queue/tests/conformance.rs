//! One behaviour suite for every backend: each `async fn` below states a
//! guarantee of the `Broker` / `RunStore` contract, and the `conformance!`
//! macro runs it against both the embedded and the Redis backend
//! (`embedded::<name>` and `redis::<name>`).
//!
//! Backend-specific behaviour (reopen, locking, poison entries, unreachable
//! servers) lives in `embedded.rs` and `redis.rs`.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{long_visibility, run, short_visibility, task};
use jobpilot_queue::{Broker, Delivery, QueueError, RunOutcome, RunStatus, RunStore};
use tokio::time::Instant;

/// Generous upper bound for waits that should end much sooner.
const PATIENCE: Duration = Duration::from_secs(3);

async fn receive_one<B: Broker>(backend: &B, wait: Duration) -> Option<Delivery> {
    let mut got = backend.receive("worker-a", 1, wait).await.unwrap();
    assert!(got.len() <= 1, "asked for one delivery, got {}", got.len());
    got.pop()
}

async fn enqueued_task_is_delivered_with_attempt_one_and_intact_envelope<B>(backend: &B)
where
    B: Broker + RunStore,
{
    let sent = task("run-1");
    backend.enqueue(&sent).await.unwrap();
    let delivery = receive_one(backend, PATIENCE).await.expect("a delivery");
    assert_eq!(delivery.envelope, sent);
    assert_eq!(delivery.attempt, 1);
    assert!(!delivery.delivery_id.is_empty());
    // Delivered once: nobody else gets it while it is in flight.
    assert!(receive_one(backend, Duration::ZERO).await.is_none());
}

async fn acked_task_is_never_delivered_again<B: Broker + RunStore>(backend: &B) {
    backend.enqueue(&task("run-1")).await.unwrap();
    let delivery = receive_one(backend, PATIENCE).await.unwrap();
    backend.ack(&delivery).await.unwrap();
    // Wait past the visibility timeout: an acked task must not resurface.
    assert!(
        receive_one(backend, Duration::from_millis(700))
            .await
            .is_none()
    );
    let stats = backend.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight, stats.dead_lettered),
        (0, 0, 0)
    );
}

async fn acking_twice_is_harmless<B: Broker + RunStore>(backend: &B) {
    backend.enqueue(&task("run-1")).await.unwrap();
    let delivery = receive_one(backend, PATIENCE).await.unwrap();
    backend.ack(&delivery).await.unwrap();
    backend.ack(&delivery).await.unwrap();
    assert_eq!(backend.stats().await.unwrap().in_flight, 0);
}

async fn unacked_task_is_redelivered_with_next_attempt<B: Broker + RunStore>(backend: &B) {
    backend.enqueue(&task("run-1")).await.unwrap();
    let first = receive_one(backend, PATIENCE).await.unwrap();
    assert_eq!(first.attempt, 1);
    assert!(receive_one(backend, Duration::ZERO).await.is_none());

    // The worker "crashed": after the visibility timeout the task comes back,
    // and the crash counts as an attempt.
    let started = Instant::now();
    let second = receive_one(backend, PATIENCE).await.expect("a redelivery");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(second.attempt, 2);
    assert_eq!(second.envelope, first.envelope);

    let third = receive_one(backend, PATIENCE)
        .await
        .expect("another redelivery");
    assert_eq!(third.attempt, 3);
    backend.ack(&third).await.unwrap();
}

async fn retry_later_redelivers_after_the_delay_with_next_attempt<B>(backend: &B)
where
    B: Broker + RunStore,
{
    // Runs with a 2 s visibility timeout, so a pickup well before that proves
    // the delay (not the timeout) released the task.
    backend.enqueue(&task("run-1")).await.unwrap();
    let first = receive_one(backend, PATIENCE).await.unwrap();
    let released = Instant::now();
    backend
        .retry_later(&first, Duration::from_millis(250))
        .await
        .unwrap();
    assert!(receive_one(backend, Duration::ZERO).await.is_none());

    let again = receive_one(backend, PATIENCE).await.expect("a retry");
    let after = released.elapsed();
    assert_eq!(again.attempt, 2);
    assert!(
        after >= Duration::from_millis(200),
        "came back after {after:?}"
    );
    assert!(
        after < Duration::from_millis(1500),
        "came back after {after:?}"
    );
    backend.ack(&again).await.unwrap();
}

async fn extended_delivery_is_not_redelivered_past_its_original_deadline<B>(backend: &B)
where
    B: Broker + RunStore,
{
    // One-second visibility timeout: a heartbeat every 250 ms keeps the task
    // with its worker for twice that long, and another receiver sees nothing.
    backend.enqueue(&task("run-1")).await.unwrap();
    let first = receive_one(backend, PATIENCE).await.unwrap();
    let received = Instant::now();
    while received.elapsed() < Duration::from_secs(2) {
        let stolen = backend
            .receive("worker-b", 1, Duration::from_millis(250))
            .await
            .unwrap();
        assert!(
            stolen.is_empty(),
            "redelivered {:?} after {:?} despite heartbeats",
            stolen[0].attempt,
            received.elapsed()
        );
        backend.extend(&first, "worker-a").await.unwrap();
    }
    // The heartbeats stop: one visibility timeout later it is due again, and
    // the heartbeats counted no attempt.
    let again = backend
        .receive("worker-b", 1, PATIENCE)
        .await
        .unwrap()
        .pop()
        .expect("a redelivery once the heartbeats stop");
    assert_eq!(again.attempt, 2);
    backend.ack(&again).await.unwrap();
}

async fn extend_counts_no_attempt_and_a_stale_holder_cannot_extend<B>(backend: &B)
where
    B: Broker + RunStore,
{
    backend.enqueue(&task("run-1")).await.unwrap();
    let first = receive_one(backend, PATIENCE).await.unwrap();
    for _ in 0..3 {
        backend.extend(&first, "worker-a").await.unwrap();
    }
    // The worker "crashed" after its heartbeats: the redelivery is attempt 2,
    // not 2 + the number of heartbeats.
    let second = receive_one(backend, PATIENCE).await.expect("a redelivery");
    assert_eq!(second.attempt, 2);

    // The first holder wakes up late: its heartbeat must not take the task
    // back from the current holder, even under the same consumer name.
    let err = backend.extend(&first, "worker-a").await.unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::NotFound {
                kind: "delivery",
                ..
            }
        ),
        "{err}"
    );
    backend.extend(&second, "worker-a").await.unwrap();
    backend.ack(&second).await.unwrap();
    let err = backend.extend(&second, "worker-a").await.unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::NotFound {
                kind: "delivery",
                ..
            }
        ),
        "extending an acknowledged delivery: {err}"
    );
}

async fn extend_does_not_revive_a_delivery_parked_by_retry_later<B>(backend: &B)
where
    B: Broker + RunStore,
{
    // Two-second visibility timeout: a heartbeat that revived the parked
    // delivery would hold it back for two seconds instead of 250 ms.
    backend.enqueue(&task("run-1")).await.unwrap();
    let first = receive_one(backend, PATIENCE).await.unwrap();
    let parked = Instant::now();
    backend
        .retry_later(&first, Duration::from_millis(250))
        .await
        .unwrap();
    let err = backend.extend(&first, "worker-a").await.unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::NotFound {
                kind: "delivery",
                ..
            }
        ),
        "{err}"
    );

    let again = receive_one(backend, PATIENCE).await.expect("a retry");
    let after = parked.elapsed();
    assert_eq!(again.attempt, 2);
    assert!(
        after < Duration::from_millis(1500),
        "came back after {after:?}"
    );
    backend.ack(&again).await.unwrap();
}

async fn late_retry_later_of_a_stale_delivery_leaves_the_new_holder_alone<B>(backend: &B)
where
    B: Broker + RunStore,
{
    backend.enqueue(&task("run-1")).await.unwrap();
    let first = receive_one(backend, PATIENCE).await.unwrap();
    backend.retry_later(&first, Duration::ZERO).await.unwrap();
    let second = receive_one(backend, PATIENCE).await.unwrap();
    assert_eq!(second.attempt, 2);

    // A second, late give-back of attempt 1 must not release attempt 2.
    backend.retry_later(&first, Duration::ZERO).await.unwrap();
    assert!(
        receive_one(backend, Duration::from_millis(500))
            .await
            .is_none(),
        "the stale retry released the task from its current holder"
    );
    backend.extend(&second, "worker-a").await.unwrap();
    backend.ack(&second).await.unwrap();
}

async fn dead_lettered_task_is_never_delivered_again_and_is_listed<B>(backend: &B)
where
    B: Broker + RunStore,
{
    let sent = task("run-1");
    backend.enqueue(&sent).await.unwrap();
    let delivery = receive_one(backend, PATIENCE).await.unwrap();
    backend
        .dead_letter(&delivery, "agent exploded")
        .await
        .unwrap();

    assert!(
        receive_one(backend, Duration::from_millis(700))
            .await
            .is_none()
    );
    let stats = backend.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight, stats.dead_lettered),
        (0, 0, 1)
    );

    let dead = backend.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].task_id, sent.task_id);
    assert_eq!(dead[0].run_id, "run-1");
    assert_eq!(dead[0].agent_type, "echo");
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].reason, "agent exploded");
    assert!(dead[0].at_ms > 0);

    // A stale second holder dead-lettering it again does not list it twice.
    backend.dead_letter(&delivery, "again").await.unwrap();
    assert_eq!(backend.dead_letters(10).await.unwrap().len(), 1);
}

async fn dead_letters_are_listed_newest_first_up_to_the_limit<B>(backend: &B)
where
    B: Broker + RunStore,
{
    for id in ["run-1", "run-2", "run-3"] {
        backend.enqueue(&task(id)).await.unwrap();
        let delivery = receive_one(backend, PATIENCE).await.unwrap();
        backend.dead_letter(&delivery, id).await.unwrap();
    }
    let dead = backend.dead_letters(2).await.unwrap();
    let runs: Vec<&str> = dead.iter().map(|d| d.run_id.as_str()).collect();
    assert_eq!(runs, ["run-3", "run-2"]);
    assert!(backend.dead_letters(0).await.unwrap().is_empty());
}

async fn tasks_are_delivered_in_enqueue_order<B: Broker + RunStore>(backend: &B) {
    let ids: Vec<String> = (0..6).map(|i| format!("run-{i}")).collect();
    for id in &ids {
        backend.enqueue(&task(id)).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < ids.len() {
        let batch = backend
            .receive("worker-a", 4, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(!batch.is_empty(), "ran dry after {seen:?}");
        seen.extend(batch.into_iter().map(|d| d.envelope.run_id));
    }
    assert_eq!(seen, ids);
}

async fn receive_returns_no_more_than_max<B: Broker + RunStore>(backend: &B) {
    for i in 0..3 {
        backend.enqueue(&task(&format!("run-{i}"))).await.unwrap();
    }
    let batch = backend.receive("worker-a", 2, PATIENCE).await.unwrap();
    assert_eq!(batch.len(), 2);
    assert!(
        backend
            .receive("worker-a", 0, PATIENCE)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn empty_receive_waits_about_the_given_time<B: Broker + RunStore>(backend: &B) {
    let started = Instant::now();
    let got = backend
        .receive("worker-a", 5, Duration::from_millis(250))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_millis(240),
        "returned after {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "returned after {waited:?}");
}

async fn waiting_receive_wakes_promptly_when_a_task_is_enqueued<B>(backend: &B)
where
    B: Broker + RunStore,
{
    let receiver = async {
        let got = backend
            .receive("worker-a", 1, Duration::from_secs(10))
            .await;
        (got, Instant::now())
    };
    let sender = async {
        // Let the receiver settle into its wait first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        backend.enqueue(&task("run-1")).await.unwrap();
        Instant::now()
    };
    let ((got, woke), enqueued) = tokio::join!(receiver, sender);
    assert_eq!(got.unwrap().len(), 1);
    let latency = woke.saturating_duration_since(enqueued);
    println!(
        "{} pickup latency after enqueue returned: {latency:?}",
        backend.system()
    );
    // Push-driven: nowhere near the 10 s wait. Generous bound for busy CI.
    assert!(
        latency < Duration::from_millis(300),
        "pickup took {latency:?}"
    );
}

async fn concurrent_receivers_never_share_a_task<B: Broker + RunStore>(backend: &B) {
    let total = 12;
    for i in 0..total {
        backend.enqueue(&task(&format!("run-{i}"))).await.unwrap();
    }
    let drain = |consumer: &'static str| async move {
        let mut mine = Vec::new();
        loop {
            let batch = backend
                .receive(consumer, 2, Duration::from_millis(200))
                .await
                .unwrap();
            if batch.is_empty() {
                return mine;
            }
            mine.extend(batch.into_iter().map(|d| d.envelope.run_id));
        }
    };
    let (a, b) = tokio::join!(drain("worker-a"), drain("worker-b"));
    let all: Vec<String> = a.into_iter().chain(b).collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), total, "deliveries: {all:?}");
    assert_eq!(unique.len(), total);
}

async fn stats_count_waiting_in_flight_and_dead_tasks<B: Broker + RunStore>(backend: &B) {
    for i in 0..4 {
        backend.enqueue(&task(&format!("run-{i}"))).await.unwrap();
    }
    let stats = backend.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight, stats.dead_lettered),
        (4, 0, 0)
    );

    let batch = backend.receive("worker-a", 2, PATIENCE).await.unwrap();
    assert_eq!(batch.len(), 2);
    let stats = backend.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight, stats.dead_lettered),
        (2, 2, 0)
    );

    backend.ack(&batch[0]).await.unwrap();
    backend.dead_letter(&batch[1], "no").await.unwrap();
    let stats = backend.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight, stats.dead_lettered),
        (2, 0, 1)
    );
}

async fn foreign_delivery_id_is_rejected_as_not_found<B: Broker + RunStore>(backend: &B) {
    let bogus = Delivery {
        envelope: task("run-1"),
        attempt: 1,
        delivery_id: "not-an-id".to_owned(),
    };
    let err = backend.ack(&bogus).await.unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::NotFound {
                kind: "delivery",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not-an-id"));
}

async fn backend_answers_ping_and_names_itself<B: Broker + RunStore>(backend: &B) {
    Broker::ping(backend).await.unwrap();
    RunStore::ping(backend).await.unwrap();
    assert_eq!(backend.queue_name(), "agent_runs");
    assert!(["redis", "jobpilot.embedded"].contains(&backend.system()));
}

async fn inserted_run_reads_back_and_cannot_be_inserted_twice<B>(backend: &B)
where
    B: Broker + RunStore,
{
    let record = run("run-1");
    backend.insert(&record).await.unwrap();
    assert_eq!(backend.get("run-1").await.unwrap(), Some(record.clone()));
    assert!(backend.get("run-2").await.unwrap().is_none());
    let err = backend.insert(&record).await.unwrap_err();
    assert!(
        matches!(err, QueueError::AlreadyExists(ref id) if id == "run-1"),
        "{err}"
    );
}

async fn mark_running_is_idempotent_and_keeps_the_first_start<B>(backend: &B)
where
    B: Broker + RunStore,
{
    backend.insert(&run("run-1")).await.unwrap();
    backend.mark_running("run-1", 1, 2_000).await.unwrap();
    let once = backend.get("run-1").await.unwrap().unwrap();
    backend.mark_running("run-1", 1, 2_000).await.unwrap();
    let twice = backend.get("run-1").await.unwrap().unwrap();
    assert_eq!(once, twice);
    assert_eq!(once.status, RunStatus::Running);
    assert_eq!((once.attempts, once.started_at_ms), (1, Some(2_000)));

    backend.mark_running("run-1", 2, 3_000).await.unwrap();
    let retried = backend.get("run-1").await.unwrap().unwrap();
    assert_eq!((retried.attempts, retried.started_at_ms), (2, Some(2_000)));
    // A late duplicate of attempt 1 does not lower the count.
    backend.mark_running("run-1", 1, 4_000).await.unwrap();
    assert_eq!(backend.get("run-1").await.unwrap().unwrap().attempts, 2);
}

async fn finish_never_overwrites_a_terminal_state<B: Broker + RunStore>(backend: &B) {
    backend.insert(&run("run-1")).await.unwrap();
    backend.mark_running("run-1", 1, 2_000).await.unwrap();
    let result = serde_json::json!({ "answer": 42, "empty": [] });
    backend
        .finish("run-1", RunOutcome::Succeeded(result.clone()), 3_000)
        .await
        .unwrap();
    let done = backend.get("run-1").await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(done.result, Some(result));
    assert_eq!(done.finished_at_ms, Some(3_000));

    // A duplicate delivery reports again: Ok, and nothing changes.
    let failed = RunOutcome::Failed {
        error: "duplicate".into(),
        dead_lettered: true,
    };
    backend.finish("run-1", failed, 4_000).await.unwrap();
    backend.mark_running("run-1", 2, 5_000).await.unwrap();
    assert_eq!(backend.get("run-1").await.unwrap().unwrap(), done);
}

async fn failed_run_records_error_and_dead_letter_flag<B: Broker + RunStore>(backend: &B) {
    backend.insert(&run("run-1")).await.unwrap();
    let failed = RunOutcome::Failed {
        error: "gave up after 5 attempts".into(),
        dead_lettered: true,
    };
    backend.finish("run-1", failed, 3_000).await.unwrap();
    let done = backend.get("run-1").await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("gave up after 5 attempts"));
    assert!(done.dead_lettered);
    assert!(done.result.is_none());
}

async fn updating_an_unknown_run_is_not_found<B: Broker + RunStore>(backend: &B) {
    let err = backend.mark_running("nope", 1, 1).await.unwrap_err();
    assert!(
        matches!(err, QueueError::NotFound { kind: "run", ref id } if id == "nope"),
        "{err}"
    );
    let err = backend
        .finish("nope", RunOutcome::Succeeded(serde_json::Value::Null), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::NotFound { .. }), "{err}");
}

async fn accepted_run_is_stored_queued_and_its_task_delivered<B>(backend: &B)
where
    B: Broker + RunStore + FaultHooks,
{
    let record = run("run-1");
    let sent = task("run-1");
    backend.accept(&record, &sent).await.unwrap();
    assert_eq!(backend.get("run-1").await.unwrap(), Some(record.clone()));
    let delivery = receive_one(backend, PATIENCE)
        .await
        .expect("the run's task");
    assert_eq!(delivery.envelope, sent);
    assert_eq!(delivery.attempt, 1);
}

async fn accepting_an_existing_run_writes_neither_record_nor_task<B>(backend: &B)
where
    B: Broker + RunStore + FaultHooks,
{
    let record = run("run-1");
    backend.accept(&record, &task("run-1")).await.unwrap();
    backend.mark_running("run-1", 1, 2_000).await.unwrap();
    let before = backend.get("run-1").await.unwrap();

    let err = backend
        .accept(&run("run-1"), &task("run-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, QueueError::AlreadyExists(ref id) if id == "run-1"),
        "{err}"
    );
    assert_eq!(backend.get("run-1").await.unwrap(), before);
    assert_eq!(backend.stats().await.unwrap().depth, 1, "one task, not two");
}

async fn a_fault_between_the_two_writes_of_accept_leaves_neither<B>(backend: &B)
where
    B: Broker + RunStore + FaultHooks,
{
    backend.fail_next_accept_between_writes();
    let err = backend
        .accept(&run("run-1"), &task("run-1"))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(backend.get("run-1").await.unwrap().is_none(), "record left");
    assert_eq!(
        backend.unfinished_runs_of("user-1").await.unwrap(),
        0,
        "count left"
    );
    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (0, 0), "task left");
    assert!(
        receive_one(backend, Duration::from_millis(100))
            .await
            .is_none()
    );

    // The hook fires once: the same run is accepted whole on the next try.
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    assert!(backend.get("run-1").await.unwrap().is_some());
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 1);
    assert!(receive_one(backend, PATIENCE).await.is_some());
}

async fn dead_lettering_a_task_finishes_its_run_as_failed_with_the_reason<B>(backend: &B)
where
    B: Broker + RunStore + FaultHooks,
{
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    let delivery = receive_one(backend, PATIENCE).await.unwrap();
    backend.mark_running("run-1", 1, 2_000).await.unwrap();
    backend
        .dead_letter(&delivery, "gave up after 1 attempts")
        .await
        .unwrap();
    let done = backend.get("run-1").await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Failed);
    assert!(done.dead_lettered);
    assert_eq!(done.error.as_deref(), Some("gave up after 1 attempts"));
    assert!(done.finished_at_ms.is_some());
}

async fn finished_runs_and_dead_letters_are_gone_after_the_retention<B>(backend: &B)
where
    B: Broker + RunStore + FaultHooks,
{
    for id in ["run-done", "run-dead", "run-waiting"] {
        backend.accept(&run(id), &task(id)).await.unwrap();
    }
    let batch = backend.receive("worker-a", 2, PATIENCE).await.unwrap();
    assert_eq!(batch.len(), 2);
    let result = serde_json::json!({"fit": 0.8});
    backend
        .finish(
            "run-done",
            RunOutcome::Succeeded(result),
            jobpilot_queue::unix_now_ms(),
        )
        .await
        .unwrap();
    backend.ack(&batch[0]).await.unwrap();
    backend.dead_letter(&batch[1], "gave up").await.unwrap();
    assert!(backend.get("run-done").await.unwrap().is_some());
    assert_eq!(backend.dead_letters(10).await.unwrap().len(), 1);

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    backend.purge_expired_now().await;
    assert!(backend.get("run-done").await.unwrap().is_none());
    assert!(backend.get("run-dead").await.unwrap().is_none());
    assert!(backend.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(backend.stats().await.unwrap().dead_lettered, 0);
    // The run that has not finished stays, however old: its task will finish it.
    let waiting = backend.get("run-waiting").await.unwrap().unwrap();
    assert_eq!(waiting.status, RunStatus::Queued);
    // Deleting the finished records leaves the count of unfinished ones right.
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 1);
    backend.assert_only_one_queued_run_is_stored().await;
}

async fn unfinished_runs_are_counted_per_user_until_they_finish<B>(backend: &B)
where
    B: Broker + RunStore,
{
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 0);
    for id in ["run-1", "run-2"] {
        backend.accept(&run(id), &task(id)).await.unwrap();
    }
    // A run stored without a task counts as well.
    backend.insert(&run("run-3")).await.unwrap();
    // A refused duplicate is not counted.
    assert!(backend.accept(&run("run-1"), &task("run-1")).await.is_err());
    assert!(backend.insert(&run("run-3")).await.is_err());
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 3);
    assert_eq!(backend.unfinished_runs_of("user-2").await.unwrap(), 0);
    // Running still counts; finishing (even twice) counts down once.
    backend.mark_running("run-1", 1, 2_000).await.unwrap();
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 3);
    let ok = || RunOutcome::Succeeded(serde_json::Value::Null);
    backend.finish("run-1", ok(), 3_000).await.unwrap();
    backend.finish("run-1", ok(), 4_000).await.unwrap();
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 2);
    backend.finish("run-2", ok(), 3_000).await.unwrap();
    backend.finish("run-3", ok(), 3_000).await.unwrap();
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 0);
}

async fn a_dead_lettered_run_leaves_its_users_unfinished_count<B>(backend: &B)
where
    B: Broker + RunStore,
{
    for id in ["run-1", "run-2"] {
        backend.accept(&run(id), &task(id)).await.unwrap();
    }
    let delivery = receive_one(backend, PATIENCE).await.unwrap();
    backend.dead_letter(&delivery, "gave up").await.unwrap();
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 1);
    // Dead-lettering the same delivery again changes nothing.
    backend.dead_letter(&delivery, "gave up").await.unwrap();
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 1);
    // A run that finished before its task was dead-lettered is not counted twice.
    let other = receive_one(backend, PATIENCE).await.unwrap();
    let ok = RunOutcome::Succeeded(serde_json::Value::Null);
    backend
        .finish(&other.envelope.run_id, ok, 3_000)
        .await
        .unwrap();
    backend.dead_letter(&other, "gave up").await.unwrap();
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 0);
}

/// Hooks both backends offer to the tests under the same names.
trait FaultHooks {
    fn fail_next_accept_between_writes(&self);
    /// Runs the clean-up of expired data now (Redis expires keys by itself).
    async fn purge_expired_now(&self);
    /// Nothing but one queued run, its task and its user's unfinished count is
    /// left in any key or table.
    async fn assert_only_one_queued_run_is_stored(&self);
}

impl FaultHooks for jobpilot_queue::EmbeddedBackend {
    fn fail_next_accept_between_writes(&self) {
        jobpilot_queue::EmbeddedBackend::fail_next_accept_between_writes(self);
    }

    async fn purge_expired_now(&self) {
        self.purge_expired(jobpilot_queue::unix_now_ms())
            .await
            .unwrap();
    }

    async fn assert_only_one_queued_run_is_stored(&self) {
        let counts = self.counts().await.unwrap();
        assert_eq!(
            counts,
            jobpilot_queue::StoredCounts {
                runs: 1,
                tasks: 1,
                dead_letters: 0,
                finished_index: 0,
            }
        );
    }
}

impl FaultHooks for jobpilot_queue::RedisBackend {
    fn fail_next_accept_between_writes(&self) {
        jobpilot_queue::RedisBackend::fail_next_accept_between_writes(self);
    }

    async fn purge_expired_now(&self) {}

    async fn assert_only_one_queued_run_is_stored(&self) {
        // The indexes drop the entries of expired runs when a listing reaches them.
        let everyone = jobpilot_queue::RunQuery {
            limit: 200,
            ..jobpilot_queue::RunQuery::default()
        };
        let listed = self.list_runs(&everyone).await.unwrap();
        let ids: Vec<&str> = listed.runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["run-waiting"]);
        let stream = self.stream_key().to_owned();
        let prefix = stream.trim_end_matches(":stream:agent_runs").to_owned();
        let client = ::redis::Client::open(common::redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        // Statistics are kept per minute for a day whatever the retention of runs.
        keys.retain(|k| !(k.contains(":stats:") || k.contains(":slow:") || k.contains(":failex:")));
        keys.sort();
        assert_eq!(
            keys,
            [
                format!("{prefix}:run:run-waiting"),
                format!("{prefix}:runs:all"),
                format!("{prefix}:runs:user:user-1"),
                stream.clone(),
                format!("{prefix}:unfinished"),
            ]
        );
        for index in ["all", "user:user-1"] {
            let entries: u64 = ::redis::cmd("ZCARD")
                .arg(format!("{prefix}:runs:{index}"))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(entries, 1, "only the waiting run is indexed");
        }
        let length: u64 = ::redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(length, 1, "only the waiting run's task is in the stream");
    }
}

/// A visibility timeout between the short and the long one, for heartbeat tests.
fn one_second_visibility() -> jobpilot_queue::QueueSettings {
    jobpilot_queue::QueueSettings {
        visibility_timeout: Duration::from_secs(1),
        ..jobpilot_queue::QueueSettings::default()
    }
}

/// Finished runs and dead letters expire after one second.
fn one_second_retention() -> jobpilot_queue::QueueSettings {
    jobpilot_queue::QueueSettings {
        run_retention: Duration::from_secs(1),
        ..long_visibility()
    }
}

conformance! {
    enqueued_task_is_delivered_with_attempt_one_and_intact_envelope => short_visibility(),
    acked_task_is_never_delivered_again => short_visibility(),
    acking_twice_is_harmless => short_visibility(),
    unacked_task_is_redelivered_with_next_attempt => short_visibility(),
    retry_later_redelivers_after_the_delay_with_next_attempt => long_visibility(),
    extended_delivery_is_not_redelivered_past_its_original_deadline => one_second_visibility(),
    extend_counts_no_attempt_and_a_stale_holder_cannot_extend => short_visibility(),
    extend_does_not_revive_a_delivery_parked_by_retry_later => long_visibility(),
    late_retry_later_of_a_stale_delivery_leaves_the_new_holder_alone => long_visibility(),
    dead_lettered_task_is_never_delivered_again_and_is_listed => short_visibility(),
    dead_letters_are_listed_newest_first_up_to_the_limit => short_visibility(),
    tasks_are_delivered_in_enqueue_order => long_visibility(),
    receive_returns_no_more_than_max => short_visibility(),
    empty_receive_waits_about_the_given_time => short_visibility(),
    waiting_receive_wakes_promptly_when_a_task_is_enqueued => short_visibility(),
    concurrent_receivers_never_share_a_task => long_visibility(),
    stats_count_waiting_in_flight_and_dead_tasks => long_visibility(),
    foreign_delivery_id_is_rejected_as_not_found => short_visibility(),
    backend_answers_ping_and_names_itself => short_visibility(),
    inserted_run_reads_back_and_cannot_be_inserted_twice => short_visibility(),
    mark_running_is_idempotent_and_keeps_the_first_start => short_visibility(),
    finish_never_overwrites_a_terminal_state => short_visibility(),
    failed_run_records_error_and_dead_letter_flag => short_visibility(),
    updating_an_unknown_run_is_not_found => short_visibility(),
    accepted_run_is_stored_queued_and_its_task_delivered => short_visibility(),
    accepting_an_existing_run_writes_neither_record_nor_task => long_visibility(),
    a_fault_between_the_two_writes_of_accept_leaves_neither => long_visibility(),
    dead_lettering_a_task_finishes_its_run_as_failed_with_the_reason => long_visibility(),
    finished_runs_and_dead_letters_are_gone_after_the_retention => one_second_retention(),
    unfinished_runs_are_counted_per_user_until_they_finish => short_visibility(),
    a_dead_lettered_run_leaves_its_users_unfinished_count => long_visibility(),
}
