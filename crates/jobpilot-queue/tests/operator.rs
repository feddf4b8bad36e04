//! The operator's side of the contract, against both backends: run timelines, listing from
//! the time-ordered index, retry and cancel, dead letters by page, statistics and events.

#[macro_use]
mod common;

use std::time::Duration;

use common::{long_visibility, run, short_visibility, task};
use jobpilot_queue::{
    AttemptOutcome, AttemptRecord, Broker, LlmCallRecord, QueueError, RunCursor, RunEventKind,
    RunOutcome, RunQuery, RunRecord, RunStatus, RunStore, StatsWindow, StepRecord, unix_now_ms,
};

/// Generous upper bound for waits that should end much sooner.
const PATIENCE: Duration = Duration::from_secs(3);

fn step(name: &str, start: f64, success: bool) -> StepRecord {
    StepRecord {
        name: name.to_owned(),
        start_offset_ms: start,
        duration_ms: 2.5,
        success,
        error_type: (!success).then(|| "invalid_input".to_owned()),
        llm_calls: vec![LlmCallRecord {
            model: "offline".into(),
            input_tokens: Some(10),
            output_tokens: Some(20),
            http_attempts: 1,
            start_offset_ms: start + 0.5,
            duration_ms: 1.0,
            success,
        }],
    }
}

/// Attempt `n` ended with `outcome` at `at_ms`, with one step per name (the last failing
/// unless the outcome is a success).
fn ended(n: u32, outcome: AttemptOutcome, at_ms: u64, steps: &[&str]) -> AttemptRecord {
    let ok = outcome == AttemptOutcome::Succeeded;
    AttemptRecord {
        finished_at_ms: Some(at_ms),
        outcome,
        error_type: (!ok).then(|| "invalid_input".to_owned()),
        error: (!ok).then(|| "invalid_input: no words".to_owned()),
        steps: steps
            .iter()
            .enumerate()
            .map(|(i, name)| step(name, i as f64 * 3.0, ok || i + 1 < steps.len()))
            .collect(),
        ..AttemptRecord::started(n, "worker-a", at_ms - 10, at_ms - 9)
    }
}

fn failed(error: &str) -> RunOutcome {
    RunOutcome::Failed {
        error: error.to_owned(),
        dead_lettered: false,
    }
}

/// A run of `user` created at `at_ms`.
fn run_at(run_id: &str, user: &str, agent: &str, at_ms: u64) -> RunRecord {
    RunRecord::queued(
        run_id,
        agent,
        user,
        "4bf92f3577b34da6a3ce929d0e0e4736",
        at_ms,
    )
}

async fn attempts_build_the_timeline_and_a_lost_worker_shows<B: Broker + RunStore>(backend: &B) {
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    let first = AttemptRecord::started(1, "worker-a", 1_100, 1_101);
    let started = backend.start_attempt("run-1", first).await.unwrap();
    assert_eq!(started.status, RunStatus::Running);
    // Worker a died; the broker handed the task to worker b as attempt 2.
    let second = AttemptRecord::started(2, "worker-b", 2_000, 2_001);
    backend.start_attempt("run-1", second).await.unwrap();
    let done = ended(
        2,
        AttemptOutcome::Succeeded,
        2_050,
        &["parse_resume", "suggest"],
    );
    backend
        .finish_attempt(
            "run-1",
            done.clone(),
            Some(RunOutcome::Succeeded(serde_json::json!({"ok": true}))),
            &task("run-1"),
        )
        .await
        .unwrap();

    let stored = backend.get("run-1").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Succeeded);
    assert_eq!(stored.attempts, 2);
    let timeline = &stored.timeline;
    assert_eq!(timeline.accepted_at_ms, 1_000);
    assert_eq!(timeline.attempts.len(), 2);
    assert_eq!(timeline.attempts[0].outcome, AttemptOutcome::Lost);
    assert_eq!(timeline.attempts[0].worker, "worker-a");
    assert_eq!(timeline.attempts[0].finished_at_ms, Some(2_000));
    assert_eq!(timeline.attempts[1], done);
    assert_eq!(
        timeline.attempts[1].steps[1].llm_calls[0].output_tokens,
        Some(20)
    );
}

