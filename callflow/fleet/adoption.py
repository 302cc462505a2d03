"""Adoption: a survivor takes over the answered calls of a worker the fleet lost.

Runs on the worker's I/O loop, started by the watch (:mod:`callflow.fleet.watch`) for each
call the store moved to this worker (:meth:`~callflow.fleet.held.HeldStore.adopt`: one
script, so exactly one survivor gets each call). :class:`Adoptions` confirms the call with
Graph first (``GET /communications/calls/{id}``: gone or ``terminated`` means it ended while
its owner was lost, and it is forgotten without any event), then holds it (its record is
written again with this worker as owner and the last memo), and hands it to the worker
(``take``), which binds it to its tenant, keeps it alive at once and delivers one
:class:`~callflow.events.CallAdopted` to the bot's observers. One ``call.adopted`` line is
logged per adoption, and counted by reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import structlog

from callflow.control.memory import decode_memo
from callflow.errors import CallGoneError
from callflow.events import CallAdopted
from callflow.fleet.held import Adoption, HeldCalls, HeldRecord
from callflow.fleet.stats import FleetStats

__all__ = ["CONFIRM_TIMEOUT", "Adoptions", "CallReader", "Taker"]

log = structlog.get_logger(__name__)

CONFIRM_TIMEOUT: Final = 10.0
"""Seconds the Graph request confirming an adopted call may take (retries included)."""


class CallReader(Protocol):
    """What adoption asks of Graph (a :class:`~callflow.graph.GraphClient`)."""

    async def get_call(
        self, call_id: str, *, tenant_id: str | None = None, deadline: float | None = None
    ) -> Any:
        """The call's current status (``.state``, ``.ended``); CallGoneError when gone."""
        ...


Taker = Callable[[str, str | None, str, CallAdopted], None]
"""``take(call_id, tenant_id, state, event)``: the worker holds an adopted call from now on
(bind it, keep it alive, deliver ``event``)."""


class Adoptions:
    """Confirms and takes adopted calls; see the module docstring."""

    def __init__(self, graph: CallReader, held: HeldCalls, take: Taker, stats: FleetStats) -> None:
        self._graph = graph
        self._held = held
        self._take = take
        self._stats = stats

    async def adopt(self, adoption: Adoption, record: HeldRecord, lost_since: float | None) -> None:
        """Confirm ``record``'s call with Graph and take it, or forget it when it ended.

        ``lost_since`` is the epoch time the previous owner was last known alive (its
        hand-off for ``handed_off``); None when this worker never saw it alive.
        """
        call_id, tenant = record.call_id, record.tenant_id
        state, gone = "established", False
        try:
            status = await self._graph.get_call(
                call_id, tenant_id=tenant, deadline=time.monotonic() + CONFIRM_TIMEOUT
            )
        except CallGoneError:
            gone = True
        except Exception as exc:  # Graph down or erring: keep the call; keepAlive will tell
            log.warning(
                "call.adoption_unconfirmed",
                call_id=call_id,
                error=f"{type(exc).__name__}: {exc}"[:300],
                message="Graph did not confirm the adopted call: it is kept alive as if it "
                "were established",
            )
        else:
            state = str(getattr(status, "state", None) or "established")
            gone = bool(getattr(status, "ended", False))
        if gone:
            await self._held.store.drop(call_id)
            log.info(
                "call.adoption_gone",
                call_id=call_id,
                previous_owner=adoption.instance,
                reason=adoption.reason,
                message="the call ended while its owner was lost: forgotten",
            )
            return
        self._held.hold(call_id, tenant, record.memo)
        lost_for = None if lost_since is None else max(0.0, time.time() - lost_since)
        event = CallAdopted(
            call_id,
            tenant,
            memo=decode_memo(record.memo),
            previous_owner=adoption.instance,
            reason=adoption.reason,
            lost_for=None if lost_for is None else round(lost_for, 3),
        )
        self._take(call_id, tenant, state, event)
        self._stats.add("adopted_handed_off" if adoption.reason == "handed_off" else "adopted_lost")
        log.info(
            "call.adopted",
            call_id=call_id,
            tenant_id=tenant,
            previous_owner=adoption.instance,
            reason=adoption.reason,
            lost_for=event.lost_for,
            state=state,
        )
