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
if ARGV[2] ~= '1' then redis.call('SREM', KEYS[5], ARGV[1]) end
return moved
"""


SCRIPTS: Final[Mapping[str, str]] = {
    "admit": _ADMIT,
    "claim": _CLAIM,
    "claim_orphan": _CLAIM_ORPHAN,
    "replace": _REPLACE,
    "seen": _SEEN,
    "replace_seen": _REPLACE_SEEN,
    "take_over": _TAKE_OVER,
}
"""The scripts by the name :class:`~callflow.fleet.store.RedisStore` runs them under."""
