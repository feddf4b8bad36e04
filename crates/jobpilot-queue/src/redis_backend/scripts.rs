//! Every Lua script the Redis backend runs, in one place.
//!
//! Each script is one atomic step on the server: Redis runs it to the end
//! without interleaving other commands, and a client that disconnects after
//! sending it cannot stop it half-way. A script does not roll back a write when
//! a later command fails, so each one either checks first and writes last, or
//! undoes its own earlier write (see [`ACCEPT_SCRIPT`]).
//!
//! They are sent by hash (`EVALSHA`, see [`Lua`]): the text goes to Redis once,
//! and again only after Redis lost its script cache (a restart, `SCRIPT FLUSH`).

use std::sync::OnceLock;

/// A script's text, and its SHA1 (what `EVALSHA` names it by), computed on first use.
pub(super) struct Lua {
    code: &'static str,
    hash: OnceLock<String>,
}

impl Lua {
    const fn new(code: &'static str) -> Self {
        Lua {
            code,
            hash: OnceLock::new(),
        }
    }

    pub(super) fn code(&self) -> &'static str {
        self.code
    }

    pub(super) fn hash(&self) -> &str {
        self.hash
            .get_or_init(|| redis::Script::new(self.code).get_hash().to_owned())
    }
}

pub(super) static SWEEP: Lua = Lua::new(SWEEP_SCRIPT);
pub(super) static ACCEPT: Lua = Lua::new(ACCEPT_SCRIPT);
pub(super) static ACK: Lua = Lua::new(ACK_SCRIPT);
pub(super) static DEAD_LETTER: Lua = Lua::new(DEAD_LETTER_SCRIPT);
pub(super) static DELETE_DEAD: Lua = Lua::new(DELETE_DEAD_SCRIPT);
pub(super) static EXTEND: Lua = Lua::new(EXTEND_SCRIPT);
pub(super) static PARK: Lua = Lua::new(PARK_SCRIPT);
pub(super) static RUN_CAS: Lua = Lua::new(RUN_CAS_SCRIPT);
pub(super) static RETRY: Lua = Lua::new(RETRY_SCRIPT);
pub(super) static RUN_INSERT: Lua = Lua::new(RUN_INSERT_SCRIPT);

/// Every script, to load again when Redis answers `NOSCRIPT`.
pub(super) static ALL: [&Lua; 10] = [
    &SWEEP,
    &ACCEPT,
    &ACK,
    &DEAD_LETTER,
    &DELETE_DEAD,
    &EXTEND,
    &PARK,
    &RUN_CAS,
    &RETRY,
    &RUN_INSERT,
];

/// Lua that removes from the indexes the runs whose expiry time (in the schedule) has
/// passed, at most 50 per call. Expects the locals `all_runs` (index of all runs),
/// `schedule` (the expiry schedule: `run id \n user index key` by expiry time) and `now`.
/// The user index key comes from the schedule, not from KEYS: this backend expects a
/// single Redis, not a cluster.
macro_rules! sweep_expired {
    () => {
        "
local due = redis.call('ZRANGEBYSCORE', schedule, '-inf', now, 'LIMIT', 0, 50)
for _, m in ipairs(due) do
  local cut = string.find(m, '\\n', 1, true)
  if cut then
    local id = string.sub(m, 1, cut - 1)
    redis.call('ZREM', all_runs, id)
    redis.call('ZREM', string.sub(m, cut + 1), id)
  end
  redis.call('ZREM', schedule, m)
end
"
    };
}

/// Removes the index entries of expired runs (see `sweep_expired!`); listing calls it
/// first, so a listing never has to skip many expired entries.
///
/// KEYS[1] index of all runs, KEYS[2] expiry schedule; ARGV: now (ms).
const SWEEP_SCRIPT: &str = concat!(
    "
local all_runs, schedule, now = KEYS[1], KEYS[2], ARGV[1]
",
    sweep_expired!(),
    "
return 1
"
);

