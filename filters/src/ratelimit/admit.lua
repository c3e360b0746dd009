-- Sluice rate_limit: check and charge every bucket of one request, atomically, in one round trip.
-- The arithmetic mirrors filters/src/ratelimit/bucket.rs; keep the two in step.
--
-- KEYS[i]   one org, user or key: a hash with fields r/rt (request bucket level and the server
--           time it was written, µs) and t/tt (token bucket). All KEYS of one call share a hash
--           tag, so the script also runs on Redis Cluster.
-- ARGV[1]   "admit": charge only if every bucket holds its cost, else charge nothing.
--           "peek": decide as "admit" would, charge nothing.
--           "adjust": apply the (possibly negative) costs unconditionally (reconciliation).
-- ARGV[2..] six numbers per key: request capacity, requests per minute, request cost,
--           token capacity, tokens per minute, token cost. A capacity of 0 leaves that bucket
--           untouched.
--
-- Returns, for "admit" and "peek": {fits (1/0), limiting key index, limiting kind
-- (1 requests, 2 tokens), wait µs until every bucket fits}, then for every touched bucket in
-- order: {floor(level), µs until full} (after the charge, if any). For "adjust": {1}.
--
-- The clock is Redis's own (TIME), so instances whose clocks disagree still share one limit.

if redis.replicate_commands then
  -- Redis < 5 replicates scripts verbatim and refuses writes after TIME without this.
  pcall(redis.replicate_commands)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[1]
local check = mode ~= 'adjust'
local fields = { { 'r', 'rt' }, { 't', 'tt' } }

local state = {}
local wait, limiting, limiting_kind = 0, 0, 0
for i = 1, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'r', 'rt', 't', 'tt')
  local s = {}
  for k = 1, 2 do
    local a = 1 + (i - 1) * 6 + (k - 1) * 3
    local cap = tonumber(ARGV[a + 1])
    if cap > 0 then
      local per_min = tonumber(ARGV[a + 2])
      local cost = tonumber(ARGV[a + 3])
      local level = tonumber(h[2 * k - 1])
      local at = tonumber(h[2 * k])
      if level == nil or at == nil then
        level = cap
      else
        local elapsed = now - at
        if elapsed < 0 then elapsed = 0 end
        level = math.min(cap, level + elapsed * per_min / 60000000)
      end
      if check and level < cost then
        -- Multiply before dividing: whole-unit waits stay exact.
        local w = (cost - level) * 60000000 / per_min
        if w > wait then
          wait, limiting, limiting_kind = w, i, k
        end
      end
      s[k] = { level = level, cap = cap, per_min = per_min, cost = cost }
    end
  end
  state[i] = s
end

local charge = (mode == 'adjust') or (mode == 'admit' and limiting == 0)
local out = { limiting == 0 and 1 or 0, limiting, limiting_kind, math.ceil(wait) }
for i = 1, #KEYS do
  local ttl = 0
  for k = 1, 2 do
    local b = state[i][k]
    if b then
      if charge then
        b.level = b.level - b.cost
        if b.level > b.cap then b.level = b.cap end
        redis.call('HSET', KEYS[i], fields[k][1], b.level, fields[k][2], now)
      end
      local reset = 0
      if b.level < b.cap then reset = (b.cap - b.level) * 60000000 / b.per_min end
      if reset > ttl then ttl = reset end
      out[#out + 1] = math.floor(b.level)
      out[#out + 1] = math.ceil(reset)
    end
  end
  if charge then
    -- A full bucket is the same as no bucket: let the hash expire once everything in it has
    -- refilled (plus a second of slack). Never shorten an expiry set for the other bucket.
    local ms = math.ceil(ttl / 1000) + 1000
    if redis.call('PTTL', KEYS[i]) < ms then
      redis.call('PEXPIRE', KEYS[i], ms)
    end
  end
end
if not check then
  return { 1 }
end
return out
