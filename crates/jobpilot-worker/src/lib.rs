//! The jobpilot worker: takes tasks from the broker, continues the trace of the request that
//! enqueued them, runs the agent and stores the result before acknowledging.
//!
//! Layout:
//! - [`Worker`]: the loop ([`Worker::run_until`]) and one task at a time
//!   ([`Worker::execute_one`]) for tests that drive the queue step by step.
//! - [`WorkerConfig`]: concurrency, attempts, backoff and shutdown grace. The heartbeat
//!   follows the visibility timeout of the broker the worker is given.
//!
//! Reliability, in short: a delivery is extended (a heartbeat) while its run is processed, so
//! a run longer than the visibility timeout is not handed to a second worker, and each attempt
//! has a deadline ([`WorkerConfig::run_timeout`]) so a hung run cannot hold a slot for ever; a finished run's
//! outcome is stored before the task is acknowledged, and storing is retried for a while when
//! the store is unreachable, so a run that completed is not run again; at shutdown, runs still
//! going after the grace period are handed back to the broker at once.
//!
//! Each attempt is recorded as it goes (worker, times, steps and LLM calls) and
//! stored with its outcome in one write. A cancellation asked for in any process reaches the
//! worker running the run, which stops it at once and ends it `cancelled`.
//!
//! It does not parse configuration from the environment (the binary does) nor know which
//! backend it runs on.

pub mod admin;
mod attempt;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use attempt::AttemptLog;
use jobpilot_agents::{AgentRunner, AgentType, RunContext, RunControl};
use jobpilot_queue::{
    AttemptOutcome, Broker, Delivery, QueueError, RunEvent, RunEventKind, RunOutcome, RunStatus,
    RunStore, unix_now_ms,
};
use jobpilot_telemetry::metrics::{QueueMetrics, RunOutcome as MetricOutcome};
use jobpilot_telemetry::{Metrics, SpanKind, Tracer, names};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Worker settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Unique name of this worker in the consumer group.
    pub consumer_name: String,
    /// Runs executed at once.
    pub concurrency: usize,
    /// Attempts of one run, crash redeliveries included, before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay after a transient failure; doubles per attempt.
    pub retry_base_delay: Duration,
    /// Longest retry delay.
    pub retry_max_delay: Duration,
    /// How long in-flight runs may take to finish after shutdown is requested.
    pub shutdown_grace: Duration,
    /// How long one receive call waits for a task (it returns at once when one arrives).
    pub receive_wait: Duration,
    /// The deadline of one attempt. An attempt still running after it is abandoned (the
    /// step in progress, e.g. an LLM call, is cancelled), counted as a failed attempt, and
    /// retried like a transient failure until `max_attempts` is reached.
    pub run_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            consumer_name: default_consumer_name(),
            concurrency: 4,
            max_attempts: 5,
            retry_base_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(25),
            receive_wait: Duration::from_secs(1),
            run_timeout: DEFAULT_RUN_TIMEOUT,
        }
    }
}

/// Default deadline of one attempt ([`WorkerConfig::run_timeout`]).
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Heartbeats are never sent more often than this, whatever the visibility timeout.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// How long the runs interrupted by shutdown get to hand their tasks back.
const HANDBACK_BUDGET: Duration = Duration::from_secs(2);
/// First pause before storing an outcome again; doubles up to [`MAX_STORE_PAUSE`].
const FIRST_STORE_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between two tries at storing an outcome.
const MAX_STORE_PAUSE: Duration = Duration::from_secs(2);

/// `{host}-{pid}-{random}`: unique across machines, processes and restarts.
pub fn default_consumer_name() -> String {
    let host = jobpilot_telemetry::telemetry::host_name().unwrap_or_else(|| "worker".to_owned());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{host}-{}-{nonce:08x}", std::process::id())
}