async fn a_finished_run_ignores_a_late_attempt<B: Broker + RunStore>(backend: &B) {
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    let ok = ended(1, AttemptOutcome::Succeeded, 1_500, &["a"]);
    let outcome = RunOutcome::Succeeded(serde_json::json!(1));
    backend
        .finish_attempt("run-1", ok, Some(outcome), &task("run-1"))
        .await
        .unwrap();
    // A duplicate delivery reports a failure afterwards: the first outcome stays.
    let late = ended(2, AttemptOutcome::Failed, 1_600, &["a"]);
    backend
        .finish_attempt("run-1", late, Some(failed("x")), &task("run-1"))
        .await
        .unwrap();
    let stored = backend.get("run-1").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Succeeded);
    assert_eq!(stored.timeline.attempts.len(), 1);
    let start = backend
        .start_attempt("run-1", AttemptRecord::started(3, "w", 1_700, 1_701))
        .await
        .unwrap();
    assert_eq!(
        start.status,
        RunStatus::Succeeded,
        "the caller sees it finished"
    );
}

async fn runs_are_listed_newest_first_and_paged_stably<B: Broker + RunStore>(backend: &B) {
    for i in 1..=7u64 {
        let id = format!("a{i}");
        backend
            .accept(&run_at(&id, "alice", "job_match", i * 1_000), &task(&id))
            .await
            .unwrap();
    }
    backend
        .accept(&run_at("b1", "bob", "job_match", 3_500), &task("b1"))
        .await
        .unwrap();
    let ids = |page: &jobpilot_queue::RunPage| -> Vec<String> {
        page.runs.iter().map(|r| r.run_id.clone()).collect()
    };
    let mut query = RunQuery {
        user_id: Some("alice".into()),
        limit: 3,
        ..RunQuery::default()
    };
    let first = backend.list_runs(&query).await.unwrap();
    assert_eq!(ids(&first), ["a7", "a6", "a5"]);
    // A run arriving between two pages is newer than the cursor: it does not shift them.
    backend
        .accept(&run_at("a8", "alice", "job_match", 8_000), &task("a8"))
        .await
        .unwrap();
    query.cursor = Some(RunCursor::decode(first.next_cursor.as_deref().unwrap()).unwrap());
    let second = backend.list_runs(&query).await.unwrap();
    assert_eq!(ids(&second), ["a4", "a3", "a2"]);
    query.cursor = Some(RunCursor::decode(second.next_cursor.as_deref().unwrap()).unwrap());
    let last = backend.list_runs(&query).await.unwrap();
    assert_eq!(ids(&last), ["a1"]);
    assert_eq!(last.next_cursor, None);

    // Everyone's runs (admins), and a time window.
    let everyone = RunQuery {
        limit: 200,
        ..RunQuery::default()
    };
    let all = backend.list_runs(&everyone).await.unwrap();
    assert_eq!(
        ids(&all),
        ["a8", "a7", "a6", "a5", "a4", "b1", "a3", "a2", "a1"]
    );
    let window = RunQuery {
        since_ms: Some(3_000),
        until_ms: Some(5_000),
        limit: 200,
        ..RunQuery::default()
    };
    assert_eq!(
        ids(&backend.list_runs(&window).await.unwrap()),
        ["a4", "b1", "a3"]
    );
}

