-- reclaim.lua: delete entries found stale, if they still carry the stale tag that was seen (an entry
-- written fresh since then is kept), and forget members of a permanent-entry set.
--
-- KEYS[1]       the tenant's set of entries without expiry ('' members to forget: none)
-- KEYS[2..k+1]  entries found stale
-- ARGV[1..k]    the stale tag seen for each of them
-- ARGV[k+1..]   members to remove from KEYS[1]
--
-- Returns how many entries were deleted.
local k = #KEYS - 1
local deleted = 0
for i = 1, k do
  local v = redis.call('GET', KEYS[i + 1])
  if v and string.sub(v, 1, #ARGV[i] + 1) == ARGV[i] .. '|' then
    redis.call('DEL', KEYS[i + 1])
    deleted = deleted + 1
  end
end
if #ARGV > k then
  redis.call('SREM', KEYS[1], unpack(ARGV, k + 1, #ARGV))
end
return deleted
