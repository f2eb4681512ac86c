-- GCRA for the requests of one batch, all with the same policies, atomically (see gcra.rs).
-- KEYS[i]: a policy's counter (its TAT in microseconds).
-- ARGV[1]: n, the requests in the batch; ARGV[2i], ARGV[2i+1]: interval_us, tolerance_us of KEYS[i].
-- interval_us = 0 marks a plain counter instead (a tenant's monthly quota): KEYS[i] holds the count,
-- tolerance_us is its limit; it fits limit - count more requests, and expires 40 days after its last
-- increment (the gateway names a new key each month).
-- The first k = min(n, what every policy still fits) requests are allowed and counted on every key;
-- nothing is counted for the others. Keys expire once their bucket is full again.
-- Reply: one string of integers separated by spaces (parsed by `global::reply_numbers`; a flat string
-- costs the client far less to parse than an array of integers): k, then per key: fit (requests this
-- policy alone would allow), remaining after the batch, retry_after_us (until one more request fits),
-- reset_us (until the bucket is full).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local k = n
local tats, fits = {}, {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local stored = tonumber(redis.call('GET', KEYS[i]))
  local tat = stored or now
  local fit = 0
  if interval == 0 then
    tat = stored or 0
    if tolerance > tat then fit = tolerance - tat end
  else
    if tat < now then tat = now end
    if now + tolerance >= tat then fit = math.floor((now + tolerance - tat) / interval) + 1 end
  end
  tats[i] = tat
  fits[i] = fit
  if fit < k then k = fit end
end
local out = {string.format('%d', k)}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  if interval == 0 then
    if k > 0 then
      redis.call('INCRBY', KEYS[i], k)
      redis.call('EXPIRE', KEYS[i], 3456000)
    end
    out[#out + 1] = string.format('%d %d 0 0', fits[i], fits[i] - k)
  else
    local new_tat = tats[i] + k * interval
    if k > 0 then
      redis.call('SET', KEYS[i], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
    end
    local remaining = 0
    if now + tolerance >= new_tat then remaining = math.floor((now + tolerance - new_tat) / interval) + 1 end
    local retry = new_tat - tolerance - now
    if retry < 0 then retry = 0 end
    out[#out + 1] = string.format('%d %d %d %d', fits[i], remaining, retry, new_tat - now)
  end
end
return table.concat(out, ' ')