/// What happened to one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Processed {
    /// The run succeeded; result stored and acknowledged.
    Succeeded,
    /// The run failed for good (a permanent error); stored and acknowledged.
    Failed(String),
    /// A transient failure; the task comes back after a delay.
    RetryScheduled(String),
    /// Too many attempts; moved to the dead-letter list.
    DeadLettered(String),
    /// The run had already finished (a duplicate delivery); acknowledged without running.
    Duplicate,
    /// The store was unreachable; the task is left to be redelivered.
    LeftForRedelivery(String),
    /// Shutdown interrupted the run after the grace period; the task was given back so
    /// another worker takes it at once (as the next attempt).
    HandedBack,
    /// The run was cancelled on request: stopped at a step boundary, or never started
    /// because it was cancelled while it waited; stored and acknowledged.
    Cancelled,
}

/// Executes agent runs from a broker.
#[derive(Clone)]
pub struct Worker {
    broker: Arc<dyn Broker>,
    store: Arc<dyn RunStore>,
    runner: Arc<AgentRunner>,
    tracer: Tracer,
    config: Arc<WorkerConfig>,
    metrics: Metrics,
    queue_metrics: QueueMetrics,
    /// The cancellation tokens of the runs in progress, by run id.
    in_progress: Arc<Mutex<HashMap<String, CancellationToken>>>,
    /// Whether this worker listens to cancellation requests yet.
    watching: Arc<AtomicBool>,
}

/// The agent type as a bounded metric attribute: the known names, else `unknown`.
fn agent_label(agent_type: &str) -> &'static str {
    agent_type
        .parse::<AgentType>()
        .map_or("unknown", AgentType::as_str)
}

/// How an attempt that ran the agent ended, for `jobpilot.run.duration`.
fn attempt_outcome(processed: &Processed) -> Option<MetricOutcome> {
    match processed {
        Processed::Succeeded => Some(MetricOutcome::Succeeded),
        Processed::Failed(_) => Some(MetricOutcome::Failed),
        Processed::RetryScheduled(_) => Some(MetricOutcome::Retried),
        Processed::DeadLettered(_) => Some(MetricOutcome::DeadLettered),
        Processed::Cancelled => Some(MetricOutcome::Cancelled),
        Processed::Duplicate | Processed::LeftForRedelivery(_) | Processed::HandedBack => None,
    }
}

/// `error.type` of a delivery that did not succeed, for `messaging.process.duration`.
fn delivery_error(processed: &Processed) -> Option<&'static str> {
    match processed {
        Processed::Succeeded | Processed::Duplicate => None,
        Processed::Failed(_) => Some("run_failed"),
        Processed::RetryScheduled(_) => Some("retry_scheduled"),
        Processed::DeadLettered(_) => Some("dead_lettered"),
        Processed::LeftForRedelivery(_) => Some("store_unavailable"),
        Processed::HandedBack => Some("worker_shutdown"),
        Processed::Cancelled => Some("run_cancelled"),
    }
}

impl Worker {
    /// A worker over `broker` and `store`, running agents with `runner`, creating consumer
    /// spans with `tracer`.
    pub fn new(
        broker: Arc<dyn Broker>,
        store: Arc<dyn RunStore>,
        runner: Arc<AgentRunner>,
        tracer: Tracer,
        config: WorkerConfig,
    ) -> Self {
        Worker {
            broker,
            store,
            runner,
            tracer,
            config: Arc::new(config),
            metrics: Metrics::noop(),
            queue_metrics: QueueMetrics::default(),
            in_progress: Arc::default(),
            watching: Arc::default(),
        }
    }

    /// Starts listening, once, to cancellation requests from any process, so that a run in
    /// progress here stops at its next step boundary when an operator cancels it. Without
    /// it (the broker unreachable at the time) a cancelled run still finishes, and it is
    /// tried again at the next call.
    async fn watch_cancellations(&self) {
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        match self.broker.subscribe_cancellations().await {
            Ok(mut requests) => {
                let in_progress = Arc::clone(&self.in_progress);
                tokio::spawn(async move {
                    loop {
                        match requests.recv().await {
                            Ok(run_id) => {
                                let runs =
                                    in_progress.lock().unwrap_or_else(PoisonError::into_inner);
                                if let Some(token) = runs.get(&run_id) {
                                    tracing::info!(run_id = %run_id, "cancellation requested; stopping the run at its next step boundary");
                                    token.cancel();
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                                tracing::warn!(missed, "missed cancellation requests");
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        }
                    }
                });
            }
            Err(e) => {
                self.watching.store(false, Ordering::SeqCst);
                tracing::warn!(error = %e, "cannot listen to cancellation requests yet");
            }
        }
    }

    /// Records deliveries, attempts and runs on `metrics` (default: nothing recorded).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.queue_metrics = metrics.queue(self.broker.system(), self.broker.queue_name());
        self.metrics = metrics;
        self
    }

    /// How often a delivery in progress is extended: a third of the broker's visibility
    /// timeout, so that one missed heartbeat (the broker briefly unreachable) still leaves
    /// time for the next.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.broker.visibility_timeout() / 3).max(MIN_HEARTBEAT)
    }

