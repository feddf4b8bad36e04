//! Settings shared by both backends, with their only defaults.
//!
//! This module holds plain configuration values only; parsing them from the
//! environment or a CLI belongs to the binaries.

use std::time::Duration;

/// Default of [`QueueSettings::run_retention`]: 7 days.
pub const DEFAULT_RUN_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a queue behaves, independent of where it is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSettings {
    /// How long a delivery may stay unacknowledged before another `receive` takes
    /// it over (and counts another attempt). Default: 120 s, longer than the
    /// slowest LLM call with its retries; a worker extends the delivery every
    /// third of it while a run is in progress. This is the only default: the
    /// worker reads the value from its broker.
    pub visibility_timeout: Duration,
    /// How long finished runs and dead letters are kept, counted from when they
    /// finished. Runs that have not finished are never removed. Default: 7 days.
    pub run_retention: Duration,
    /// Logical queue name; it appears in keys and in span names such as
    /// `send agent_runs`. Default: `agent_runs`.
    pub queue_name: String,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(120),
            run_retention: DEFAULT_RUN_RETENTION,
            queue_name: "agent_runs".to_owned(),
        }
    }
}
