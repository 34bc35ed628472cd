#!lua name=sealpost
-- The cluster store's server-side functions (docs/CLUSTER.md). Every key one call touches is
-- under the mailbox's hash tag, so each call runs atomically on the mailbox's primary.
--
-- KEYS of every mailbox function (6), in this order:
--   1 {m:<rid>}     hash: rec (sealed record), seq (last sequence number), n (envelopes held),
--                   b (envelope bytes held), sub (subscriber epoch)
--   2 {m:<rid>}:q   stream of held envelopes, entry id <seq>-0, fields t (stored at, ms),
--                   o (nonce), d (digest), e (envelope)
--   3 {m:<rid>}:d   hash nonce -> digest (16) .. seq (decimal): the dedupe window, held and
--                   recently removed envelopes
--   4 {m:<rid>}:w   list of removed "seq:nonce" in removal order: which dedupe entries to
--                   forget once more than the window have been removed
--   5 {m:<rid>}:c   the mailbox's wake-up channel (SPUBLISH), never a stored key
--   6 {s<n>}:stats  hash: the counters of the mailbox's slot, m (mailboxes), e (envelopes),
--                   b (bytes), for the store's stats without reading every mailbox

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Remembers a removed envelope in the window; forgets the oldest beyond `window`.
local function remember_removed(keys, seq, nonce, window)
  redis.call('RPUSH', keys[4], seq .. ':' .. nonce)
  while redis.call('LLEN', keys[4]) > window do
    local old = redis.call('LPOP', keys[4])
    local sep = string.find(old, ':', 1, true)
    local old_seq = string.sub(old, 1, sep - 1)
    local old_nonce = string.sub(old, sep + 1)
    local cur = redis.call('HGET', keys[3], old_nonce)
    -- Only if the entry is still that envelope's: the nonce may have been stored again since.
    if cur and string.sub(cur, 17) == old_seq then
      redis.call('HDEL', keys[3], old_nonce)
    end
  end
end

-- Removes held envelopes from the front while keep(entry) is false; returns how many.
local function trim_front(keys, window, remove)
  local removed = 0
  local bytes = 0
  while true do
    local batch = redis.call('XRANGE', keys[2], '-', '+', 'COUNT', 64)
    if #batch == 0 then break end
    local stop = false
    for _, entry in ipairs(batch) do
      local id = entry[1]
      local seq = string.sub(id, 1, string.find(id, '-', 1, true) - 1)
      local f = {}
      for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
      if not remove(tonumber(seq), tonumber(f.t)) then stop = true break end
      redis.call('XDEL', keys[2], id)
      remember_removed(keys, seq, f.o, window)
      removed = removed + 1
      bytes = bytes + string.len(f.e)
    end
    if stop then break end
  end
  if removed > 0 then
    redis.call('HINCRBY', keys[1], 'n', -removed)
    redis.call('HINCRBY', keys[1], 'b', -bytes)
    redis.call('HINCRBY', keys[6], 'e', -removed)
    redis.call('HINCRBY', keys[6], 'b', -bytes)
  end
  return removed
end

-- sp_create KEYS(6) ARGV: record. 1 if created, 0 if the mailbox exists.
local function sp_create(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then return 0 end
  redis.call('HSET', keys[1], 'rec', args[1], 'seq', 0, 'n', 0, 'b', 0)
  redis.call('HINCRBY', keys[6], 'm', 1)
  return 1
end

-- sp_deposit KEYS(6) ARGV: nonce, digest (16), envelope, max envelopes, max bytes, window,
-- retention (ms; 0 = none). Envelopes older than the retention are removed first (by this
-- node's clock), so that they do not count against the quota. Returns the new sequence number
-- (> 0) or -1 DUPLICATE, -2 ID_REUSED, -3 no such mailbox, -4 MAILBOX_FULL.
local function sp_deposit(keys, args)
  local nonce, dig, env = args[1], args[2], args[3]
  if redis.call('EXISTS', keys[1]) == 0 then return -3 end
  local retention = tonumber(args[7])
  if retention > 0 then
    local cutoff = now_ms() - retention
    trim_front(keys, tonumber(args[6]), function(_, t) return t < cutoff end)
  end
  local seen = redis.call('HGET', keys[3], nonce)
  if seen then
    if string.sub(seen, 1, 16) == dig then return -1 end
    return -2
  end
  local st = redis.call('HMGET', keys[1], 'n', 'b')
  local n, b = tonumber(st[1]), tonumber(st[2])
  if n + 1 > tonumber(args[4]) or b + string.len(env) > tonumber(args[5]) then return -4 end
  local seq = redis.call('HINCRBY', keys[1], 'seq', 1)
  redis.call('XADD', keys[2], seq .. '-0', 't', now_ms(), 'o', nonce, 'd', dig, 'e', env)
  redis.call('HSET', keys[3], nonce, dig .. seq)
  redis.call('HINCRBY', keys[1], 'n', 1)
  redis.call('HINCRBY', keys[1], 'b', string.len(env))
  redis.call('HINCRBY', keys[6], 'e', 1)
  redis.call('HINCRBY', keys[6], 'b', string.len(env))
  redis.call('SPUBLISH', keys[5], seq)
  return seq
end

-- sp_ack KEYS(6) ARGV: upto, window. How many envelopes were removed.
local function sp_ack(keys, args)
  local upto = tonumber(args[1])
  return trim_front(keys, tonumber(args[2]), function(seq, _) return seq <= upto end)
end

-- sp_expire KEYS(6) ARGV: cutoff (ms), window. How many envelopes stored before the cutoff
-- were removed (a mailbox's envelopes are stored in time order, so they are at the front).
local function sp_expire(keys, args)
  local cutoff = tonumber(args[1])
  return trim_front(keys, tonumber(args[2]), function(_, t) return t < cutoff end)
end

-- sp_claim KEYS(6). A new subscriber claim: the mailbox's subscriber epoch (hash field
-- `sub`) goes up by one and `k<epoch>` on its channel ends older claims on every relay.
-- Returns the epoch, or 0 if there is no such mailbox.
local function sp_claim(keys, _)
  if redis.call('EXISTS', keys[1]) == 0 then return 0 end
  local epoch = redis.call('HINCRBY', keys[1], 'sub', 1)
  redis.call('SPUBLISH', keys[5], 'k' .. epoch)
  return epoch
end

-- sp_delete KEYS(6). 1 if the mailbox existed; publishes `d` on its channel, which ends its
-- subscription on whichever relay holds it.
local function sp_delete(keys, _)
  local st = redis.call('HMGET', keys[1], 'n', 'b')
  if not st[1] then
    redis.call('DEL', keys[2], keys[3], keys[4])
    return 0
  end
  redis.call('DEL', keys[1], keys[2], keys[3], keys[4])
  -- Ends the subscription on whichever relay holds it.
  redis.call('SPUBLISH', keys[5], 'd')
  redis.call('HINCRBY', keys[6], 'm', -1)
  redis.call('HINCRBY', keys[6], 'e', -tonumber(st[1]))
  redis.call('HINCRBY', keys[6], 'b', -tonumber(st[2]))
  return 1
end

redis.register_function('sp_create', sp_create)
redis.register_function('sp_deposit', sp_deposit)
redis.register_function('sp_ack', sp_ack)
redis.register_function('sp_expire', sp_expire)
redis.register_function('sp_delete', sp_delete)
redis.register_function('sp_claim', sp_claim)
