-- write.lua: store an entry only if its generations are still current; release the lease; delete
-- the stale entries the lookup met (if still stale).
--
-- KEYS[1]             entry key (the most specific level)
-- KEYS[2..m+1]        generation counters of the entry's scopes, in tag order
-- KEYS[m+2]           lease key
-- KEYS[m+3]           the tenant's set of entries without expiry (so invalidated ones can be found)
-- KEYS[m+4..]         entries the lookup found stale
-- ARGV[1]             expected tag (the generations read before the fetch), or '' for the current ones
-- ARGV[2]             payload, or '' to store nothing (only release the lease, delete the stale)
-- ARGV[3]             time to live in milliseconds, 0 for no expiry
-- ARGV[4]             lease token to release, or ''
-- ARGV[5]             expiry as wall-clock milliseconds (0 = none), kept in the entry for memory tiers
-- ARGV[6]             member to add to KEYS[m+3] when the entry has no expiry (its key and generations)
-- ARGV[7]             m, the number of generation counters
-- ARGV[8..]           the stale tag seen for each stale entry (deleted only if it still has that tag)
--
-- An entry is "tag|expiry|payload", tag being the generations it was fetched under, joined by ','.
-- Returns 1 if stored, 0 if not (an invalidation bumped a generation since the read: the value may
-- predate it, so it must not be stored as fresh).
local m = tonumber(ARGV[7])
local gens = redis.call('MGET', unpack(KEYS, 2, m + 1))
for i = 1, m do
  if not gens[i] then gens[i] = '0' end
end
local tag = table.concat(gens, ',')
local stored = 0
if ARGV[2] ~= '' and (ARGV[1] == '' or ARGV[1] == tag) then
  if tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[1], tag .. '|' .. ARGV[5] .. '|' .. ARGV[2], 'PX', ARGV[3])
  else
    redis.call('SET', KEYS[1], tag .. '|' .. ARGV[5] .. '|' .. ARGV[2])
    redis.call('SADD', KEYS[m + 3], ARGV[6])
  end
  stored = 1
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[m + 2]) == ARGV[4] then
  redis.call('DEL', KEYS[m + 2])
end
for i = m + 4, #KEYS do
  local seen = ARGV[i - m + 4]
  local v = redis.call('GET', KEYS[i])
  if v and string.sub(v, 1, #seen + 1) == seen .. '|' then
    redis.call('DEL', KEYS[i])
  end
end
return stored
