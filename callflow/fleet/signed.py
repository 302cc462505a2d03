"""The signed values a Redis store client writes and the checks of those it reads.

Runs wherever its store client runs (the worker's I/O loop) and never awaits Redis itself: it
seals this worker's values and opens what the store read (see :mod:`callflow.fleet.trust` for
the signatures). Every value a worker acts on is signed with the fleet secret
(``CALLFLOW_FLEET_SECRET``): claims (``instance#boot#mac``, bound to their key), pending and
adopted members (``call_id|tenant_id|mac``) and heartbeats (a ``mac`` and a time ``t`` in the
JSON). A claim script that loses returns the holder, and the worker checks its signature: a
forged holder is replaced (compare-and-set) and the claim won. A heartbeat that does not verify
counts as absent (the instance is dead, its calls are taken over), a member that does not
verify is dropped and never decided. Each forged value is counted
(``callflow_fleet_forged_values_total``) and logged (``fleet.forged_value``, rate-limited).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from callflow._log import Throttle
from callflow.fleet.breaker import LOG_EVERY
from callflow.fleet.census import PendingCall
from callflow.fleet.stats import FleetStats
from callflow.fleet.trust import FleetSigner

__all__ = ["SignedValues"]

log = structlog.get_logger(__name__)


class SignedValues:
    """What one store client (``label``) signs as ``holder`` (``instance#boot``) and checks.

    A value read without a valid signature is counted in ``stats`` and logged
    (``fleet.forged_value``, at most every :data:`~callflow.fleet.breaker.LOG_EVERY` seconds
    per kind of value).
    """

    def __init__(self, signer: FleetSigner, holder: str, stats: FleetStats, label: str) -> None:
        self.signer = signer
        self._holder = holder
        self._stats = stats
        self._label = label
        self._forged_log = Throttle(LOG_EVERY)

    def forged(self, kind: str, name: str, value: object) -> None:
        """Count (and log, rate-limited) a value found without a valid fleet signature."""
        self._stats.add("forged")
        suppressed = self._forged_log.admit(kind)
        if suppressed is not None:
            log.error(
                "fleet.forged_value",
                store=self._label,
                kind=kind,
                key=name[:100],
                length=len(str(value)),
                suppressed=suppressed,
                message="a value in the fleet's Redis is not signed with this worker's "
                "CALLFLOW_FLEET_SECRET: it was ignored. Expected every worker to share the "
                "secret; otherwise someone else writes to the fleet's keys",
            )

    def own(self, kind: str, name: str) -> str:
        """This worker's signed holder value for the key ``kind``/``name``."""
        return self.signer.seal(kind, name, self._holder)

    async def settle(
        self,
        kind: str,
        name: str,
        result: Any,
        replace: Callable[[str], Awaitable[Any]],
    ) -> bool:
        """Whether a claim script's ``result`` (1, or the holder that beat this worker to
        it) is won; a holder without a valid signature is replaced and the claim won."""
        for _ in range(3):
            if not isinstance(result, str):
                return bool(result)
            if self.signer.opened(kind, name, result) is not None:
                return False  # held by a worker of the fleet
            self.forged(kind, name, result)
            result = await replace(result)
        return True  # forged again and again: decide here, as when Redis is in trouble

    def held_alive(self, call_id: str, holder: str, beat: object, max_age: float) -> bool:
        """True when ``holder`` is a signed ``final`` claim of ``call_id`` and ``beat`` the
        signed, fresh heartbeat of the worker (and boot) that holds it; each value found
        forged is counted."""
        value = self.signer.opened("final", call_id, holder)
        if value is None:
            self.forged("final", call_id, holder)
            return False
        owner, _, boot = value.rpartition("#")
        alive = self.signer.open_beat(owner, beat, max_age=max_age)
        if alive is not None and alive.boot == boot:
            return True
        self.forged("beat", owner, beat)  # it names the holder's boot, unsigned
        return False

    def verified(self, flat: Sequence[Any]) -> tuple[tuple[PendingCall, ...], list[str]]:
        """The signed calls of ``[member, score, ...]`` and the members that are forged."""
        calls: list[PendingCall] = []
        forged: list[str] = []
        for member, score in zip(flat[::2], flat[1::2], strict=True):
            opened = self.signer.open_member(member)
            try:
                expires_at = float(score)
            except (TypeError, ValueError):
                opened = None
            if opened is None:
                self.forged("member", "", member)
                forged.append(str(member))
                continue
            calls.append(PendingCall(opened[0], opened[1], expires_at))
        return tuple(calls), forged
