-- Settles one request: each budget's reservation is replaced by the actual spend, and each
-- token limiter gets back what was charged beyond use. Once only: a marker key (kept a
-- minute, longer than any retry) makes a repeated settlement do nothing.
-- KEYS: the marker, the budgets, then the token limiters. ARGV: reservation id, #budgets,
-- #limiters, then per budget its actual spend (nano-USD) and how long its record is kept
-- (ms), then per limiter the span (us) to give back.
-- Returns each budget's spent and reserved after.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local id, nb, nr = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local first = redis.call('SET', KEYS[1], '1', 'NX', 'PX', 60000)
local out = {}
for j = 1, nb do
  local k = KEYS[1 + j]
  if first then
    local actual, keep = ARGV[2 + 2 * j], tonumber(ARGV[3 + 2 * j])
    local held = redis.call('HGET', k .. ':a', id)
    if held then
      redis.call('HINCRBY', k, 'reserved', -tonumber(held))
      redis.call('HDEL', k .. ':a', id)
      redis.call('ZREM', k .. ':r', id)
    end
    redis.call('HINCRBY', k, 'spent', actual)
    if redis.call('PTTL', k) < keep then
      redis.call('PEXPIRE', k, keep)
    end
  end
  out[2 * j - 1] = tonumber(redis.call('HGET', k, 'spent') or '0')
  out[2 * j] = tonumber(redis.call('HGET', k, 'reserved') or '0')
end
if first then
  for i = 1, nr do
    local k = KEYS[1 + nb + i]
    local tat = tonumber(redis.call('GET', k) or '0')
    if tat > now then
      local back = tat - tonumber(ARGV[3 + 2 * nb + i])
      if back > now then
        redis.call('SET', k, string.format('%d', back), 'PX', math.floor((back - now) / 1000) + 1000)
      else
        redis.call('DEL', k)
      end
    end
  end
end
return out
