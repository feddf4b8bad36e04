//! Whether a new run is accepted: a per-user rate limit on run creation (429), a per-user cap
//! on unfinished runs (429) and a global cap on the queue depth (503), each answered with
//! `Retry-After`. Checked before anything is stored, so a refused run leaves no trace and an
//! accepted one is never dropped by these checks.
//!
//! The rate limit is `governor`'s keyed GCRA limiter (per process: each API instance grants
//! the rate). It is not the place for connection limits ([`crate::server`]).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jobpilot_queue::{Broker, QueueError, RunStore};

use crate::error::ApiError;

/// Limits on run creation; `0` turns a limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimits {
    /// Runs a user may create per second, sustained.
    pub per_user_per_sec: u32,
    /// Runs a user may create at once above the rate.
    pub per_user_burst: u32,
    /// Unfinished (queued or running) runs a user may have.
    pub max_queued_per_user: u64,
    /// Tasks waiting in the queue beyond which new runs are refused.
    pub max_queue_depth: u64,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            per_user_per_sec: 5,
            per_user_burst: 20,
            max_queued_per_user: 100,
            max_queue_depth: 10_000,
        }
    }
}

impl RunLimits {
    /// No limit at all (benchmarks).
    pub fn off() -> Self {
        RunLimits {
            per_user_per_sec: 0,
            per_user_burst: 0,
            max_queued_per_user: 0,
            max_queue_depth: 0,
        }
    }
}

/// Seconds a client is told to wait when the queue is full: long enough for workers to make
/// progress, short enough not to idle them.
const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 5;

/// Seconds a user over the unfinished-runs cap is told to wait.
const USER_QUEUE_FULL_RETRY_AFTER_SECS: u64 = 10;

/// The admission checks with their state.
pub(crate) struct Admission {
    limits: RunLimits,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl Admission {
    pub(crate) fn new(limits: RunLimits) -> Self {
        let limiter = NonZeroU32::new(limits.per_user_per_sec).map(|rate| {
            let burst =
                NonZeroU32::new(limits.per_user_burst.max(limits.per_user_per_sec)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Admission { limits, limiter }
    }

    /// Ok when `user_id` may create a run now.
    ///
    /// # Errors
    /// 429 over the user's rate or unfinished-runs cap, 503 when the queue is full or a
    /// dependency does not answer within `timeout`.
    pub(crate) async fn admit(
        &self,
        user_id: &str,
        broker: &dyn Broker,
        store: &dyn RunStore,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        if let Some(limiter) = &self.limiter {
            // Keys are user ids: bounded by who holds a valid token; idle keys are shed below.
            if let Err(not_until) = limiter.check_key(&user_id.to_owned()) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(ApiError::too_many_requests(
                    format!(
                        "more than {} runs per second; retry later",
                        self.limits.per_user_per_sec
                    ),
                    wait.as_secs_f64().ceil() as u64,
                ));
            }
            if limiter.len() > 10_000 {
                limiter.retain_recent();
            }
        }
        if self.limits.max_queue_depth > 0 {
            let stats = bounded(timeout, "queue", broker.stats()).await?;
            if stats.depth >= self.limits.max_queue_depth {
                return Err(ApiError::overloaded(
                    "the run queue is full; retry later",
                    QUEUE_FULL_RETRY_AFTER_SECS,
                ));
            }
        }
        if self.limits.max_queued_per_user > 0 {
            let unfinished =
                bounded(timeout, "run store", store.unfinished_runs_of(user_id)).await?;
            if unfinished >= self.limits.max_queued_per_user {
                return Err(ApiError::too_many_requests(
                    format!(
                        "you have {} unfinished runs, the most allowed; retry when some finish",
                        self.limits.max_queued_per_user
                    ),
                    USER_QUEUE_FULL_RETRY_AFTER_SECS,
                ));
            }
        }
        Ok(())
    }
}

async fn bounded<T>(
    timeout: Duration,
    what: &str,
    call: impl Future<Output = Result<T, QueueError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "{what} unavailable during admission");
            Err(ApiError::unavailable(format!("the {what} is unavailable")))
        }
        Err(_) => Err(ApiError::unavailable(format!(
            "the {what} did not answer in time"
        ))),
    }
}
