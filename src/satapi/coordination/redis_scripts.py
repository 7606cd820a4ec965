"""The Lua scripts behind the Redis lease semaphores: the one place that touches their keys.

Key layout (every key starts with the coordinator's prefix, `{satapi}:` by default, whose hash tag
keeps them in one cluster slot):

* `procs`        sorted set: process id -> its liveness deadline (ms, Redis clock).
* `sem:<name>`   sorted set: permit token -> lease deadline (ms). Its size is the permits in use.
* `semw:<name>`  hash: process id -> how many of that process's requests wait for `<name>`.
* `next:<name>`  the earliest time (ms) the next permit of `<name>` may start (`min_interval_s`).

Times come from the Redis server's clock (`TIME`), so the processes' clocks never matter. Every
script runs atomically; a permit set (e.g. the global cap and a provider's cap) is granted all at
once or not at all, so a request never sits on one permit while it waits for another.
"""

from __future__ import annotations

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The requests of live processes (other than `me`) that wait for a semaphore; drops the counts
# of processes whose liveness deadline has passed (killed, or cut off from Redis).
_WAITING_TOTAL = """
local function waiting_total(wkey, procs, me, now)
  local total = 0
  local flat = redis.call('HGETALL', wkey)
  for i = 1, #flat, 2 do
    if flat[i] ~= me then
      local deadline = redis.call('ZSCORE', procs, flat[i])
      if deadline and tonumber(deadline) > now then
        total = total + tonumber(flat[i + 1])
      else
        redis.call('HDEL', wkey, flat[i])
      end
    end
  end
  return total
end
local function set_waiting(wkey, me, count, lease)
  if count > 0 then
    redis.call('HSET', wkey, me, count)
    redis.call('PEXPIRE', wkey, lease * 4)
  else
    redis.call('HDEL', wkey, me)
  end
end
"""

# KEYS: procs, then per semaphore: sem, semw, next.
# ARGV: me, token, lease_ms, mode, n, then per semaphore: capacity, max_waiting (-2 untracked,
#       -1 tracked without a limit), interval_ms, waiting_if_granted, waiting_if_not.
# mode: "new" tries and may shed; "queue" only queues (and may shed); "retry" tries, never sheds.
# Returns {1, delay_ms} granted | {0, full_index, ms_until_first_lease_ends} | {-1, shed_index}.
ACQUIRE = (
    _PRELUDE
    + _WAITING_TOTAL
    + """
local me, token, lease, mode = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local n = tonumber(ARGV[5])
redis.call('ZADD', KEYS[1], now + lease, me)
local function key(i, j) return KEYS[1 + 3 * (i - 1) + j] end
local function arg(i, j) return tonumber(ARGV[5 + 5 * (i - 1) + j]) end
local full, soonest = 0, -1
if mode == 'queue' then
  full = 1
else
  for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', key(i, 1), '-inf', now)
    if redis.call('ZCARD', key(i, 1)) >= arg(i, 1) then
      full = i
      local first = redis.call('ZRANGE', key(i, 1), 0, 0, 'WITHSCORES')
      if first[2] then soonest = tonumber(first[2]) - now end
      break
    end
  end
end
if full == 0 then
  local delay = 0
  for i = 1, n do
    redis.call('ZADD', key(i, 1), now + lease, token)
    redis.call('PEXPIRE', key(i, 1), lease * 2)
    if arg(i, 2) ~= -2 then set_waiting(key(i, 2), me, arg(i, 4), lease) end
    local interval = arg(i, 3)
    if interval > 0 then
      local start = math.max(now, tonumber(redis.call('GET', key(i, 3)) or '0'))
      redis.call('SET', key(i, 3), start + interval, 'PX', start + interval - now + 1000)
      delay = math.max(delay, start - now)
    end
  end
  return {1, delay}
end
if mode ~= 'retry' then
  for i = 1, n do
    local limit = arg(i, 2)
    if limit >= 0 and waiting_total(key(i, 2), KEYS[1], me, now) + arg(i, 5) > limit then
      return {-1, i}
    end
  end
end
for i = 1, n do
  if arg(i, 2) ~= -2 then set_waiting(key(i, 2), me, arg(i, 5), lease) end
end
return {0, full, soonest}
"""
)

# KEYS: per semaphore: sem, semw.  ARGV: token, channel, message, then per semaphore: tracked.
# Announces the release only when someone may be waiting (an untracked semaphore, or a tracked
# one with a waiting count), so an idle fleet costs no pub/sub traffic.
RELEASE = """
local token, channel, message = ARGV[1], ARGV[2], ARGV[3]
local announce = false
for i = 1, #KEYS / 2 do
  redis.call('ZREM', KEYS[2 * i - 1], token)
  if ARGV[3 + i] == '0' then
    announce = true
  elseif not announce then
    for _, v in ipairs(redis.call('HVALS', KEYS[2 * i])) do
      if tonumber(v) > 0 then announce = true break end
    end
  end
end
if announce then redis.call('PUBLISH', channel, message) end
return 0
"""

# KEYS: procs, then one sem key per token.  ARGV: me, lease_ms, then the tokens.
# Extends this process's liveness and every lease it holds. A token Redis no longer has (it
# restarted empty, or the lease ran out while this process stalled) is put back -- the transfer is
# still running -- and reported, so the caller can release any it finished meanwhile.
RENEW = (
    _PRELUDE
    + """
local me, lease = ARGV[1], tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000)
local restored = {}
for i = 2, #KEYS do
  local token = ARGV[i + 1]
  if not redis.call('ZSCORE', KEYS[i], token) then table.insert(restored, token) end
  redis.call('ZADD', KEYS[i], now + lease, token)
  redis.call('PEXPIRE', KEYS[i], lease * 2)
end
return restored
"""
)

# KEYS: procs, then per semaphore: sem, semw.  Returns {in_use, waiting} per semaphore, for
# every live process (the fleet-wide gauges).
STATS = (
    _PRELUDE
    + _WAITING_TOTAL
    + """
local out = {}
for i = 1, (#KEYS - 1) / 2 do
  local sem = KEYS[2 * i]
  redis.call('ZREMRANGEBYSCORE', sem, '-inf', now)
  table.insert(out, redis.call('ZCARD', sem))
  table.insert(out, waiting_total(KEYS[2 * i + 1], KEYS[1], '', now))
end
return out
"""
)

# KEYS: value.  ARGV: the value the caller saw.  Deletes a shared value only if it is still that
# one, so a process dropping a refused token cannot delete the fresh one another just stored.
DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
