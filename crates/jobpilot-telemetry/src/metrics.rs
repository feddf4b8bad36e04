//! Metrics: the instruments jobpilot records ([`Metrics`] and its pre-bound handles
//! [`QueueMetrics`], [`LlmMetrics`], [`QueueGauges`]) and how they leave the process
//! ([`MetricsExport`]): pushed over OTLP or to the console every interval, and served as
//! Prometheus text ([`PrometheusText`]).
//!
//! The rest of the code calls typed methods (`record_http_request`, `record_step`, ...) and
//! never names OpenTelemetry. Attribute values are `&'static str` wherever the set of values is
//! closed (methods, routes, agent types, steps, outcomes), so recording allocates nothing on the
//! hot path; values that are fixed for a process (queue name, model) are bound once in a
//! handle. No instrument takes a user or run id: cardinality stays bounded. The one instrument
//! recorded on every request, `http.server.request.duration`, goes further: each of its series
//! is resolved once and later requests record with no attribute hashing (`http_series`).
//! The instruments of a run (steps, run, queue, LLM) are bound the same way, once per
//! attribute set: a plain `record` sorts and hashes its attributes and looks the series up
//! once per reader, about 2,000 instructions each, and a run records ten of them. A series is
//! bound when it is first recorded, never before: the SDK exports every bound series, so one
//! bound ahead of time would show as a zero the process never measured.
//!
//! Why a Tokio task pushes, not the SDK's `PeriodicReader`: the periodic reader exports from a
//! thread of its own with a blocking wait, which the asynchronous HTTP client of the OTLP
//! exporter cannot serve (it needs a Tokio reactor). Driving the SDK's `ManualReader` from a
//! task on the runtime the span pipeline already uses works for gRPC and HTTP alike, counts
//! failed pushes, and makes the final push at shutdown an ordinary `await` within the budget.
//!
//! Exemplars: the 0.33 SDK never fills the exemplars of a data point (the field exists, no
//! reservoir samples into it), so no histogram carries a trace id yet; see the README.

mod http_series;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, Counter, Histogram, Meter, MeterProvider as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use tokio::sync::oneshot;

use crate::names;
use crate::pipeline::PipelineHandle;
use http_series::HttpSeries;

/// Bucket boundaries (seconds) the HTTP and messaging conventions advise for durations.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Bucket boundaries (seconds) for runs and queue waits, which last longer than a request:
/// the advised duration buckets, extended to ten minutes.
pub const LONG_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Bucket boundaries (seconds) the GenAI conventions advise for `gen_ai.client.operation.duration`.
pub const GEN_AI_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Bucket boundaries the GenAI conventions advise for `gen_ai.client.token.usage`.
pub const GEN_AI_TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// The value of `http.route` for a request no route matched: every unknown path counts under
/// this one value, so scanners cannot grow the number of series.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The values of `http.request.method` on metrics: the standard methods, then `_OTHER`.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "_OTHER",
];

/// `method` as the HTTP conventions want it on metrics: one of the standard methods, or
/// `_OTHER`.
pub fn known_method(method: &str) -> &'static str {
    METHODS[method_index(method)]
}

fn method_index(method: &str) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

/// Requests in progress by method and scheme (`http`, `https`). Plain atomics: counting a
/// request in and out is two atomic additions, and the observable instrument reads them only
/// when metrics are collected (an SDK up-down counter would hash the attributes twice per
/// request).
struct ActiveRequests {
    counts: [[AtomicI64; 2]; METHODS.len()],
    seen: [[AtomicBool; 2]; METHODS.len()],
}

impl ActiveRequests {
    fn slot(method: &str, scheme: &str) -> (usize, usize) {
        (method_index(method), usize::from(scheme == "https"))
    }

    fn add(&self, (m, s): (usize, usize), delta: i64) {
        self.counts[m][s].fetch_add(delta, Ordering::Relaxed);
        if !self.seen[m][s].load(Ordering::Relaxed) {
            self.seen[m][s].store(true, Ordering::Relaxed);
        }
    }
}

