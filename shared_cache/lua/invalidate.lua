-- invalidate.lua: bump the generations of some scopes and announce it, atomically.
--
-- KEYS[1..k]   generation counters to bump (INCR: O(1) whatever the scope covers)
-- KEYS[k+1]    with a receipt (ARGV[3] > 0): the receipt key, set in the same script, so whoever
--              waits for this invalidation knows it was applied (never before, never without it)
-- ARGV[1]      pub/sub channel of eviction events, or '' to publish nothing
-- ARGV[2]      the event (JSON) to publish
-- ARGV[3]      receipt time to live in milliseconds; 0 or absent: no receipt
--
-- A counter that cannot be incremented (it holds something that is not an integer) counts as
-- invalidated: it is replaced by a value no entry was ever tagged with (the server's clock in
-- microseconds, far above any count reached by INCR), so the invalidation still happens and the
-- next ones work again.
--
-- Returns the new generations, in KEYS order.
local ttl = tonumber(ARGV[3] or '0')
local n = #KEYS
if ttl > 0 then
  n = n - 1
end
local out = {}
for i = 1, n do
  local v = redis.pcall('INCR', KEYS[i])
  if type(v) == 'table' and v.err then
    local now = redis.call('TIME')
    v = string.format('%d%06d', tonumber(now[1]), tonumber(now[2]))
    redis.call('DEL', KEYS[i])
    redis.call('SET', KEYS[i], v)
  end
  out[i] = v
end
if ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
if ttl > 0 then
  redis.call('SET', KEYS[#KEYS], '1', 'PX', ttl)
end
return out
