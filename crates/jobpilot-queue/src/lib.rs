//! The jobpilot task queue: what a queued agent run looks like on the wire, the
//! traits the API and the workers talk to, and two backends behind them.
//!
//! Layout:
//! - [`envelope`] — [`TaskEnvelope`] (the task as enqueued, with its W3C trace
//!   headers as plain strings) and [`Delivery`] (one hand-out of a task to a worker).
//! - [`run`] — [`RunRecord`], [`RunStatus`] and [`RunOutcome`]: the user-visible
//!   state of an agent run.
//! - [`timeline`] — [`Timeline`]: the attempts, steps and LLM calls of a run.
//! - [`listing`] — [`RunQuery`], [`RunCursor`], [`RunPage`]: listing runs from the
//!   time-ordered index.
//! - [`stats`] — per-minute counters across all workers and the [`Stats`] of a window.
//! - [`events`] — [`RunEvent`]: what just happened to a run, for live views.
//! - [`broker`] — the [`Broker`] and [`RunStore`] traits, plus [`QueueStats`] and
//!   [`DeadLetter`].
//! - [`error`] — [`QueueError`], the one error type every operation returns.
//! - [`settings`] — [`QueueSettings`] (queue name, visibility timeout, run
//!   retention), with the only defaults of these settings.
//! - [`embedded`] — [`EmbeddedBackend`], a single-process durable backend in one
//!   redb file.
//! - [`redis_backend`] — [`RedisBackend`], a shared backend on Redis Streams with a
//!   consumer group.
//!
//! This crate is not a tracing or telemetry layer: it depends on no other jobpilot
//! crate and knows nothing about OpenTelemetry. The trace context travels as an
//! opaque map of header strings that callers inject and extract themselves.

pub mod broker;
pub mod embedded;
pub mod envelope;
pub mod error;
pub mod events;
pub mod listing;
pub mod redis_backend;
pub mod run;
pub mod settings;
pub mod stats;
pub mod timeline;

pub use broker::{
    Broker, DeadLetter, DeadLetterPage, MAX_DEAD_LETTER_PAGE, QueueStats, RunStore,
    UNREADABLE_TASK_ERROR,
};
pub use embedded::{EmbeddedBackend, Purged, StoredCounts};
pub use envelope::{Delivery, TaskEnvelope, unix_now_ms};
pub use error::QueueError;
pub use events::{EventReceiver, RunEvent, RunEventKind};
pub use listing::{RunCursor, RunPage, RunQuery};
pub use redis_backend::RedisBackend;
pub use run::{RunOutcome, RunRecord, RunStatus};
pub use settings::{DEFAULT_RUN_RETENTION, QueueSettings};
pub use stats::{Stats, StatsWindow};
pub use timeline::{AttemptOutcome, AttemptRecord, LlmCallRecord, StepRecord, Timeline};