/// How one attempt of a run ended, as recorded on `jobpilot.run.duration` and, for the final
/// ones, on `jobpilot.runs.finished`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunOutcome {
    /// The run succeeded (final).
    Succeeded,
    /// The run failed for good (final).
    Failed,
    /// A transient failure; the run will be tried again (not final; counts a retry).
    Retried,
    /// The run ran out of attempts and went to the dead-letter list (final).
    DeadLettered,
    /// The run was stopped before it finished and will not be tried again (final).
    Cancelled,
}

impl RunOutcome {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Retried => "retried",
            RunOutcome::DeadLettered => "dead_lettered",
            RunOutcome::Cancelled => "cancelled",
        }
    }

    /// Whether the run is over.
    pub fn is_final(self) -> bool {
        !matches!(self, RunOutcome::Retried)
    }
}

/// One finished HTTP request, for [`Metrics::record_http_request`].
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    /// From [`known_method`].
    pub method: &'static str,
    /// The route template (`/api/v1/runs/{run_id}`), or [`UNMATCHED_ROUTE`].
    pub route: &'static str,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The response status.
    pub status: u16,
    /// `error.type` for a failed request (the status code of a 5xx), if any.
    pub error_type: Option<&'a str>,
}

struct Instruments {
    meter_queue: Meter,
    http_duration: HttpSeries,
    http_active: Arc<ActiveRequests>,
    messaging_process: Histogram<f64>,
    messaging_sent: Counter<u64>,
    messaging_consumed: Counter<u64>,
    queue_wait: Histogram<f64>,
    run_duration: Histogram<f64>,
    step_duration: Histogram<f64>,
    runs_finished: Counter<u64>,
    retries: Counter<u64>,
    llm_duration: Histogram<f64>,
    llm_tokens: Histogram<u64>,
    /// `step_duration` bound per agent type, step and success.
    bound_steps: BoundTable<(&'static str, &'static str, bool), BoundHistogram<f64>>,
    /// `run_duration` and `runs_finished` bound per agent type and outcome.
    bound_runs: BoundTable<(&'static str, RunOutcome), RunSeries>,
}

/// `run_duration` and, for a final outcome, `runs_finished`, bound to one agent type and
/// outcome.
type RunSeries = (BoundHistogram<f64>, Option<BoundCounter<u64>>);

/// Bound handles by their attributes.
type BoundTable<K, B> = Mutex<HashMap<K, B>>;

/// The bound handle of `key` in `table`, made by `bind` the first time. The keys come from
/// closed sets (agent types, steps, outcomes), so the table stays small.
fn bound<K: std::hash::Hash + Eq, B: Clone>(
    table: &BoundTable<K, B>,
    key: K,
    bind: impl FnOnce() -> B,
) -> B {
    table
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_insert_with(bind)
        .clone()
}

impl Instruments {
    fn new(provider: &SdkMeterProvider) -> Self {
        let http = provider.meter(names::SCOPE_HTTP);
        let queue = provider.meter(names::SCOPE_QUEUE);
        let agents = provider.meter(names::SCOPE_AGENTS);
        let llm = provider.meter(names::SCOPE_LLM);
        let seconds = |m: &Meter, name: &'static str, about: &'static str, b: &[f64]| {
            m.f64_histogram(name)
                .with_unit("s")
                .with_description(about)
                .with_boundaries(b.to_vec())
                .build()
        };
        let http_active = Arc::new(ActiveRequests {
            counts: Default::default(),
            seen: Default::default(),
        });
        let observed = http_active.clone();
        http.i64_observable_up_down_counter(names::METRIC_HTTP_SERVER_ACTIVE)
            .with_unit("{request}")
            .with_description("Number of active HTTP server requests.")
            .with_callback(move |observer| {
                for (m, method) in METHODS.iter().enumerate() {
                    for (s, scheme) in ["http", "https"].iter().enumerate() {
                        if observed.seen[m][s].load(Ordering::Relaxed) {
                            observer.observe(
                                observed.counts[m][s].load(Ordering::Relaxed),
                                &[
                                    KeyValue::new(names::HTTP_REQUEST_METHOD, *method),
                                    KeyValue::new(names::URL_SCHEME, *scheme),
                                ],
                            );
                        }
                    }
                }
            })
            .build();
        Instruments {
            http_duration: HttpSeries::new(
                seconds(
                    &http,
                    names::METRIC_HTTP_SERVER_DURATION,
                    "Duration of HTTP server requests.",
                    DURATION_BUCKETS,
                ),
                http_series::SLOTS,
                http_series::PROBES,
            ),
            http_active,
            messaging_process: seconds(
                &queue,
                names::METRIC_MESSAGING_PROCESS_DURATION,
                "Duration of processing one delivery of a task (one attempt).",
                LONG_DURATION_BUCKETS,
            ),
            messaging_sent: queue
                .u64_counter(names::METRIC_MESSAGING_SENT)
                .with_unit("{message}")
                .with_description("Tasks the producer tried to enqueue.")
                .build(),
            messaging_consumed: queue
                .u64_counter(names::METRIC_MESSAGING_CONSUMED)
                .with_unit("{message}")
                .with_description("Task deliveries received by the worker.")
                .build(),
            queue_wait: seconds(
                &queue,
                names::METRIC_QUEUE_WAIT,
                "Time from enqueue to the start of the first attempt.",
                LONG_DURATION_BUCKETS,
            ),
            run_duration: seconds(
                &agents,
                names::METRIC_RUN_DURATION,
                "Duration of one attempt of an agent run, by outcome.",
                LONG_DURATION_BUCKETS,
            ),
            step_duration: seconds(
                &agents,
                names::METRIC_STEP_DURATION,
                "Duration of one agent step.",
                DURATION_BUCKETS,
            ),
            runs_finished: agents
                .u64_counter(names::METRIC_RUNS_FINISHED)
                .with_unit("{run}")
                .with_description("Runs that reached a final outcome.")
                .build(),
            retries: agents
                .u64_counter(names::METRIC_RUN_RETRIES)
                .with_unit("{retry}")
                .with_description("Attempts that failed transiently and were scheduled again.")
                .build(),
            llm_duration: seconds(
                &llm,
                names::METRIC_GEN_AI_DURATION,
                "Duration of GenAI operations (one chat call, retries included).",
                GEN_AI_DURATION_BUCKETS,
            ),
            llm_tokens: llm
                .u64_histogram(names::METRIC_GEN_AI_TOKENS)
                .with_unit("{token}")
                .with_description("Tokens used per GenAI operation, by token type.")
                .with_boundaries(GEN_AI_TOKEN_BUCKETS.to_vec())
                .build(),
            meter_queue: queue,
            bound_steps: Mutex::default(),
            bound_runs: Mutex::default(),
        }
    }
}

/// The instruments of a process. Cheap to clone; [`Metrics::noop`] records nothing.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Instruments>>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("recording", &self.0.is_some())
            .finish()
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Metrics {
    /// Instruments that record nothing (tests, and metrics turned off).
    pub fn noop() -> Self {
        Metrics(None)
    }

    /// Whether anything is recorded.
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Counts a request as active until the returned guard is dropped
    /// (`http.server.active_requests`).
    pub fn http_request_started(&self, method: &'static str, scheme: &'static str) -> HttpActive {
        let Some(i) = &self.0 else {
            return HttpActive(None);
        };
        let slot = ActiveRequests::slot(method, scheme);
        i.http_active.add(slot, 1);
        HttpActive(Some((i.clone(), slot)))
    }

    /// Records one finished request on `http.server.request.duration`. After the first
    /// request of a series, no attribute is hashed: the series is bound once (see
    /// `http_series`).
    pub fn record_http_request(&self, req: &HttpRequest<'_>, elapsed: Duration) {
        let Some(i) = &self.0 else { return };
        i.http_duration.record(req, secs(elapsed));
    }

    /// The messaging instruments bound to one queue.
    pub fn queue(&self, system: &'static str, destination: &str) -> QueueMetrics {
        let Some(i) = &self.0 else {
            return QueueMetrics(None);
        };
        let destination: Arc<str> = destination.into();
        let with_op = |op: &'static str| {
            vec![
                KeyValue::new(names::MESSAGING_SYSTEM, system),
                KeyValue::new(names::MESSAGING_OPERATION_NAME, op),
                KeyValue::new(names::MESSAGING_DESTINATION_NAME, destination.clone()),
            ]
        };
        QueueMetrics(Some(Arc::new(QueueBound {
            instruments: i.clone(),
            send: with_op("send"),
            receive: with_op("receive"),
            process: with_op("process"),
            sent_ok: OnceLock::new(),
            consumed: OnceLock::new(),
            processed_ok: OnceLock::new(),
            waited: OnceLock::new(),
        })))
    }

