-- lookup.lua: read a request's hierarchy and, on a miss, take the lease: one round trip.
--
-- KEYS[1..n]        the hierarchy's entries, most specific first
-- KEYS[n+1..n+m]    the generation counters of the request's scopes
-- KEYS[n+m+1]       the lease of the most specific entry
-- ARGV[1]           n
-- ARGV[2..n+1]      per level, which counters tag its entry: 1-based indexes, one digit each ("1236")
-- ARGV[n+2]         lease token to take the lease with on a miss, or '' to take none
-- ARGV[n+3]         lease time to live in milliseconds
--
-- An entry is "tag|expiry|payload" (tag: its counters' values when it was fetched, joined by ',';
-- a missing counter reads as 0). The first entry whose tag equals the current values wins. Entries
-- met with another tag are stale: they can never be served again, so they are deleted here.
--
-- Returns {level, entry} on a hit; on a miss {0, tag of level 1, 1 if the lease was taken here,
-- the token of whoever holds it otherwise (false when nobody does)}.
local n = tonumber(ARGV[1])
local m = #KEYS - n - 1
local values = redis.call('MGET', unpack(KEYS, 1, n + m))
local gens = {}
for j = 1, m do
  gens[j] = values[n + j] or '0'
end
local function tag_of(level)
  local digits = ARGV[1 + level]
  local parts = {}
  for k = 1, #digits do
    parts[k] = gens[string.byte(digits, k) - 48]
  end
  return table.concat(parts, ',')
end
for i = 1, n do
  local entry = values[i]
  if entry then
    local tag = tag_of(i)
    if string.sub(entry, 1, #tag + 1) == tag .. '|' then
      return {i, entry}
    end
    redis.call('DEL', KEYS[i])
  end
end
local token = ARGV[n + 2]
local leased = 0
local holder = false
if token ~= '' then
  if redis.call('SET', KEYS[#KEYS], token, 'NX', 'PX', ARGV[n + 3]) then
    leased = 1
  else
    holder = redis.call('GET', KEYS[#KEYS])
  end
else
  holder = redis.call('GET', KEYS[#KEYS])
end
return {0, tag_of(1), leased, holder}
