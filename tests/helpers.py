"""Builders shared by the tests."""

from __future__ import annotations

import itertools
from typing import Any

from callflow.events import ChatInfo, Identity, IncomingCall

_ids = itertools.count()


def incoming(
    call_id: str | None = None,
    *,
    group: bool = False,
    recording: bool = False,
    caller: Identity | None = None,
    tenant_id: str = "tenant-a",
    **fields: Any,
) -> IncomingCall:
    """An IncomingCall built directly (the parser has its own tests)."""
    return IncomingCall(
        call_id=call_id or f"call-{next(_ids)}",
        tenant_id=tenant_id,
        caller=caller or Identity("user", "user-1", "Dana", tenant_id),
        chat_info=ChatInfo(thread_id="19:meeting_x@thread.v2") if group else None,
        is_policy_recording=recording,
        **fields,
    )
