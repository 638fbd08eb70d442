-- Admits one request, all or nothing: every rate limiter (GCRA) and every budget
-- (spent + reserved + this request's maximum under the limit), then charges them all.
-- KEYS: the limiters, then the budgets. ARGV: #limiters, #budgets, reservation id,
-- reservation ttl (us), then per limiter its span (us), then per budget its limit,
-- amount (nano-USD) and how long its record is kept (ms).
-- Returns {0, ahead...} when admitted (each limiter's time ahead of now, us),
-- {1, i, retry_after_us} when limiter i refuses, {2, j, spent, reserved} when budget j does.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = 60000000
local nr, nb = tonumber(ARGV[1]), tonumber(ARGV[2])
local id, ttl = ARGV[3], tonumber(ARGV[4])
local tats, aheads = {}, {}
for i = 1, nr do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + tonumber(ARGV[4 + i])
  local ahead = new_tat - now
  if ahead > window then
    return {1, i, ahead - window}
  end
  tats[i], aheads[i] = new_tat, ahead
end
local base = 4 + nr
for j = 1, nb do
  local k = KEYS[nr + j]
  local limit, amount = tonumber(ARGV[base + 3 * j - 2]), tonumber(ARGV[base + 3 * j - 1])
  -- Reservations whose request never settled (its replica died) lapse.
  local lapsed = redis.call('ZRANGEBYSCORE', k .. ':r', '-inf', now)
  for _, rid in ipairs(lapsed) do
    local held = redis.call('HGET', k .. ':a', rid)
    if held then
      redis.call('HINCRBY', k, 'reserved', -tonumber(held))
    end
    redis.call('HDEL', k .. ':a', rid)
  end
  if #lapsed > 0 then
    redis.call('ZREMRANGEBYSCORE', k .. ':r', '-inf', now)
  end
  local spent = tonumber(redis.call('HGET', k, 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', k, 'reserved') or '0')
  if spent + reserved + amount > limit then
    return {2, j, spent, reserved}
  end
end
for i = 1, nr do
  redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX', math.floor(aheads[i] / 1000) + 1000)
end
for j = 1, nb do
  local k = KEYS[nr + j]
  local amount, keep = ARGV[base + 3 * j - 1], tonumber(ARGV[base + 3 * j])
  redis.call('HINCRBY', k, 'reserved', amount)
  redis.call('HSET', k .. ':a', id, amount)
  redis.call('ZADD', k .. ':r', string.format('%d', now + ttl), id)
  for _, key in ipairs({k, k .. ':a', k .. ':r'}) do
    if redis.call('PTTL', key) < keep then
      redis.call('PEXPIRE', key, keep)
    end
  end
end
local out = {0}
for i = 1, nr do
  out[i + 1] = aheads[i]
end
return out