/// Writes a new run record and its task together (the stream entry carries the record
/// too, field `run`, so that a worker can start the run without reading it), counts the
/// run in its user's
/// unfinished runs, adds it to the time-ordered indexes and announces it.
///
/// The record is written first; if adding the task then fails, the record is
/// deleted again before the error is returned, and if counting the run fails,
/// both are removed again, so no record is ever left without a task and no
/// accepted run is left uncounted. Returns 0 (and writes nothing) when the run
/// already exists.
///
/// KEYS[1] run key, KEYS[2] stream, KEYS[3] unfinished-runs hash, KEYS[4] index
/// of all runs, KEYS[5] index of the user's runs, KEYS[6] events channel; ARGV:
/// run JSON, task field, task JSON, stream entry id (`*`), user id, count delta
/// (`1`, or `0` for a run stored already finished), created at (ms), run id,
/// event JSON.
const ACCEPT_SCRIPT: &str = r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
local added = redis.pcall('XADD', KEYS[2], ARGV[4], ARGV[2], ARGV[3], 'run', ARGV[1])
if type(added) == 'table' and added.err then
  redis.call('DEL', KEYS[1])
  return added
end
if ARGV[6] ~= '0' then
  local counted = redis.pcall('HINCRBY', KEYS[3], ARGV[5], ARGV[6])
  if type(counted) == 'table' and counted.err then
    redis.call('XDEL', KEYS[2], added)
    redis.call('DEL', KEYS[1])
    return counted
  end
end
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[8])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[8])
redis.call('PUBLISH', KEYS[6], ARGV[9])
return 1
";

/// Acknowledge and delete in one step, so the stream never keeps an entry the
/// group has already finished (that would distort the depth count).
const ACK_SCRIPT: &str = r"
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return n
";

/// Acknowledge, delete and record a dead letter atomically; record only if this
/// call was the one that acknowledged it, so a duplicate is not listed twice.
/// Dead letters are a sorted set of task ids by time plus a hash of their JSON,
/// one per task (a later one replaces an earlier one of the same task).
///
/// Retention: dead letters older than the cutoff are removed (a bounded number
/// per call), and both keys expire one retention period after the last dead
/// letter was added.
///
/// KEYS[1] stream, KEYS[2] dead-letter ids (sorted set), KEYS[3] dead-letter
/// data (hash); ARGV: group, entry id, dead letter JSON, cutoff (unix ms),
/// retention (ms), task id, time (unix ms).
const DEAD_LETTER_SCRIPT: &str = r"
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if n == 1 then
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[6])
  redis.call('HSET', KEYS[3], ARGV[6], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4], 'LIMIT', 0, 100)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return n
";

/// Removes one dead letter; returns 1 if there was one.
///
/// KEYS[1] dead-letter ids, KEYS[2] dead-letter data; ARGV: task id.
const DELETE_DEAD_SCRIPT: &str = r"
local n = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return n
";

/// Extends a delivery (resets its idle time) only while `consumer` still holds
/// it with the same delivery count. A plain `XCLAIM ... 0` would also take the
/// entry away from whoever holds it now: the parked owner of a `retry_later`
/// (reviving a task that is meant to wait) or a worker that took it over after
/// the timeout. JUSTID keeps the delivery count, so no attempt is counted.
///
/// KEYS[1] stream; ARGV: group, entry id, consumer, attempt.
const EXTEND_SCRIPT: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
local e = p[1]
if e == nil or e[2] ~= ARGV[3] or tonumber(e[4]) ~= tonumber(ARGV[4]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
";

/// Parks a delivery for `retry_later`, unless it is gone or was handed out
/// again since (its delivery count moved past the caller's attempt).
///
/// KEYS[1] stream; ARGV: group, entry id, parked consumer, attempt, idle ms.
const PARK_SCRIPT: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
local e = p[1]
if e == nil or tonumber(e[4]) ~= tonumber(ARGV[4]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[5], 'JUSTID')
return 1
";

/// Compare-and-set of a whole run record, with everything that goes with the
/// change in the same atomic step. The JSON is edited in Rust rather than in Lua
/// because Lua's cjson would not round-trip arbitrary results.
///
/// The stored record is compared by its revision prefix (`{"rev":N,`, see
/// `REVISION_OPEN`): `GETRANGE` hands Lua those few bytes rather than the whole
/// record. A record stored without a revision is compared whole: the caller sends
/// all of it, and no valid JSON object is a strict prefix of another.
///
/// Retention: a record that becomes finished gets its expiry in the same step
/// (ARGV[3] milliseconds; 0 keeps it without one), so no finished run is ever
/// stored without it.
///
/// Admission: the change that first finishes a run takes it off its user's
/// unfinished count in the same step (ARGV[5] is `-1` then, otherwise `0`); a
/// field that reaches zero is removed so the hash holds only active users. The
/// count is changed before the record, so a failure leaves both as they were.
///
/// A run that ends failed or cancelled keeps its task for a retry. The event,
/// and for a running run whose cancellation was asked for its id, are
/// published. (Statistics are not written here but summed by each process and
/// written once a second: see `stats_buffer`.)
///
/// Acknowledgement: with an entry id in ARGV[13], the task's stream entry is
/// acknowledged and deleted in the same step (as [`ACK_SCRIPT`] does), so a
/// worker stores an outcome and lets go of its task in one round trip.
///
/// Indexes: a run that finishes is booked in the expiry schedule (a sorted set
/// by expiry time of `run id \n user index key`), and the index entries of up
/// to 50 runs that have expired are removed, so the indexes hold the live runs
/// only.
///
/// KEYS[1] run key, KEYS[2] unfinished-runs hash, KEYS[3] the run's kept task,
/// KEYS[4] events channel, KEYS[5] cancellations channel, KEYS[6] index of all
/// runs, KEYS[7] expiry schedule, KEYS[8] stream; ARGV: the current record's
/// revision prefix (never empty), next JSON, expiry ms, user id, count delta, task
/// JSON to keep (or ''), retention (ms), event JSON (or ''), run id to cancel (or
/// ''), now (ms), schedule member, consumer group, entry id to acknowledge (or '').
const RUN_CAS_SCRIPT: &str = concat!(
    "
if redis.call('GETRANGE', KEYS[1], 0, #ARGV[1] - 1) ~= ARGV[1] then return 0 end
if ARGV[5] ~= '0' then
  if redis.call('HINCRBY', KEYS[2], ARGV[4], ARGV[5]) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[4])
  end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7])
