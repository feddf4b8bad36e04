//! The Redis backend: a shared queue on a Redis Stream with one consumer group,
//! and run records as JSON strings.
//!
//! Key layout (all under the caller's prefix):
//! - `{prefix}:stream:{queue}` — the stream; each entry has a field `task`
//!   holding the JSON [`TaskEnvelope`] and, when the API wrote it, a field `run`
//!   holding the run record as accepted: a worker's first delivery starts the run
//!   against it without reading the record (the start is a compare-and-set, so a
//!   record changed since falls back to a read). Acknowledged entries are deleted,
//!   so the stream only ever holds live tasks.
//! - `{prefix}:dead:ids` — a sorted set of dead-lettered task ids by time, and
//!   `{prefix}:dead:data` — a hash of their JSON [`DeadLetter`]s.
//! - `{prefix}:run:{run_id}` — one JSON [`RunRecord`] per run (timeline included),
//!   with a revision counter put first (`{"rev":N,...}`, see `REVISION_OPEN`).
//! - `{prefix}:runs:all`, `{prefix}:runs:user:{user_id}` — sorted sets of run ids
//!   by creation time: the indexes that listing reads newest first.
//! - `{prefix}:retry:{run_id}` — the task of a run that ended failed or
//!   cancelled, kept for a retry (it expires with the run).
//! - `{prefix}:stats:{minute}`, `{prefix}:slow:{minute}`, `{prefix}:failex:{group}`
//!   — the per-minute statistics counters, slowest runs and failure examples of
//!   [`crate::stats`], each expiring after a day; each process sums its runs'
//!   and writes them about once a second (`stats_buffer`).
//! - `{prefix}:events`, `{prefix}:cancels` — pub/sub channels of run events and
//!   of cancellation requests.
//! - `{prefix}:unfinished` — a hash: user id → how many of the user's runs are
//!   not finished. The script that stores a run counts it up, the one that
//!   first moves it to a terminal status counts it down.
//!
//! Retention ([`QueueSettings::run_retention`]): a run key gets its expiry in
//! the same script that finishes the run; dead letters older than the
//! retention are trimmed from the list's tail whenever one is added, and the
//! list itself expires a retention period after the last addition. The stream
//! needs no cap: acknowledged and dead-lettered entries are deleted at once
//! (`XDEL`), so it holds only tasks still waiting or in flight, which must
//! never be trimmed. Unfinished runs never expire, so a key that expires was
//! already counted down; the unfinished hash itself has no expiry.
//!
//! Delivery uses the consumer group's pending-entries list: `XREADGROUP` hands
//! out new entries, `XAUTOCLAIM` takes over entries idle for longer than the
//! visibility timeout, and Redis' own delivery counter is the attempt number.
//! `extend` (a worker's heartbeat) and `retry_later` both re-claim an entry
//! with `XCLAIM ... JUSTID`, which moves its idle clock without counting a
//! delivery; each runs in a small script that first checks, with `XPENDING`,
//! that the caller's delivery is still the current one. (`XAUTOCLAIM` runs at
//! most once per quarter visibility timeout in a process, not on every receive.)
//!
//! Round trips of a run: the API's acceptance is one script; a worker reads
//! the task with the record as accepted (one `XREADGROUP` per batch), starts the
//! attempt (one script, which swaps against that record), and stores the outcome
//! and acknowledges the task in another script, which swaps against the record
//! its start wrote without reading it again. Statistics go separately, summed,
//! once a second.
//!
//! What it is not: a general Redis client. It opens one auto-reconnecting
//! multiplexed connection for ordinary commands plus a small pool of dedicated
//! connections for blocking reads (a blocking command would stall every other
//! command queued behind it on a multiplexed connection).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamPendingReply, StreamReadReply,
};
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, RedisError};
use tokio::time::Instant;

use crate::broker::{
    Broker, DeadLetter, DeadLetterPage, QueueStats, RunStore, UNREADABLE_TASK_ERROR,
    dead_lettered_outcome, undecodable_dead_letter,
};
use crate::envelope::{Delivery, TaskEnvelope, unix_now_ms};
use crate::error::QueueError;
use crate::events::{EventReceiver, RunEvent, RunEventKind};
use crate::listing::{RunPage, RunQuery};
use crate::run::{RunOutcome, RunRecord};
use crate::settings::QueueSettings;
use crate::stats::{Stats, StatsWindow};
use crate::timeline::AttemptRecord;

mod operations;
mod scripts;
mod stats_buffer;
use operations::{Extras, Known};
use scripts::{ACCEPT, ACK, DEAD_LETTER, EXTEND, PARK, RUN_INSERT};

