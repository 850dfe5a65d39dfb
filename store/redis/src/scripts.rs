//! The Lua scripts, run with EVALSHA through [`redis::Script`] (which loads a script again
//! when Redis answers NOSCRIPT, e.g. after a restart emptied its script cache).
//!
//! Redis runs a script atomically: no other command (from any dispatch worker) runs while it
//! does, and with `appendfsync always` all of its writes reach the AOF, fsynced, before its
//! reply is sent. A script that fails half way is **not** rolled back, so each script here
//! validates what it can before its first write and otherwise only calls commands that cannot
//! fail on keys of the types this backend creates.
//!
//! Numbers: Redis hands integers to Lua as doubles, exact up to 2^53. Seqs are formatted with
//! `%d` (exact below 2^53, far beyond any real conversation). Watermarks are compared as
//! decimal strings (length first, then bytes), so any `u64` a client sends is exact.
//!
//! # The history fence (in COMMIT, when the batch has an append, and HISTORY)
//!
//! `KEYS = [Phistory, Pnode]`, the configured `failover_seq_gap` (ARGV's last element). Before
//! any write: `INFO replication`; not `role:master` → error `READONLY …`. If `master_replid`
//! differs from the recorded `replid`, the history changed:
//! - no record: a new store (or one written before this fence existed): record it;
//! - `master_replid2` is not the recorded id and `GET Pnode` equals the recorded `batch`: the
//!   node the store wrote to, restarted from its own AOF (nothing lost): record it;
//! - otherwise another node took over (a promoted replica, or one restarted after its
//!   promotion): with gap 0 answer error `TERNFENCED …` and write nothing; else add the gap to
//!   the recorded `gap` (the total every conversation must skip) and record the new id.
//!
//! Then, every call: `batch = HINCRBY Phistory batch 1` (replicated; so every call writes, and
//! a `WAIT` after it covers everything written before it) and `SET Pnode batch` with
//! `redis.set_repl(REPL_AOF)`: to this node's AOF only, so a replica never holds the value its
//! primary wrote last (it holds at most the one of its last full sync).
//!
//! # COMMIT (every append batch and every group commit, with watermark moves and flags)
//!
//! `ARGV = [bucket_size, n, then n records, failover_seq_gap]`. A record is one of
//! - an append, `"a", conv_base, conversation_id, dedupe_key, server_time_ms, header, body,
//!   recall_seq, recall_bucket_key, group, sender_user_id, m, user_base x m, k, mention_field
//!   x k` (`recall_seq` "0" and `recall_bucket_key` "" when the message is not a recall;
//!   `group` "1" for a `g:` conversation, whose sender must be a current member, else "0" with
//!   `sender_user_id` ""; `mention_field` is `u<user_id>` per mentioned user and `*` for a
//!   mention of all, `k` "0" when the message mentions no one);
//! - a group change, `"g", conv_base, conversation_id, dedupe_key, server_time_ms, header,
//!   body, expect_version, dissolved "1" | "0", record, c, then c x (op "j" | "s" | "r",
//!   user_id, user_base, role, full_history "1" | "0")` (join, set role, remove; `record` is the
//!   protobuf group record after the change; `role` is unused for a removal, `full_history`
//!   only read for a join);
//! - a watermark move, `"w", conv_base, user_id, "d" | "r" | "u", seq` (`u`: unspecified
//!   kind, moves nothing);
//! - a flags write, `"f", user_base, conversation_id, muted, pinned` (each "1" set, "0" clear,
//!   "" unchanged).
//!
//! Every record answers four fields, in batch order.
//!
//! 0. Reads only: every watermark record's current `<conv>:rcpt` field is read and validated
//!    (`delivered:read`, decimals; the seq a decimal), else an error before any write. Then the
//!    history fence, only when the batch has an append or a group change (a watermark move or
//!    a flags write allocates no seq; watermarks never ran the fence nor `WAIT`ed before group
//!    commits either, and flags do as they do).
//!
//! For each record in order, an append:
//! 1. `GET dedupe_key`: if set, answer `["1", record, "", ""]` (the stored
//!    `seq:time:conversation_id`) and write nothing, also for a sender no longer a member.
//! 2. A group conversation: `HMGET <conv>:group version dissolved`; no version or dissolved:
//!    answer `["r", "n", version, ""]` (no such group); `HGET <conv>:members sender` is not a
//!    row `role:joined:visible:0` (never a member, or removed): `["r", "m", version, ""]` (not
//!    a member). Nothing written either way.
//! 3. Fence (only once the recorded `gap` is above 0): if `<conv>:meta gap` is below the
//!    recorded gap, `last_seq = max(last_seq, highest seq field in the buckets from
//!    last_seq's on) + (recorded gap - conv gap)`, `gap = recorded gap`. A conversation without
//!    meta starts above the whole recorded gap: it may have existed only on the lost branch.
//!    Then `seq = HINCRBY <conv>:meta last_seq 1`.
//! 4. A recall: if its target's header field exists in its bucket, `HDEL` the target's body
//!    field and `HSET` its recalled flag; else answer "1" in the third slot (target missing).
//! 5. `HSET <conv>:m:<seq / bucket_size> <seq> header [b<seq> body]` (body field only when
//!    non-empty), `HSET <conv>:meta last_time_ms time`, `SET dedupe_key seq:time:conv`.
//! 6. For every member: `ZADD <user>:convs 0 conv`, `HSET <user>:last conv seq:time` (a group
//!    append has none: its members' lists read the group's meta, see the crate doc).
//! 7. Only when `k` > 0: `HSET <conv>:mentions field seq ...` for the `k` mention fields (one
//!    HSET per 500 fields: Lua's `unpack` is bounded), whatever the members (a mention of all
//!    is one field, read by every member's list). A duplicate or refused append writes none.
//! 8. Answer `["0", seq, recall_target_missing, group_version]` (`group_version` "0" outside
//!    groups).
//!
//! A group change:
//! 1. Dedupe as an append (the original's outcome, `["1", record, "", ""]`).
//! 2. `HMGET <conv>:group version dissolved`: version (absent: "0") other than
//!    `expect_version`: answer `["r", "v", version, ""]`; dissolved: `["r", "n", version, ""]`.
//!    Then each row change is checked against its row (`HGET <conv>:members user`): a join
//!    needs a user who is not a current member, a role change or removal a current one; the
//!    first that does not fit answers `["r", "v", version, ""]`. Nothing written so far.
//! 3. Fence and `seq = HINCRBY`, the message and dedupe key as an append's steps 3 and 5.
//! 4. `HSET <conv>:group version seq dissolved d record r`; per row change, in order:
//!    join `role:seq:(1 if full_history else seq):0` and `ZADD <conv>:current 0 user`; set
//!    role: the role replaced; removal: `removed_seq = seq` and `ZREM <conv>:current user`;
//!    each `HSET <conv>:members user row`, `ZADD <user>:convs 0 conv`,
//!    `HSET <user>:last conv seq:time`.
//! 5. Answer `["0", seq, "", seq]` (a group write's version is its seq).
//!
//! A row this script did not write (unparseable) counts as no row: a send is refused, a join
//! overwrites it. The script never stops with an error after its first write (there is no
//! rollback).
//!
//! A watermark move: if `seq` is above `<conv>:meta last_seq` (as it stands at that point of
//! the batch, so counting earlier appends), answer `["x", last_seq, "", ""]`; else move the
//! (conversation, user)'s value **in the script's memory** (delivered, or read and delivered up
//! to read; never back). After the last record, each (conversation, user) whose final value
//! differs from the one read in step 0 is written once (`HSET <conv>:rcpt user d:r`), and every
//! accepted move of it answers `["w", "final_delivered:final_read", moved "1" | "0", ""]`.
//!
//! A flags write: `HGET <user>:flags conversation_id` (decimal bits, `1` muted, `2` pinned; a
//! value this script did not write counts as none), the given flags set or cleared; only if
//! the value changed, `HSET` it (or `HDEL` the field when no flag is left). Answer
//! `["f", "", "", ""]`.
//!
//! Each record sees the writes of the records before it (a send after a removal in the same
//! batch is refused; a change after another one in the batch must expect its version).
//!
//! After the last record the reply has one more element: the fence's event (`""`, `new`,
//! `restart` or `failover`; `""` when the fence did not run), for the log.
//!
//! Keys are built inside the script from the bases passed in ARGV (the bucket key depends on
//! the seq the script allocates), so they are not declared in KEYS: fine on a single primary,
//! not on Redis Cluster (see the crate doc).
//!
//! # GROUP_MEMBERS
//!
//! `KEYS = [<conv>:current, <conv>:members]`, `ARGV = [after, limit]`: `ZRANGEBYLEX` of the
//! current members with id > `after` (at most `limit`), then their rows (`HMGET`, 1 000 ids
//! per call: Lua's `unpack` is bounded), answered as `[id, row, id, row, ...]`. Reads only;
//! one script so that a page is one consistent view.
//!
//! # HISTORY
//!
//! The fence alone, run at connect: `KEYS = [Phistory, Pnode]`, `ARGV = [failover_seq_gap]`;
//! answers `[recorded gap, event]`.
//!
//! # SET_WATERMARK
//!
//! `KEYS = [<conv>:rcpt]`, `ARGV = [user_id, "d" | "r", seq]`: reads the user's
//! `delivered:read`, moves delivered (or read, and delivered up to read) forward to `seq`,
//! writes only if something moved, answers `[delivered, read, moved]` (decimal strings, and
//! `moved` "1" when it wrote, else "0").