    /// Records one attempt of a run: its duration on `jobpilot.run.duration`; a final outcome
    /// also on `jobpilot.runs.finished`, a retry on `jobpilot.run.retries`.
    pub fn record_run_attempt(
        &self,
        agent_type: &'static str,
        outcome: RunOutcome,
        elapsed: Duration,
    ) {
        let Some(i) = &self.0 else { return };
        let (duration, finished) = bound(&i.bound_runs, (agent_type, outcome), || {
            let attrs = [
                KeyValue::new(names::AGENT_TYPE, agent_type),
                KeyValue::new(names::METRIC_OUTCOME, outcome.as_str()),
            ];
            let finished = outcome.is_final().then(|| i.runs_finished.bind(&attrs));
            (i.run_duration.bind(&attrs), finished)
        });
        duration.record(secs(elapsed));
        if let Some(finished) = finished {
            finished.add(1);
        } else {
            i.retries
                .add(1, &[KeyValue::new(names::AGENT_TYPE, agent_type)]);
        }
    }

    /// Records that a run ended without an attempt of its own (given up before it ran, e.g.
    /// out of attempts after crashes): counts it on `jobpilot.runs.finished` only.
    pub fn record_run_finished(&self, agent_type: &'static str, outcome: RunOutcome) {
        let Some(i) = &self.0 else { return };
        i.runs_finished.add(
            1,
            &[
                KeyValue::new(names::AGENT_TYPE, agent_type),
                KeyValue::new(names::METRIC_OUTCOME, outcome.as_str()),
            ],
        );
    }