/// The consumer group every worker joins.
const GROUP: &str = "jobpilot";
/// Owner of deliveries parked by `retry_later`. Any name works for
/// `XAUTOCLAIM`; a fixed one makes parked tasks easy to spot in `XINFO`.
const PARKED_CONSUMER: &str = "jobpilot-retry-wait";
/// Stream field carrying the task JSON.
const TASK_FIELD: &str = "task";
/// Stream field carrying the run record as accepted (see the module docs).
const RUN_FIELD: &str = "run";
/// How long to wait for a TCP connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an ordinary command may take before Redis counts as unavailable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time a blocking read gets beyond its `BLOCK` argument.
const BLOCK_MARGIN: Duration = Duration::from_secs(2);
/// Idle blocking connections kept for reuse; more are closed after use.
const MAX_IDLE_BLOCKING: usize = 8;
/// `XAUTOCLAIM` scans a bounded slice of the pending list per call; a few calls
/// cover large in-flight sets without letting one receive run unbounded.
const MAX_AUTOCLAIM_ROUNDS: usize = 4;
/// Largest batch one `receive` asks Redis for.
const MAX_BATCH: usize = 1000;
/// Room for the key names and short arguments of a run's script call, on top of its
/// records and event (see [`evalsha_with_room`]).
const KEYS_ROOM: usize = 512;
/// Optimistic run updates retry this often when another writer races them.
const MAX_RUN_UPDATE_TRIES: usize = 16;

/// A queue and run store on Redis (Streams + consumer group).
pub struct RedisBackend {
    client: Client,
    manager: ConnectionManager,
    /// Dedicated connections for `XREADGROUP ... BLOCK`; see the module docs.
    blocking_pool: Mutex<Vec<MultiplexedConnection>>,
    settings: QueueSettings,
    stream_key: String,
    /// Dead letters: sorted set of task ids, hash of their JSON.
    dead_ids_key: String,
    dead_data_key: String,
    run_key_prefix: String,
    /// Hash: user id → unfinished runs.
    unfinished_key: String,
    /// The other key names, made once: a run's writes name six or more keys, and formatting
    /// them with `format!` was a third of the cost of building the command.
    all_runs_key: String,
    user_runs_prefix: String,
    retry_prefix: String,
    expiry_key: String,
    events_channel: String,
    cancels_channel: String,
    /// Every key of this backend starts with it.
    prefix: String,
    /// Events and cancellations received over pub/sub, for this process's subscribers.
    channels: operations::Channels,
    /// Records of attempts this process started, for their end.
    remembered: operations::Remembered,
    /// Statistics counted here and not yet written.
    stats: std::sync::Arc<stats_buffer::StatsBuffer>,
    /// When expired deliveries were last looked for (unix ms); see [`Broker::receive`].
    last_takeover_ms: AtomicU64,
    /// Test hook: the next `accept` fails between its two writes.
    #[cfg(feature = "fault-injection")]
    fail_next_accept: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client is left out on purpose: its connection info may hold a password.
        f.debug_struct("RedisBackend")
            .field("stream_key", &self.stream_key)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to `url`, keeps every key under `prefix`, and creates the
    /// consumer group if it does not exist yet.
    ///
    /// # Errors
    /// [`QueueError::InvalidConfig`] for an unparsable URL, an empty prefix or
    /// queue name, or a zero visibility timeout; [`QueueError::Unavailable`]
    /// when Redis cannot be reached within a few seconds.
    pub async fn connect(
        url: &str,
        prefix: &str,
        settings: QueueSettings,
    ) -> Result<Self, QueueError> {
        if settings.visibility_timeout.is_zero() {
            return Err(QueueError::InvalidConfig(
                "visibility_timeout must be greater than zero".to_owned(),
            ));
        }
        if prefix.is_empty() || settings.queue_name.is_empty() {
            return Err(QueueError::InvalidConfig(
                "redis key prefix and queue name must not be empty".to_owned(),
            ));
        }
        // The URL is not echoed back: it may contain a password.
        let client = Client::open(url)
            .map_err(|e| QueueError::InvalidConfig(format!("redis url is not usable: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // Few, short reconnect retries: a caller waiting on a command should
            // hear "unavailable" within seconds, and the next command retries anyway.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| redis_error("connect to redis", e))?;
        let stats = stats_buffer::StatsBuffer::new(manager.clone(), prefix.to_owned());
        let backend = Self {
            client,
            manager,
            blocking_pool: Mutex::new(Vec::new()),
            stream_key: format!("{prefix}:stream:{}", settings.queue_name),
            dead_ids_key: format!("{prefix}:dead:ids"),
            dead_data_key: format!("{prefix}:dead:data"),
            run_key_prefix: format!("{prefix}:run:"),
            unfinished_key: format!("{prefix}:unfinished"),
            all_runs_key: format!("{prefix}:runs:all"),
            user_runs_prefix: format!("{prefix}:runs:user:"),
            retry_prefix: format!("{prefix}:retry:"),
            expiry_key: format!("{prefix}:runs:expiring"),
            events_channel: format!("{prefix}:events"),
            cancels_channel: format!("{prefix}:cancels"),
            prefix: prefix.to_owned(),
            channels: operations::Channels::default(),
            remembered: operations::Remembered::default(),
            stats,
            last_takeover_ms: AtomicU64::new(0),
            settings,
            #[cfg(feature = "fault-injection")]
            fail_next_accept: std::sync::atomic::AtomicBool::new(false),
        };
        backend.ensure_group().await?;
        backend.load_scripts().await?;
        Ok(backend)
    }

    /// Test hook: makes the next [`Broker::accept`] fail after the run record is
    /// written and before the task is (its `XADD` is given an id Redis refuses).
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_accept_between_writes(&self) {
        self.fail_next_accept
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The stream entry id for the next task: `*` (Redis picks it).
    fn next_entry_id(&self) -> &'static str {
        #[cfg(feature = "fault-injection")]
        if self
            .fail_next_accept
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            // XADD refuses 0-0 as an id.
            return "0-0";
        }
        "*"
    }

    /// The stream key holding this queue's tasks.
    pub fn stream_key(&self) -> &str {
        &self.stream_key
    }

    /// Creates the consumer group (and the stream) unless it exists.
    ///
    /// The group starts at `0`, not `$`: acknowledged entries are deleted, so
    /// everything still in the stream is unfinished work. Starting at `0` never
    /// repeats finished tasks and never skips tasks added before the group
    /// existed (for example after the group was lost).
    async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut conn = self.manager.clone();
        let result: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream_key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match result {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(redis_error("create consumer group", e)),
            _ => Ok(()),
        }
    }

    /// Runs one command on the shared connection. A missing group (Redis
    /// restarted without its data, or someone deleted the key) is recreated, and
    /// scripts Redis no longer knows (its script cache is emptied by a restart or
    /// `SCRIPT FLUSH`) are loaded again; either way the command is retried once.
    async fn query<T: FromRedisValue>(&self, what: &str, cmd: &Cmd) -> Result<T, QueueError> {
        let mut conn = self.manager.clone();
        match cmd.query_async::<T>(&mut conn).await {
            Err(e) if is_no_group(&e) => {
                self.ensure_group().await?;
                cmd.query_async(&mut conn)
                    .await
                    .map_err(|e| redis_error(what, e))
            }
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                cmd.query_async(&mut conn)
                    .await
                    .map_err(|e| redis_error(what, e))
            }
            other => other.map_err(|e| redis_error(what, e)),
        }
    }

