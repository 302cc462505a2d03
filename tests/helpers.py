"""Builders shared by the tests."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from callflow.events import ChatInfo, Identity, IncomingCall

ROOT = Path(__file__).resolve().parent.parent
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


def run_module(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``python -m ARGS`` from the repository root (a benchmark's command line): the
    finished process (its output captured) and how many seconds it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done, time.monotonic() - started
