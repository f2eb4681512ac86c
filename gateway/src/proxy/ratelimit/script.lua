-- GCRA for several policies of one request, atomically (see gcra.rs for the arithmetic).
-- KEYS[i]: a policy's counter (its TAT in microseconds). ARGV[2i-1]: interval_us, ARGV[2i]: tolerance_us.
-- Reply: {all_allowed, then per key: allowed, remaining, retry_after_us, reset_us}.
-- Nothing is consumed unless every policy allows the request. Keys expire once their bucket is full.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {1}
local tats = {}
local all = true
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  if now + tolerance < tat then
    all = false
    tats[i] = false
    table.insert(out, 0)
    table.insert(out, 0)
    table.insert(out, tat - tolerance - now)
    table.insert(out, tat - now)
  else
    local new_tat = tat + interval
    tats[i] = new_tat
    table.insert(out, 1)
    table.insert(out, math.floor((now + tolerance + interval - new_tat) / interval))
    table.insert(out, 0)
    table.insert(out, new_tat - now)
  end
end
if all then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX', math.floor((tats[i] - now) / 1000) + 1)
  end
else
  out[1] = 0
end
return out
