-- write_batch.lua: store many single-level entries whose generations are still current.
--
-- KEYS[1], KEYS[2]  tenant and type generation counters
-- KEYS[2i+1]        entry key of item i (i = 1..k)
-- KEYS[2i+2]        resource generation counter of item i
-- ARGV[1] time to live in milliseconds (0 = no expiry), ARGV[2] expiry
-- as wall-clock milliseconds (0 = none); then for item i: ARGV[2i+1] expected tag, ARGV[2i+2]
-- payload. Returns how many entries were stored.
local got = redis.call('MGET', KEYS[1], KEYS[2])
local prefix = (got[1] or '0') .. ',' .. (got[2] or '0') .. ','
local ttl = tonumber(ARGV[1])
local k = (#KEYS - 2) / 2
local stored = 0
for i = 1, k do
  local rg = redis.call('GET', KEYS[2 * i + 2]) or '0'
  local tag = prefix .. rg
  if ARGV[2 * i + 1] == tag then
    local entry = tag .. '|' .. ARGV[2] .. '|' .. ARGV[2 * i + 2]
    if ttl > 0 then
      redis.call('SET', KEYS[2 * i + 1], entry, 'PX', ttl)
    else
      redis.call('SET', KEYS[2 * i + 1], entry)
    end
    stored = stored + 1
  end
end
return stored