    /// Loads every script into Redis's script cache.
    async fn load_scripts(&self) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        for script in scripts::ALL {
            pipe.cmd("SCRIPT").arg("LOAD").arg(script.code());
        }
        let mut conn = self.manager.clone();
        let _hashes: Vec<String> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("load scripts", e))?;
        Ok(())
    }

    fn pool(&self) -> MutexGuard<'_, Vec<MultiplexedConnection>> {
        // The pool is a plain list; a panic elsewhere cannot leave it half-changed.
        self.blocking_pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads new entries for `consumer`, blocking up to `block` on a dedicated
    /// connection.
    async fn read_new(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<StreamId>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max);
        let block_ms = millis(block);
        // `BLOCK 0` means "forever" to Redis, so a zero wait must omit it.
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(&self.stream_key).arg(">");

        // A pooled connection may have died while idle (Redis restarted); that
        // is not worth an error, so such a failure gets one retry on a fresh one.
        let mut pooled = self.pool().pop();
        loop {
            let from_pool = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(conn) => conn,
                None => self.blocking_connection().await?,
            };
            let limit = block + BLOCK_MARGIN;
            let reply =
                tokio::time::timeout(limit, cmd.query_async::<Option<StreamReadReply>>(&mut conn))
                    .await;
            return match reply {
                Ok(Ok(reply)) => {
                    self.return_to_pool(conn);
                    Ok(reply
                        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                        .unwrap_or_default())
                }
                Ok(Err(e)) if is_no_group(&e) => {
                    self.return_to_pool(conn);
                    self.ensure_group().await?;
                    // The caller loops; the next round reads from the new group.
                    Ok(Vec::new())
                }
                Ok(Err(e)) if from_pool && e.is_io_error() => {
                    tracing::debug!(error = %e, "pooled blocking redis connection failed; reconnecting");
                    continue;
                }
                // Any other failure may have left the connection broken; it is
                // dropped here so the next read opens a fresh one.
                Ok(Err(e)) => Err(redis_error("xreadgroup", e)),
                Err(_) => Err(QueueError::Unavailable(format!(
                    "xreadgroup on {} did not answer within {} ms",
                    self.stream_key,
                    limit.as_millis()
                ))),
            };
        }
    }

    /// Opens a dedicated connection for blocking reads.
    async fn blocking_connection(&self) -> Result<MultiplexedConnection, QueueError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // This connection's only command may legitimately block; the
            // caller sizes a timeout per call instead.
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| redis_error("connect to redis for blocking read", e))
    }

    fn return_to_pool(&self, conn: MultiplexedConnection) {
        let mut pool = self.pool();
        if pool.len() < MAX_IDLE_BLOCKING {
            pool.push(conn);
        }
    }

    /// Whether a receive should look for expired deliveries now: at most once per
    /// quarter of the visibility timeout (and at least once a second) in this
    /// process, so that a busy worker's receives are one `XREADGROUP` each. A
    /// receive that waits looks again between its waits.
    fn takeover_due(&self) -> bool {
        let every = millis(self.settings.visibility_timeout / 4).min(1000);
        let now = unix_now_ms();
        let last = self.last_takeover_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= every
            && self
                .last_takeover_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Takes over up to `max` entries idle for longer than the visibility
    /// timeout; Redis increments their delivery count as it does so.
    async fn take_over_expired(
        &self,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let min_idle = millis(self.settings.visibility_timeout);
        let mut cursor = "0-0".to_owned();
        let mut entries: Vec<StreamId> = Vec::new();
        for _ in 0..MAX_AUTOCLAIM_ROUNDS {
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.stream_key)
                .arg(GROUP)
                .arg(consumer)
                .arg(min_idle)
                .arg(&cursor)
                .arg("COUNT")
                .arg(max - entries.len());
            let reply: StreamAutoClaimReply = self.query("xautoclaim", &cmd).await?;
            entries.extend(reply.claimed);
            cursor = reply.next_stream_id;
            if entries.len() >= max || cursor == "0-0" {
                break;
            }
        }
        if entries.is_empty() {
            return Ok(Vec::new());
        }

        // XAUTOCLAIM does not report the delivery count; XPENDING does.
        let mut pipe = redis::pipe();
        for entry in &entries {
            pipe.cmd("XPENDING")
                .arg(&self.stream_key)
                .arg(GROUP)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let mut conn = self.manager.clone();
        let counts: Vec<StreamPendingCountReply> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("xpending", e))?;

        let mut deliveries = Vec::with_capacity(entries.len());
        for (entry, count) in entries.into_iter().zip(counts) {
            // Missing means it was acknowledged in between: nothing to deliver.
            let Some(pending) = count.ids.first() else {
                continue;
            };
            let attempt = u32::try_from(pending.times_delivered).unwrap_or(u32::MAX);
            if let Some(delivery) = self.decode(entry, attempt).await? {
                deliveries.push(delivery);
            }
        }
        Ok(deliveries)
    }

    /// Turns a stream entry into a delivery, dead-lettering it instead when it
    /// cannot be decoded (poison must not crash or block the receivers).
    async fn decode(&self, entry: StreamId, attempt: u32) -> Result<Option<Delivery>, QueueError> {
        let raw: Option<String> = entry.get(TASK_FIELD);
        let decoded = match &raw {
            Some(raw) => serde_json::from_str::<TaskEnvelope>(raw).map_err(|e| e.to_string()),
            None => Err(format!("entry has no {TASK_FIELD} field")),
        };
        match decoded {
            Ok(envelope) => {
                // On a first delivery the record is most likely still as accepted.
                if attempt == 1
                    && let Some(raw) = entry.get::<String>(RUN_FIELD)
                    && let Ok(record) = decode_run(&envelope.run_id, &raw)
                {
                    self.remembered
                        .keep(&envelope.run_id, operations::Known { raw, record });
                }
                Ok(Some(Delivery::new(envelope, attempt, entry.id)))
            }
            Err(reason) => {
                tracing::warn!(
                    stream = %self.stream_key,
                    entry = %entry.id,
                    %reason,
                    "dead-lettering undecodable stream entry"
                );
                let record = undecodable_dead_letter(
                    &entry.id,
                    raw.as_deref().unwrap_or_default(),
                    attempt,
                    format!("task could not be decoded: {reason}"),
                    unix_now_ms(),
                );
                // The run first: if the process stops in between, the entry is
                // still there to be dead-lettered again, while the run is not
                // left waiting for a task that is gone.
                self.finish_dead_lettered(&record.run_id, UNREADABLE_TASK_ERROR)
                    .await?;
                self.move_to_dead(&entry.id, &record).await?;
                Ok(None)
            }
        }
    }

    async fn move_to_dead(&self, entry_id: &str, record: &DeadLetter) -> Result<(), QueueError> {
        let json = serde_json::to_string(record).map_err(|e| QueueError::Corrupt {
            what: format!("dead letter for task {}", record.task_id),
            reason: e.to_string(),
        })?;
        let retention = millis(self.settings.run_retention).max(1);
        let cutoff = unix_now_ms().saturating_sub(retention);
        let mut cmd = evalsha(&DEAD_LETTER);
        cmd.arg(3)
            .arg(&self.stream_key)
            .arg(&self.dead_ids_key)
            .arg(&self.dead_data_key)
            .arg(GROUP)
            .arg(entry_id)
            .arg(json)
            .arg(cutoff)
            .arg(retention)
            .arg(&record.task_id)
            .arg(record.at_ms);
        let _acked: i64 = self.query("dead-letter script", &cmd).await?;
        Ok(())
    }

    /// Finishes `run_id` as failed and dead-lettered with `error`, unless it
    /// finished before. A run that is not stored (or an empty id, from a task too
    /// damaged to name its run) or whose record is damaged is left alone.
    async fn finish_dead_lettered(&self, run_id: &str, error: &str) -> Result<(), QueueError> {
        if run_id.is_empty() {
            return Ok(());
        }
        let outcome = dead_lettered_outcome(error);
        let at_ms = unix_now_ms();
        let change = |run: &RunRecord| run.with_outcome(outcome.clone(), at_ms);
        match self.change_run(run_id, change, Extras::default()).await {
            Err(QueueError::NotFound { .. } | QueueError::Corrupt { .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn run_key(&self, run_id: &str) -> String {
        concat(&[&self.run_key_prefix, run_id])
    }

    /// Applies `change` with an optimistic compare-and-set, retrying if another
    /// writer changed the record in between, together with what `extras` adds to
    /// the change (statistics, a kept task, events). Returns the record after the
    /// change, or `None` when `change` left it as it was.
    ///
    /// With `extras.known` (the record as this process last wrote it) the first try
    /// swaps against that without reading the record first; if the record changed
    /// since, the swap fails and the change is made on the record read from Redis.
    async fn change_run(
        &self,
        run_id: &str,
        change: impl Fn(&RunRecord) -> Option<RunRecord>,
        mut extras: Extras<'_>,
    ) -> Result<Option<Known>, QueueError> {
        let key = self.run_key(run_id);
        let mut known = extras.known.take();
        for _ in 0..MAX_RUN_UPDATE_TRIES {
            let (raw, current) = match known.take() {
                Some(known) => (known.raw, known.record),
                None => {
                    let raw: Option<String> =
                        self.query("get run", redis::cmd("GET").arg(&key)).await?;
                    let Some(raw) = raw else {
                        return Err(QueueError::NotFound {
                            kind: "run",
                            id: run_id.to_owned(),
                        });
                    };
                    let current = decode_run(run_id, &raw)?;
                    (raw, current)
                }
            };
            let Some(next) = change(&current) else {
                return Ok(None);
            };
            let (revision, expected) = stored_revision(&raw);
            let next_raw = encode_run(&next, revision + 1)?;
            let cmd = self.cas_command(&key, expected, &current, &next, &next_raw, &extras)?;
            let swapped: i64 = self.query("update run", &cmd).await?;
            if swapped == 1 {
                if let Some(sample) = current.stats_sample(&next, extras.attempt) {
                    self.stats.add(&sample);
                }
                return Ok(Some(Known {
                    raw: next_raw,
                    record: next,
                }));
            }
        }
        Err(QueueError::Unavailable(format!(
            "run {run_id} kept changing while being updated"
        )))
    }
}

#[async_trait]
impl Broker for RedisBackend {
    fn queue_name(&self) -> &str {
        &self.settings.queue_name
    }

    fn system(&self) -> &'static str {
        "redis"
    }

    fn visibility_timeout(&self) -> Duration {
        self.settings.visibility_timeout
    }

    async fn accept(&self, run: &RunRecord, task: &TaskEnvelope) -> Result<(), QueueError> {
        let run_json = encode_run(run, 1)?;
        let task_json = encode_task(task)?;
        let event = RunEvent::of(RunEventKind::Queued, run, run.created_at_ms).to_json();
        let room = run_json.len() + task_json.len() + event.len() + KEYS_ROOM;
        let mut cmd = evalsha_with_room(&ACCEPT, 16, room);
        cmd.arg(6)
            .arg(self.run_key(&run.run_id))
            .arg(&self.stream_key)
            .arg(&self.unfinished_key)
            .arg(self.all_runs_key())
            .arg(self.user_runs_key(&run.user_id))
            .arg(self.events_channel())
            .arg(run_json)
            .arg(TASK_FIELD)
            .arg(task_json)
            .arg(self.next_entry_id())
            .arg(&run.user_id)
            .arg(unfinished_delta(run))
            .arg(run.created_at_ms)
            .arg(&run.run_id)
            .arg(event);
        let accepted: i64 = self.query("accept script", &cmd).await?;
        if accepted == 1 {
            Ok(())
        } else {
            Err(QueueError::AlreadyExists(run.run_id.clone()))
        }
    }

    async fn enqueue(&self, task: &TaskEnvelope) -> Result<(), QueueError> {
        let json = encode_task(task)?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream_key).arg("*").arg(TASK_FIELD).arg(json);
        let _id: String = self.query("xadd", &cmd).await?;
        Ok(())
    }

    async fn receive(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // Redis rejects absurd COUNT values; a worker never needs more anyway.
        let max = max.min(MAX_BATCH);
        let deadline = Instant::now() + wait;
        // New tasks wake the blocking read immediately. Expired leases and
        // finished `retry_later` delays produce no event, so the block is cut
        // into slices and XAUTOCLAIM re-checked between them.
        let recheck = (self.settings.visibility_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            if self.takeover_due() {
                let taken = self.take_over_expired(consumer, max).await?;
                if taken.len() == max {
                    // There may be more: look again at the next receive.
                    self.last_takeover_ms.store(0, Ordering::Relaxed);
                }
                if !taken.is_empty() {
                    return Ok(taken);
                }
            }
            let block = deadline
                .saturating_duration_since(Instant::now())
                .min(recheck);
            let entries = self.read_new(consumer, max, block).await?;
            let mut deliveries = Vec::with_capacity(entries.len());
            for entry in entries {
                // A first delivery from XREADGROUP is always attempt 1.
                if let Some(delivery) = self.decode(entry, 1).await? {
                    deliveries.push(delivery);
                }
            }
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        check_entry_id(delivery)?;
        let mut cmd = evalsha(&ACK);
        cmd.arg(1)
            .arg(&self.stream_key)
            .arg(GROUP)
            .arg(&delivery.delivery_id);
        let _acked: i64 = self.query("ack script", &cmd).await?;
        Ok(())
    }

    async fn extend(&self, delivery: &Delivery, consumer: &str) -> Result<(), QueueError> {
        check_entry_id(delivery)?;
        let mut cmd = evalsha(&EXTEND);
        cmd.arg(1)
            .arg(&self.stream_key)
            .arg(GROUP)
            .arg(&delivery.delivery_id)
            .arg(consumer)
            .arg(delivery.delivery_count());
        let extended: i64 = self.query("extend script", &cmd).await?;
        if extended == 1 {
            Ok(())
        } else {
            Err(QueueError::NotFound {
                kind: "delivery",
                id: delivery.delivery_id.clone(),
            })
        }
    }

    async fn retry_later(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
        check_entry_id(delivery)?;
        // XAUTOCLAIM takes entries idle for at least the visibility timeout, so
        // pretending the entry has already been idle for (timeout - delay)
        // makes it due after `delay`. JUSTID keeps the delivery count as is;
        // the takeover then raises it to attempt + 1.
        let idle = self.settings.visibility_timeout.saturating_sub(delay);
        let mut cmd = evalsha(&PARK);
        cmd.arg(1)
            .arg(&self.stream_key)
            .arg(GROUP)
            .arg(&delivery.delivery_id)
            .arg(PARKED_CONSUMER)
            .arg(delivery.delivery_count())
            .arg(millis(idle));
        let _parked: i64 = self.query("park script", &cmd).await?;
        if delay.is_zero() {
            // Due at once: the next receive here looks for it.
            self.last_takeover_ms.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        check_entry_id(delivery)?;
        let record = DeadLetter {
            task_id: delivery.envelope.task_id.clone(),
            run_id: delivery.envelope.run_id.clone(),
            agent_type: delivery.envelope.agent_type.clone(),
            attempts: delivery.attempt,
            reason: reason.to_owned(),
            at_ms: unix_now_ms(),
        };
        self.finish_dead_lettered(&record.run_id, reason).await?;
        self.move_to_dead(&delivery.delivery_id, &record).await
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        // One round trip (admission asks for every new run); MULTI makes the three counts
        // one snapshot.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XLEN")
            .arg(&self.stream_key)
            .cmd("XPENDING")
            .arg(&self.stream_key)
            .arg(GROUP)
            .cmd("ZCARD")
            .arg(&self.dead_ids_key);
        let mut conn = self.manager.clone();
        let counted: Result<(u64, StreamPendingReply, u64), RedisError> =
            pipe.query_async(&mut conn).await;
        let (length, pending, dead) = match counted {
            Err(e) if is_no_group(&e) => {
                self.ensure_group().await?;
                pipe.query_async(&mut conn).await
            }
            other => other,
        }
        .map_err(|e| redis_error("queue counts", e))?;
        let in_flight = pending.count() as u64;
        Ok(QueueStats {
            // Acknowledged entries are deleted, so the stream is exactly the
            // waiting entries plus the pending ones. (XINFO GROUPS `lag` is
            // often unknown after deletions, so it is not used.)
            depth: length.saturating_sub(in_flight),
            in_flight,
            dead_lettered: dead,
        })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        Ok(self.dead_letter_page(None, limit).await?.dead_letters)
    }

    async fn dead_letter_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, QueueError> {
        self.dead_page(cursor, limit).await
    }

    async fn delete_dead_letter(&self, task_id: &str) -> Result<(), QueueError> {
        self.delete_dead(task_id).await
    }

    async fn retry_run(&self, run_id: &str, at_ms: u64) -> Result<RunRecord, QueueError> {
        self.retry(run_id, at_ms).await
    }

    async fn cancel_run(&self, run_id: &str, at_ms: u64) -> Result<RunRecord, QueueError> {
        self.cancel(run_id, at_ms).await
    }

    async fn subscribe_events(&self) -> Result<EventReceiver, QueueError> {
        self.events_receiver().await
    }

    async fn publish_event(&self, event: &RunEvent) {
        self.publish(event).await;
    }

    async fn wants_events(&self) -> bool {
        self.anyone_listens().await
    }

    async fn subscribe_cancellations(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<String>, QueueError> {
        self.cancels_receiver().await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let _pong: String = self.query("ping", &redis::cmd("PING")).await?;
        Ok(())
    }
}

#[async_trait]
impl RunStore for RedisBackend {
    async fn insert(&self, run: &RunRecord) -> Result<(), QueueError> {
        let json = encode_run(run, 1)?;
        let mut cmd = evalsha(&RUN_INSERT);
        cmd.arg(4)
            .arg(self.run_key(&run.run_id))
            .arg(&self.unfinished_key)
            .arg(self.all_runs_key())
            .arg(self.user_runs_key(&run.user_id))
            .arg(json)
            .arg(&run.user_id)
            .arg(unfinished_delta(run))
            .arg(run.created_at_ms)
            .arg(&run.run_id);
        let set: i64 = self.query("insert run", &cmd).await?;
        if set == 1 {
            Ok(())
        } else {
            Err(QueueError::AlreadyExists(run.run_id.clone()))
        }
    }

    async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, QueueError> {
        let raw: Option<String> = self
            .query("get run", redis::cmd("GET").arg(self.run_key(run_id)))
            .await?;
        raw.map(|raw| decode_run(run_id, &raw)).transpose()
    }

    async fn mark_running(&self, run_id: &str, attempt: u32, at_ms: u64) -> Result<(), QueueError> {
        self.change_run(
            run_id,
            |run| run.with_running(attempt, at_ms),
            Extras::default(),
        )
        .await
        .map(drop)
    }

    async fn finish(
        &self,
        run_id: &str,
        outcome: RunOutcome,
        at_ms: u64,
    ) -> Result<(), QueueError> {
        self.change_run(
            run_id,
            |run| run.with_outcome(outcome.clone(), at_ms),
            Extras::default(),
        )
        .await
        .map(drop)
    }

    async fn start_attempt(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
    ) -> Result<RunRecord, QueueError> {
        self.start(run_id, attempt).await
    }

    async fn finish_attempt(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
        outcome: Option<RunOutcome>,
        task: &TaskEnvelope,
    ) -> Result<(), QueueError> {
        self.end_attempt(run_id, attempt, outcome, task, None).await
    }

    async fn finish_attempt_and_ack(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
        outcome: Option<RunOutcome>,
        task: &TaskEnvelope,
        delivery: &Delivery,
    ) -> Result<(), QueueError> {
        check_entry_id(delivery)?;
        self.end_attempt(run_id, attempt, outcome, task, Some(delivery))
            .await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, QueueError> {
        self.list(query).await
    }

    async fn run_stats(&self, window: StatsWindow, now_ms: u64) -> Result<Stats, QueueError> {
        self.read_stats(window, now_ms).await
    }

    async fn flush(&self) -> Result<(), QueueError> {
        self.stats.flush().await
    }

    async fn unfinished_runs_of(&self, user_id: &str) -> Result<u64, QueueError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&self.unfinished_key).arg(user_id);
        let count: Option<i64> = self.query("count unfinished runs", &cmd).await?;
        Ok(count.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Broker::ping(self).await
    }
}

/// Stream ids look like `1700000000000-0`; anything else was not issued here.
fn check_entry_id(delivery: &Delivery) -> Result<(), QueueError> {
    let id = delivery.delivery_id.as_str();
    let valid = id
        .split_once('-')
        .is_some_and(|(ms, seq)| is_digits(ms) && is_digits(seq));
    if valid {
        Ok(())
    } else {
        Err(QueueError::NotFound {
            kind: "delivery",
            id: id.to_owned(),
        })
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The call of `script` by its hash; the number of keys and the arguments follow.
fn evalsha(script: &scripts::Lua) -> Cmd {
    evalsha_with_room(script, 0, 0)
}

/// [`evalsha`] with room made for `args` more arguments of `bytes` bytes in all. A run's
/// script calls carry one to two kilobytes in twenty arguments, and growing the command's
/// buffers to that size copied them several times over.
fn evalsha_with_room(script: &scripts::Lua, args: usize, bytes: usize) -> Cmd {
    let hash = script.hash();
    let mut cmd = Cmd::with_capacity(args + 2, bytes + "EVALSHA".len() + hash.len());
    cmd.arg("EVALSHA").arg(hash);
    cmd
}

fn is_no_group(err: &RedisError) -> bool {
    err.code() == Some("NOGROUP")
}

/// How much a newly stored `run` adds to its user's unfinished count.
fn unfinished_delta(run: &RunRecord) -> &'static str {
    if run.status.is_terminal() { "0" } else { "1" }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `parts` joined into one string of exactly their length: the per-run keys, for which
/// `format!` cost several times more.
fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.push_str(part);
    }
    out
}

/// Maps a Redis failure during `what`: unexpected reply shapes mean bad data,
/// everything else (I/O, timeouts, server refusing) means "try again later".
fn redis_error(what: &str, err: RedisError) -> QueueError {
    match err.kind() {
        redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse => QueueError::Corrupt {
            what: what.to_owned(),
            reason: err.to_string(),
        },
        _ => QueueError::Unavailable(format!("{what}: {err}")),
    }
}

fn decode_run(run_id: &str, raw: &str) -> Result<RunRecord, QueueError> {
    serde_json::from_str(raw).map_err(|e| QueueError::Corrupt {
        what: format!("run {run_id}"),
        reason: e.to_string(),
    })
}

fn encode_task(task: &TaskEnvelope) -> Result<String, QueueError> {
    serde_json::to_string(task).map_err(|e| QueueError::Corrupt {
        what: format!("task {}", task.task_id),
        reason: e.to_string(),
    })
}

/// How a stored run record begins: its revision comes first, `{"rev":N,...}`.
///
/// A change swaps against the stored record by comparing only this prefix (see
/// `scripts::RUN_CAS`), so neither the record it expects nor the stored one passes
/// through Lua, which hashes every string it is given byte by byte: for records of 0.4 to
/// 1.5 KB that was a large part of a script's cost. Every write of a record goes through a
/// script that checks the revision it replaces (or that there is none), so at most one
/// record ever holds each revision of a run. The field is this backend's own: records
/// decode without it (unknown fields are ignored), and one stored without it, by an
/// earlier version, is compared whole and gets revision 1 when it is next changed.
const REVISION_OPEN: &str = "{\"rev\":";

/// `run` as stored, with revision `rev` (see [`REVISION_OPEN`]).
fn encode_run(run: &RunRecord, rev: u64) -> Result<String, QueueError> {
    // Room for most records, which are 0.4 to 1.5 KB.
    let mut out = Vec::with_capacity(2048);
    out.extend_from_slice(REVISION_OPEN.as_bytes());
    out.extend_from_slice(itoa::Buffer::new().format(rev).as_bytes());
    let brace = out.len();
    serde_json::to_writer(&mut out, run).map_err(|e| QueueError::Corrupt {
        what: format!("run {}", run.run_id),
        reason: e.to_string(),
    })?;
    // The record's own opening brace becomes the comma after the revision.
    debug_assert_eq!(out[brace], b'{');
    out[brace] = b',';
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// The revision of a stored record and the prefix a swap compares against: `{"rev":N,`,
/// or, for a record stored without a revision, revision 0 and the whole record.
fn stored_revision(raw: &str) -> (u64, &str) {
    if let Some(rest) = raw.strip_prefix(REVISION_OPEN)
        && let Some(end) = rest.find(',')
        && let Ok(rev) = rest[..end].parse()
    {
        return (rev, &raw[..REVISION_OPEN.len() + end + 1]);
    }
    (0, raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_record_begins_with_its_revision_and_reads_back_without_it() {
        let run = RunRecord::queued("run-1", "echo", "user-1", "ab", 1_000);
        let raw = encode_run(&run, 12).unwrap();
        assert!(raw.starts_with(r#"{"rev":12,"run_id":"run-1","#), "{raw}");
        assert_eq!(decode_run("run-1", &raw).unwrap(), run);
        // The comma ends the prefix, so revision 1 is not a prefix of revision 12.
        assert_eq!(stored_revision(&raw), (12, r#"{"rev":12,"#));
    }

    #[test]
    fn a_record_without_a_revision_is_compared_whole() {
        let plain = serde_json::to_string(&RunRecord::queued("r", "echo", "u", "ab", 1)).unwrap();
        assert_eq!(stored_revision(&plain), (0, plain.as_str()));
        assert_eq!(stored_revision(r#"{"rev":x,"a":1}"#).0, 0);
    }
}
