-- invalidate.lua: bump the generations of some scopes and announce it, atomically.
--
-- KEYS[1..k]   generation counters to bump (INCR: O(1) whatever the scope covers)
-- ARGV[1]      pub/sub channel of eviction events, or '' to publish nothing
-- ARGV[2]      the event (JSON) to publish
--
-- Returns the new generations, in KEYS order.
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('INCR', KEYS[i])
end
if ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return out
