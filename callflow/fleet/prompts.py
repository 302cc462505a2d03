"""What spoken prompts say, shared through the fleet's store so any worker can serve them.

:class:`SharedPrompts` is the :class:`~callflow.speech.media.SpecStore` of fleet mode: a
prompt's spec (voice and SSML) under ``prompt:<digest>`` in the fleet's namespace, with the
media TTL. A worker asked for a prompt another worker named reads the spec here and renders it
itself (it checks the digest against the spec, so a changed value is refused). Runs on the I/O
loop, on the loop's :class:`~callflow.fleet.store.RedisStore`; a store in trouble answers None.
"""

from __future__ import annotations

from typing import Final

from callflow.fleet.store import RedisStore

__all__ = ["SharedPrompts"]

_WAIT: Final = 1.0
"""Seconds one store operation for a prompt may take (none is on a decision's path)."""


class SharedPrompts:
    """Prompt specs in the fleet's Redis store."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    async def put(self, digest: str, spec: str, ttl: float) -> None:
        """Keep ``spec`` under ``digest`` for ``ttl`` seconds (best effort)."""
        key = self._store.key("prompt", digest)

        async def run() -> None:
            await self._store.redis().set(key, spec, px=max(1, int(ttl * 1000)))

        await self._store.run("prompt_put", run, None, within=_WAIT)

    async def get(self, digest: str) -> str | None:
        """The spec under ``digest``; None when there is none or the store fails."""
        key = self._store.key("prompt", digest)

        async def run() -> str | None:
            value = await self._store.redis().get(key)
            if value is None:
                return None
            return value.decode() if isinstance(value, bytes) else str(value)

        return await self._store.run("prompt_get", run, None, within=_WAIT)