use std::sync::LazyLock;

use redis::Script;

/// The history fence (see the crate doc, "Failover"): `history_fence(KEYS[1], KEYS[2], gap)`
/// returns the fence gap every conversation must have applied, and the change it saw ("" when
/// none), or nil and an error text. It writes nothing before it has decided to go on.
macro_rules! history_fence_lua {
    () => {
        r#"
local function history_fence(hist, node, cfg_gap)
  local info = redis.call('INFO', 'replication')
  local role = string.match(info, 'role:(%a+)')
  if role ~= 'master' then
    return nil, 'READONLY the store Redis is not a primary (role ' .. tostring(role) .. ')'
  end
  local replid = string.match(info, 'master_replid:(%x+)')
  local replid2 = string.match(info, 'master_replid2:(%x+)')
  local rec = redis.call('HMGET', hist, 'replid', 'batch', 'gap', 'changes')
  local gap = tonumber(rec[3] or '0')
  local event = ''
  if rec[1] ~= replid then
    if not rec[1] then
      event = 'new'
    elseif replid2 ~= rec[1] and redis.call('GET', node) == rec[2] then
      event = 'restart'
    elseif cfg_gap == 0 then
      return nil, 'TERNFENCED the store Redis took over from another node (recorded history ' ..
        rec[1] .. ', now ' .. replid .. ', previous ' .. tostring(replid2) ..
        '): it may lack acknowledged messages whose seqs clients have seen'
    else
      event = 'failover'
      gap = gap + cfg_gap
      redis.call('HSET', hist, 'gap', string.format('%d', gap))
    end
    redis.call('HSET', hist, 'replid', replid, 'changes', tonumber(rec[4] or '0') + 1)
  end
  local batch = redis.call('HINCRBY', hist, 'batch', 1)
  redis.set_repl(redis.REPL_AOF)
  redis.call('SET', node, batch)
  redis.set_repl(redis.REPL_ALL)
  return gap, event
end
"#
    };
}