    /// Records one agent step on `jobpilot.step.duration`.
    pub fn record_step(
        &self,
        agent_type: &'static str,
        step: &'static str,
        success: bool,
        elapsed: Duration,
    ) {
        let Some(i) = &self.0 else { return };
        bound(&i.bound_steps, (agent_type, step, success), || {
            i.step_duration.bind(&[
                KeyValue::new(names::AGENT_TYPE, agent_type),
                KeyValue::new(names::STEP_NAME, step),
                KeyValue::new(names::SUCCESS, success),
            ])
        })
        .record(secs(elapsed));
    }

    /// The GenAI instruments bound to one provider and model. `estimated_tokens` marks the
    /// token counts as estimates (`jobpilot.tokens.estimated`), for a provider that does not
    /// report billed usage.
    pub fn llm(&self, provider: &'static str, model: &str, estimated_tokens: bool) -> LlmMetrics {
        let Some(i) = &self.0 else {
            return LlmMetrics(None);
        };
        let base = vec![
            KeyValue::new(names::GEN_AI_OPERATION_NAME, names::OP_CHAT),
            KeyValue::new(names::GEN_AI_PROVIDER_NAME, provider),
            KeyValue::new(names::GEN_AI_REQUEST_MODEL, model.to_owned()),
        ];
        let tokens = |kind: &'static str| {
            let mut attrs = base.clone();
            attrs.push(KeyValue::new(names::GEN_AI_TOKEN_TYPE, kind));
            attrs.push(KeyValue::new(
                names::METRIC_TOKENS_ESTIMATED,
                estimated_tokens,
            ));
            attrs
        };
        LlmMetrics(Some(Arc::new(LlmBound {
            instruments: i.clone(),
            input: tokens("input"),
            output: tokens("output"),
            base,
            ok: OnceLock::new(),
            input_bound: OnceLock::new(),
            output_bound: OnceLock::new(),
        })))
    }

    /// Registers the queue gauges (`jobpilot.queue.depth`, `.in_flight`, `.dead_lettered`) for
    /// one queue, observed from the figures last given to [`QueueGauges::set`]. Call it once per
    /// queue and process.
    pub fn queue_gauges(&self, system: &'static str, destination: &str) -> QueueGauges {
        let figures = Arc::new(QueueFigures::default());
        let Some(i) = &self.0 else {
            return QueueGauges(figures);
        };
        let attrs: Arc<[KeyValue]> = Arc::from(vec![
            KeyValue::new(names::MESSAGING_SYSTEM, system),
            KeyValue::new(names::MESSAGING_DESTINATION_NAME, destination.to_owned()),
        ]);
        let gauge = |name: &'static str, about: &'static str, read: fn(&QueueFigures) -> u64| {
            let figures = figures.clone();
            let attrs = attrs.clone();
            i.meter_queue
                .u64_observable_gauge(name)
                .with_unit("{message}")
                .with_description(about)
                .with_callback(move |observer| {
                    if figures.known.load(Ordering::Acquire) {
                        observer.observe(read(&figures), &attrs);
                    }
                })
                .build();
        };
        gauge(
            names::METRIC_QUEUE_DEPTH,
            "Tasks waiting for their first delivery.",
            |f| f.depth.load(Ordering::Relaxed),
        );
        gauge(
            names::METRIC_QUEUE_IN_FLIGHT,
            "Tasks delivered and not yet acknowledged.",
            |f| f.in_flight.load(Ordering::Relaxed),
        );
        gauge(
            names::METRIC_QUEUE_DEAD_LETTERED,
            "Tasks on the dead-letter list.",
            |f| f.dead_lettered.load(Ordering::Relaxed),
        );
        QueueGauges(figures)
    }
}

