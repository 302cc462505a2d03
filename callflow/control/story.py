"""A call's story lines: what the bot did with a call, one line per step, for its log.

Runs on the app loop, in the :class:`~callflow.control.call.Call` methods (never on the I/O
loop, which logs Graph's side: ``call.operation``). Each step the bot awaits logs one line
when it ends: ``call.prompt_played``, ``call.digits_collected``, ``call.recorded``,
``call.recording_downloaded``, ``call.transferred``, with the call's ids, how it ended
(``outcome``) and how long it took (``duration_ms``). The fields are documented in
``docs/reference/logs.md``.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

import structlog

from callflow.errors import (
    CallEndedError,
    MediaCancelledError,
    OperationError,
    OperationTimeoutError,
)

__all__ = ["Step", "outcome_of"]

log = structlog.get_logger(__name__)


def outcome_of(error: BaseException | None) -> str:
    """How a step ended: ``completed``, ``cancelled``, ``timeout``, ``call_ended``,
    ``failed`` (Graph's result said so) or ``error`` (Graph refused the request, or
    anything else)."""
    if error is None:
        return "completed"
    if isinstance(error, asyncio.CancelledError | MediaCancelledError):
        return "cancelled"
    if isinstance(error, OperationTimeoutError):
        return "timeout"
    if isinstance(error, CallEndedError):
        return "call_ended"
    if isinstance(error, OperationError):
        return "failed"
    return "error"


class Step:
    """``with Step(event, call_id, tenant_id, **fields) as step:`` around one awaited step:
    on leaving, logs ``event`` with the fields (and those added to ``step.fields``), the
    outcome and the duration. An exception passes on."""

    __slots__ = ("_began", "event", "fields")

    def __init__(self, event: str, call_id: str, tenant_id: str | None, **fields: Any) -> None:
        self.event = event
        self.fields: dict[str, Any] = {"call_id": call_id, "tenant_id": tenant_id, **fields}
        self._began = 0.0

    def __enter__(self) -> Step:
        self._began = time.monotonic()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        fields = self.fields
        fields["outcome"] = outcome_of(error)
        fields["duration_ms"] = round((time.monotonic() - self._began) * 1000.0, 1)
        if error is not None and fields["outcome"] != "cancelled":
            fields["error"] = f"{type(error).__name__}: {error}"[:300]
        log.info(self.event, **fields)
