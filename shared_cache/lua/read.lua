-- read.lua: generation-checked hierarchical read in one round trip.
--
-- KEYS[1..n]        entry keys, most specific level first
-- KEYS[n+1..n+m]    generation counters of the request's scopes (tenant, type, resource, ...)
-- KEYS[n+m+1]       lease key of the most specific entry
-- ARGV[1]           n
-- ARGV[2..n+1]      per level: the 1-based indexes (one digit each) of the generations tagging it
-- ARGV[n+2]         lease token, or '' to take no lease
-- ARGV[n+3]         lease time to live in milliseconds
--
-- An entry is "tag|payload", tag being the generations it was fetched under, joined by ','.
-- Hit:  {level, payload, pttl} for the first level whose tag equals the current generations.
-- Miss: {0, lease_taken, tag}, tag being level 1's current generations, which the caller must
--       send back with its write (write.lua refuses it if an invalidation came in between).
-- Entries found stale are deleted on the spot, so invalidated data is reclaimed as it is met.
local n = tonumber(ARGV[1])
local m = #KEYS - n - 1
local got = redis.call('MGET', unpack(KEYS, 1, n + m))
local function tag_of(spec)
  local parts = {}
  for j = 1, #spec do
    parts[j] = got[n + string.byte(spec, j) - 48] or '0'
  end
  return table.concat(parts, ',')
end
for i = 1, n do
  local v = got[i]
  if v then
    local sep = string.find(v, '|', 1, true)
    if sep and string.sub(v, 1, sep - 1) == tag_of(ARGV[i + 1]) then
      return {i, string.sub(v, sep + 1), redis.call('PTTL', KEYS[i])}
    end
    redis.call('DEL', KEYS[i])
  end
end
local taken = 0
if ARGV[n + 2] ~= '' then
  if redis.call('SET', KEYS[n + m + 1], ARGV[n + 2], 'NX', 'PX', ARGV[n + 3]) then
    taken = 1
  end
end
return {0, taken, tag_of(ARGV[2])}
