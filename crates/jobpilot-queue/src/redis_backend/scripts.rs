//! Every Lua script the Redis backend runs, in one place.
//!
//! Each script is one atomic step on the server: Redis runs it to the end
//! without interleaving other commands, and a client that disconnects after
//! sending it cannot stop it half-way. A script does not roll back a write when
//! a later command fails, so each one either checks first and writes last, or
//! undoes its own earlier write (see [`ACCEPT_SCRIPT`]).

/// Writes a new run record and its task together, and counts the run in its
/// user's unfinished runs.
///
/// The record is written first; if adding the task then fails, the record is
/// deleted again before the error is returned, and if counting the run fails,
/// both are removed again, so no record is ever left without a task and no
/// accepted run is left uncounted. Returns 0 (and writes nothing) when the run
/// already exists.
///
/// KEYS[1] run key, KEYS[2] stream, KEYS[3] unfinished-runs hash; ARGV: run
/// JSON, task field, task JSON, stream entry id (`*`), user id, count delta
/// (`1`, or `0` for a run stored already finished).
pub(super) const ACCEPT_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
local added = redis.pcall('XADD', KEYS[2], ARGV[4], ARGV[2], ARGV[3])
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
return 1
";

/// Acknowledge and delete in one step, so the stream never keeps an entry the
/// group has already finished (that would distort the depth count).
pub(super) const ACK_SCRIPT: &str = r"
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return n
";

/// Acknowledge, delete and record a dead letter atomically; record only if this
/// call was the one that acknowledged it, so a duplicate is not listed twice.
///
/// Retention: the list is newest first, so dead letters older than the cutoff
/// are popped from its tail (a bounded number per call), and the whole list
/// expires one retention period after the last dead letter was added.
///
/// KEYS[1] stream, KEYS[2] dead-letter list; ARGV: group, entry id, dead
/// letter JSON, cutoff (unix ms), retention (ms).
pub(super) const DEAD_LETTER_SCRIPT: &str = r"
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if n == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
local cutoff = tonumber(ARGV[4])
for _ = 1, 100 do
  local oldest = redis.call('LINDEX', KEYS[2], -1)
  if not oldest then break end
  local ok, record = pcall(cjson.decode, oldest)
  if ok and type(record) == 'table' and tonumber(record.at_ms) and tonumber(record.at_ms) < cutoff then
    redis.call('RPOP', KEYS[2])
  else
    break
  end
end
return n
";

/// Extends a delivery (resets its idle time) only while `consumer` still holds
/// it with the same delivery count. A plain `XCLAIM ... 0` would also take the
/// entry away from whoever holds it now: the parked owner of a `retry_later`
/// (reviving a task that is meant to wait) or a worker that took it over after
/// the timeout. JUSTID keeps the delivery count, so no attempt is counted.
///
/// KEYS[1] stream; ARGV: group, entry id, consumer, attempt.
pub(super) const EXTEND_SCRIPT: &str = r"
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
pub(super) const PARK_SCRIPT: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
local e = p[1]
if e == nil or tonumber(e[4]) ~= tonumber(ARGV[4]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[5], 'JUSTID')
return 1
";

/// Compare-and-set of a whole run record. The JSON is edited in Rust rather
/// than in Lua because Lua's cjson would not round-trip arbitrary results.
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
/// KEYS[1] run key, KEYS[2] unfinished-runs hash; ARGV: current JSON, next
/// JSON, expiry ms, user id, count delta.
pub(super) const RUN_CAS_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
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
  return 1
end
return 0
";

/// Stores a run record without a task, if no run with its id exists, and
/// counts it in its user's unfinished runs in the same step (checked first,
/// written last).
///
/// KEYS[1] run key, KEYS[2] unfinished-runs hash; ARGV: run JSON, user id,
/// count delta (`1`, or `0` for a run stored already finished).
pub(super) const RUN_INSERT_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[3] ~= '0' then
  redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";