async fn listing_filters_by_status_agent_duration_and_error<B: Broker + RunStore>(backend: &B) {
    let specs = [
        ("ok-fast", "job_match", 1_000u64),
        ("ok-slow", "resume_review", 2_000),
        ("bad", "job_match", 3_000),
        ("waiting", "job_match", 4_000),
    ];
    for (id, agent, at) in specs {
        backend
            .accept(&run_at(id, "alice", agent, at), &task(id))
            .await
            .unwrap();
    }
    let ok = |v| Some(RunOutcome::Succeeded(serde_json::json!(v)));
    let fast = ended(1, AttemptOutcome::Succeeded, 1_050, &["a"]);
    backend
        .finish_attempt("ok-fast", fast, ok(1), &task("ok-fast"))
        .await
        .unwrap();
    let slow = ended(1, AttemptOutcome::Succeeded, 9_000, &["a"]);
    backend
        .finish_attempt("ok-slow", slow, ok(2), &task("ok-slow"))
        .await
        .unwrap();
    let bad = ended(1, AttemptOutcome::Failed, 3_100, &["parse_job"]);
    backend
        .finish_attempt(
            "bad",
            bad,
            Some(failed("invalid_input: no words")),
            &task("bad"),
        )
        .await
        .unwrap();
    let list = |query: RunQuery| async move {
        let query = RunQuery { limit: 50, ..query };
        let page = backend.list_runs(&query).await.unwrap();
        page.runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>()
    };
    let q = RunQuery::default;
    assert_eq!(
        list(RunQuery {
            status: Some(RunStatus::Succeeded),
            ..q()
        })
        .await,
        ["ok-slow", "ok-fast"]
    );
    assert_eq!(
        list(RunQuery {
            status: Some(RunStatus::Queued),
            ..q()
        })
        .await,
        ["waiting"]
    );
    assert_eq!(
        list(RunQuery {
            agent_type: Some("resume_review".into()),
            ..q()
        })
        .await,
        ["ok-slow"]
    );
    assert_eq!(
        list(RunQuery {
            min_duration_ms: Some(1_000),
            ..q()
        })
        .await,
        ["ok-slow"]
    );
    assert_eq!(
        list(RunQuery {
            error_type: Some("invalid_input".into()),
            ..q()
        })
        .await,
        ["bad"]
    );
    assert!(
        list(RunQuery {
            user_id: Some("bob".into()),
            ..q()
        })
        .await
        .is_empty()
    );
}