/// Counts a request as active while alive (see [`Metrics::http_request_started`]).
pub struct HttpActive(Option<(Arc<Instruments>, (usize, usize))>);

impl Drop for HttpActive {
    fn drop(&mut self) {
        if let Some((i, slot)) = &self.0 {
            i.http_active.add(*slot, -1);
        }
    }
}

struct QueueBound {
    instruments: Arc<Instruments>,
    send: Vec<KeyValue>,
    receive: Vec<KeyValue>,
    process: Vec<KeyValue>,
    /// The series without an error, bound when first recorded (see the module docs).
    sent_ok: OnceLock<BoundCounter<u64>>,
    consumed: OnceLock<BoundCounter<u64>>,
    processed_ok: OnceLock<BoundHistogram<f64>>,
    waited: OnceLock<BoundHistogram<f64>>,
}

/// The messaging instruments bound to one queue (see [`Metrics::queue`]). Cheap to clone.
#[derive(Clone, Default)]
pub struct QueueMetrics(Option<Arc<QueueBound>>);

impl std::fmt::Debug for QueueMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueMetrics").finish_non_exhaustive()
    }
}

fn with_error<'a>(
    base: &'a [KeyValue],
    error_type: Option<&str>,
) -> std::borrow::Cow<'a, [KeyValue]> {
    match error_type {
        None => base.into(),
        Some(e) => {
            let mut attrs = base.to_vec();
            attrs.push(KeyValue::new(names::ERROR_TYPE, e.to_owned()));
            attrs.into()
        }
    }
}