end
if ARGV[8] ~= '' then
  redis.call('PUBLISH', KEYS[4], ARGV[8])
end
if ARGV[9] ~= '' then
  redis.call('PUBLISH', KEYS[5], ARGV[9])
end
if ARGV[13] ~= '' then
  redis.call('XACK', KEYS[8], ARGV[12], ARGV[13])
  redis.call('XDEL', KEYS[8], ARGV[13])
end
if tonumber(ARGV[3]) > 0 then
  redis.call('ZADD', KEYS[7], tonumber(ARGV[10]) + tonumber(ARGV[3]), ARGV[11])
  local all_runs, schedule, now = KEYS[6], KEYS[7], ARGV[10]
",
    sweep_expired!(),
    "
end
return 1
"
);

/// Queues a failed or cancelled run again: the record (unchanged since it was
/// read: its revision prefix is compared, as in [`RUN_CAS_SCRIPT`]) goes back to
/// queued without an expiry, its kept task goes on the stream, the run is counted
/// unfinished again, its dead letter is removed and the event published. Returns
/// 1, 0 when the record changed meanwhile (read it again), -1 when the task is no
/// longer kept.
///
/// KEYS[1] run key, KEYS[2] kept task, KEYS[3] stream, KEYS[4] unfinished-runs
/// hash, KEYS[5] dead-letter ids, KEYS[6] dead-letter data, KEYS[7] events
/// channel, KEYS[8] expiry schedule; ARGV: current revision prefix, next JSON, task
/// field, task JSON, user id, run id, event JSON, schedule member (the run no
/// longer expires).
const RETRY_SCRIPT: &str = r"
if redis.call('GETRANGE', KEYS[1], 0, #ARGV[1] - 1) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local added = redis.pcall('XADD', KEYS[3], '*', ARGV[3], ARGV[4])
if type(added) == 'table' and added.err then return added end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[5], ARGV[6])
redis.call('HDEL', KEYS[6], ARGV[6])
redis.call('PUBLISH', KEYS[7], ARGV[7])
redis.call('ZREM', KEYS[8], ARGV[8])
return 1
";

/// Stores a run record without a task, if no run with its id exists, counts it
/// in its user's unfinished runs and indexes it, in the same step (checked
/// first, written last).
///
/// KEYS[1] run key, KEYS[2] unfinished-runs hash, KEYS[3] index of all runs,
/// KEYS[4] index of the user's runs; ARGV: run JSON, user id, count delta (`1`,
/// or `0` for a run stored already finished), created at (ms), run id.
const RUN_INSERT_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[3] ~= '0' then
  redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
return 1
";
