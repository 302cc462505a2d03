"""What a call remembers: the memo a flow keeps with ``await call.remember({...})``.

A memo is a JSON object of at most :data:`MAX_MEMO` bytes serialised. :func:`encode_memo`
checks and serialises it on the caller's loop (the app loop), before anything is written, so a
bad value raises :class:`~callflow.errors.ActionError` and changes nothing. The serialised
memo is then kept by the worker's :class:`Memory`, on the I/O loop: :class:`LocalMemory` for a
lone worker (kept in the process, dropped when the call ends), or, in fleet mode, the fleet's
held calls (:mod:`callflow.fleet.held`), which write it to the store so that the worker that
adopts the call when this one is lost gets it back in ``CallAdopted.memo``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final, Protocol

from callflow.errors import ActionError

__all__ = ["MAX_MEMO", "LocalMemory", "Memory", "decode_memo", "encode_memo"]

MAX_MEMO: Final = 4096
"""Bytes a memo may take serialised as JSON (UTF-8)."""


def encode_memo(memo: object) -> str:
    """``memo`` as compact JSON; ActionError unless it is a JSON object (a mapping with
    string keys, JSON values, finite numbers) of at most :data:`MAX_MEMO` bytes."""
    if not isinstance(memo, Mapping):
        raise ActionError(
            f"call.remember takes a mapping (a JSON object), got {type(memo).__name__}"
        )
    try:
        text = json.dumps(
            memo, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_refuse
        )
    except (TypeError, ValueError) as exc:
        raise ActionError(f"call.remember takes a JSON object: {exc}") from exc
    size = len(text.encode())
    if size > MAX_MEMO:
        raise ActionError(
            f"call.remember takes at most {MAX_MEMO} bytes of JSON, got {size}; expected a "
            "small memo (where the flow is), not data"
        )
    return text


def decode_memo(text: str | None) -> dict[str, Any]:
    """The mapping :func:`encode_memo` made (an empty dict for None or anything else)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _refuse(value: object) -> Any:
    if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - json's job
        raise ValueError("not a finite number")
    raise TypeError(
        f"{type(value).__name__} is not JSON (use str, int, float, bool, None, "
        "lists and mappings with string keys)"
    )


class Memory(Protocol):
    """Where the worker keeps the memos of the calls it holds (the I/O loop)."""

    async def remember(self, call_id: str, tenant_id: str | None, memo: str) -> None:
        """Keep ``memo`` (serialised) as ``call_id``'s memo; return once it is kept."""
        ...

    def memo(self, call_id: str) -> str | None:
        """The memo last kept for ``call_id``; None when there is none."""
        ...


class LocalMemory:
    """The :class:`Memory` of a lone worker: memos kept in the process until their call ends
    (:meth:`ended`); ``CallAdopted`` never fires without a fleet."""

    def __init__(self) -> None:
        self._memos: dict[str, str] = {}

    async def remember(self, call_id: str, tenant_id: str | None, memo: str) -> None:
        """Keep ``memo``."""
        self._memos[call_id] = memo

    def memo(self, call_id: str) -> str | None:
        """The memo last kept for ``call_id``."""
        return self._memos.get(call_id)

    def ended(self, call_id: str, result: object = None) -> None:
        """Forget the memo of a call that ended."""
        self._memos.pop(call_id, None)