impl QueueMetrics {
    /// One task enqueued, or not (`error_type` says why) (`messaging.client.sent.messages`).
    pub fn sent(&self, error_type: Option<&str>) {
        let Some(q) = &self.0 else { return };
        match error_type {
            None => q
                .sent_ok
                .get_or_init(|| q.instruments.messaging_sent.bind(&q.send))
                .add(1),
            Some(_) => q
                .instruments
                .messaging_sent
                .add(1, &with_error(&q.send, error_type)),
        }
    }

    /// `n` deliveries received (`messaging.client.consumed.messages`).
    pub fn consumed(&self, n: u64) {
        let Some(q) = &self.0 else { return };
        if n > 0 {
            q.consumed
                .get_or_init(|| q.instruments.messaging_consumed.bind(&q.receive))
                .add(n);
        }
    }

    /// One delivery processed (`messaging.process.duration`); `error_type` when the attempt
    /// did not succeed.
    pub fn processed(&self, elapsed: Duration, error_type: Option<&str>) {
        let Some(q) = &self.0 else { return };
        match error_type {
            None => q
                .processed_ok
                .get_or_init(|| q.instruments.messaging_process.bind(&q.process))
                .record(secs(elapsed)),
            Some(_) => q
                .instruments
                .messaging_process
                .record(secs(elapsed), &with_error(&q.process, error_type)),
        }
    }

    /// The wait of a task from enqueue to the start of its first attempt (`jobpilot.queue.wait`).
    pub fn waited(&self, wait: Duration) {
        let Some(q) = &self.0 else { return };
        q.waited
            .get_or_init(|| q.instruments.queue_wait.bind(&q.process))
            .record(secs(wait));
    }
}

struct LlmBound {
    instruments: Arc<Instruments>,
    base: Vec<KeyValue>,
    input: Vec<KeyValue>,
    output: Vec<KeyValue>,
    /// The series without an error, bound when first recorded (see the module docs).
    ok: OnceLock<BoundHistogram<f64>>,
    input_bound: OnceLock<BoundHistogram<u64>>,
    output_bound: OnceLock<BoundHistogram<u64>>,
}

/// The GenAI instruments bound to one provider and model (see [`Metrics::llm`]).
#[derive(Clone, Default)]
pub struct LlmMetrics(Option<Arc<LlmBound>>);

impl std::fmt::Debug for LlmMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmMetrics").finish_non_exhaustive()
    }
}

impl LlmMetrics {
    /// One chat operation (`gen_ai.client.operation.duration`).
    pub fn operation(&self, elapsed: Duration, error_type: Option<&str>) {
        let Some(l) = &self.0 else { return };
        match error_type {
            None => {
                l.ok.get_or_init(|| l.instruments.llm_duration.bind(&l.base))
                    .record(secs(elapsed))
            }
            Some(_) => l
                .instruments
                .llm_duration
                .record(secs(elapsed), &with_error(&l.base, error_type)),
        }
    }

    /// The tokens of one chat operation (`gen_ai.client.token.usage`), when known.
    pub fn tokens(&self, input: Option<u64>, output: Option<u64>) {
        let Some(l) = &self.0 else { return };
        if let Some(n) = input {
            l.input_bound
                .get_or_init(|| l.instruments.llm_tokens.bind(&l.input))
                .record(n);
        }
        if let Some(n) = output {
            l.output_bound
                .get_or_init(|| l.instruments.llm_tokens.bind(&l.output))
                .record(n);
        }
    }
}

#[derive(Default)]
struct QueueFigures {
    known: AtomicBool,
    depth: AtomicU64,
    in_flight: AtomicU64,
    dead_lettered: AtomicU64,
}