/// Source of the history check run at connect (see the module doc).
pub const HISTORY_LUA: &str = concat!(
    history_fence_lua!(),
    r#"
local gap, event = history_fence(KEYS[1], KEYS[2], tonumber(ARGV[1]))
if not gap then return redis.error_reply(event) end
return {string.format('%d', gap), event}
"#
);

/// Source of the commit script (see the module doc).
pub const COMMIT_LUA: &str = concat!(
    history_fence_lua!(),
    r#"
local function greater(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local bucket_size = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
-- Pass 1, reads only: every watermark record's current value, validated before any write.
local marks, order = {}, {}
local appends = 0
local i = 3
for _ = 1, n do
  if ARGV[i] == 'a' then
    appends = appends + 1
    i = i + 12 + tonumber(ARGV[i + 11])
    i = i + 1 + tonumber(ARGV[i])
  elseif ARGV[i] == 'f' then
    i = i + 5
  elseif ARGV[i] == 'g' then
    appends = appends + 1
    i = i + 11 + 5 * tonumber(ARGV[i + 10])
  elseif ARGV[i] == 'w' then
    if not string.match(ARGV[i + 4], '^%d+$') then
      return redis.error_reply('watermark seq is not a decimal: ' .. ARGV[i + 4])
    end
    local rkey, user = ARGV[i + 1] .. ':rcpt', ARGV[i + 2]
    local id = rkey .. '\0' .. user
    if not marks[id] then
      local d, r = '0', '0'
      local current = redis.call('HGET', rkey, user)
      if current then
        d, r = string.match(current, '^(%d+):(%d+)$')
        if not d then
          return redis.error_reply('corrupt receipt record of ' .. user .. ': ' .. current)
        end
      end
      marks[id] = {rkey = rkey, user = user, d0 = d, r0 = r, d = d, r = r, slots = {}}
      order[#order + 1] = id
    end
    i = i + 5
  else
    return redis.error_reply('unknown commit record ' .. tostring(ARGV[i]))
  end
end
local gap, event = 0, ''
if appends > 0 then
  gap, event = history_fence(KEYS[1], KEYS[2], tonumber(ARGV[#ARGV]))
  if not gap then return redis.error_reply(event) end
end
-- A conversation not yet fenced for every history change: its counter continues above the
-- highest seq it may have handed out on the lost branch (see the crate doc, "Failover").
local function fence(base)
  local meta = base .. ':meta'
  local applied = tonumber(redis.call('HGET', meta, 'gap') or '0')
  if applied >= gap then return end
  local top = tonumber(redis.call('HGET', meta, 'last_seq') or '0')
  local b = math.floor(top / bucket_size)
  while redis.call('EXISTS', base .. ':m:' .. string.format('%d', b)) == 1 do
    for _, f in ipairs(redis.call('HKEYS', base .. ':m:' .. string.format('%d', b))) do
      local s = tonumber(f)
      if s and s > top then top = s end
    end
    b = b + 1
  end
  redis.call('HSET', meta, 'last_seq', string.format('%d', top + gap - applied),
    'gap', string.format('%d', gap))
end
-- A group's version ('0': no such group) and whether it was dissolved.
local function group_state(base)
  local g = redis.call('HMGET', base .. ':group', 'version', 'dissolved')
  return g[1] or '0', g[2] == '1'
end
-- A user's member row split up (nil: never a member, or a row this script did not write).
local function member_row(base, user)
  local row = redis.call('HGET', base .. ':members', user)
  if not row then return nil end
  return string.match(row, '^(%d+):(%d+):(%d+):(%d+)$')
end
-- Allocates the next seq of a conversation and stores the message at it.
local function store_message(base, conv, dkey, time, header, body)
  if gap > 0 then fence(base) end
  local seq = string.format('%d', redis.call('HINCRBY', base .. ':meta', 'last_seq', 1))
  local bucket = base .. ':m:' .. string.format('%d', math.floor(tonumber(seq) / bucket_size))
  if body == '' then
    redis.call('HSET', bucket, seq, header)
  else
    redis.call('HSET', bucket, seq, header, 'b' .. seq, body)
  end
  redis.call('HSET', base .. ':meta', 'last_time_ms', time)
  redis.call('SET', dkey, seq .. ':' .. time .. ':' .. conv)
  return seq
end
-- Records that `seq` mentions each of `fields` (`u<user>` or `*`), HSET in chunks (unpack is
-- bounded by Lua's C stack).
local function mention(base, seq, first, count)
  local key = base .. ':mentions'
  for from = first, first + count - 1, 500 do
    local args = {}
    for k = from, math.min(from + 499, first + count - 1) do
      args[#args + 1] = ARGV[k]
      args[#args + 1] = seq
    end
    redis.call('HSET', key, unpack(args))
  end
end
local out = {}
local function answer(a, b, c, d)
  out[#out + 1] = a
  out[#out + 1] = b
  out[#out + 1] = c
  out[#out + 1] = d
end
i = 3
for _ = 1, n do
  if ARGV[i] == 'w' then
    local base, user, kind, seq = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    i = i + 5
    local last = redis.call('HGET', base .. ':meta', 'last_seq') or '0'
    if greater(seq, last) then
      answer('x', last, '', '')
    else
      local m = marks[base .. ':rcpt' .. '\0' .. user]
      if kind == 'r' then
        if greater(seq, m.r) then m.r = seq end
        if greater(m.r, m.d) then m.d = m.r end
      elseif kind == 'd' then
        if greater(seq, m.d) then m.d = seq end
      end
      answer('w', '', '', '')
      m.slots[#m.slots + 1] = #out - 2
    end
  elseif ARGV[i] == 'a' then
    local base, conv, dkey, time = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local header, body, rseq, rkey = ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
    local group, sender = ARGV[i + 9], ARGV[i + 10]
    local members = tonumber(ARGV[i + 11])
    local first_member = i + 12
    local mentions = tonumber(ARGV[first_member + members])
    local first_mention = first_member + members + 1
    i = first_mention + mentions
    local original = redis.call('GET', dkey)
    local refusal, version = nil, '0'
    if not original and group == '1' then
      local dissolved
      version, dissolved = group_state(base)
      if version == '0' or dissolved then
        refusal = 'n'
      else
        local _, _, _, removed = member_row(base, sender)
        if removed ~= '0' then refusal = 'm' end
      end
    end
    if original then
      answer('1', original, '', '')
    elseif refusal then
      answer('r', refusal, version, '')
    else
      local missing = '0'
      if rkey ~= '' then
        if redis.call('HEXISTS', rkey, rseq) == 1 then
          redis.call('HDEL', rkey, 'b' .. rseq)
          redis.call('HSET', rkey, 'r' .. rseq, '1')
        else
          missing = '1'
        end
      end
      local seq = store_message(base, conv, dkey, time, header, body)
      local entry = seq .. ':' .. time
      for k = first_member, first_member + members - 1 do
        redis.call('ZADD', ARGV[k] .. ':convs', 0, conv)
        redis.call('HSET', ARGV[k] .. ':last', conv, entry)
      end
      if mentions > 0 then mention(base, seq, first_mention, mentions) end
      answer('0', seq, missing, version)
    end
  elseif ARGV[i] == 'f' then
    local key, conv, muted, pinned = ARGV[i + 1] .. ':flags', ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    i = i + 5
    -- A value this script did not write counts as no flags.
    local old = redis.call('HGET', key, conv)
    local bits = 0
    if old and string.match(old, '^[0-3]$') then bits = tonumber(old) end
    local m, p = bits % 2, math.floor(bits / 2)
    if muted ~= '' then m = tonumber(muted) end
    if pinned ~= '' then p = tonumber(pinned) end
    local new = string.format('%d', m + 2 * p)
    if new ~= (old or '0') then
      if new == '0' then
        redis.call('HDEL', key, conv)
      else
        redis.call('HSET', key, conv, new)
      end
    end
    answer('f', '', '', '')
  else
    local base, conv, dkey, time = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local header, body, expect = ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
    local dissolve, record = ARGV[i + 8], ARGV[i + 9]
    local changes = tonumber(ARGV[i + 10])
    local first_change = i + 11
    i = first_change + 5 * changes
    local original = redis.call('GET', dkey)
    local refusal, version, dissolved = nil, '0', false
    local rows = {}
    if not original then
      version, dissolved = group_state(base)
      if version ~= expect then
        refusal = 'v'
      elseif dissolved then
        refusal = 'n'
      else
        -- Every row change must fit the row as it is (reads only, before any write).
        for k = 0, changes - 1 do
          local op, user = ARGV[first_change + 5 * k], ARGV[first_change + 5 * k + 1]
          local role, joined, visible, removed = member_row(base, user)
          if (op == 'j') == (removed == '0') then
            refusal = 'v'
            break
          end
          rows[k + 1] = {role, joined, visible}
        end
      end
    end
    if original then
      answer('1', original, '', '')
    elseif refusal then
      answer('r', refusal, version, '')
    else
      local seq = store_message(base, conv, dkey, time, header, body)
      redis.call('HSET', base .. ':group', 'version', seq, 'dissolved', dissolve,
        'record', record)
      local entry = seq .. ':' .. time
      for k = 0, changes - 1 do
        local at = first_change + 5 * k
        local op, user, ubase, role = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
        local old = rows[k + 1]
        local row
        if op == 'j' then
          local visible = seq
          if ARGV[at + 4] == '1' then visible = '1' end
          row = role .. ':' .. seq .. ':' .. visible .. ':0'
          redis.call('ZADD', base .. ':current', 0, user)
        elseif op == 's' then
          row = role .. ':' .. old[2] .. ':' .. old[3] .. ':0'
        else
          row = old[1] .. ':' .. old[2] .. ':' .. old[3] .. ':' .. seq
          redis.call('ZREM', base .. ':current', user)
        end
        redis.call('HSET', base .. ':members', user, row)
        redis.call('ZADD', ubase .. ':convs', 0, conv)
        redis.call('HSET', ubase .. ':last', conv, entry)
      end
      answer('0', seq, '', seq)
    end
  end
end
-- Coalesced: one write per (conversation, user), only when its final value moved.
for _, id in ipairs(order) do
  local m = marks[id]
  local moved = '0'
  if m.d ~= m.d0 or m.r ~= m.r0 then
    moved = '1'
    redis.call('HSET', m.rkey, m.user, m.d .. ':' .. m.r)
  end
  for _, slot in ipairs(m.slots) do
    out[slot] = m.d .. ':' .. m.r
    out[slot + 1] = moved
  end
end
out[#out + 1] = event
return out
"#
);

/// Source of the group members script (see the module doc).
pub const GROUP_MEMBERS_LUA: &str = r#"
local ids = redis.call('ZRANGEBYLEX', KEYS[1], '(' .. ARGV[1], '+', 'LIMIT', 0, ARGV[2])
if #ids == 0 then return {} end
local out = {}
-- HMGET in chunks: unpack is bounded by Lua's C stack.
for first = 1, #ids, 1000 do
  local last = math.min(first + 999, #ids)
  local rows = redis.call('HMGET', KEYS[2], unpack(ids, first, last))
  for k = first, last do
    out[#out + 1] = ids[k]
    out[#out + 1] = rows[k - first + 1] or ''
  end
end
return out
"#;

/// Source of the watermark script (see the module doc).
pub const SET_WATERMARK_LUA: &str = r#"
local function greater(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local seq = ARGV[3]
if not string.match(seq, '^%d+$') then
  return redis.error_reply('watermark seq is not a decimal: ' .. seq)
end
local delivered, read = '0', '0'
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  delivered, read = string.match(current, '^(%d+):(%d+)$')
  if not delivered then
    return redis.error_reply('corrupt receipt record of ' .. ARGV[1] .. ': ' .. current)
  end
end
local new_delivered, new_read = delivered, read
if ARGV[2] == 'r' then
  if greater(seq, new_read) then new_read = seq end
  if greater(new_read, new_delivered) then new_delivered = new_read end
else
  if greater(seq, new_delivered) then new_delivered = seq end
end
if new_delivered ~= delivered or new_read ~= read then
  redis.call('HSET', KEYS[1], ARGV[1], new_delivered .. ':' .. new_read)
  return {new_delivered, new_read, '1'}
end
return {new_delivered, new_read, '0'}
"#;

/// The commit script (SHA1 computed once).
pub static COMMIT: LazyLock<Script> = LazyLock::new(|| Script::new(COMMIT_LUA));

/// The history check script (SHA1 computed once).
pub static HISTORY: LazyLock<Script> = LazyLock::new(|| Script::new(HISTORY_LUA));

/// The group members script (SHA1 computed once).
pub static GROUP_MEMBERS: LazyLock<Script> = LazyLock::new(|| Script::new(GROUP_MEMBERS_LUA));

/// The watermark script (SHA1 computed once).
pub static SET_WATERMARK: LazyLock<Script> = LazyLock::new(|| Script::new(SET_WATERMARK_LUA));
