-- lookup.lua: read a request's hierarchy and, on a miss, take the lease: one round trip.
--
-- KEYS[1..n]        the hierarchy's entries, most specific first
-- KEYS[n+1..n+m]    the generation counters of the request's scopes
-- KEYS[n+m+1]       the lease of the most specific entry
-- ARGV[1]           n
-- ARGV[2]           per level, which counters tag its entry: six characters a level, 1-based
--                   indexes padded with '0' ("123400123000": level 1 tagged by counters 1-4,
--                   level 2 by 1-3): one argument, not one a level, as each argument costs
--                   the script about as much as a few lines of it
-- ARGV[3]           lease token to take the lease with on a miss, or '' to take none
-- ARGV[4]           lease time to live in milliseconds
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
local shape = ARGV[2]
local byte = string.byte
local function tag_of(level)
  local base = (level - 1) * 6
  local tag = values[n + byte(shape, base + 1) - 48] or '0'
  for k = 2, 6 do
    local counter = byte(shape, base + k) - 48
    if counter == 0 then
      break
    end
    tag = tag .. ',' .. (values[n + counter] or '0')
  end
  return tag
end
for i = 1, n do
  local entry = values[i]
  if entry then
    local tag = tag_of(i)
    if byte(entry, #tag + 1) == 124 and string.sub(entry, 1, #tag) == tag then -- 124: '|'
      return {i, entry}
    end
    redis.call('DEL', KEYS[i])
  end
end
local token = ARGV[3]
local leased = 0
local holder = false
if token ~= '' then
  if redis.call('SET', KEYS[#KEYS], token, 'NX', 'PX', ARGV[4]) then
    leased = 1
  else
    holder = redis.call('GET', KEYS[#KEYS])
  end
else
  holder = redis.call('GET', KEYS[#KEYS])
end
return {0, tag_of(1), leased, holder}