/// The figures behind the queue gauges (see [`Metrics::queue_gauges`]): whoever reads the
/// broker sets them; a collection only reads them, so scraping never calls the broker.
#[derive(Clone)]
pub struct QueueGauges(Arc<QueueFigures>);

impl std::fmt::Debug for QueueGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueGauges").finish_non_exhaustive()
    }
}

impl QueueGauges {
    /// The broker's latest figures.
    pub fn set(&self, depth: u64, in_flight: u64, dead_lettered: u64) {
        let f = &self.0;
        f.depth.store(depth, Ordering::Relaxed);
        f.in_flight.store(in_flight, Ordering::Relaxed);
        f.dead_lettered.store(dead_lettered, Ordering::Relaxed);
        f.known.store(true, Ordering::Release);
    }
}

/// Registers the span pipeline's figures as observable counters
/// (`jobpilot.telemetry.spans.exported`, `.spans.dropped`, `.exports.failed`).
fn register_export_figures(meter: &Meter, pipeline: PipelineHandle) {
    let counter = |name: &'static str,
                   unit: &'static str,
                   about: &'static str,
                   read: fn(&crate::ExportStats) -> u64| {
        let pipeline = pipeline.clone();
        meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(about)
            .with_callback(move |observer| observer.observe(read(&pipeline.stats()), &[]))
            .build();
    };
    counter(
        names::METRIC_SPANS_EXPORTED,
        "{span}",
        "Spans accepted by the trace backend.",
        |s| s.exported,
    );
    counter(
        names::METRIC_SPANS_DROPPED,
        "{span}",
        "Spans lost: queue full, or an export that failed.",
        |s| s.dropped,
    );
    counter(
        names::METRIC_EXPORTS_FAILED,
        "{request}",
        "Span export requests that failed.",
        |s| s.failed_exports,
    );
}

/// The metrics pushed over OTLP or printed, as one reader of the provider.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// A push exporter: OTLP or the console.
pub(crate) enum PushExporter {
    /// OTLP over gRPC or HTTP.
    Otlp(Box<opentelemetry_otlp::MetricExporter>),
    /// Standard output.
    Console(opentelemetry_stdout::MetricExporter),
}

impl PushExporter {
    async fn export(&self, rm: &ResourceMetrics) -> OTelSdkResult {
        match self {
            PushExporter::Otlp(e) => e.export(rm).await,
            PushExporter::Console(e) => e.export(rm).await,
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            PushExporter::Otlp(e) => e.shutdown(),
            PushExporter::Console(e) => e.shutdown(),
        };
    }
}

/// Counters of the metric pushes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushStats {
    /// Pushes accepted.
    pub pushes: u64,
    /// Pushes that failed or timed out.
    pub failed_pushes: u64,
    /// The last push error, if any.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct PushCounters {
    pushes: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The Prometheus text of a process's metrics. Cheap to clone.
#[derive(Clone)]
pub struct PrometheusText(prometheus::Registry);

impl std::fmt::Debug for PrometheusText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusText").finish_non_exhaustive()
    }
}

impl PrometheusText {
    /// The `Content-Type` of [`PrometheusText::encode`]'s output.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Every metric right now in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        use prometheus::Encoder as _;
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.0.gather(), &mut out) {
            tracing::warn!(target: "jobpilot::telemetry", error = %e, "cannot encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The metrics side of a process: provider, push task and Prometheus registry.
pub struct MetricsExport {
    provider: SdkMeterProvider,
    metrics: Metrics,
    prometheus: Option<PrometheusText>,
    push: Option<(oneshot::Sender<oneshot::Sender<()>>, Arc<PushCounters>)>,
}

impl std::fmt::Debug for MetricsExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsExport")
            .field("prometheus", &self.prometheus.is_some())
            .field("push", &self.push.is_some())
            .finish()
    }
}