async fn a_failed_run_is_retried_in_its_trace_as_the_next_attempt<B: Broker + RunStore>(
    backend: &B,
) {
    let sent = task("run-1");
    backend.accept(&run("run-1"), &sent).await.unwrap();
    let first = backend
        .receive("w", 1, PATIENCE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let attempt = ended(1, AttemptOutcome::Failed, 1_500, &["parse_job"]);
    backend
        .finish_attempt(
            "run-1",
            attempt,
            Some(failed("invalid_input: x")),
            &first.envelope,
        )
        .await
        .unwrap();
    backend.ack(&first).await.unwrap();

    let queued = backend.retry_run("run-1", 5_000).await.unwrap();
    assert_eq!(queued.status, RunStatus::Queued);
    assert_eq!(queued.error, None);
    assert_eq!(queued.timeline.retried_at_ms, Some(5_000));
    assert_eq!(queued.timeline.attempts.len(), 1, "the history is kept");
    let again = backend
        .receive("w", 1, PATIENCE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        again.envelope.trace_context, sent.trace_context,
        "same trace"
    );
    assert_eq!(again.envelope.input, sent.input);
    assert_eq!(again.attempt, 2, "attempts keep counting");
    assert_eq!(again.delivery_count(), 1, "the attempt limit starts afresh");
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 1);

    // Queued, running or succeeded runs cannot be retried; unknown runs are not found.
    let err = backend.retry_run("run-1", 6_000).await.unwrap_err();
    assert!(matches!(err, QueueError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("queued"), "{err}");
    let missing = backend.retry_run("nope", 6_000).await.unwrap_err();
    assert!(matches!(missing, QueueError::NotFound { .. }), "{missing}");
    let ok = ended(2, AttemptOutcome::Succeeded, 6_500, &["parse_job"]);
    backend
        .finish_attempt(
            "run-1",
            ok,
            Some(RunOutcome::Succeeded(serde_json::json!(1))),
            &again.envelope,
        )
        .await
        .unwrap();
    let err = backend.retry_run("run-1", 7_000).await.unwrap_err();
    assert!(err.to_string().contains("succeeded"), "{err}");
}

async fn retrying_a_dead_lettered_run_removes_its_dead_letter<B: Broker + RunStore>(backend: &B) {
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    let delivery = backend
        .receive("w", 1, PATIENCE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let attempt = ended(1, AttemptOutcome::Failed, 1_500, &["explain"]);
    let outcome = RunOutcome::Failed {
        error: "llm_unavailable: gave up".into(),
        dead_lettered: true,
    };
    backend
        .finish_attempt("run-1", attempt, Some(outcome), &delivery.envelope)
        .await
        .unwrap();
    backend
        .dead_letter(&delivery, "llm_unavailable: gave up")
        .await
        .unwrap();
    assert_eq!(backend.stats().await.unwrap().dead_lettered, 1);

    backend.retry_run("run-1", 5_000).await.unwrap();
    assert_eq!(backend.stats().await.unwrap().dead_lettered, 0);
    assert!(
        backend
            .dead_letter_page(None, 10)
            .await
            .unwrap()
            .dead_letters
            .is_empty()
    );
    let run = backend.get("run-1").await.unwrap().unwrap();
    assert!(!run.dead_lettered);
    assert_eq!(run.status, RunStatus::Queued);
}

async fn a_queued_run_is_cancelled_at_once_and_never_starts<B: Broker + RunStore>(backend: &B) {
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    let cancelled = backend.cancel_run("run-1", 2_000).await.unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert_eq!(cancelled.finished_at_ms, Some(2_000));
    assert_eq!(backend.unfinished_runs_of("user-1").await.unwrap(), 0);
    // Idempotent.
    let again = backend.cancel_run("run-1", 3_000).await.unwrap();
    assert_eq!(again.finished_at_ms, Some(2_000));
    // The worker that takes the task sees a finished run and does not start it.
    let delivery = backend
        .receive("w", 1, PATIENCE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let seen = backend
        .start_attempt("run-1", AttemptRecord::started(1, "w", 2_500, 2_501))
        .await
        .unwrap();
    assert_eq!(seen.status, RunStatus::Cancelled);
    assert!(seen.timeline.attempts.is_empty());
    // Its task is kept, so the run can be queued again.
    let skipped = AttemptRecord {
        outcome: AttemptOutcome::Cancelled,
        finished_at_ms: Some(2_502),
        ..AttemptRecord::started(1, "w", 2_500, 2_501)
    };
    backend
        .finish_attempt(
            "run-1",
            skipped,
            Some(RunOutcome::Cancelled),
            &delivery.envelope,
        )
        .await
        .unwrap();
    backend.ack(&delivery).await.unwrap();
    let queued = backend.retry_run("run-1", 4_000).await.unwrap();
    assert_eq!(queued.status, RunStatus::Queued);
}

async fn cancelling_a_running_run_tells_the_workers<B: Broker + RunStore>(backend: &B) {
    let mut told = backend.subscribe_cancellations().await.unwrap();
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    backend
        .start_attempt("run-1", AttemptRecord::started(1, "w", 1_100, 1_101))
        .await
        .unwrap();
    let asked = backend.cancel_run("run-1", 2_000).await.unwrap();
    assert_eq!(
        asked.status,
        RunStatus::Running,
        "it stops at its next step"
    );
    assert_eq!(asked.timeline.cancel_requested_at_ms, Some(2_000));
    let run_id = tokio::time::timeout(PATIENCE, told.recv())
        .await
        .expect("the workers are told")
        .unwrap();
    assert_eq!(run_id, "run-1");
    // Asking again changes nothing and tells nobody twice.
    backend.cancel_run("run-1", 2_500).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), told.recv())
            .await
            .is_err()
    );
    // A finished run cannot be cancelled.
    backend
        .finish_attempt(
            "run-1",
            ended(1, AttemptOutcome::Succeeded, 2_100, &["a"]),
            Some(RunOutcome::Succeeded(serde_json::json!(1))),
            &task("run-1"),
        )
        .await
        .unwrap();
    let err = backend.cancel_run("run-1", 3_000).await.unwrap_err();
    assert!(matches!(err, QueueError::Conflict(_)), "{err}");
}

