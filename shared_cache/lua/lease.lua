-- lease.lua: after a lookup missed, delete the stale entries it met and try to take the lease.
--
-- KEYS[1..k]    entries the lookup found stale
-- KEYS[k+1]     lease key of the most specific entry
-- ARGV[1..k]    the stale tag seen for each of them (deleted only if still the same: a fresh entry
--               written since then is kept)
-- ARGV[k+1]     lease token, or '' to take no lease
-- ARGV[k+2]     lease time to live in milliseconds
--
-- Returns 1 if the lease was taken, else 0.
local k = #KEYS - 1
for i = 1, k do
  local v = redis.call('GET', KEYS[i])
  if v and string.sub(v, 1, #ARGV[i] + 1) == ARGV[i] .. '|' then
    redis.call('DEL', KEYS[i])
  end
end
if ARGV[k + 1] ~= '' and redis.call('SET', KEYS[k + 1], ARGV[k + 1], 'NX', 'PX', ARGV[k + 2]) then
  return 1
end
return 0
