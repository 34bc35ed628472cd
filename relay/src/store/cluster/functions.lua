#!lua name=sealpost
-- The cluster store's server-side functions (docs/CLUSTER.md). Every key one call touches is
-- under the mailbox's hash tag, so each call runs atomically on the mailbox's primary.
--
-- KEYS of every mailbox function (6), in this order:
--   1 {m:<rid>}     hash: rec (sealed record), seq (last sequence number), n (envelopes held),
--                   b (envelope bytes held), sub (subscriber epoch), dups (deposits answered
--                   DUPLICATE: a write, see sp_deposit), lt (the last envelope's stamp, ms)
--   2 {m:<rid>}:q   stream of held envelopes, entry id <seq>-0, fields t (stored at, ms),
--                   o (nonce), e (envelope)
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

-- Remembers removed envelopes ("seq:nonce" each, in removal order) in the window; forgets the
-- oldest beyond `window`. A handful of calls whatever the number removed.
local function remember_removed(keys, gone, window)
  local excess = redis.call('RPUSH', keys[4], unpack(gone)) - window
  while excess > 0 do
    -- In slices, so that unpack stays far below Lua's stack limit.
    local old = redis.call('LPOP', keys[4], math.min(excess, 256))
    if not old then break end
    excess = excess - #old
    local nonces, seqs = {}, {}
    for i, o in ipairs(old) do
      local sep = string.find(o, ':', 1, true)
      seqs[i] = string.sub(o, 1, sep - 1)
      nonces[i] = string.sub(o, sep + 1)
    end
    local cur = redis.call('HMGET', keys[3], unpack(nonces))
    local forget = {}
    for i = 1, #nonces do
      -- Only if the entry is still that envelope's: the nonce may have been stored again since.
      if cur[i] and string.sub(cur[i], 17) == seqs[i] then forget[#forget + 1] = nonces[i] end
    end
    if #forget > 0 then redis.call('HDEL', keys[3], unpack(forget)) end
  end
end

-- Removes held envelopes from the front while remove(seq, t) holds, reading entries up to the
-- stream id `last` ('+': no bound) in pages (the first page of `first` entries: a sweep that
-- only needs to look at the front entry reads one). Returns how many were removed and their
-- bytes; keeps the mailbox's and the slot's counters.
local function trim_front(keys, window, remove, last, first)
  local removed, bytes = 0, 0
  local count = first
  while true do
    local batch = redis.call('XRANGE', keys[2], '-', last, 'COUNT', count)
    local ids, gone = {}, {}
    local stop = #batch < count
    for _, entry in ipairs(batch) do
      local id = entry[1]
      local seq = string.sub(id, 1, string.find(id, '-', 1, true) - 1)
      local f = {}
      for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
      if not remove(tonumber(seq), tonumber(f.t)) then stop = true break end
      ids[#ids + 1] = id
      gone[#gone + 1] = seq .. ':' .. f.o
      bytes = bytes + string.len(f.e)
    end
    if #ids > 0 then
      redis.call('XDEL', keys[2], unpack(ids))
      remember_removed(keys, gone, window)
      removed = removed + #ids
    end
    if stop then break end
    count = 64
  end
  if removed > 0 then
    redis.call('HINCRBY', keys[1], 'n', -removed)
    redis.call('HINCRBY', keys[1], 'b', -bytes)
    redis.call('HINCRBY', keys[6], 'e', -removed)
    redis.call('HINCRBY', keys[6], 'b', -bytes)
  end
  return removed, bytes
end

-- sp_create KEYS(6) ARGV: record. 1 if created, 0 if the mailbox exists.
local function sp_create(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then return 0 end
  redis.call('HSET', keys[1], 'rec', args[1], 'seq', 0, 'n', 0, 'b', 0)
  redis.call('HINCRBY', keys[6], 'm', 1)
  return 1
end

-- sp_deposit KEYS(6) ARGV: nonce, digest (16), envelope, max envelopes, max bytes, window,
-- retention (ms; 0 = none), not after (ms; 0 or absent = no deadline). When the envelope would
-- exceed the mailbox's quota, envelopes older than the retention are removed first (by this
-- node's clock), so that they do not hold the quota until the next sweep. An envelope is
-- stored only while its stamp `t` is not past `not after` (the at-rest epoch's window end plus
-- its settle grace: every envelope of an epoch is then stored by that deadline, whichever
-- relay sealed it). The stamp is this node's clock, but never less than the mailbox's last
-- stamp (hash field `lt`): a mailbox's stamps never go down, even after a failover to a node
-- whose clock is behind, or a clock stepping back, so the oldest held envelope's stamp is a
-- lower bound for every envelope after it (the at-rest sweep relies on that, and expiry
-- on envelopes being stored in time order). Returns the new sequence number (> 0) or
-- -1 DUPLICATE, -2 ID_REUSED, -3 no such mailbox, -4 MAILBOX_FULL, -5 too late (not stored).
local function sp_deposit(keys, args)
  local nonce, dig, env = args[1], args[2], args[3]
  local st = redis.call('HMGET', keys[1], 'n', 'b', 'seq', 'lt')
  if not st[1] then return -3 end
  local seen = redis.call('HGET', keys[3], nonce)
  if seen then
    if string.sub(seen, 1, 16) ~= dig then return -2 end
    -- A write, although nothing changes: the WAITAOF that follows this call on its
    -- connection waits for that connection's last write, and this one comes after the
    -- original's, which may have come through another connection (or relay) whose WAITAOF
    -- never confirmed it. Without a write here this DUPLICATE, an OK, would not wait for it.
    redis.call('HINCRBY', keys[1], 'dups', 1)
    return -1
  end
  local n, b, seq = tonumber(st[1]), tonumber(st[2]), tonumber(st[3])
  local len = string.len(env)
  local now = math.max(now_ms(), tonumber(st[4] or 0) or 0)
  local not_after = tonumber(args[8] or '0')
  if not_after > 0 and now > not_after then return -5 end
  if n + 1 > tonumber(args[4]) or b + len > tonumber(args[5]) then
    local retention = tonumber(args[7])
    if retention > 0 then
      local cutoff = now - retention
      local removed, bytes = trim_front(keys, tonumber(args[6]),
        function(_, t) return t < cutoff end, '+', 1)
      n, b = n - removed, b - bytes
    end
    if n + 1 > tonumber(args[4]) or b + len > tonumber(args[5]) then return -4 end
  end
  seq = seq + 1
  redis.call('XADD', keys[2], seq .. '-0', 't', now, 'o', nonce, 'e', env)
  redis.call('HSET', keys[3], nonce, dig .. seq)
  redis.call('HSET', keys[1], 'seq', seq, 'n', n + 1, 'b', b + len, 'lt', now)
  redis.call('HINCRBY', keys[6], 'e', 1)
  redis.call('HINCRBY', keys[6], 'b', len)
  redis.call('SPUBLISH', keys[5], seq)
  return seq
end

-- sp_ack KEYS(6) ARGV: upto, window. How many envelopes were removed.
local function sp_ack(keys, args)
  local upto = tonumber(args[1])
  return (trim_front(keys, tonumber(args[2]), function(seq, _) return seq <= upto end,
    args[1] .. '-0', 64))
end

-- sp_expire KEYS(6) ARGV: cutoff (ms), window. How many envelopes stored before the cutoff
-- were removed (a mailbox's envelopes are stored in time order, so they are at the front).
local function sp_expire(keys, args)
  local cutoff = tonumber(args[1])
  return (trim_front(keys, tonumber(args[2]), function(_, t) return t < cutoff end, '+', 1))
end

-- sp_head KEYS(1): the stream {m:<rid>}:q. When its oldest held envelope was stored (field t,
-- ms), or -1 if it holds none. Read-only (FCALL_RO): the at-rest sweep lists every mailbox's
-- head this way, a page of calls per pipeline, without the envelopes crossing the network.
local function sp_head(keys, _)
  local first = redis.call('XRANGE', keys[1], '-', '+', 'COUNT', 1)
  if #first == 0 then return -1 end
  local f = first[1][2]
  for i = 1, #f, 2 do
    if f[i] == 't' then return tonumber(f[i + 1]) end
  end
  return -1
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
redis.register_function{function_name = 'sp_head', callback = sp_head, flags = {'no-writes'}}