async fn dead_letters_are_paged_and_deleted_by_task<B: Broker + RunStore>(backend: &B) {
    for i in 0..5 {
        let id = format!("run-{i}");
        backend.accept(&run(&id), &task(&id)).await.unwrap();
        let delivery = backend
            .receive("w", 1, PATIENCE)
            .await
            .unwrap()
            .pop()
            .unwrap();
        backend.dead_letter(&delivery, "gave up").await.unwrap();
        // Distinct times keep the order unambiguous.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let first = backend.dead_letter_page(None, 2).await.unwrap();
    let ids = |p: &jobpilot_queue::DeadLetterPage| -> Vec<String> {
        p.dead_letters.iter().map(|d| d.task_id.clone()).collect()
    };
    assert_eq!(ids(&first), ["run-4", "run-3"]);
    let second = backend
        .dead_letter_page(first.next_cursor.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(ids(&second), ["run-2", "run-1"]);
    let third = backend
        .dead_letter_page(second.next_cursor.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(ids(&third), ["run-0"]);
    assert_eq!(third.next_cursor, None);

    backend.delete_dead_letter("run-2").await.unwrap();
    let err = backend.delete_dead_letter("run-2").await.unwrap_err();
    assert!(matches!(err, QueueError::NotFound { .. }), "{err}");
    assert_eq!(backend.stats().await.unwrap().dead_lettered, 4);
    let err = backend.dead_letter_page(Some("junk"), 2).await.unwrap_err();
    assert!(matches!(err, QueueError::Conflict(_)), "{err}");
}

async fn stats_count_runs_steps_tokens_and_failure_groups<B: Broker + RunStore>(backend: &B) {
    let now = unix_now_ms();
    for (id, ok) in [("ok-1", true), ("ok-2", true), ("bad", false)] {
        let mut record = run_at(id, "alice", "job_match", now - 400);
        record.timeline.enqueued_at_ms = now - 400;
        backend.accept(&record, &task(id)).await.unwrap();
        let outcome = if ok {
            AttemptOutcome::Succeeded
        } else {
            AttemptOutcome::Failed
        };
        let attempt = ended(1, outcome, now - 100, &["parse_resume", "parse_job"]);
        let result = if ok {
            RunOutcome::Succeeded(serde_json::json!(1))
        } else {
            failed("invalid_input: no words")
        };
        backend
            .finish_attempt(id, attempt, Some(result), &task(id))
            .await
            .unwrap();
    }
    let stats = backend.run_stats(StatsWindow::Hour, now).await.unwrap();
    assert_eq!(stats.agents.len(), 1, "{stats:?}");
    let agent = &stats.agents[0];
    assert_eq!(agent.agent_type, "job_match");
    assert_eq!((agent.runs, agent.errors), (3, 1));
    assert!((agent.error_rate - 0.333).abs() < 0.001);
    // 300 ms from acceptance to the end, within a bucket's width.
    assert!(
        (agent.duration_ms.p50 / 300.0 - 1.0).abs() < 0.2,
        "{:?}",
        agent.duration_ms
    );
    // Queue wait: enqueue (now - 400) to the start (now - 109).
    assert!(
        (agent.queue_wait_ms.p50 / 291.0 - 1.0).abs() < 0.2,
        "{:?}",
        agent.queue_wait_ms
    );
    assert_eq!((agent.input_tokens, agent.output_tokens), (60, 120));
    let parse_job = agent.steps.iter().find(|s| s.step == "parse_job").unwrap();
    assert_eq!((parse_job.runs, parse_job.errors), (3, 1));
    assert_eq!(stats.failure_groups.len(), 1);
    let group = &stats.failure_groups[0];
    assert_eq!(
        (group.step.as_str(), group.error_type.as_str(), group.count),
        ("parse_job", "invalid_input", 1)
    );
    assert_eq!(group.example_run_ids, ["bad"]);
    assert_eq!(stats.slowest_runs.len(), 3);
    // Nothing in a window that ended before.
    let earlier = backend
        .run_stats(StatsWindow::FiveMinutes, now - 3_600_000)
        .await
        .unwrap();
    assert!(earlier.agents.is_empty());
}

async fn events_reach_a_subscriber<B: Broker + RunStore>(backend: &B) {
    let mut events = backend.subscribe_events().await.unwrap();
    backend.accept(&run("run-1"), &task("run-1")).await.unwrap();
    let queued = tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("an event")
        .unwrap();
    assert_eq!(
        (queued.kind, queued.run_id.as_str()),
        (RunEventKind::Queued, "run-1")
    );
    let seen_id = queued.run_id;
    backend
        .start_attempt(&seen_id, AttemptRecord::started(1, "w", 1_100, 1_101))
        .await
        .unwrap();
    let ok = ended(1, AttemptOutcome::Succeeded, 1_200, &["a"]);
    backend
        .finish_attempt(
            &seen_id,
            ok,
            Some(RunOutcome::Succeeded(serde_json::json!(1))),
            &task(&seen_id),
        )
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let event = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .expect("an event")
            .unwrap();
        if event.run_id == seen_id {
            kinds.push((event.kind, event.status, event.success));
        }
    }
    assert_eq!(
        kinds,
        [
            (RunEventKind::Started, RunStatus::Running, None),
            (RunEventKind::Finished, RunStatus::Succeeded, Some(true)),
        ]
    );
}

async fn finishing_an_attempt_can_acknowledge_its_task_in_the_same_write<B: Broker + RunStore>(
    backend: &B,
) {
    for id in ["run-1", "run-2"] {
        backend.accept(&run(id), &task(id)).await.unwrap();
    }
    let deliveries = backend.receive("worker-a", 2, PATIENCE).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    for delivery in &deliveries {
        let id = delivery.envelope.run_id.as_str();
        let now = unix_now_ms();
        backend
            .start_attempt(id, AttemptRecord::started(1, "worker-a", now, now))
            .await
            .unwrap();
        let done = ended(1, AttemptOutcome::Succeeded, now + 20, &["parse"]);
        let result = RunOutcome::Succeeded(serde_json::json!({ "run": id }));
        backend
            .finish_attempt_and_ack(id, done, Some(result), &delivery.envelope, delivery)
            .await
            .unwrap();
        let stored = backend.get(id).await.unwrap().unwrap();
        assert_eq!(stored.status, RunStatus::Succeeded);
        assert_eq!(stored.timeline.attempts.len(), 1);
    }
    let stats = backend.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight),
        (0, 0),
        "both tasks acknowledged"
    );

    // A duplicate delivery of a run that already finished is acknowledged all the same,
    // and the first outcome stays.
    backend.accept(&run("run-3"), &task("run-3")).await.unwrap();
    backend
        .finish("run-3", failed("first"), unix_now_ms())
        .await
        .unwrap();
    let delivery = backend
        .receive("worker-a", 1, PATIENCE)
        .await
        .unwrap()
        .pop()
        .expect("run-3's task");
    let late = ended(1, AttemptOutcome::Succeeded, unix_now_ms(), &["parse"]);
    backend
        .finish_attempt_and_ack(
            "run-3",
            late,
            Some(RunOutcome::Succeeded(serde_json::json!(1))),
            &delivery.envelope,
            &delivery,
        )
        .await
        .unwrap();
    assert_eq!(
        backend.get("run-3").await.unwrap().unwrap().status,
        RunStatus::Failed
    );
    let stats = backend.stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.in_flight),
        (0, 0),
        "the duplicate acknowledged"
    );
}

conformance! {
    finishing_an_attempt_can_acknowledge_its_task_in_the_same_write => long_visibility(),
    attempts_build_the_timeline_and_a_lost_worker_shows => short_visibility(),
    a_finished_run_ignores_a_late_attempt => short_visibility(),
    runs_are_listed_newest_first_and_paged_stably => short_visibility(),
    listing_filters_by_status_agent_duration_and_error => short_visibility(),
    a_failed_run_is_retried_in_its_trace_as_the_next_attempt => long_visibility(),
    retrying_a_dead_lettered_run_removes_its_dead_letter => long_visibility(),
    a_queued_run_is_cancelled_at_once_and_never_starts => long_visibility(),
    cancelling_a_running_run_tells_the_workers => long_visibility(),
    dead_letters_are_paged_and_deleted_by_task => long_visibility(),
    stats_count_runs_steps_tokens_and_failure_groups => long_visibility(),
    events_reach_a_subscriber => long_visibility(),
}