    /// Takes and processes tasks until `shutdown` is cancelled; then stops taking tasks and
    /// gives the runs in flight up to the grace period to finish.
    ///
    /// Runs still going after the grace period are interrupted and their tasks handed back
    /// with [`Broker::retry_later`] and no delay, so another worker (or this one after a
    /// restart) takes them at once rather than after the visibility timeout. The interrupted
    /// delivery counts as an attempt: a run cut short by `max_attempts` shutdowns in a row is
    /// dead-lettered like any run that never completes. If even the hand-back does not finish
    /// within a short budget (the broker is down), the task returns after the visibility
    /// timeout instead.
    pub async fn run_until(&self, shutdown: CancellationToken) {
        self.watch_cancellations().await;
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut running = JoinSet::new();
        // Cancelled when the grace period is over: tells the runs still going to stop and
        // hand their task back.
        let abandon = CancellationToken::new();
        let mut backoff = Duration::from_millis(100);
        tracing::info!(
            consumer = %self.config.consumer_name,
            concurrency = self.config.concurrency,
            queue = self.broker.queue_name(),
            heartbeat_ms = self.heartbeat_interval().as_millis() as u64,
            "worker started"
        );
        loop {
            while running.try_join_next().is_some() {}
            let free = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = slots.clone().acquire_many_owned(1) => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let available = slots.available_permits() + 1;
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.broker.receive(
                    &self.config.consumer_name,
                    available,
                    self.config.receive_wait,
                ) => r,
            };
            match received {
                Ok(deliveries) => {
                    self.queue_metrics.consumed(deliveries.len() as u64);
                    backoff = Duration::from_millis(100);
                    let mut first = Some(free);
                    for delivery in deliveries {
                        let permit = match first.take() {
                            Some(p) => p,
                            None => match slots.clone().try_acquire_owned() {
                                Ok(p) => p,
                                // Cannot happen: we asked for no more than the free slots.
                                Err(_) => break,
                            },
                        };
                        let worker = self.clone();
                        let abandon = abandon.clone();
                        running.spawn(async move {
                            worker.process_until(delivery, &abandon).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    drop(free);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot receive tasks");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let in_flight = running.len();
        tracing::info!(in_flight, "worker stopping; draining runs in flight");
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let unfinished = running.len();
            tracing::warn!(
                unfinished,
                "grace period over; handing unfinished runs back to the queue"
            );
            abandon.cancel();
            let handed_back = tokio::time::timeout(HANDBACK_BUDGET, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            if handed_back.is_err() {
                tracing::warn!(
                    stuck = running.len(),
                    "some runs could not be handed back in time; they return after the visibility timeout"
                );
                running.abort_all();
                while running.join_next().await.is_some() {}
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "cannot write the last run statistics");
        }
        tracing::info!("worker stopped");
    }

    /// Waits up to `wait` for one task and processes it; `None` when none came.
    ///
    /// # Errors
    /// When the broker cannot be reached.
    pub async fn execute_one(&self, wait: Duration) -> Result<Option<Processed>, QueueError> {
        self.watch_cancellations().await;
        let mut deliveries = self
            .broker
            .receive(&self.config.consumer_name, 1, wait)
            .await?;
        self.queue_metrics.consumed(deliveries.len() as u64);
        match deliveries.pop() {
            Some(d) => Ok(Some(self.process(d).await)),
            None => Ok(None),
        }
    }

    fn retry_delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        (self.config.retry_base_delay * factor).min(self.config.retry_max_delay)
    }

    /// Processes one delivery in its own CONSUMER span, child of (and linked to) the producer
    /// span whose context the task carries. The delivery is extended every
    /// [`Worker::heartbeat_interval`] until the run is over.
    pub async fn process(&self, delivery: Delivery) -> Processed {
        self.process_until(delivery, &CancellationToken::new())
            .await
    }

    /// [`Worker::process`], interrupted when `abandon` is cancelled: the run stops where it
    /// is, its span ends as failed, and the task is handed back to the broker at once.
    async fn process_until(&self, delivery: Delivery, abandon: &CancellationToken) -> Processed {
        let delivered_at_ms = unix_now_ms();
        let started = Instant::now();
        let task = &delivery.envelope;
        if delivery.attempt == 1 {
            // Later attempts waited out a retry delay on purpose: only the first measures the
            // queue.
            let waited_ms = unix_now_ms().saturating_sub(task.enqueued_at_ms);
            self.queue_metrics.waited(Duration::from_millis(waited_ms));
        }
        let producer = self.tracer.propagators().extract_map(&task.trace_context);
        let queue = self.broker.queue_name().to_owned();
        // The run's ids, shared by every span of the attempt rather than copied into each.
        let ids = RunIds {
            run_id: task.run_id.as_str().into(),
            user_id: task.user_id.as_str().into(),
        };
        let span = self.tracer.start_linked(
            &producer,
            format!("process {queue}"),
            SpanKind::Consumer,
            vec![
                (names::MESSAGING_SYSTEM, self.broker.system().into()),
                (names::MESSAGING_OPERATION_TYPE, "process".into()),
                (names::MESSAGING_OPERATION_NAME, "process".into()),
                (names::MESSAGING_DESTINATION_NAME, queue.into()),
                (names::MESSAGING_MESSAGE_ID, task.task_id.clone().into()),
                (
                    names::MESSAGING_CONSUMER_GROUP_NAME,
                    self.broker.queue_name().to_owned().into(),
                ),
                (names::MESSAGING_DELIVERY_ATTEMPT, delivery.attempt.into()),
                (names::RUN_ID, ids.run_id.clone().into()),
                (names::USER_ID, ids.user_id.clone().into()),
                (names::AGENT_TYPE, task.agent_type.clone().into()),
            ],
            std::slice::from_ref(&producer),
        );
        let cx = span.cx();
        let work = cx.instrument(self.process_in_span(&delivery, &span, &ids, delivered_at_ms));
        let outcome = tokio::select! {
            // The run first: once it is done, neither a heartbeat nor a late shutdown
            // request can change its outcome.
            biased;
            outcome = work => outcome,
            never = self.keep_alive(&delivery) => match never {},
            () = abandon.cancelled() => self.hand_back(&delivery, &span).await,
        };
        match &outcome {
            Processed::Succeeded | Processed::Duplicate => span.finish(true),
            Processed::Cancelled => span.finish(false),
            Processed::Failed(msg) | Processed::DeadLettered(msg) => {
                jobpilot_telemetry::sentry::report_error(
                    &format!("run {} failed: {msg}", task.run_id),
                    Some(&span.trace_id()),
                    &[("run_id", &task.run_id), ("agent_type", &task.agent_type)],
                );
                span.finish(false);
            }
            Processed::RetryScheduled(_)
            | Processed::LeftForRedelivery(_)
            | Processed::HandedBack => span.finish(false),
        }
        self.queue_metrics
            .processed(started.elapsed(), delivery_error(&outcome));
        outcome
    }

    /// Extends `delivery` every heartbeat interval, for as long as it is polled. Never
    /// returns: when the lease is lost (another worker took the task over after a long
    /// outage) it stops extending and just waits; the run carries on, because its outcome is
    /// stored idempotently and whichever holder finishes first wins.
    async fn keep_alive(&self, delivery: &Delivery) -> std::convert::Infallible {
        let every = self.heartbeat_interval();
        loop {
            tokio::time::sleep(every).await;
            match self
                .broker
                .extend(delivery, &self.config.consumer_name)
                .await
            {
                Ok(()) => {}
                Err(e @ QueueError::NotFound { .. }) => {
                    tracing::warn!(
                        run_id = %delivery.envelope.run_id,
                        attempt = delivery.attempt,
                        error = %e,
                        "lost the lease on a run in progress; another worker may run it too"
                    );
                    return std::future::pending().await;
                }
                Err(e) => {
                    // The broker may be back by the next heartbeat, well within the timeout.
                    tracing::warn!(run_id = %delivery.envelope.run_id, error = %e, "cannot extend the delivery");
                }
            }
        }
    }

    /// Gives an interrupted delivery back for immediate redelivery.
    async fn hand_back(
        &self,
        delivery: &Delivery,
        span: &jobpilot_telemetry::SpanGuard,
    ) -> Processed {
        let run_id = &delivery.envelope.run_id;
        span.fail(
            "worker_shutdown",
            "the worker shut down before the run finished; the task was handed back",
        );
        match self.broker.retry_later(delivery, Duration::ZERO).await {
            Ok(()) => {
                tracing::info!(run_id = %run_id, attempt = delivery.attempt, "run handed back at shutdown");
            }
            Err(e) => {
                tracing::warn!(run_id = %run_id, error = %e, "cannot hand the run back; it returns after the visibility timeout");
            }
        }
        Processed::HandedBack
    }

    async fn process_in_span(
        &self,
        delivery: &Delivery,
        span: &jobpilot_telemetry::SpanGuard,
        ids: &RunIds,
        delivered_at_ms: u64,
    ) -> Processed {
        let task = &delivery.envelope;
        let run_id = &task.run_id;
        let mut log = AttemptLog::start(delivery, &self.config.consumer_name, delivered_at_ms);

        // The limit counts this task's deliveries: a run queued again by an operator gets a
        // fresh budget while its attempts keep counting up.
        if delivery.delivery_count() > self.config.max_attempts {
            let reason = format!(
                "gave up after {} attempts (the run never completed)",
                self.config.max_attempts
            );
            span.fail("dead_lettered", &reason);
            // This delivery runs nothing: it only finds that the previous one never ended,
            // which is what the timeline records.
            let previous = attempt::lost(
                delivery.attempt.saturating_sub(1),
                "the worker stopped answering; no attempt is left",
            );
            let processed = self.dead_letter(delivery, reason, previous).await;
            if matches!(processed, Processed::DeadLettered(_)) {
                self.metrics.record_run_finished(
                    agent_label(&task.agent_type),
                    MetricOutcome::DeadLettered,
                );
            }
            return processed;
        }

        // Registered before the run is marked started, so a cancellation asked for in
        // between is not missed.
        let cancel = CancellationToken::new();
        let _registered = Registered::new(&self.in_progress, run_id, cancel.clone());
        let run = match self.store.start_attempt(run_id, log.record().clone()).await {
            Ok(run) => run,
            Err(e) => {
                span.fail("store_unavailable", &e.to_string());
                return Processed::LeftForRedelivery(e.to_string());
            }
        };
        if run.status == RunStatus::Cancelled {
            // Cancelled while it waited: it never starts. The task is kept with the run, so
            // an operator can still queue it again.
            tracing::info!(run_id = %run_id, "run was cancelled before it started; acknowledging");
            span.fail("cancelled", "the run was cancelled before it started");
            log.end(AttemptOutcome::Cancelled, Some("cancelled"), None);
            if let Err(e) = self
                .store_outcome(
                    run_id,
                    log.into_record(),
                    Some(RunOutcome::Cancelled),
                    task,
                    Some(delivery),
                )
                .await
            {
                return Processed::LeftForRedelivery(e.to_string());
            }
            return Processed::Cancelled;
        }
        if run.status.is_terminal() {
            tracing::info!(run_id = %run_id, "run already finished; acknowledging duplicate");
            self.ack(delivery).await;
            return Processed::Duplicate;
        }
        if run.timeline.cancel_requested_at_ms.is_some() {
            cancel.cancel();
        }

        let agent_type = match task.agent_type.parse::<AgentType>() {
            Ok(a) => a,
            Err(e) => {
                let msg = e.to_string();
                span.fail("unknown_agent_type", &msg);
                let public = format!(
                    "invalid_input: {}",
                    msg.chars().take(160).collect::<String>()
                );
                log.end(
                    AttemptOutcome::Failed,
                    Some("unknown_agent_type"),
                    Some(&public),
                );
                let processed = self.finish_failed(delivery, public, log).await;
                if matches!(processed, Processed::Failed(_)) {
                    self.metrics
                        .record_run_finished("unknown", MetricOutcome::Failed);
                }
                return processed;
            }
        };
        let ctx = RunContext {
            run_id: ids.run_id.clone(),
            user_id: ids.user_id.clone(),
            agent_type,
        };
        let mut control = RunControl::new(cancel);
        // Step events are only built for a live view that is open.
        let mut step_events = None;
        if self.broker.wants_events().await {
            let (announce, events) = self.step_announcer(&run, delivery.attempt);
            control = control.on_step_finished(announce);
            step_events = Some(events);
        }
        let run_started = Instant::now();
        // The deadline bounds the whole attempt, so a hung step cannot hold a worker slot
        // (and, through the heartbeat, the task) for ever.
        let cx = span.cx();
        let running = self.runner.run_controlled(&cx, &ctx, &task.input, &control);
        let ran = tokio::time::timeout(self.config.run_timeout, running).await;
        let run_elapsed = run_started.elapsed();
        log.steps_from(&control);
        if let Some(events) = step_events {
            // The steps are announced before the run's end is.
            events.flush().await;
        }
        let processed = self.settle(delivery, span, ran, log).await;
        if let Some(outcome) = attempt_outcome(&processed) {
            self.metrics
                .record_run_attempt(agent_type.as_str(), outcome, run_elapsed);
        }
        processed
    }

    /// What announces each finished step of `run` as an event, and the [`StepEvents`] that
    /// publish them.
    fn step_announcer(
        &self,
        run: &jobpilot_queue::RunRecord,
        attempt: u32,
    ) -> (
        impl Fn(&jobpilot_agents::StepReport) + Send + Sync + 'static,
        StepEvents,
    ) {
        let events = StepEvents::start(Arc::clone(&self.broker));
        let queue = events.queue.clone();
        let mut template = RunEvent::of(RunEventKind::StepFinished, run, 0);
        template.attempt = attempt;
        let announce = move |step: &jobpilot_agents::StepReport| {
            let mut event = template.clone();
            event.step = Some(step.name.to_owned());
            event.success = Some(step.success);
            event.at_ms = unix_now_ms();
            let _ = queue.send(StepMessage::Event(event));
        };
        (announce, events)
    }

    /// Stores and acknowledges the outcome of an attempt that ran (or ran out of time), or
    /// schedules its retry.
    async fn settle(
        &self,
        delivery: &Delivery,
        span: &jobpilot_telemetry::SpanGuard,
        ran: Result<
            Result<serde_json::Value, jobpilot_agents::AgentError>,
            tokio::time::error::Elapsed,
        >,
        mut log: AttemptLog,
    ) -> Processed {
        let run_id = &delivery.envelope.run_id;
        let attempt = delivery.attempt;
        let Ok(finished) = ran else {
            let msg = format!(
                "the attempt did not finish within the run deadline of {} s",
                self.config.run_timeout.as_secs_f64()
            );
            span.fail("run_timeout", &msg);
            // Written by jobpilot with nothing internal in it: fit for the run's user as is.
            let public = msg.clone();
            log.interrupted("run_timeout");
            return self
                .retry_or_dead_letter(delivery, msg, public, "run_timeout", log)
                .await;
        };
        match finished {
            Ok(result) => {
                log.end(AttemptOutcome::Succeeded, None, None);
                let outcome = Some(RunOutcome::Succeeded(result));
                match self
                    .store_outcome(
                        run_id,
                        log.into_record(),
                        outcome,
                        &delivery.envelope,
                        Some(delivery),
                    )
                    .await
                {
                    Ok(()) => {
                        tracing::info!(run_id = %run_id, attempt, "run succeeded");
                        Processed::Succeeded
                    }
                    Err(e) => {
                        span.fail("store_unavailable", &e.to_string());
                        Processed::LeftForRedelivery(e.to_string())
                    }
                }
            }
            Err(e) if e.is_cancelled() => {
                let msg = e.message();
                span.fail("cancelled", &msg);
                tracing::info!(run_id = %run_id, "run cancelled");
                log.end(
                    AttemptOutcome::Cancelled,
                    Some("cancelled"),
                    Some(&e.public_message()),
                );
                match self
                    .store_outcome(
                        run_id,
                        log.into_record(),
                        Some(RunOutcome::Cancelled),
                        &delivery.envelope,
                        Some(delivery),
                    )
                    .await
                {
                    Ok(()) => Processed::Cancelled,
                    Err(e) => Processed::LeftForRedelivery(e.to_string()),
                }
            }
            // The span and the log get the internal message; the run record, which its user
            // reads, only the public one.
            Err(e) if e.is_permanent() => {
                let msg = e.message();
                span.fail(&e.error_type(), &msg);
                tracing::info!(run_id = %run_id, error = %msg, "run failed");
                let public = e.public_message();
                log.end(AttemptOutcome::Failed, Some(&e.error_type()), Some(&public));
                self.finish_failed(delivery, public, log).await
            }
            Err(e) => {
                let msg = e.message();
                span.fail(&e.error_type(), &msg);
                self.retry_or_dead_letter(delivery, msg, e.public_message(), &e.error_type(), log)
                    .await
            }
        }
    }

    /// After a transient failure: retried after a backoff, or dead-lettered once the
    /// attempts are used up.
    /// `msg` is the internal message (logs, the retry's result); `public` the one the run
    /// record shows its user when it is dead-lettered.
    async fn retry_or_dead_letter(
        &self,
        delivery: &Delivery,
        msg: String,
        public: String,
        error_type: &str,
        mut log: AttemptLog,
    ) -> Processed {
        let run_id = &delivery.envelope.run_id;
        let attempt = delivery.attempt;
        if delivery.delivery_count() >= self.config.max_attempts {
            tracing::warn!(run_id = %run_id, attempt, error = %msg, "run gave up");
            let reason = format!("{public} (after {attempt} attempts)");
            log.end(AttemptOutcome::Failed, Some(error_type), Some(&reason));
            return self.dead_letter(delivery, reason, log.into_record()).await;
        }
        let delay = self.retry_delay(delivery.delivery_count());
        tracing::warn!(run_id = %run_id, attempt, error = %msg, retry_in_ms = delay.as_millis() as u64, "run will be retried");
        log.end(AttemptOutcome::Retrying, Some(error_type), Some(&public));
        // The attempt goes into the run's timeline; the run itself stays unfinished.
        if let Err(e) = self
            .store_outcome(run_id, log.into_record(), None, &delivery.envelope, None)
            .await
        {
            tracing::warn!(run_id = %run_id, error = %e, "cannot record the failed attempt");
        }
        if let Err(e) = self.broker.retry_later(delivery, delay).await {
            tracing::warn!(run_id = %run_id, error = %e, "cannot schedule the retry; the visibility timeout will");
        }
        Processed::RetryScheduled(msg)
    }

    async fn finish_failed(
        &self,
        delivery: &Delivery,
        error: String,
        log: AttemptLog,
    ) -> Processed {
        let outcome = RunOutcome::Failed {
            error: error.clone(),
            dead_lettered: false,
        };
        match self
            .store_outcome(
                &delivery.envelope.run_id,
                log.into_record(),
                Some(outcome),
                &delivery.envelope,
                Some(delivery),
            )
            .await
        {
            Ok(()) => Processed::Failed(error),
            Err(e) => Processed::LeftForRedelivery(e.to_string()),
        }
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: String,
        attempt: jobpilot_queue::AttemptRecord,
    ) -> Processed {
        let run_id = &delivery.envelope.run_id;
        let outcome = RunOutcome::Failed {
            error: reason.clone(),
            dead_lettered: true,
        };
        if let Err(e) = self
            .store_outcome(run_id, attempt, Some(outcome), &delivery.envelope, None)
            .await
        {
            return Processed::LeftForRedelivery(e.to_string());
        }
        if let Err(e) = self.broker.dead_letter(delivery, &reason).await {
            tracing::warn!(run_id = %run_id, error = %e, "cannot move the task to the dead-letter list");
        }
        tracing::warn!(run_id = %run_id, reason = %reason, "run dead-lettered");
        Processed::DeadLettered(reason)
    }

    /// Stores how an attempt ended (and with `outcome`, the run's end), with `ack` also
    /// acknowledging the task in the same write, trying again while the store is
    /// unreachable, for up to the visibility timeout. The work is done by then: giving up at
    /// the first failure would leave the task to be redelivered and the whole run to be
    /// executed a second time. (The heartbeat keeps the delivery meanwhile, as soon as the
    /// broker answers again.)
    async fn store_outcome(
        &self,
        run_id: &str,
        record: jobpilot_queue::AttemptRecord,
        outcome: Option<RunOutcome>,
        task: &jobpilot_queue::TaskEnvelope,
        ack: Option<&Delivery>,
    ) -> Result<(), QueueError> {
        let give_up_at = tokio::time::Instant::now() + self.broker.visibility_timeout();
        let mut pause = FIRST_STORE_PAUSE;
        let mut failures = 0_u32;
        loop {
            let stored = match ack {
                Some(delivery) => {
                    self.store
                        .finish_attempt_and_ack(
                            run_id,
                            record.clone(),
                            outcome.clone(),
                            task,
                            delivery,
                        )
                        .await
                }
                None => {
                    self.store
                        .finish_attempt(run_id, record.clone(), outcome.clone(), task)
                        .await
                }
            };
            match stored {
                Err(e)
                    if e.is_unavailable() && tokio::time::Instant::now() + pause < give_up_at =>
                {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(run_id = %run_id, error = %e, "cannot store the outcome of a finished run yet; trying again");
                    } else {
                        tracing::debug!(run_id = %run_id, failures, error = %e, "still cannot store the outcome");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_STORE_PAUSE);
                }
                Err(e) => return Err(e),
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(run_id = %run_id, failures, "stored the outcome after the store came back");
                    }
                    return Ok(());
                }
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = self.broker.ack(delivery).await {
            // The result is stored; a redelivery will see a finished run and only acknowledge.
            tracing::warn!(run_id = %delivery.envelope.run_id, error = %e, "cannot acknowledge");
        }
    }
}

/// A run's id and user, made once per attempt and referenced by all its spans.
struct RunIds {
    run_id: Arc<str>,
    user_id: Arc<str>,
}

/// Publishes the step events of one attempt in the order the steps finished, on a task of
/// its own, so a run never waits for them.
struct StepEvents {
    queue: mpsc::UnboundedSender<StepMessage>,
}

enum StepMessage {
    Event(RunEvent),
    /// Answered once every event queued before it is published.
    Flush(oneshot::Sender<()>),
}

/// How long the end of a run waits for its step events to go out (they are best effort).
const STEP_EVENTS_FLUSH: Duration = Duration::from_secs(1);

impl StepEvents {
    fn start(broker: Arc<dyn Broker>) -> Self {
        let (queue, mut messages) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Ends when the last sender (this value's, the announcer's) is dropped.
            while let Some(message) = messages.recv().await {
                match message {
                    StepMessage::Event(event) => broker.publish_event(&event).await,
                    StepMessage::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        StepEvents { queue }
    }

    /// Waits until the events announced so far are published (at most
    /// [`STEP_EVENTS_FLUSH`]), so that the run's end is announced after its steps.
    async fn flush(self) {
        let (done, published) = oneshot::channel();
        if self.queue.send(StepMessage::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(STEP_EVENTS_FLUSH, published).await;
        }
    }
}

/// A run in progress in [`Worker::in_progress`], removed again when dropped (however the
/// attempt ends).
struct Registered<'a> {
    runs: &'a Mutex<HashMap<String, CancellationToken>>,
    run_id: String,
}

impl<'a> Registered<'a> {
    fn new(
        runs: &'a Mutex<HashMap<String, CancellationToken>>,
        run_id: &str,
        token: CancellationToken,
    ) -> Self {
        runs.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(run_id.to_owned(), token);
        Registered {
            runs,
            run_id: run_id.to_owned(),
        }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.run_id);
    }
}
