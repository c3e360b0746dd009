-- Sluice budgets in Redis (SPEC §15): reserve a request's worst case against every budget of
-- its caller, all or none, and settle it (drop the reservation, add the real cost), atomically.
-- The arithmetic mirrors filters/src/spend/ledger.rs (Ledger::reserve); keep the two in step.
--
-- KEYS, three per budget (all with the caller's org as hash tag, so Redis Cluster runs it):
--   spend counter of the current period (integer µ$; absent: seeded from ARGV), the hash of the
--   reservations in flight (field id → µ$, field "sum" = their total), and a sorted set of the
--   same ids scored by their deadline (Redis's clock, seconds).
-- ARGV[1]  "reserve" or "settle"
-- ARGV[2]  the reservation id (16 hex digits, so never "sum")
-- ARGV[3]  µ$: the worst case to reserve, or the real cost to add when settling
-- ARGV[4]  seconds a reservation holds when its instance never settles it (died)
-- ARGV[5..] three per budget: limit (µ$), seed (µ$ this instance knows was spent in the
--           period, for a counter Redis lost), unix second the counter expires at (0: never)
--
-- Returns, for "reserve": {1, least remaining after it} or {0, index (0-based) of the budget
-- that cannot hold it, spent, reserved}; for "settle": {1}.

if redis.replicate_commands then
  -- Redis < 5 replicates scripts verbatim and refuses writes after TIME without this.
  pcall(redis.replicate_commands)
end

local now = tonumber(redis.call('TIME')[1])
local mode, id, amount, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local cost = tonumber(amount)
local n = #KEYS / 3

-- Reservations of instances that died expire: drop them from the hash and its sum.
local function prune(held, by)
  local gone = redis.call('ZRANGEBYSCORE', by, '-inf', now)
  for _, g in ipairs(gone) do
    local m = redis.call('HGET', held, g)
    if m then
      redis.call('HDEL', held, g)
      redis.call('HINCRBY', held, 'sum', '-' .. m)
    end
  end
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', by, '-inf', now)
  end
end

-- The period's spend; a counter Redis lost (flush, restart, new period) restarts from the seed.
local function spent(i)
  local key = KEYS[3 * i - 2]
  local v = redis.call('GET', key)
  if v then
    return tonumber(v)
  end
  local seed = ARGV[4 + 3 * (i - 1) + 2]
  local expire_at = tonumber(ARGV[4 + 3 * (i - 1) + 3])
  redis.call('SET', key, seed)
  if expire_at > 0 then
    redis.call('EXPIREAT', key, expire_at)
  end
  return tonumber(seed)
end

if mode == 'reserve' then
  local remaining = nil
  for i = 1, n do
    local held, by = KEYS[3 * i - 1], KEYS[3 * i]
    prune(held, by)
    local s = spent(i)
    local r = tonumber(redis.call('HGET', held, 'sum') or '0')
    local left = tonumber(ARGV[4 + 3 * (i - 1) + 1]) - s - r
    -- A request that costs nothing (an unpriced model) spends no budget, spent or not.
    if cost > 0 and left < cost then
      return { 0, i - 1, s, r }
    end
    if remaining == nil or left - cost < remaining then
      remaining = left - cost
    end
  end
  if cost > 0 then
    for i = 1, n do
      local held, by = KEYS[3 * i - 1], KEYS[3 * i]
      redis.call('HSET', held, id, amount)
      redis.call('HINCRBY', held, 'sum', amount)
      redis.call('ZADD', by, now + ttl, id)
      -- Idle budgets' reservation keys vanish once the last reservation could have expired.
      redis.call('EXPIRE', held, ttl + 60)
      redis.call('EXPIRE', by, ttl + 60)
    end
  end
  return { 1, remaining or 0 }
end

if mode == 'settle' then
  for i = 1, n do
    local held, by = KEYS[3 * i - 1], KEYS[3 * i]
    local m = redis.call('HGET', held, id)
    if m then
      redis.call('HDEL', held, id)
      redis.call('HINCRBY', held, 'sum', '-' .. m)
      redis.call('ZREM', by, id)
    end
    if cost > 0 then
      -- Seeded first (from spend that excludes this request), then charged.
      spent(i)
      redis.call('INCRBY', KEYS[3 * i - 2], amount)
    end
  end
  return { 1 }
end

return redis.error_reply('unknown mode')
