"""The fleet's Lua scripts: each runs atomically on the Redis server, in one round trip.

No event loop here: :class:`~callflow.fleet.store.RedisStore` registers :data:`SCRIPTS` when
it opens (on the loop that enters it) and runs them by their SHA-1 (``EVALSHA``), loading one
first when Redis does not know it yet. Every key a script touches carries the fleet's hash tag,
so a script stays atomic on a Redis Cluster too. ``ARGV`` values are the signed values of
:mod:`callflow.fleet.trust`; a script never checks a signature (the client does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["SCRIPTS"]

_CLAIM: Final = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then return 1 end
return holder
"""

_ADMIT: Final = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
"""

# Replaces a holder the client found forged, only while the key still holds it (or nothing):
# ARGV = forged, ours, ttl[, score, member for KEYS[2] (admit)].
_REPLACE: Final = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and holder ~= ARGV[2] then return holder end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if KEYS[2] then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5]) end
return 1
"""

# ARGV[1] is the TTL, ARGV[i + 1] this worker's value for KEYS[i].
_SEEN: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  local mine = ARGV[i + 1]
  local holder = redis.call('GET', key)
  if not holder then
    redis.call('SET', key, mine, 'PX', ARGV[1])
    out[i] = 1
  elseif holder == mine then
    out[i] = 1
  else
    out[i] = holder
  end
end
return out
"""

# ARGV[1] is the TTL, ARGV[2i] the forged value found under KEYS[i], ARGV[2i + 1] ours.
_REPLACE_SEEN: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder and holder ~= ARGV[2 * i] and holder ~= ARGV[2 * i + 1] then
    out[i] = holder
  else
    redis.call('SET', key, ARGV[2 * i + 1], 'PX', ARGV[1])
    out[i] = 1
  end
end
return out
"""

# The heartbeat key is built from ARGV: it shares the fleet's hash tag, so it lives in the
# same cluster slot as KEYS[1]. A holder that looks alive is returned with the heartbeat, for
# the client to check both signatures.
_CLAIM_ORPHAN: Final = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  local owner, boot = string.match(holder, '^(.*)#([^#]*)#[^#]*$')
  if not owner then return {holder, ''} end
  local beat = redis.call('GET', ARGV[3] .. owner)
  if beat and string.find(beat, '"' .. boot .. '"', 1, true) then return {holder, beat} end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# ARGV[3] is the heartbeat value the client found forged ('' for none): a take-over goes on
# while the instance key holds nothing or that value (which it deletes).
_TAKE_OVER: Final = """
if ARGV[2] ~= '1' then
  local beat = redis.call('GET', KEYS[1])
  if beat and beat ~= ARGV[3] then return {} end
  if beat then redis.call('DEL', KEYS[1]) end
end
local moved = {}
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  if key ~= KEYS[4] then
    local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      redis.call('ZADD', KEYS[4], entries[i + 1], entries[i])
      moved[#moved + 1] = entries[i]
      moved[#moved + 1] = entries[i + 1]
    end
    redis.call('DEL', key)
  end
end
-- An instance that still holds answered calls (KEYS[6]) stays a member until they are adopted.
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[6]) == 0 then
  redis.call('SREM', KEYS[5], ARGV[1])
end
return moved
"""

# Held calls: KEYS[1] is the call's record (a hash: the plain ``owner`` for the scripts to
# compare, ``v`` the signed record), KEYS[2] the owner's set of held call ids.
# ARGV = owner (instance#boot), signed record, call id. Written unless another owner holds it
# (then that owner is returned: the call was adopted elsewhere).
_HOLD: Final = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return owner end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'v', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""

# ARGV = owner, call id: dropped only by its owner; the id leaves the owner's set anyway.
_DROP_HELD: Final = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == ARGV[1] or not owner then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""

# Adoption of a lost instance's held calls. KEYS = its heartbeat, its held set, this worker's
# held set, its hand-off mark. ARGV = this worker's owner value, force ('1': skip the liveness
# check: this worker's own previous life), the prefix of held records, the lost instance's id,
# the heartbeat value the client found forged ('' for none), handed-off only ('1': adopt only
# an instance that handed its calls off). Each record still owned by the lost instance (any
# boot but this worker's) becomes this worker's; returns {reason, mark, id, record, ...}.
_ADOPT_HELD: Final = """
if ARGV[2] ~= '1' then
  local beat = redis.call('GET', KEYS[1])
  if beat and beat ~= ARGV[5] then return {} end
end
local mark = redis.call('GET', KEYS[4])
if ARGV[6] == '1' and not mark then return {} end
local out = {mark and 'handed_off' or 'owner_lost', mark or ''}
local lost = ARGV[4] .. '#'
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[3] .. id
  local owner = redis.call('HGET', key, 'owner')
  if owner and owner ~= ARGV[1] and string.sub(owner, 1, #lost) == lost then
    redis.call('HSET', key, 'owner', ARGV[1])
    redis.call('SADD', KEYS[3], id)
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', key, 'v') or ''
  end
  if KEYS[2] ~= KEYS[3] then redis.call('SREM', KEYS[2], id) end
end
redis.call('DEL', KEYS[4])
return out
"""

# The owners of held records: ARGV = the prefix of held records, then call ids. KEYS[1] (the
# worker's held set, in the fleet's slot) is not read: it routes the script on a cluster.
_OWNERS: Final = """
local out = {}
for i = 2, #ARGV do
  out[i - 1] = redis.call('HGET', ARGV[1] .. ARGV[i], 'owner') or ''
end
return out
"""


SCRIPTS: Final[Mapping[str, str]] = {
    "admit": _ADMIT,
    "claim": _CLAIM,
    "claim_orphan": _CLAIM_ORPHAN,
    "replace": _REPLACE,
    "seen": _SEEN,
    "replace_seen": _REPLACE_SEEN,
    "take_over": _TAKE_OVER,
    "hold": _HOLD,
    "drop_held": _DROP_HELD,
    "adopt_held": _ADOPT_HELD,
    "owners": _OWNERS,
}
"""The scripts by the name :class:`~callflow.fleet.store.RedisStore` runs them under."""
