-- read_batch.lua: generation-checked lookup of many single-level entries in one round trip
-- (batch embeddings).
--
-- KEYS[1], KEYS[2]  tenant and type generation counters
-- KEYS[2i+1]        entry key of item i (i = 1..k)
-- KEYS[2i+2]        resource generation counter of item i
--
-- Entries are "tag|expiry|payload" (see write.lua).
-- Returns {tenant_gen, type_gen, v1, v2, ...}: vi is the payload of item i on a hit, else its
-- resource generation as a number, so the caller can tag its write. Stale entries are deleted.
local got = redis.call('MGET', unpack(KEYS))
local g1 = got[1] or '0'
local g2 = got[2] or '0'
local out = {g1, g2}
local k = (#KEYS - 2) / 2
for i = 1, k do
  local v = got[2 * i + 1]
  local rg = got[2 * i + 2] or '0'
  local want = g1 .. ',' .. g2 .. ',' .. rg
  local hit = false
  if v then
    local sep = string.find(v, '|', 1, true)
    local sep2 = sep and string.find(v, '|', sep + 1, true)
    if sep2 and string.sub(v, 1, sep - 1) == want then
      hit = true
      out[i + 2] = string.sub(v, sep2 + 1)
    else
      redis.call('DEL', KEYS[2 * i + 1])
    end
  end
  if not hit then
    out[i + 2] = tonumber(rg)
  end
end
return out