impl MetricsExport {
    /// Builds the provider with a Prometheus registry when `prometheus`, and a task pushing to
    /// `exporters` every `interval` (each push bounded by `timeout`). `pipeline`'s figures
    /// become observable counters. Must run inside a Tokio runtime when `exporters` is not
    /// empty.
    pub(crate) fn start(
        resource: Resource,
        prometheus: bool,
        exporters: Vec<PushExporter>,
        interval: Duration,
        timeout: Duration,
        pipeline: Option<PipelineHandle>,
    ) -> Result<Self, String> {
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        let registry = if prometheus {
            let registry = prometheus::Registry::new();
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .map_err(|e| format!("cannot build the Prometheus exporter: {e}"))?;
            builder = builder.with_reader(exporter);
            Some(PrometheusText(registry))
        } else {
            None
        };
        let reader = (!exporters.is_empty()).then(|| Arc::new(ManualReader::builder().build()));
        if let Some(reader) = &reader {
            builder = builder.with_reader(SharedReader(reader.clone()));
        }
        let provider = builder.build();
        let metrics = Metrics(Some(Arc::new(Instruments::new(&provider))));
        if let Some(pipeline) = pipeline {
            register_export_figures(&provider.meter(names::SCOPE_TELEMETRY), pipeline);
        }
        let push = reader.map(|reader| {
            let counters = Arc::new(PushCounters::default());
            let (stop, stopped) = oneshot::channel();
            tokio::spawn(push_loop(
                reader,
                exporters,
                interval,
                timeout,
                counters.clone(),
                stopped,
            ));
            (stop, counters)
        });
        Ok(MetricsExport {
            provider,
            metrics,
            prometheus: registry,
            push,
        })
    }

    /// The instruments.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The Prometheus text, when the `prometheus` exporter is on.
    pub fn prometheus(&self) -> Option<PrometheusText> {
        self.prometheus.clone()
    }

    /// The push counters (all zero when nothing is pushed).
    pub fn push_stats(&self) -> PushStats {
        match &self.push {
            None => PushStats::default(),
            Some((_, c)) => PushStats {
                pushes: c.pushes.load(Ordering::Relaxed),
                failed_pushes: c.failed.load(Ordering::Relaxed),
                last_error: c
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            },
        }
    }

    /// Pushes the last figures and stops, within `timeout`.
    ///
    /// # Errors
    /// When the final push does not finish in time.
    pub(crate) async fn shutdown(self, timeout: Duration) -> Result<(), &'static str> {
        let mut result = Ok(());
        if let Some((stop, _)) = self.push {
            let (done, finished) = oneshot::channel();
            if stop.send(done).is_ok() && tokio::time::timeout(timeout, finished).await.is_err() {
                result = Err("the final metrics push timed out");
            }
        }
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        result
    }
}

async fn push_loop(
    reader: Arc<ManualReader>,
    exporters: Vec<PushExporter>,
    interval: Duration,
    timeout: Duration,
    counters: Arc<PushCounters>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let mut next = tokio::time::Instant::now() + interval;
    let mut last_warning: Option<Instant> = None;
    loop {
        let reply = tokio::select! {
            _ = tokio::time::sleep_until(next) => None,
            r = &mut stop => Some(r.ok()),
        };
        next += interval;
        let mut rm = ResourceMetrics::default();
        if reader.collect(&mut rm).is_ok() {
            for exporter in &exporters {
                let outcome = match tokio::time::timeout(timeout, exporter.export(&rm)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("push timed out after {} ms", timeout.as_millis())),
                };
                match outcome {
                    Ok(()) => {
                        counters.pushes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        // One line per minute at most: a collector that is down must not flood
                        // the logs.
                        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                            tracing::warn!(target: "jobpilot::telemetry", error = %e, "cannot push metrics");
                            last_warning = Some(Instant::now());
                        }
                        *counters
                            .last_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(e);
                    }
                }
            }
        }
        if let Some(reply) = reply {
            for exporter in &exporters {
                exporter.shutdown();
            }
            if let Some(reply) = reply {
                let _ = reply.send(());
            }
            return;
        }
    }
}
