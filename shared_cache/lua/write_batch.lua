-- write_batch.lua: store many single-level entries whose generations are still current.
--
-- KEYS[1], KEYS[2]  tenant and type generation counters
-- KEYS[2i+1]        entry key of item i (i = 1..k)
-- KEYS[2i+2]        resource generation counter of item i
-- ARGV[1]           time to live in milliseconds (0 = no expiry)
-- ARGV[i+1]         the entry of item i, "tag|expiry|payload" (_entry's format), tagged with the
--                   generations read before it was generated: stored only if they are still the
--                   current ones. Sent whole, so the script compares a few bytes and builds no
--                   string of the payload's size.
-- Returns how many entries were stored.
local got = redis.call('MGET', KEYS[1], KEYS[2])
local prefix = (got[1] or '0') .. ',' .. (got[2] or '0') .. ','
local ttl = tonumber(ARGV[1])
local k = (#KEYS - 2) / 2
local stored = 0
for i = 1, k do
  local tag = prefix .. (redis.call('GET', KEYS[2 * i + 2]) or '0')
  local entry = ARGV[i + 1]
  if string.byte(entry, #tag + 1) == 124 and string.sub(entry, 1, #tag) == tag then -- 124: '|'
    if ttl > 0 then
      redis.call('SET', KEYS[2 * i + 1], entry, 'PX', ttl)
    else
      redis.call('SET', KEYS[2 * i + 1], entry)
    end
    stored = stored + 1
  end
end
return stored
